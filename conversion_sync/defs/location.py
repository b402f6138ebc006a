"""What the code location adds around the integrations' definitions: the upstream tables and `deps:` keys as
external assets, the store's destination tables as downstream assets, and freshness policies from schedules."""

from __future__ import annotations

import dagster as dg

from conversion_sync.config import ProjectConfig
from conversion_sync.defs.destinations import DestinationConfig, destination_key, destination_specs
from conversion_sync.defs.freshness import with_schedule_freshness
from conversion_sync.defs.lineage import SyncLineage, defined_keys
from conversion_sync.defs.warehouse_syncs import asset_key

POLL_KEY = dg.AssetKey("salesforce_poll")
"""The Salesforce poll writes contacts too."""
PUSH_KEY = dg.AssetKey("salesforce_push")
"""The Salesforce push runs after each successful poll: its cadence is the poll schedule's."""


def with_lineage_and_freshness(defs: dg.Definitions, project: ProjectConfig) -> dg.Definitions:
    """`defs` (every integration merged) with the external upstream assets, the destination assets, and a
    freshness policy on every asset that has a schedule and none yet."""
    defined = defined_keys(defs)
    writers: dict[dg.AssetKey, list[dg.AssetKey]] = {}
    for sync in project.syncs.values():
        writers.setdefault(destination_key(sync.destination), []).append(asset_key(sync.name))
    if POLL_KEY in defined:
        writers.setdefault(destination_key(DestinationConfig(type="contacts")), []).append(POLL_KEY)
    destinations = destination_specs(project, writers)
    defined |= {spec.key for spec in destinations}
    upstream = SyncLineage.of(project).external_specs(project, defined)
    merged = dg.Definitions.merge(defs, dg.Definitions(assets=[*destinations, *upstream]))
    return with_schedule_freshness(
        merged,
        skip=[asset_key(name) for name in project.syncs],
        cadences={PUSH_KEY: project.salesforce.poll_schedule},
    )
