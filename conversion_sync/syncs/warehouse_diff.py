"""In-warehouse diffing: a full-read rerun reads (key, fingerprint) from the warehouse and fetches only new and changed rows.

A contacts sync whose query reads everything (no `{{last_sync_time}}`) normally moves every row across the network
on every run. With diffing on, its run reads each row's key and a fingerprint the warehouse computes in its own
SQL (warehouses/fingerprint.py), compares them in the store with the fingerprints of the rows the store last
received, and fetches full rows only for keys that are new, whose fingerprint changed, whose store record was
changed by another writer since (its version moved), whose earlier row was rejected, skipped or declined, or that
share their store key with another row. Rows are fetched by key with literal lists (`WHERE key IN (...)`): nothing
is written to the warehouse. Keys the store holds that the warehouse no longer lists are removed as in any full
run, under the same removal guard.

Whenever the comparison could be wrong the run reads everything instead (and records fingerprints for the next
run), saying why in its counts: the first run, a reset, changed field types, changed query columns or types, or
more than half of the keys to fetch.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa

from conversion_sync.config.syncs import SyncConfig
from conversion_sync.store.contact_store import ContactStore
from conversion_sync.store.sql_text import column_ref, quote_ident
from conversion_sync.store.staging import (
    ROW_NUMBER,
    SCRATCH_TABLE,
    STAGING_SCHEMA,
    IngestConnection,
    qualified,
    staging_prefix,
    store_lowers_ascii_plainly,
)
from conversion_sync.syncs.template import is_incremental
from conversion_sync.syncs.validation import WholeRunError, rows_table
from conversion_sync.warehouses.base import DEFAULT_BATCH_ROWS, Warehouse
from conversion_sync.warehouses.fingerprint import (
    FINGERPRINT_COLUMN,
    KINDS,
    RowFingerprint,
    canonical_class,
    probe_query,
)

AUTO_KINDS = ("postgres", "snowflake")
"""Warehouses across a network, where `diff_in_warehouse: auto` diffs (a local DuckDB file reads faster whole).
BigQuery needs `always`: its fingerprint SQL is checked only through sqlglot, and the BigQuery stand-in (DuckDB)
lacks TO_JSON_STRING."""
FETCH_KEYS_PER_QUERY = 5_000
FETCH_TEXT_PER_QUERY = 200_000
"""A fetch query lists at most this many keys, or this many characters of keys (statement size limits)."""
MAX_FETCH_SHARE = 0.5
"""When more than this share of the keys is to be fetched, one full read costs less than the fetch queries."""
IN_WAREHOUSE = "in warehouse"
KEYS_SUFFIX = "_keys"
_ASCII_SPACE = " \t\n\x0b\x0c\r"


def keys_table(staging_table: str) -> str:
    """The run's table of warehouse keys and fingerprints (beside its staging table, in the staging schema)."""
    return staging_table + KEYS_SUFFIX


def _keys_schema() -> pa.Schema:
    return pa.schema(
        [
            ("k", pa.string()),
            ("h", pa.string()),
            ("row_key", pa.string()),
            ("listed", pa.bool_()),
            ("fetched", pa.bool_()),
        ]
    )


def create_keys_sql(table: str) -> str:
    return (
        f"CREATE UNLOGGED TABLE {qualified(keys_table(table))} "
        "(k text, h text, row_key text, listed boolean NOT NULL, fetched boolean NOT NULL) " + SCRATCH_TABLE
    )


def drop_keys_sql(table: str) -> str:
    return f"DROP TABLE IF EXISTS {qualified(keys_table(table))}"


