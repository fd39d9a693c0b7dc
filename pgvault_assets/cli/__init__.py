"""The `pgvault` command line: a thin shell that parses, calls the engine and prints."""

from pgvault_assets.cli.main import main

__all__ = ["main"]
