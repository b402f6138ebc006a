"""DuckDB warehouse: a database file opened read-only, streamed through a DuckDB Arrow reader."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import duckdb
import pyarrow as pa

from conversion_sync.config.warehouses import DuckDBWarehouseConfig
from conversion_sync.warehouses.base import (
    DEFAULT_BATCH_ROWS,
    JSON_TEXT,
    NUMERIC_TEXT,
    Warehouse,
    WarehouseError,
    bounded_batches,
    check_batch_rows,
    mark_source_type,
    plain_arrow_types,
    utc_moment,
)

_IN_MEMORY = ("", ":memory:")


class DuckDBWarehouse(Warehouse):
    """A DuckDB database file (path relative to the current directory, or absolute).

    Read-only: the file is opened with `read_only=True`, so DELETE, UPDATE, INSERT and DDL fail
    and change nothing. An in-memory database (`:memory:`) cannot be opened read-only and holds
    no data to sync unless the query reads files itself.

    The session's TimeZone is UTC whatever the process's `TZ` (DuckDB's default is the local zone).
    """

    kind = "duckdb"

    def __init__(self, name: str, config: DuckDBWarehouseConfig) -> None:
        super().__init__(name)
        self.path = config.path
        self._con: duckdb.DuckDBPyConnection | None = None

    def _connect(self) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            in_memory = self.path in _IN_MEMORY or self.path.startswith(":memory:")
            try:
                con = duckdb.connect(self.path, read_only=not in_memory)
            except Exception as exc:
                raise self._connection_error(exc) from None
            try:
                con.execute("SET TimeZone = 'UTC'")
            except Exception as exc:
                con.close()
                raise self._connection_error(exc) from None
            self._con = con
        return self._con

    def stream(self, sql: str, batch_rows: int = DEFAULT_BATCH_ROWS) -> Iterator[pa.RecordBatch]:
        return self._batches(sql, check_batch_rows(batch_rows))

    def _batches(self, sql: str, batch_rows: int) -> Iterator[pa.RecordBatch]:
        con = self._connect()
        try:
            ((clock,),) = con.execute("SELECT get_current_timestamp()").fetchall()
            self.query_started_at = utc_moment(clock)
            relation = con.sql(sql)
            if relation is None:
                raise self._query_error("the statement returns no result set; a sync query must be a SELECT")
            relation, marks = _faithful(relation)
            reader = _arrow_reader(relation, batch_rows)
            with reader, contextlib.closing(_ScannedBlocks(con)) as scanned:
                schema = _marked(reader.schema, marks)
                for batch in bounded_batches(reader, batch_rows, reader.schema):
                    if marks:
                        batch = pa.RecordBatch.from_arrays(batch.columns, schema=schema)
                    yield plain_arrow_types(batch)
                    scanned.release()
        except WarehouseError:
            raise
        except Exception as exc:
            raise self._query_error(exc) from None

    def close(self) -> None:
        if self._con is not None:
            con, self._con = self._con, None
            con.close()


RELEASE_ABOVE_BYTES = 16 * 2**20
"""Table blocks DuckDB may keep cached during a sync's read before they are released."""


class _ScannedBlocks:
    """Keeps a streamed read from caching the whole table.

    DuckDB keeps every block a scan reads in its buffer pool until the pool reaches memory_limit (by default 80%
    of RAM), so streaming a table would grow the process by the table's size (4M contacts: 56 MB more than 1M).
    A sync reads each block once. Once the cached table blocks pass RELEASE_ABOVE_BYTES, asking (on a second
    connection) for a memory limit nothing can meet makes DuckDB evict every unpinned block; the request then
    fails and the limit stays as it was. Should it ever succeed, the limit is put back at once.
    """

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self._side = con.cursor()
        self._limit = self._side.execute("SELECT current_setting('memory_limit')").fetchone()[0]  # type: ignore[index]

    def release(self) -> None:
        cached = self._side.execute(
            "SELECT coalesce(sum(memory_usage_bytes), 0) FROM duckdb_memory() WHERE tag = 'BASE_TABLE'"
        ).fetchone()[0]  # type: ignore[index]
        if cached < RELEASE_ABOVE_BYTES:
            return
        try:
            self._side.execute("SET memory_limit = '1MB'")
        except duckdb.Error:
            return
        self._side.execute(f"SET memory_limit = '{self._limit}'")

    def close(self) -> None:
        self._side.close()


_TEXT_TYPES = ("TIME WITH TIME ZONE", "BIT")
"""DuckDB types whose Arrow form loses something (TIMETZ its offset; BIT comes as DuckDB's internal bytes): read
as their text."""
_NUMERIC_TYPES = ("BIGNUM", "VARINT")
"""Integers of any size (Arrow form: DuckDB's internal bytes): read as their decimal text, marked NUMERIC_TEXT."""


def _faithful(relation: duckdb.DuckDBPyRelation) -> tuple[duckdb.DuckDBPyRelation, dict[int, str]]:
    """The relation with the columns Arrow cannot carry faithfully converted in DuckDB, and the source types to
    mark on the result's fields (column index → JSON_TEXT or NUMERIC_TEXT). Nested values holding such a type
    become JSON. A relation without them is returned as it is."""
    exprs: list[str | None] = []
    marks: dict[int, str] = {}
    for i, type_ in enumerate(relation.types):
        text = str(type_)
        column = f"#{i + 1}"
        if text == "JSON":
            marks[i] = JSON_TEXT
            exprs.append(None)
        elif text in _TEXT_TYPES:
            exprs.append(f"CAST({column} AS VARCHAR)")
        elif text in _NUMERIC_TYPES:
            marks[i] = NUMERIC_TEXT
            exprs.append(f"CAST({column} AS VARCHAR)")
        elif text != type_.id.upper() and any(t in text for t in (*_TEXT_TYPES, *_NUMERIC_TYPES)):
            # a STRUCT/LIST/MAP/UNION holding one: its JSON (to_json renders them as text or numbers)
            marks[i] = JSON_TEXT
            exprs.append(f"CAST(to_json({column}) AS VARCHAR)")
        else:
            exprs.append(None)
    names = relation.columns
    if all(expr is None for expr in exprs) or len({n.lower() for n in names}) < len(names):
        # (a projection would rename a repeated column name, which the sync must report instead)
        return relation, marks
    projection = ", ".join(
        f"{expr or f'#{i + 1}'} AS {_quote_ident(names[i])}" for i, expr in enumerate(exprs)
    )
    return relation.project(projection), marks


def _marked(schema: pa.Schema, marks: dict[int, str]) -> pa.Schema:
    for i, kind in marks.items():
        schema = schema.set(i, mark_source_type(schema.field(i), kind))
    return schema


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _arrow_reader(relation: duckdb.DuckDBPyRelation, batch_rows: int) -> pa.RecordBatchReader:
    """A streaming Arrow reader over the relation (DuckDB 2 names it to_arrow_reader, 1.x fetch_arrow_reader)."""
    to_reader = getattr(relation, "to_arrow_reader", None) or relation.fetch_arrow_reader
    return to_reader(batch_rows)