HAS_STORED_FINGERPRINTS = "SELECT EXISTS (SELECT 1 FROM sync_fingerprints WHERE sync_name = %(sync)s)"
STORED_SPEC = "SELECT spec FROM sync_warehouse_diff WHERE sync_name = %(sync)s"
FORGET_SPEC = "DELETE FROM sync_warehouse_diff WHERE sync_name = %(sync)s"
SAVE_SPEC = """INSERT INTO sync_warehouse_diff (sync_name, spec) VALUES (%(sync)s, %(spec)s)
    ON CONFLICT (sync_name) DO UPDATE SET spec = excluded.spec, recorded_at = now()"""
FORGET_ALL = "DELETE FROM sync_warehouse_fingerprints WHERE sync_name = %(sync)s"


def listed_keys_sql(keys: str) -> str:
    """Every key the warehouse listed, as the store matches it (ASCII keys were lowered on the way in)."""
    return f"SELECT k, h, coalesce(row_key, conversion_email_key(k)) AS row_key FROM {keys} WHERE listed"


def all_keys_sql(table: str) -> str:
    """The store keys of every row the warehouse listed: what a full run's removals compare against."""
    return f"SELECT row_key FROM ({listed_keys_sql(qualified(keys_table(table)))}) l"


MOVED_CONTACT_JOINED = "c.xmin::text::bigint IS DISTINCT FROM f.record_version"
"""The contacts destination's MOVED_CONTACT over a joined contact `c` (a hash join, where the destination's
NOT EXISTS probes the index once per key): the fingerprint's contact changed, was deleted or was never linked."""
PLAN_SETTINGS = "SELECT set_config('work_mem', '128MB', true), set_config('enable_nestloop', 'off', true)"
"""For the fetch plan's transaction: a million keys joined three times in memory, by hash."""


def fetch_plan_sql(keys: str) -> str:
    """_wdiff_fetch: the listed keys whose rows must be read. A key is skipped only when its warehouse
    fingerprint is the one the store last received for it, the sync still holds a fingerprint for its store key,
    that store record has not moved since, and no other listed row has the same store key."""
    return f"""CREATE TEMP TABLE _wdiff_fetch ON COMMIT DROP AS
        WITH listed AS MATERIALIZED ({listed_keys_sql(keys)}),
        shared AS (SELECT row_key FROM listed WHERE row_key IS NOT NULL GROUP BY row_key HAVING count(*) > 1)
        SELECT DISTINCT l.k FROM listed l
        LEFT JOIN sync_warehouse_fingerprints w ON w.sync_name = %(sync)s AND w.source_key = l.k
        LEFT JOIN sync_fingerprints f ON f.sync_name = %(sync)s AND f.row_key = l.row_key
        LEFT JOIN contacts c ON c.email_normalized = f.row_key
        WHERE l.k IS NOT NULL AND (
            w.fingerprint IS DISTINCT FROM l.h OR w.row_key IS DISTINCT FROM l.row_key OR f.row_key IS NULL
            OR {MOVED_CONTACT_JOINED} OR l.row_key IN (SELECT row_key FROM shared))"""


COUNT_NULL_KEYS = "SELECT count(*) FILTER (WHERE k IS NULL), count(*) FROM {keys} WHERE listed"
FETCH_KEYS = 'SELECT k FROM _wdiff_fetch ORDER BY k COLLATE "C"'


def forget_fetched_sql(keys: str) -> str:
    return f"""DELETE FROM sync_warehouse_fingerprints w USING (SELECT DISTINCT k FROM {keys} WHERE fetched) x
        WHERE w.sync_name = %(sync)s AND w.source_key = x.k"""


def forget_unlisted_sql(keys: str) -> str:
    return f"""DELETE FROM sync_warehouse_fingerprints w WHERE w.sync_name = %(sync)s
        AND NOT EXISTS (SELECT 1 FROM {keys} x WHERE x.listed AND x.k = w.source_key)"""


