"""What each destination accepts: its key, required columns, and typed fields (SPEC §2)."""

from __future__ import annotations

from dataclasses import dataclass, field

from conversion_sync.config.store_schema import STANDARD_CONTACT_FIELDS, StoreSchemaConfig
from conversion_sync.config.syncs import SyncConfig

RELATIONSHIP_FIELDS = "relationshipFields"


@dataclass(frozen=True)
class DestinationFields:
    """The columns a destination understands, by lower-cased name, with their field types."""

    kind: str
    required: tuple[str, ...]
    field_types: dict[str, str]
    """Typed fields written to the destination (type per SPEC §1)."""
    special: dict[str, str] = field(default_factory=dict)
    """Columns with a fixed role (email, updated_at, id, …) and their type."""
    extra_columns_are_properties: bool = False

    def known(self) -> list[str]:
        return [*self.special, *self.field_types]

    def type_of(self, column: str) -> str:
        return self.special.get(column) or self.field_types[column]


def destination_fields(sync: SyncConfig, schema: StoreSchemaConfig) -> DestinationFields:
    """The field catalogue for a sync's destination."""
    kind = sync.destination.type
    if kind == "contacts":
        return DestinationFields(
            kind=kind,
            required=("email",),
            special={"email": "email", "updated_at": "datetime"},
            field_types=schema.contact_field_types(),
        )
    if kind == "custom_objects":
        object_type = schema.object_types.get(sync.destination.object_type or "")
        if object_type is None:
            raise UnknownObjectType(sync.destination.object_type or "", sorted(schema.object_types))
        return DestinationFields(
            kind=kind,
            required=("id",),
            special={
                "id": "key",
                "email": "optional_email",
                RELATIONSHIP_FIELDS: "json_object",
                "updated_at": "datetime",
            },
            field_types=dict(object_type.fields),
        )
    return DestinationFields(
        kind=kind,
        required=("email", "event_name", "timestamp"),
        special={
            "email": "email",
            "event_name": "string_required",
            "timestamp": "datetime_required",
            "message_id": "key_optional",
            "properties": "json_object",
            "updated_at": "datetime",
        },
        field_types={},
        extra_columns_are_properties=True,
    )


class UnknownObjectType(Exception):
    """The sync names an object type that schema.yaml does not define."""

    def __init__(self, name: str, known: list[str]):
        super().__init__(
            f"object type '{name}' not found; defined in schema.yaml: {', '.join(known) or 'none'}"
        )


__all__ = ["RELATIONSHIP_FIELDS", "STANDARD_CONTACT_FIELDS", "DestinationFields", "destination_fields"]
