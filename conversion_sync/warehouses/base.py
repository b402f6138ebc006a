"""The one warehouse interface: stream a query's result as bounded Arrow record batches."""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, ClassVar, Self

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from conversion_sync.config.secrets import MissingEnvironmentVariable, Setting, resolve_setting

DEFAULT_BATCH_ROWS = 50_000
"""Rows per record batch unless the caller asks otherwise."""

_REDACTED = "***"


ClientSource = Callable[[], AbstractContextManager[Any]]
"""Where a warehouse's client comes from when the orchestrator provides it (a Dagster resource's `get_client`),
instead of the warehouse building its own from its settings."""


class WarehouseError(Exception):
    """A warehouse could not be reached or could not answer a query; the message is safe to show."""


class WarehouseConnectionError(WarehouseError):
    """Connecting failed: bad settings, unreachable host, refused credentials, missing environment variable."""


class WarehouseQueryError(WarehouseError):
    """The warehouse rejected the query or failed while its result was being read."""


class Warehouse(abc.ABC):
    """A named warehouse connection that streams query results as Arrow record batches.

    Instances are opened lazily (the first `stream` connects) and keep one connection until
    `close()`. They are not thread-safe: use one per thread, and finish (or `.close()`) one stream
    before starting the next. Errors are `WarehouseConnectionError` or `WarehouseQueryError`, whose
    messages name the warehouse and never contain a resolved secret (driver exceptions are not chained).

    Every session runs in UTC. `query_started_at` is the warehouse's own clock just before the last
    stream's query ran (read in the same session), which a sync stores as its next watermark.
    """

    kind: ClassVar[str]

    def __init__(self, name: str) -> None:
        self.name = name
        self._secrets: list[str] = []
        self.query_started_at: datetime | None = None
        """The warehouse's clock (UTC) right before the last `stream` ran its query; None before one ran."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"

    @abc.abstractmethod
    def stream(self, sql: str, batch_rows: int = DEFAULT_BATCH_ROWS) -> Iterator[pa.RecordBatch]:
        """Run `sql` and yield its result as record batches of at most `batch_rows` rows.

        Nothing runs until the first batch is requested. Memory stays flat whatever the result size.
        At least one batch is yielded: an empty result gives one empty batch that carries the schema.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Close the connection, if one is open. Safe to call more than once."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- helpers for adapters ------------------------------------------------------------------------

    @property
    def _label(self) -> str:
        return f"warehouse '{self.name}' ({self.kind})"

    def _resolve(self, value: Setting | None, *, secret: bool = False) -> str | None:
        """Resolve a literal or `{env: VAR}` setting; a missing variable is a connection error."""
        try:
            resolved = resolve_setting(value, self._label)
        except MissingEnvironmentVariable as exc:
            raise WarehouseConnectionError(str(exc)) from None
        if secret and resolved:
            self._add_secret(resolved)
        return resolved

    def _add_secret(self, *values: str | None) -> None:
        """Remember values that must never appear in an error message."""
        for value in values:
            if value and value not in self._secrets:
                self._secrets.append(value)
        self._secrets.sort(key=len, reverse=True)

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, _REDACTED)
        return text

    def _cause(self, cause: BaseException | str) -> str:
        text = str(cause).strip() or type(cause).__name__
        return self._scrub(text)

    def _connection_error(self, cause: BaseException | str) -> WarehouseConnectionError:
        """Build (not raise) the error; raise it `from None` so the driver's message is not chained."""
        return WarehouseConnectionError(f"{self._label}: connection failed: {self._cause(cause)}")

    def _query_error(self, cause: BaseException | str) -> WarehouseQueryError:
        """Build (not raise) the error; raise it `from None` so the driver's message is not chained."""
        return WarehouseQueryError(f"{self._label}: query failed: {self._cause(cause)}")


