"""The `conversion-sync` command line: one module per concern, all registered on one click group."""

from conversion_sync.cli import (  # noqa: F401  (importing a module registers its commands)
    campaigns,
    salesforce,
    salesforce_poll,
    salesforce_push,
    status,
    store,
    syncs,
    trace,
)
from conversion_sync.cli.app import main

__all__ = ["main"]
