"""One module per `gbair` subcommand body (docs/ARCHITECTURE.md); main.py parses and dispatches."""