def utc_moment(value: datetime | None) -> datetime | None:
    """A clock reading as an aware UTC datetime (a naive one is UTC: sessions run in UTC)."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def check_batch_rows(batch_rows: int) -> int:
    """Reject a batch size that could not bound memory."""
    if isinstance(batch_rows, bool) or not isinstance(batch_rows, int) or batch_rows < 1:
        raise ValueError(f"batch_rows must be a positive integer, got {batch_rows!r}")
    return batch_rows


def bounded_batches(
    chunks: Iterable[pa.RecordBatch | pa.Table], batch_rows: int, schema: pa.Schema | None = None
) -> Iterator[pa.RecordBatch]:
    """Re-slice driver chunks into record batches of at most `batch_rows` rows (zero-copy).

    Empty chunks are skipped; if nothing is left, one empty batch with the result's schema is yielded
    (from `schema`, or from the last empty chunk seen) so callers always learn the columns.
    """
    empty_schema = schema
    seen_rows = False
    for chunk in chunks:
        if chunk.num_rows == 0:
            empty_schema = empty_schema or chunk.schema
            continue
        seen_rows = True
        batches = chunk.to_batches(max_chunksize=batch_rows) if isinstance(chunk, pa.Table) else [chunk]
        for batch in batches:
            for offset in range(0, batch.num_rows, batch_rows):
                yield batch.slice(offset, batch_rows)
    if not seen_rows and empty_schema is not None:
        yield pa.RecordBatch.from_pylist([], schema=empty_schema)


SOURCE_TYPE = b"conversion_sync:source_type"
"""Field metadata naming what a text column holds when its Arrow type cannot say: JSON_TEXT or NUMERIC_TEXT."""
JSON_TEXT = "json"
"""A JSON document as text (Postgres json/jsonb, DuckDB JSON, Snowflake VARIANT/OBJECT/ARRAY, BigQuery JSON)."""
NUMERIC_TEXT = "numeric"
"""An exact decimal number as text, of any size (Postgres numeric and money, DuckDB BIGNUM); may be NaN or inf."""


def mark_source_type(f: pa.Field, kind: str) -> pa.Field:
    """The field with its source type recorded (see SOURCE_TYPE)."""
    return f.with_metadata({**(f.metadata or {}), SOURCE_TYPE: kind.encode()})


def source_type(f: pa.Field) -> str:
    """What a column of a warehouse batch holds: its marked source type (JSON_TEXT, NUMERIC_TEXT), else its
    Arrow type as text (`int64`, `decimal128(10, 2)`, `struct<…>`)."""
    marked = (f.metadata or {}).get(SOURCE_TYPE)
    return marked.decode() if marked else str(f.type)


def plain_arrow_types(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Replace Arrow extension columns (JSON, UUID, decimal text) with plain types.

    JSON becomes its text, marked JSON_TEXT; an opaque decimal-as-text type (a Postgres numeric) becomes its
    text, marked NUMERIC_TEXT; UUID becomes its canonical text form. Field metadata is kept. Any other opaque
    type (bytes only its database can read) is an error naming the column, rather than a value nobody can
    read. Batches without extension columns are returned unchanged.
    """
    if not any(isinstance(f.type, pa.BaseExtensionType) for f in batch.schema):
        return batch
    fields = []
    columns = []
    for f, column in zip(batch.schema, batch.columns, strict=True):
        if isinstance(f.type, pa.BaseExtensionType):
            kind = _extension_kind(f)
            column = _uuid_text(column.storage) if kind == "uuid" else column.storage
            f = pa.field(f.name, column.type, f.nullable, f.metadata)
            if kind in (JSON_TEXT, NUMERIC_TEXT):
                f = mark_source_type(f, kind)
        fields.append(f)
        columns.append(column)
    return pa.RecordBatch.from_arrays(columns, schema=pa.schema(fields, batch.schema.metadata))


class UnreadableType(ValueError):
    """A column's type reached Arrow as bytes only its database can read."""


def _extension_kind(f: pa.Field) -> str:
    type_ = f.type
    if _is_uuid(type_):
        return "uuid"
    name = getattr(type_, "extension_name", "")
    if name == "arrow.json":
        return JSON_TEXT
    if name == "arrow.opaque":
        if type_.type_name == "numeric" and pa.types.is_string(type_.storage_type):
            return NUMERIC_TEXT
        raise UnreadableType(
            f"column {f.name!r} has type {type_.type_name} ({type_.vendor_name}), which arrives only as its "
            "database's binary form; cast it in the query (to text, for example)"
        )
    return "storage"


def _is_uuid(type_: pa.DataType) -> bool:
    return getattr(type_, "extension_name", "") == "arrow.uuid" and type_.storage_type == pa.binary(16)


_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_DASHES_AFTER = (4, 6, 8, 10)


def _uuid_text(storage: pa.FixedSizeBinaryArray) -> pa.StringArray:
    """16-byte UUIDs → 'xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx', vectorised, nulls kept."""
    n = len(storage)
    data = storage.buffers()[1]
    raw = np.frombuffer(data, dtype=np.uint8)[storage.offset * 16 : (storage.offset + n) * 16].reshape(n, 16)
    hexed = np.empty((n, 32), dtype=np.uint8)
    hexed[:, 0::2] = _HEX[raw >> 4]
    hexed[:, 1::2] = _HEX[raw & 0x0F]
    parts = np.split(hexed, [2 * i for i in _DASHES_AFTER], axis=1)
    dash = np.full((n, 1), ord("-"), dtype=np.uint8)
    text = np.concatenate([p for part in parts for p in (part, dash)][:-1], axis=1)
    offsets = pa.array(np.arange(0, 36 * (n + 1), 36, dtype=np.int32))
    result = pa.StringArray.from_buffers(n, offsets.buffers()[1], pa.py_buffer(text.tobytes()))
    if storage.null_count:
        result = pc.if_else(pc.is_valid(storage), result, pa.scalar(None, pa.string()))
    return result
