"""What a destination is to the engine: its field catalogue, the parts of validation and writing that are its
own, and its preview. One module per destination implements `Destination`; the registry maps types to them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import sqlalchemy as sa

from conversion_sync.config.store_schema import StoreSchemaConfig
from conversion_sync.config.syncs import SyncConfig
from conversion_sync.syncs.writers import WriteContext, WriteCounts

RELATIONSHIP_FIELDS = "relationshipFields"


@dataclass(frozen=True)
class DestinationFields:
    """The columns a destination understands, by lower-cased name, with their field types."""

    kind: str
    required: tuple[str, ...]
    field_types: dict[str, str]
    """Typed fields written to the destination (a type per field of schema.yaml)."""
    special: dict[str, str] = field(default_factory=dict)
    """Columns with a fixed role (email, updated_at, id, …) and their type."""
    extra_columns_are_properties: bool = False

    def known(self) -> list[str]:
        return [*self.special, *self.field_types]

    def type_of(self, column: str) -> str:
        return self.special.get(column) or self.field_types[column]


class UnknownObjectType(Exception):
    """The sync names an object type that schema.yaml does not define."""

    def __init__(self, name: str, known: list[str]):
        super().__init__(
            f"object type '{name}' not found; defined in schema.yaml: {', '.join(known) or 'none'}"
        )


class StagedRow(Protocol):
    """What validation hands a destination to build its SQL from: one staged row, aliased `s`."""

    def staged(self, field: str) -> str | None:
        """SQL for the field's staged text (`s."c3"`), None when the query lacks the field."""
        ...

    def value(self, field: str) -> str:
        """SQL for the field's typed value ("NULL" when the query lacks it)."""
        ...

    def email_key(self) -> str:
        """SQL for the row's e-mail key (trimmed, lower-cased; "NULL::text" when the query has no e-mail)."""
        ...

    def property_pairs(self) -> list[tuple[str, str]]:
        """(name, typed JSON value SQL) of the extra columns that are properties (events)."""
        ...


@dataclass(frozen=True)
class TypedColumns:
    """A destination's own columns of the rows table (NULL where it has none), and each row's key."""

    row_key: str
    """SQL for the row's key: over the typed columns (object_id, email_norm, message_id …), or when
    `row_key_from_stage` over the staged row `s`."""
    row_key_from_stage: bool = False
    object_id: str = "NULL::text"
    event_name: str = "NULL::text"
    event_ts: str = "NULL::timestamptz"
    message_id: str = "NULL::text"
    properties: str = "NULL::jsonb"


@dataclass(frozen=True)
class FingerprintKeys:
    """How a destination's rows meet the fingerprints of what the sync last wrote."""

    staged_key: str
    """SQL for a staged row's key (over `s`), as the rows table and sync_fingerprints hold it."""
    moved: str
    """SQL true when the store record of fingerprint `f` is no longer as the sync last wrote or checked it
    (may use %(object_type)s)."""


@runtime_checkable
class Destination(Protocol):
    """One destination type. A new destination is one module implementing this, and one registry line."""

    kind: str
    """The sync file's `destination.type`."""
    skips_unchanged: bool
    """Rows whose raw text matches their key's fingerprint need no checks and no typed values (a row is all
    there is to its key)."""

    def fields(self, sync: SyncConfig, schema: StoreSchemaConfig) -> DestinationFields:
        """The field catalogue: key, required columns and typed fields."""
        ...

    def rejection_key_sql(self, row: StagedRow) -> str:
        """SQL for a staged row's key as users read it in rejections."""
        ...

    def typed_columns(self, row: StagedRow) -> TypedColumns:
        """The destination's own typed columns and key of the rows table."""
        ...

    def fingerprint_keys(self, row: StagedRow) -> FingerprintKeys | None:
        """How rows are planned against fingerprints; None when they are not (each row is written once)."""
        ...

    def write(self, conn: sa.Connection, ctx: WriteContext) -> WriteCounts:
        """Plan, merge and count the accepted rows in the caller's transaction (a dry run's too)."""
        ...

    def preview(self, conn: sa.Connection, ctx: WriteContext, limit: int) -> list[dict[str, Any]]:
        """Up to `limit` rows as a dry run shows them: key, action and the fields that change."""
        ...
