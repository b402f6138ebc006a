"""Destinations: one module each behind the `Destination` protocol, found by the sync's `destination.type`.

A new destination is one module implementing `Destination` and one line in DESTINATIONS.
"""

from __future__ import annotations

from conversion_sync.config.store_schema import STANDARD_CONTACT_FIELDS, StoreSchemaConfig
from conversion_sync.config.syncs import SyncConfig
from conversion_sync.syncs.destinations import contacts, custom_objects, events
from conversion_sync.syncs.destinations.base import (
    RELATIONSHIP_FIELDS,
    Destination,
    DestinationFields,
    UnknownObjectType,
)

DESTINATIONS: dict[str, Destination] = {
    contacts.DESTINATION.kind: contacts.DESTINATION,
    custom_objects.DESTINATION.kind: custom_objects.DESTINATION,
    events.DESTINATION.kind: events.DESTINATION,
}
"""Destination type → its implementation."""


def destination_for(kind: str) -> Destination:
    """The implementation of a destination type."""
    try:
        return DESTINATIONS[kind]
    except KeyError:
        raise ValueError(f"unknown destination type '{kind}'; known: {', '.join(DESTINATIONS)}") from None


def destination_fields(sync: SyncConfig, schema: StoreSchemaConfig) -> DestinationFields:
    """The field catalogue for a sync's destination."""
    return destination_for(sync.destination.type).fields(sync, schema)


__all__ = [
    "DESTINATIONS",
    "RELATIONSHIP_FIELDS",
    "STANDARD_CONTACT_FIELDS",
    "Destination",
    "DestinationFields",
    "UnknownObjectType",
    "destination_fields",
    "destination_for",
]
