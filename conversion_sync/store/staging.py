"""Staging: Arrow record batches → an UNLOGGED text table in the store via ADBC (COPY BINARY), per run."""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa

from conversion_sync.store.connection import libpq_url
from conversion_sync.store.sql_text import quote_ident, quote_qualified

STAGING_SCHEMA = "conversion_staging"
ROW_NUMBER = "_row_number"
BAD_TEXT = "_bad_text_column"
"""Staged per row: the first source column whose text held a NUL byte (Postgres text cannot), else NULL."""
FINGERPRINT = "_fingerprint"
"""Staged per row: the JSON array of the row's fingerprinted columns as text (nulls stay null), hashed: the
first 15 hex digits of its md5 as a bigint (60 bits: a changed row keeps its fingerprint once in 10^18)."""
EMAIL_KEY = "_email_key"
"""Staged per row: the e-mail's key, trimmed of spaces and lower-cased, where DuckDB computes it exactly as the
store's `conversion_email_key(email)` would (ASCII text, in a store whose lower() maps ASCII plainly); else
NULL, and validation computes it in the store. lower() in a UTF-8 store is a per-character library call."""
_ASCII = "".join(chr(i) for i in range(1, 128))
_ASCII_SPACE = "(' ' || chr(9) || chr(10) || chr(11) || chr(12) || chr(13))"
"""The ASCII white space the store's e-mail key trims (DuckDB SQL)."""


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
    """The staging schema's table, quoted: `"conversion_staging"."<table>"`."""
    return quote_qualified(STAGING_SCHEMA, table)


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

    Each value's text is exact: integers and decimals digit for digit (decimals with their type's scale), floats
    in their shortest round-trip form ('0.1', '1e+300'; 'nan', 'inf' and '-inf' for what JSON cannot hold),
    booleans 'true'/'false', nested values (structs, lists, maps) as JSON text, bytes as upper-case hex
    ('DEADBEEF'), timestamps in UTC ('2024-01-02 03:04:05.123456', '…+00' when the type has a time zone).
    Validation reads the text back with each column's source type. Text with a NUL byte is flagged per row
    (the row is rejected later) and the NUL removed so the batch can be staged.
    Each row's fingerprint (of the columns at `fingerprint_columns`, as staged) is computed here too,
    vectorised, instead of row by row in the store, and so is the key of the e-mail at `email_column`.
    """

    def __init__(self, fingerprint_columns: Iterable[int] = (), email_column: int | None = None) -> None:
        self._db = duckdb.connect()
        self._db.execute("SET TimeZone = 'UTC'")
        self._selects: tuple[str, str] | None = None
        """(for batches that may hold a NUL byte, for those that cannot): most cannot, and checking each text
        column's bytes at once costs less than looking into each value."""
        self._text_columns: list[int] = []
        self._fingerprint_columns = list(fingerprint_columns)
        self._email_column = email_column

    def _build_selects(self, batch: pa.RecordBatch) -> tuple[str, str]:
        relation = self._db.from_arrow(batch)
        careful, plain, flags = [], [], []
        for i, (name, dtype) in enumerate(zip(relation.columns, relation.dtypes, strict=True)):
            quoted = '"' + name.replace('"', '""') + '"'
            type_id = str(dtype).upper()
            if type_id.startswith(("STRUCT", "MAP", "UNION")) or type_id.endswith("]"):
                expr = f"CAST(to_json({quoted}) AS VARCHAR)"
            elif type_id == "BLOB":
                expr = f"hex({quoted})"
            else:
                expr = f"CAST({quoted} AS VARCHAR)"
            without_nul = expr
            if type_id in ("VARCHAR", "JSON"):
                self._text_columns.append(i)
                flags.append(f"WHEN contains({expr}, chr(0)) THEN {_sql_literal(name)}")
                without_nul = f"replace({expr}, chr(0), '')"
            careful.append(f"{without_nul} AS c{i}")
            plain.append(f"{expr} AS c{i}")
        flag = f"CASE {' '.join(flags)} END" if flags else "CAST(NULL AS VARCHAR)"
        listed = ", ".join(f"c{i}" for i in self._fingerprint_columns)
        fingerprint = (
            f"CAST('0x' || left(md5(CAST(to_json(CAST([{listed}] AS VARCHAR[])) AS VARCHAR)), 15) AS BIGINT)"
        )
        email = f"c{self._email_column}"
        # ASCII only (as many bytes as characters): there DuckDB's lower() and trim agree with the store's
        key = (
            f"CASE WHEN strlen({email}) = length({email}) THEN NULLIF(lower(trim({email}, {_ASCII_SPACE})), '') END"
            if self._email_column is not None
            else "CAST(NULL AS VARCHAR)"
        )

        def select(texts: list[str], bad_text: str, kept: list[str]) -> str:
            texted = f"SELECT {', '.join(texts)}, {bad_text} AS {BAD_TEXT} FROM batch"
            columns = [*kept, f"{fingerprint} AS {FINGERPRINT}", f"{key} AS {EMAIL_KEY}"]
            return f"SELECT {', '.join(columns)} FROM ({texted})"

        # without a NUL byte, text columns are staged as they came (see to_text): DuckDB returns the others
        computed = [f"c{i}" for i in range(len(plain)) if i not in self._text_columns]
        return select(careful, flag, ["*"]), select(plain, "CAST(NULL AS VARCHAR)", computed)

    def _may_hold_nul(self, batch: pa.RecordBatch) -> bool:
        """Whether a text column's data holds a zero byte (or is of a layout not checked here)."""
        for i in self._text_columns:
            array = batch.column(i)
            if not (pa.types.is_string(array.type) or pa.types.is_large_string(array.type)):
                return True
            data = array.buffers()[2]
            if data is not None and data.size and not np.frombuffer(data, np.uint8).all():
                return True
        return False

    def to_text(self, batch: pa.RecordBatch) -> pa.Table:
        batch = _readable_by_duckdb(batch)
        if self._selects is None:
            self._selects = self._build_selects(batch)
        careful, plain = self._selects
        may_hold_nul = self._may_hold_nul(batch)
        self._db.register("batch", batch)
        try:
            computed = self._db.sql(careful if may_hold_nul else plain).to_arrow_table()
        finally:
            self._db.unregister("batch")
        if may_hold_nul:
            return computed
        # text columns pass through without a copy (their text is what DuckDB would return)
        columns = [
            pa.chunked_array([batch.column(i)]) if i in self._text_columns else computed.column(f"c{i}")
            for i in range(batch.num_columns)
        ]
        columns += [
            pa.nulls(batch.num_rows, pa.string()),
            computed.column(FINGERPRINT),
            computed.column(EMAIL_KEY),
        ]
        names = [f"c{i}" for i in range(batch.num_columns)] + [BAD_TEXT, FINGERPRINT, EMAIL_KEY]
        return pa.Table.from_arrays(columns, names=names)

    def close(self) -> None:
        self._db.close()


