"""CLI subcommands: each a thin call into the API (see hwloop/cli.py)."""
