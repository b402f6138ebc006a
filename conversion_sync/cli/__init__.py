"""The `conversion-sync` command line: one module per concern, all registered on one click group."""

from conversion_sync.cli import campaigns, status, store, syncs  # noqa: F401  (registers their commands)
from conversion_sync.cli.app import main

__all__ = ["main"]