def remember_sql(keys: str, stage: str, rows: str, email: str) -> str:
    """The warehouse fingerprints of the rows this run fetched that the store now holds exactly: the row was
    accepted, it is its key's only row, and the sync's fingerprint for its store key is that row's."""
    staged_email = column_ref("s", email)
    return f"""INSERT INTO sync_warehouse_fingerprints (sync_name, source_key, row_key, fingerprint)
        SELECT %(sync)s, x.k, r.row_key, x.h
        FROM (SELECT k, min(h) AS h FROM {keys} WHERE fetched AND k IS NOT NULL GROUP BY k HAVING count(*) = 1) x
        JOIN {stage} s ON {staged_email} = x.k
        JOIN {rows} r ON r.row_number = {column_ref("s", ROW_NUMBER)} AND r.problem IS NULL
        JOIN sync_fingerprints f ON f.sync_name = %(sync)s AND f.row_key = r.row_key AND f.fingerprint = r.fingerprint"""


@dataclass
class DiffState:
    """What the query step decided and read, kept in the run's counts for the validate and write steps."""

    note: str
    """`in warehouse`, `full read (why)` or `off (why)`."""
    counts: dict[str, Any] = field(default_factory=dict)


def note_of(counts: dict[str, Any]) -> str | None:
    note = counts.get("diff")
    return note if isinstance(note, str) else None


def is_diffed(counts: dict[str, Any]) -> bool:
    """Whether the run fetched only changed rows (its staged rows are not all the warehouse's)."""
    return note_of(counts) == IN_WAREHOUSE


def records_fingerprints(counts: dict[str, Any]) -> bool:
    return isinstance(counts.get("diff_spec"), str)