def _readable_by_duckdb(batch: pa.RecordBatch) -> pa.RecordBatch:
    """The batch with the columns DuckDB cannot read turned into text here: decimal256 (BigQuery BIGNUMERIC),
    rendered exactly as its digits with the type's scale, like every other decimal."""
    wide = [i for i, t in enumerate(batch.schema.types) if pa.types.is_decimal256(t)]
    if not wide:
        return batch
    columns = list(batch.columns)
    for i in wide:
        columns[i] = pc.cast(columns[i], pa.string())
    return pa.RecordBatch.from_arrays(columns, names=batch.schema.names)


def _sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


SCRATCH_TABLE = "WITH (autovacuum_enabled = false, toast.autovacuum_enabled = false)"
"""Storage options of a run's scratch tables (staged rows, typed rows, keys): the run analyses what it plans on
itself, and an autovacuum of a million freshly staged rows (which reads and rewrites every page, at the cost
limit's pace) would only compete with the run's own writes."""


def create_staging_table(conn: sa.Connection, table: str, columns: StagedColumns) -> None:
    """An UNLOGGED table of text columns (cheap to write, never replicated, never autovacuumed)."""
    conn.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(STAGING_SCHEMA)}")
    conn.exec_driver_sql(f"DROP TABLE IF EXISTS {qualified(table)}")
    cols = ", ".join(f"{quote_ident(name)} text" for name in columns.staged_names)
    separator = ", " if cols else ""
    conn.exec_driver_sql(
        f"CREATE UNLOGGED TABLE {qualified(table)} ({quote_ident(ROW_NUMBER)} bigint, {cols}{separator}"
        f"{quote_ident(BAD_TEXT)} text, {quote_ident(FINGERPRINT)} bigint, {quote_ident(EMAIL_KEY)} text) "
        + SCRATCH_TABLE
    )


