"""Command bodies of `gbair` subcommands that need more than a line in main.py."""