class WarehouseDiff:
    """The query step's side of diffing for one run: decides, reads keys, fetches rows (see the module doc)."""

    def __init__(
        self, sync: SyncConfig, kind: str, store: ContactStore, table: str, sql: str, *, retyped: bool = False
    ) -> None:
        self.sync = sync
        self.kind = kind
        self.store = store
        self.table = table
        self.sql = sql
        """The run's own query, rendered: the one read diffing replaces (another query, a retry's, runs as it is)."""
        self.retyped = retyped
        self.state = DiffState(note=self._off_reason() or "")
        self._lowers = False

    def wrap(self, warehouse: Warehouse) -> Warehouse:
        """The warehouse, with the run's own query read through `batches`."""
        return _DiffingWarehouse(warehouse, self)

    def _off_reason(self) -> str | None:
        setting = self.sync.diff_in_warehouse
        if setting == "never":
            return "off (diff_in_warehouse: never)"
        if self.kind not in KINDS:
            return f"off ({self.kind} has no fingerprint SQL)"
        if setting == "auto" and self.kind not in AUTO_KINDS:
            return f"off (auto: a {self.kind} warehouse is read whole)"
        if self.sync.destination.type != "contacts":
            return f"off (destination {self.sync.destination.type})"
        if is_incremental(self.sync.query, self.kind):
            return "off (the query reads only changes)"
        return None

    @property
    def enabled(self) -> bool:
        return not self.state.note.startswith("off")

    def batches(
        self, warehouse: Warehouse, sql: str, batch_rows: int = DEFAULT_BATCH_ROWS
    ) -> Iterator[pa.RecordBatch]:
        """The run's rows as batches to stage: all of them, or (diffing) only those of new and changed keys."""
        if not self.enabled:
            yield from warehouse.stream(sql, batch_rows)
            return
        probe = next(iter(warehouse.stream(probe_query(self.kind, sql), batch_rows)))
        key = next((n for n in probe.schema.names if n.lower() == "email"), None)
        if key is None or canonical_class(probe.schema.field(key)) != "text":
            self.state.note = "off (no text email column)"
            yield from warehouse.stream(sql, batch_rows)
            return
        fp = RowFingerprint(self.kind, probe.schema, key)
        reason = self._full_read_reason(fp.spec())
        with contextlib.closing(IngestConnection(self.store.resolved_url())) as adbc, self._keys_table():
            if reason is None:
                fetch = yield from self._diff(warehouse, sql, fp, adbc, probe, batch_rows)
                if fetch is None:
                    return
                reason = fetch
            self.state.note = f"full read ({reason})"
            yield from self._full_read(warehouse, sql, fp, adbc, batch_rows)

    @contextlib.contextmanager
    def _keys_table(self) -> Iterator[None]:
        with self.store.begin() as conn:
            self._drop_leftovers(conn)
            conn.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(STAGING_SCHEMA)}")
            conn.exec_driver_sql(drop_keys_sql(self.table))
            conn.exec_driver_sql(create_keys_sql(self.table))
            self._lowers = store_lowers_ascii_plainly(conn)
        yield

    def _drop_leftovers(self, conn: sa.Connection) -> None:
        """Keys tables of this sync's runs that are no longer running (a crashed run leaves its table)."""
        running = set(
            conn.exec_driver_sql(
                "SELECT staging_table FROM sync_runs WHERE sync_name = %s AND status = 'running'",
                (self.sync.name,),
            ).scalars()
        )
        names = conn.exec_driver_sql(
            "SELECT tablename FROM pg_tables WHERE schemaname = %(schema)s AND tablename LIKE %(prefix)s",
            {
                "schema": STAGING_SCHEMA,
                "prefix": staging_prefix(self.sync.name).replace("_", r"\_")
                + "%"
                + KEYS_SUFFIX.replace("_", r"\_"),
            },
        ).scalars()
        for name in list(names):
            if name.removesuffix(KEYS_SUFFIX) not in running and name != keys_table(self.table):
                conn.exec_driver_sql(f"DROP TABLE IF EXISTS {qualified(name)}")

    def _full_read_reason(self, spec: str) -> str | None:
        self.state.counts["diff_spec"] = spec
        if self.retyped:
            return "field types changed"
        with self.store.begin() as conn:
            params = {"sync": self.sync.name}
            if not conn.exec_driver_sql(HAS_STORED_FINGERPRINTS, params).scalar_one():
                return "first run or reset"
            stored = conn.exec_driver_sql(STORED_SPEC, params).scalar_one_or_none()
        if stored is None:
            return "no warehouse fingerprints yet"
        if stored != spec:
            return "query columns or types changed"
        return None

    def _ingest(
        self, adbc: IngestConnection, keys: pa.Array, hashes: pa.Array, *, listed: bool, fetched: bool
    ) -> None:
        n = len(keys)
        row_key = pa.nulls(n, pa.string())
        if self._lowers and n:
            lowered = pc.ascii_lower(pc.ascii_trim(keys, characters=_ASCII_SPACE))
            ascii_ = pc.fill_null(pc.string_is_ascii(keys), False)
            row_key = pc.if_else(
                pc.and_(ascii_, pc.greater(pc.utf8_length(lowered), 0)), lowered, pa.scalar(None, pa.string())
            )
        table = pa.Table.from_arrays(
            [
                keys.cast(pa.string()),
                hashes.cast(pa.string()),
                row_key,
                pa.array([listed] * n, pa.bool_()),
                pa.array([fetched] * n, pa.bool_()),
            ],
            schema=_keys_schema(),
        )
        adbc.append(keys_table(self.table), STAGING_SCHEMA, table)

    def _split(self, batch: pa.RecordBatch, key: str) -> tuple[pa.RecordBatch, pa.Array, pa.Array]:
        """A fingerprinted batch → (the query's columns, the key column, the fingerprints)."""
        last = batch.num_columns - 1
        if batch.schema.names[last] != FINGERPRINT_COLUMN:
            raise WholeRunError(
                f"sync '{self.sync.name}': the fingerprinted read lost its fingerprint column"
            )
        rows = pa.RecordBatch.from_arrays(batch.columns[:last], schema=batch.schema.remove(last))
        return rows, batch.column(key), batch.column(last)

    def _lap(self, name: str, started: float) -> None:
        """Seconds since `started` less the laps before, kept in the run's counts."""
        before = sum(v for k, v in self.state.counts.items() if k.startswith("diff_") and k.endswith("_s"))
        self.state.counts[name] = round(time.monotonic() - started - before, 3)

    def _check_max_rows(self, rows: int) -> None:
        if self.sync.max_rows is not None and rows > self.sync.max_rows:
            raise WholeRunError(
                f"sync '{self.sync.name}': the query returned more than max_rows={self.sync.max_rows} "
                "rows; nothing was written"
            )

    def _full_read(
        self, warehouse: Warehouse, sql: str, fp: RowFingerprint, adbc: IngestConnection, batch_rows: int
    ) -> Iterator[pa.RecordBatch]:
        """Every row, each with its fingerprint recorded for the next run."""
        rows = 0
        for batch in warehouse.stream(fp.with_fingerprint(sql), batch_rows):
            stripped, keys, hashes = self._split(batch, fp.key)
            if batch.num_rows:
                self._ingest(adbc, keys, hashes, listed=True, fetched=True)
            rows += batch.num_rows
            yield stripped
        self.state.counts.update(warehouse_keys=rows, fetched_rows=rows)

    def _diff(
        self,
        warehouse: Warehouse,
        sql: str,
        fp: RowFingerprint,
        adbc: IngestConnection,
        probe: pa.RecordBatch,
        batch_rows: int,
    ) -> Generator[pa.RecordBatch, None, str | None]:
        """Read keys and fingerprints, then fetch the rows of the keys that need it. Returns (as a generator's
        value) None when done, or why a full read is needed after all (nothing was yielded then)."""
        started = time.monotonic()
        for batch in warehouse.stream(fp.keys_query(sql), max(batch_rows, 100_000)):
            if batch.num_rows:
                self._ingest(adbc, batch.column(0), batch.column(1), listed=True, fetched=False)
        clock = warehouse.query_started_at
        self._lap("diff_keys_s", started)
        keys = qualified(keys_table(self.table))
        params = {"sync": self.sync.name}
        fetched_rows = 0
        with self.store.begin() as conn:
            conn.exec_driver_sql(f"ANALYZE {keys}")
            conn.exec_driver_sql(PLAN_SETTINGS)
            null_keys, listed = conn.exec_driver_sql(COUNT_NULL_KEYS.format(keys=keys)).one()
            self._check_max_rows(listed)
            to_fetch = conn.exec_driver_sql(fetch_plan_sql(keys), params).rowcount
            self._lap("diff_plan_s", started)
            if to_fetch + null_keys > MAX_FETCH_SHARE * listed:
                conn.exec_driver_sql(f"TRUNCATE {keys}")
                return f"{to_fetch + null_keys} of {listed} keys new or changed"
            self.state.note = IN_WAREHOUSE
            result = conn.execution_options(stream_results=True).exec_driver_sql(FETCH_KEYS)
            for chunk in _chunks(k for (k,) in result):
                for batch in warehouse.stream(fp.fetch_query(sql, chunk), batch_rows):
                    stripped, k, h = self._split(batch, fp.key)
                    if batch.num_rows:
                        self._ingest(adbc, k, h, listed=False, fetched=True)
                        fetched_rows += batch.num_rows
                        yield stripped
        if null_keys:
            for batch in warehouse.stream(fp.null_key_query(sql), batch_rows):
                stripped, _, _ = self._split(batch, fp.key)
                fetched_rows += batch.num_rows
                yield stripped
        self._lap("diff_fetch_s", started)
        if not fetched_rows:
            yield probe  # no rows, with the query's columns
        warehouse.query_started_at = clock
        self.state.counts.update(
            warehouse_keys=listed, fetched_rows=fetched_rows, diff_skipped=listed - to_fetch - null_keys
        )
        return None


