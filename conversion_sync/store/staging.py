"""Staging: Arrow record batches → an UNLOGGED text table in the store via ADBC (COPY BINARY), per run."""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import duckdb
import numpy as np
import pyarrow as pa
import sqlalchemy as sa

from conversion_sync.store.connection import libpq_url

STAGING_SCHEMA = "conversion_staging"
ROW_NUMBER = "_row_number"
BAD_TEXT = "_bad_text_column"
"""Staged per row: the first source column whose text held a NUL byte (Postgres text cannot), else NULL."""
FINGERPRINT = "_fingerprint"
"""Staged per row: the JSON array of the row's fingerprinted columns as text (nulls stay null), hashed: the
first 15 hex digits of its md5 as a bigint (60 bits: a changed row keeps its fingerprint once in 10^18)."""


_RUN_PART = 12
_ROWS_SUFFIX = "_rows"
_SYNC_PART = 63 - len("stage__") - _RUN_PART - len(_ROWS_SUFFIX)
"""Room for the sync name, so that `stage_<sync>_<run>_rows` fits Postgres' 63-character identifiers."""


def staging_prefix(sync_name: str) -> str:
    """`stage_<sync>_`: every staging table of a sync's runs, and no other sync's, starts with it.

    A sync name too long to fit keeps its start and gets a hash of the whole name, so two long names
    sharing a start still differ, and the run part of the table name is never cut off.
    """
    if len(sync_name) > _SYNC_PART:
        digest = hashlib.md5(sync_name.encode()).hexdigest()[:8]
        sync_name = f"{sync_name[: _SYNC_PART - 9]}_{digest}"
    return f"stage_{sync_name}_"


def staging_table_name(sync_name: str, run_id: str) -> str:
    """A deterministic, valid identifier for one run of one sync."""
    run = re.sub(r"[^a-z0-9]", "", run_id.lower())[:_RUN_PART]
    return staging_prefix(sync_name) + run


def qualified(table: str) -> str:
    return f"{STAGING_SCHEMA}.{table}"


@dataclass
class StagedColumns:
    """The source's column names in order; staged as c0, c1, … (text), so any name is safe."""

    source_names: list[str]
    staged_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.staged_names = [f"c{i}" for i in range(len(self.source_names))]

    def by_source(self) -> dict[str, str]:
        return dict(zip(self.source_names, self.staged_names, strict=True))


class BatchTextifier:
    """Turns any Arrow batch into all-text columns, vectorised in DuckDB.

    Nested values (structs, lists, maps) become JSON text; timestamps are rendered in UTC; text with a
    NUL byte is flagged per row (the row is rejected later) and the NUL removed so the batch can be staged.
    Each row's fingerprint (of the columns at `fingerprint_columns`, as staged) is computed here too,
    vectorised, instead of row by row in the store.
    """

    def __init__(self, fingerprint_columns: Iterable[int] = ()) -> None:
        self._db = duckdb.connect()
        self._db.execute("SET TimeZone = 'UTC'")
        self._select: str | None = None
        self._fingerprint_columns = list(fingerprint_columns)

    def _build_select(self, batch: pa.RecordBatch) -> str:
        relation = self._db.from_arrow(batch)
        texts, flags = [], []
        for i, (name, dtype) in enumerate(zip(relation.columns, relation.dtypes, strict=True)):
            quoted = '"' + name.replace('"', '""') + '"'
            type_id = str(dtype).upper()
            if type_id.startswith(("STRUCT", "MAP", "UNION")) or type_id.endswith("]"):
                expr = f"CAST(to_json({quoted}) AS VARCHAR)"
            elif type_id in ("VARCHAR", "JSON"):
                expr = f"CAST({quoted} AS VARCHAR)"
                flags.append(f"WHEN contains({expr}, chr(0)) THEN {_sql_literal(name)}")
                expr = f"replace({expr}, chr(0), '')"
            elif type_id == "BLOB":
                expr = f"hex({quoted})"
            else:
                expr = f"CAST({quoted} AS VARCHAR)"
            texts.append(f"{expr} AS c{i}")
        flag = f"CASE {' '.join(flags)} END" if flags else "CAST(NULL AS VARCHAR)"
        texted = f"SELECT {', '.join(texts)}, {flag} AS {BAD_TEXT} FROM batch"
        listed = ", ".join(f"c{i}" for i in self._fingerprint_columns)
        fingerprint = (
            f"CAST('0x' || left(md5(CAST(to_json(CAST([{listed}] AS VARCHAR[])) AS VARCHAR)), 15) AS BIGINT)"
        )
        return f"SELECT *, {fingerprint} AS {FINGERPRINT} FROM ({texted})"

    def to_text(self, batch: pa.RecordBatch) -> pa.Table:
        if self._select is None:
            self._select = self._build_select(batch)
        self._db.register("batch", batch)
        try:
            return self._db.sql(self._select).to_arrow_table()
        finally:
            self._db.unregister("batch")

    def close(self) -> None:
        self._db.close()


