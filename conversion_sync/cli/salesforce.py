"""The `conversion-sync salesforce` command group: Salesforce work run now, from the command line."""

from __future__ import annotations

from conversion_sync.cli.app import main


@main.group()
def salesforce() -> None:
    """Salesforce poll and push, run now in this process."""