class _DiffingWarehouse(Warehouse):
    """A warehouse whose stream of the run's own query is the diff's (other queries pass through)."""

    kind = "diffing"

    def __init__(self, inner: Warehouse, diff: WarehouseDiff) -> None:
        super().__init__(inner.name)
        self._inner = inner
        self._diff = diff

    def stream(self, sql: str, batch_rows: int = DEFAULT_BATCH_ROWS) -> Iterator[pa.RecordBatch]:
        return self._stream(sql, batch_rows)

    def _stream(self, sql: str, batch_rows: int) -> Iterator[pa.RecordBatch]:
        source = (
            self._diff.batches(self._inner, sql, batch_rows)
            if sql == self._diff.sql
            else self._inner.stream(sql, batch_rows)
        )
        try:
            yield from source
        finally:
            self.query_started_at = self._inner.query_started_at

    def close(self) -> None:
        self._inner.close()


def _chunks(keys: Iterator[str]) -> Iterator[list[str]]:
    chunk: list[str] = []
    size = 0
    for key in keys:
        chunk.append(key)
        size += len(key) + 4
        if len(chunk) >= FETCH_KEYS_PER_QUERY or size >= FETCH_TEXT_PER_QUERY:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


# --- the write step's side ------------------------------------------------------------------------------------


