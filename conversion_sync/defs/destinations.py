"""The store's destination tables as assets downstream of the syncs that write them: contacts, events and
each custom object type, with their row counts observed after every sync run that writes them."""

from __future__ import annotations

from typing import Any

import dagster as dg

from conversion_sync.config import ProjectConfig
from conversion_sync.config.syncs import DestinationConfig
from conversion_sync.store.contact_store import ContactStore
from conversion_sync.store.row_counts import destination_row_count
from conversion_sync.syncs.lineage import STORE_KEY_PART, destination_key_path

DESTINATIONS_GROUP = STORE_KEY_PART
_DESCRIPTIONS = {
    "contacts": "Contacts in the store, one per e-mail address: written by the contact syncs and the "
    "Salesforce poll.",
    "events": "Events in the store, one per message_id, each linked to its contact.",
}


def destination_key(destination: DestinationConfig) -> dg.AssetKey:
    """contact_store/contacts, contact_store/events, contact_store/custom_objects/<object type>."""
    return dg.AssetKey(list(destination_key_path(destination)))


def destinations(project: ProjectConfig) -> list[DestinationConfig]:
    """Contacts, events, and custom objects of each type in schema.yaml or used by a sync."""
    types: dict[str | None, None] = dict.fromkeys(project.store_schema.object_types)
    types.update(dict.fromkeys(s.destination.object_type for s in project.syncs.values()))
    return [
        DestinationConfig(type="contacts"),
        DestinationConfig(type="events"),
        *(DestinationConfig(type="custom_objects", object_type=t) for t in types if t),
    ]


def destination_specs(
    project: ProjectConfig, writers: dict[dg.AssetKey, list[dg.AssetKey]]
) -> list[dg.AssetSpec]:
    """One asset per destination table, downstream of the assets that write it (`writers` by its key)."""
    specs = []
    for destination in destinations(project):
        key = destination_key(destination)
        description = _DESCRIPTIONS.get(
            destination.type, f"Custom objects of type `{destination.object_type}` in the store."
        )
        specs.append(
            dg.AssetSpec(
                key,
                group_name=DESTINATIONS_GROUP,
                description=f"{description} Its row count is observed after each sync run that writes it.",
                deps=writers.get(key, []),
                kinds={"postgres"},
                metadata={"dagster/table_name": destination.type},
            )
        )
    return specs


def row_count_observation(
    store: ContactStore, destination: DestinationConfig, run_id: str
) -> dg.AssetObservation:
    """The destination's row count now, as an observation of its asset."""
    with store.begin() as conn:
        count = destination_row_count(conn, destination.type, destination.object_type)
    metadata: dict[str, Any] = {
        "dagster/row_count": dg.MetadataValue.int(count.rows),
        "dagster/table_name": dg.MetadataValue.text(count.table),
        "row_count_estimated": dg.MetadataValue.bool(count.estimated),
    }
    if destination.object_type:
        metadata["object_type"] = dg.MetadataValue.text(destination.object_type)
    return dg.AssetObservation(
        asset_key=destination_key(destination),
        metadata=metadata,
        description=f"after run {run_id}",
    )
