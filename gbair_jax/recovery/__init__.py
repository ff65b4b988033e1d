"""recovery stage."""