def _sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def create_staging_table(conn: sa.Connection, table: str, columns: StagedColumns) -> None:
    """An UNLOGGED table of text columns (cheap to write, never replicated)."""
    conn.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {STAGING_SCHEMA}")
    conn.exec_driver_sql(f"DROP TABLE IF EXISTS {qualified(table)}")
    cols = ", ".join(f"{name} text" for name in columns.staged_names)
    separator = ", " if cols else ""
    conn.exec_driver_sql(
        f"CREATE UNLOGGED TABLE {qualified(table)} "
        f"({ROW_NUMBER} bigint, {cols}{separator}{BAD_TEXT} text, {FINGERPRINT} bigint)"
    )


def drop_staging_tables(conn: sa.Connection, sync_name: str, keep: Iterable[str] = ()) -> list[str]:
    """Drop the staging tables of a sync's runs (leftovers of failed runs), except those of runs in `keep`.

    Only this sync's run tables match (`stage_users_<run>[_rows]`), never another sync's whose name
    merely starts the same (`stage_users_v2_<run>`).
    """
    prefix = staging_prefix(sync_name)
    keep_set = set(keep) | {f"{k}{_ROWS_SUFFIX}" for k in keep}
    own = re.compile(re.escape(prefix) + f"[a-z0-9]{{0,{_RUN_PART}}}({re.escape(_ROWS_SUFFIX)})?")
    names = conn.exec_driver_sql(
        "SELECT tablename FROM pg_tables WHERE schemaname = %(schema)s AND tablename LIKE %(prefix)s",
        {"schema": STAGING_SCHEMA, "prefix": prefix.replace("_", r"\_") + "%"},
    ).scalars()
    dropped = [n for n in names if own.fullmatch(n) and n not in keep_set]
    for name in dropped:
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {qualified(name)}")
    return dropped


def drop_run_tables(conn: sa.Connection, table: str) -> None:
    """Drop one run's staging table and its rows table."""
    conn.exec_driver_sql(f"DROP TABLE IF EXISTS {qualified(table)}, {qualified(table + _ROWS_SUFFIX)}")


@contextmanager
def adbc_connection(store_url: str) -> Iterator[object]:
    """An ADBC connection to the store, for COPY BINARY ingest of Arrow data."""
    import adbc_driver_postgresql.dbapi as adbc

    conn = adbc.connect(libpq_url(store_url))
    try:
        yield conn
    finally:
        conn.close()


class StagingWriter:
    """Appends text-converted batches to a staging table, numbering rows in arrival order.

    Each batch's COPY runs on a worker thread while the next batch is read and converted, so the
    warehouse read, the conversion and the store's COPY overlap (one batch in flight at most).
    """

    def __init__(
        self, adbc_conn: object, table: str, columns: StagedColumns, fingerprint_columns: Iterable[int] = ()
    ) -> None:
        self._conn = adbc_conn
        self._table = table
        self._columns = columns
        self._textifier = BatchTextifier(fingerprint_columns)
        self._copier = ThreadPoolExecutor(max_workers=1, thread_name_prefix="staging-copy")
        self._in_flight: Future[None] | None = None
        self.rows = 0
        self.batches = 0

    def append(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows == 0:
            return
        text = self._textifier.to_text(batch)
        numbers = pa.array(np.arange(self.rows + 1, self.rows + 1 + batch.num_rows, dtype=np.int64))
        text = text.add_column(0, ROW_NUMBER, numbers)
        self._wait()
        self._in_flight = self._copier.submit(self._copy, text)
        self.rows += batch.num_rows
        self.batches += 1

    def _copy(self, text: pa.Table) -> None:
        with self._conn.cursor() as cursor:  # type: ignore[attr-defined]
            cursor.adbc_ingest(self._table, text, mode="append", db_schema_name=STAGING_SCHEMA)
        self._conn.commit()  # type: ignore[attr-defined]

    def _wait(self) -> None:
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is not None:
            in_flight.result()

    def finish(self) -> None:
        """Wait for the last COPY; raises its error. Every appended row is in the table afterwards."""
        self._wait()

    def close(self) -> None:
        """Release the worker and the converter. A COPY still in flight is waited for; its error is not
        raised here (after a failed read, that error is the one to report)."""
        try:
            with contextlib.suppress(Exception):
                self._wait()
        finally:
            self._copier.shutdown(wait=True)
            self._textifier.close()