def diffed_keys_select(counts: dict[str, Any], table: str) -> str | None:
    """For a diffed run, the store keys of every row the warehouse listed (its staged rows are only the fetched);
    None for any other run."""
    return all_keys_sql(table) if is_diffed(counts) else None


def unchanged_without_reading(counts: dict[str, Any]) -> int:
    """Keys a diffed run did not read because their fingerprints matched: unchanged."""
    skipped = counts.get("diff_skipped", 0)
    return skipped if is_diffed(counts) and isinstance(skipped, int) else 0


def remember_fingerprints(
    conn: sa.Connection, sync_name: str, counts: dict[str, Any], table: str, email_column: str | None
) -> None:
    """In the write's transaction: keep the warehouse fingerprints of what the store now holds, for the next run.

    A run that read everything with fingerprints replaces them all; a diffed run replaces those of the keys it
    fetched (and drops those of keys the warehouse no longer lists). Any other run of the sync (diffing off,
    an incremental query) makes them unusable: the next diffing run reads everything."""
    params = {"sync": sync_name}
    spec = counts.get("diff_spec")
    note = note_of(counts) or ""
    if (
        not isinstance(spec, str)
        or email_column is None
        or not (note == IN_WAREHOUSE or note.startswith("full"))
    ):
        conn.exec_driver_sql(FORGET_SPEC, params)
        return
    keys = qualified(keys_table(table))
    if is_diffed(counts):
        conn.exec_driver_sql(forget_fetched_sql(keys), params)
        stored = conn.exec_driver_sql(
            "SELECT count(*) FROM sync_warehouse_fingerprints WHERE sync_name = %(sync)s", params
        ).scalar_one()
        if stored > counts.get("diff_skipped", 0):
            conn.exec_driver_sql(forget_unlisted_sql(keys), params)
    else:
        conn.exec_driver_sql(FORGET_ALL, params)
    # hash joins whatever the statistics of the run's tables say (a nested loop over a million keys never ends)
    nestloop = conn.exec_driver_sql("SELECT current_setting('enable_nestloop')").scalar_one()
    conn.exec_driver_sql("SET LOCAL enable_nestloop = off")
    try:
        conn.exec_driver_sql(
            remember_sql(keys, qualified(table), qualified(rows_table(table)), email_column), params
        )
    finally:
        conn.exec_driver_sql("SELECT set_config('enable_nestloop', %s, true)", (nestloop,))
    conn.exec_driver_sql(SAVE_SPEC, {**params, "spec": spec})


def drop_keys_table(conn: sa.Connection, table: str) -> None:
    conn.exec_driver_sql(drop_keys_sql(table))