def store_lowers_ascii_plainly(conn: sa.Connection) -> bool:
    """Whether the store's lower() maps ASCII as DuckDB's does (A–Z to a–z, nothing else): not in a Turkish
    locale, where it maps I to ı. Only then may staging compute e-mail keys (EMAIL_KEY)."""
    return bool(
        conn.exec_driver_sql(
            "SELECT lower(%(ascii)s::text) = %(lowered)s::text", {"ascii": _ASCII, "lowered": _ASCII.lower()}
        ).scalar_one()
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
def adbc_connection(store_url: str) -> Iterator[Any]:
    """An ADBC connection to the store, for COPY BINARY ingest of Arrow data."""
    import adbc_driver_postgresql.dbapi as adbc

    conn = adbc.connect(libpq_url(store_url))
    try:
        yield conn
    finally:
        conn.close()


class IngestConnection:
    """An ADBC connection to the store that only appends Arrow data to tables (COPY BINARY), each append a
    transaction of its own. It uses adbc_driver_manager's own API, not its DB-API module: that one imports
    pyarrow.dataset and with it pandas, which cost every run's process half a second or more of start-up."""

    def __init__(self, store_url: str) -> None:
        import adbc_driver_manager
        import adbc_driver_postgresql

        self._adbc = adbc_driver_manager
        self._database = adbc_driver_postgresql.connect(libpq_url(store_url))
        try:
            self._connection = adbc_driver_manager.AdbcConnection(self._database)
        except BaseException:
            self._database.close()
            raise

    def append(self, table: str, schema: str, data: pa.Table) -> None:
        """Append `data` to the existing `schema`.`table` and commit."""
        adbc = self._adbc
        statement = adbc.AdbcStatement(self._connection)
        try:
            statement.set_options(
                **{
                    adbc.INGEST_OPTION_TARGET_TABLE: table,
                    adbc.INGEST_OPTION_MODE: adbc.INGEST_OPTION_MODE_APPEND,
                    adbc.StatementOptions.INGEST_TARGET_DB_SCHEMA.value: schema,
                }
            )
            statement.bind_stream(data)
            statement.execute_update()
        finally:
            statement.close()

    def close(self) -> None:
        try:
            self._connection.close()
        finally:
            self._database.close()


COPY_CONNECTIONS = 2
"""Staging COPYs in flight at once, each on its own connection: while the client encodes one batch, the
store parses another (one COPY leaves each side idle half the time)."""


@contextmanager
def adbc_connections(store_url: str, count: int = COPY_CONNECTIONS) -> Iterator[list[IngestConnection]]:
    """`count` ingest connections to the store (see StagingWriter)."""
    with contextlib.ExitStack() as stack:
        connections = []
        for _ in range(count):
            connection = IngestConnection(store_url)
            stack.callback(connection.close)
            connections.append(connection)
        yield connections


class StagingWriter:
    """Appends text-converted batches to a staging table, numbering rows in arrival order.

    Each batch's COPY runs on a worker thread of its connection while the next batches are read and
    converted, so the warehouse read, the conversion and the store's COPYs overlap (one batch in flight per
    connection at most). Rows carry their numbers, so batches may land in any order.
    """

    def __init__(
        self,
        adbc_conns: Sequence[IngestConnection],
        table: str,
        columns: StagedColumns,
        fingerprint_columns: Iterable[int] = (),
        email_column: int | None = None,
    ) -> None:
        self._conns = list(adbc_conns)
        self._table = table
        self._columns = columns
        self._textifier = BatchTextifier(fingerprint_columns, email_column)
        self._copier = ThreadPoolExecutor(max_workers=len(self._conns), thread_name_prefix="staging-copy")
        self._in_flight: list[Future[None] | None] = [None] * len(self._conns)
        self.rows = 0
        self.batches = 0

    def append(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows == 0:
            return
        text = self._textifier.to_text(batch)
        numbers = pa.array(np.arange(self.rows + 1, self.rows + 1 + batch.num_rows, dtype=np.int64))
        text = text.add_column(0, ROW_NUMBER, numbers)
        slot = self.batches % len(self._conns)
        self._wait(slot)
        self._in_flight[slot] = self._copier.submit(
            self._conns[slot].append, self._table, STAGING_SCHEMA, text
        )
        self.rows += batch.num_rows
        self.batches += 1

    def _wait(self, slot: int) -> None:
        in_flight, self._in_flight[slot] = self._in_flight[slot], None
        if in_flight is not None:
            in_flight.result()

    def finish(self) -> None:
        """Wait for the last COPYs; raises the first error. Every appended row is in the table afterwards."""
        for slot in range(len(self._conns)):
            self._wait(slot)

    def close(self) -> None:
        """Release the workers and the converter. COPYs still in flight are waited for; their errors are not
        raised here (after a failed read, that error is the one to report)."""
        try:
            for slot in range(len(self._conns)):
                with contextlib.suppress(Exception):
                    self._wait(slot)
        finally:
            self._copier.shutdown(wait=True)
            self._textifier.close()
