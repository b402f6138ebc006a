"""Rejected rows get a second chance: their keys are kept until a later run accepts them, and re-read on demand.

A rejected row's key value (the raw text of its key column: `email` for contacts, `id` for custom objects,
`message_id` — or `email` without one — for events) is kept in `sync_rejected_keys` by the run that rejected it.
Any later run that accepts a row with that key value resolves it. A retry re-reads the unresolved keys: the
sync's query rendered with the epoch as watermark, wrapped as `SELECT * FROM (query) q WHERE CAST(q.key AS text)
IN (…)` in batches, so a row whose watermark has passed is read again. The retried rows go through validation and
the store's merge rule like any other; a retry-only run never moves the watermark.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import sqlalchemy as sa
from sqlglot import exp

from conversion_sync.config.syncs import SyncConfig
from conversion_sync.store import sync_state
from conversion_sync.store.staging import ROW_NUMBER, qualified
from conversion_sync.syncs.destinations.base import DestinationFields
from conversion_sync.syncs.template import EPOCH
from conversion_sync.syncs.validation import map_columns, rows_table
from conversion_sync.warehouses.base import Warehouse

RunMode = Literal["normal", "retry_rejected", "full_resync"]
RUN_MODES: tuple[str, ...] = ("normal", "retry_rejected", "full_resync")
"""normal: the sync's run; retry_rejected: only the unresolved rejected keys, re-read from the epoch;
full_resync: reset the watermark and fingerprints first, then read everything."""

KEY_FIELDS: dict[str, tuple[str, ...]] = {
    "contacts": ("email",),
    "custom_objects": ("id",),
    "events": ("message_id", "email"),
}
"""Per destination, the columns a rejected row can be re-read by, in order of preference."""

BATCH_KEYS = 1_000
"""Key values per retry query (each warehouse takes an IN list this long)."""

RETRY_ONLY = "retry_only"
RETRIED = "retried"
"""Run-record counts set by the query step: a retry-only run, and how many keys the run re-reads."""

_DIALECTS = {"postgres": "postgres", "duckdb": "duckdb", "snowflake": "snowflake", "bigquery": "bigquery"}


# --- the retry queries ---------------------------------------------------------------------------------------


def key_filter_sql(column: str, values: list[str], kind: str, alias: str = "conversion_retry") -> str:
    """`CAST(alias.column AS text) IN (…)` in the warehouse's dialect (identifier quoted, literals escaped)."""
    dialect = _DIALECTS.get(kind)
    cast = exp.cast(
        exp.column(exp.to_identifier(column, quoted=True), table=alias), exp.DataType.build("text")
    )
    condition = exp.In(this=cast, expressions=[exp.Literal.string(v) for v in values])
    return condition.sql(dialect=dialect)


def filtered_query(epoch_sql: str, column: str | None, values: list[str], kind: str) -> str:
    """The sync's query (rendered with the epoch) filtered to key values; no values: no rows, same columns."""
    where = key_filter_sql(column, values, kind) if column and values else "1 = 0"
    return f"SELECT * FROM (\n{epoch_sql}\n) AS conversion_retry WHERE {where}"


@dataclass
class RetryPlan:
    """What a run re-reads of the sync's rejected keys."""

    only: bool = False
    """A retry-only run: just these keys, never the watermark."""
    keys: dict[str, list[str]] = field(default_factory=dict)
    """Source key column → the unresolved key values to re-read."""
    read_by_main_query: bool = False
    """The run's own query reads every key again (a full sync, a run from the epoch): no extra queries."""

    @property
    def count(self) -> int:
        return sum(len(v) for v in self.keys.values())

    def queries(self, main_sql: str, epoch_sql: str, kind: str) -> list[str]:
        """The queries the run stages, in order: the sync's own (unless retry-only), then the retry batches."""
        batches = [
            filtered_query(epoch_sql, column, values[i : i + BATCH_KEYS], kind)
            for column, values in sorted(self.keys.items())
            for i in range(0, len(values), BATCH_KEYS)
        ]
        if self.only:
            return batches or [filtered_query(epoch_sql, None, [], kind)]
        return [main_sql] if self.read_by_main_query else [main_sql, *batches]


class FirstQueryClock:
    """Streams several queries as one result, keeping the warehouse clock of the first (the run's watermark:
    the retry batches re-read older rows and must not move it past rows the sync's own query has not seen)."""

    def __init__(self) -> None:
        self.clock: Any = None

    def batches(self, warehouse: Warehouse, queries: list[str], batch_rows: int) -> Iterator[Any]:
        for sql in queries:
            yield from warehouse.stream(sql, batch_rows)
            if self.clock is None:
                self.clock = warehouse.query_started_at


OPEN_KEYS = """UPDATE sync_rejected_keys SET retry_run_id = %(run)s, attempts = attempts + 1
        WHERE sync_name = %(sync)s AND resolved_at IS NULL RETURNING key_column, key_value"""


def plan_retry(conn: sa.Connection, sync: SyncConfig, run_id: str, mode: str, reads_all: bool) -> RetryPlan:
    """Mark the sync's unresolved rejected keys as retried by this run (a retry-only run, or a run of a sync with
    `retry_rejected: true`) and say what to re-read. Other runs re-read nothing. A run whose own query `reads_all`
    (a full sync, or a run from the epoch) needs no extra queries: it reads every key again anyway."""
    only = mode == "retry_rejected"
    if not only and not sync.retry_rejected:
        return RetryPlan()
    keys: dict[str, list[str]] = {}
    for column, value in conn.exec_driver_sql(OPEN_KEYS, {"run": run_id, "sync": sync.name}):
        keys.setdefault(column, []).append(value)
    plan = RetryPlan(only=only, keys=keys, read_by_main_query=reads_all and not only)
    sync_state.set_phase(conn, run_id, "querying", {RETRIED: plan.count, **({RETRY_ONLY: 1} if only else {})})
    return plan


def is_retry_only(record: sync_state.SyncRunRecord) -> bool:
    return bool(record.counts.get(RETRY_ONLY))


KEEP_WATERMARK = """UPDATE sync_state SET last_run_id = %(run)s, updated_at = now() WHERE sync_name = %(sync)s
        RETURNING watermark"""
"""A retry-only run wrote fingerprints (so a concurrent run's plan is rebuilt) but read no new rows: the watermark
and the field types stay as the sync's last run left them."""


def keep_watermark(conn: sa.Connection, sync_name: str, run_id: str) -> datetime:
    """Record the retry-only run as the sync's last writer; returns the watermark, unchanged."""
    watermark = conn.exec_driver_sql(KEEP_WATERMARK, {"run": run_id, "sync": sync_name}).scalar()
    return watermark or EPOCH


# --- after the write: keep new rejections, resolve accepted keys ---------------------------------------------


def key_column(destination: str, source_names: list[str]) -> str | None:
    """The source column (as the query spells it) a destination's rejected rows are re-read by."""
    lowered = {name.lower(): name for name in source_names}
    return next((lowered[f] for f in KEY_FIELDS.get(destination, ()) if f in lowered), None)


def _staged_key(
    record: sync_state.SyncRunRecord, sync: SyncConfig, fields: DestinationFields
) -> tuple[str, str]:
    names = [c["name"] for c in record.source_columns or []]
    column = key_column(sync.destination.type, names)
    if column is None:
        raise ValueError(f"sync '{sync.name}': the query has no key column to re-read rejected rows by")
    staged = map_columns(names, fields, sync.name).fields[column.lower()]
    return column, staged


RETRY_KEY_MAX_LENGTH = 1000
"""A rejected key longer than this (a malformed id, say) is not kept for retry: it could not be indexed
(Postgres refuses index rows over 8 kB) and no warehouse key is that long; it counts as a row without a key."""


def keep_rejections_sql(stage: str, staged: str) -> str:
    """Upsert the run's rejected key values (one per value: the first rejection); a key rejected again takes the
    new reason and is open again."""
    key = f's."{staged}"'
    return f"""INSERT INTO sync_rejected_keys (sync_name, key_value, key_column, run_id, column_name, code, message,
                                               rejected_at)
        SELECT DISTINCT ON ({key}) %(sync)s, {key}, %(column)s, j.run_id, j.column_name, j.code, j.message, j.created_at
        FROM sync_rejections j JOIN {stage} s ON s."{ROW_NUMBER}" = (j.row ->> '_row_number')::bigint
        WHERE j.sync_name = %(sync)s AND j.run_id = %(run)s AND nullif(btrim({key}), '') IS NOT NULL
            AND length({key}) <= {RETRY_KEY_MAX_LENGTH}
        ORDER BY {key}, j.id
        ON CONFLICT (sync_name, key_value) DO UPDATE SET key_column = EXCLUDED.key_column, run_id = EXCLUDED.run_id,
            column_name = EXCLUDED.column_name, code = EXCLUDED.code, message = EXCLUDED.message,
            rejected_at = EXCLUDED.rejected_at, resolved_run_id = NULL, resolved_at = NULL, resolution = NULL"""


def keyless_rejections_sql(stage: str, staged: str | None) -> str:
    """The run's rejected rows that have no key value to re-read them by."""
    blank = (
        f'(nullif(btrim(s."{staged}"), \'\') IS NULL OR length(s."{staged}") > {RETRY_KEY_MAX_LENGTH})'
        if staged
        else "true"
    )
    return f"""SELECT count(*) FROM sync_rejections j JOIN {stage} s ON s."{ROW_NUMBER}" = (j.row ->> '_row_number')::bigint
        WHERE j.sync_name = %(sync)s AND j.run_id = %(run)s AND {blank}"""


HAS_OPEN_KEYS = (
    "SELECT EXISTS (SELECT 1 FROM sync_rejected_keys WHERE sync_name = %(sync)s AND resolved_at IS NULL)"
)


def resolve_accepted_sql(stage: str, rows: str, staged: str) -> str:
    """Open keys of which this run accepted a row (written, unchanged, or declined as older than the store)."""
    return f"""UPDATE sync_rejected_keys k SET resolved_run_id = %(run)s, resolved_at = now(), resolution = 'accepted'
        FROM {rows} r JOIN {stage} s ON s."{ROW_NUMBER}" = r.row_number
        WHERE k.sync_name = %(sync)s AND k.resolved_at IS NULL AND r.problem IS NULL AND s."{staged}" = k.key_value"""


RESOLVE_NOT_FOUND = """UPDATE sync_rejected_keys SET resolved_run_id = %(run)s, resolved_at = now(), resolution = 'not_found'
        WHERE sync_name = %(sync)s AND retry_run_id = %(run)s AND resolved_at IS NULL AND run_id <> %(run)s"""
"""Keys this run re-read that the query no longer returns: nothing is left to retry."""

RETRY_OUTCOME = """SELECT count(*) FILTER (WHERE resolution = 'accepted' AND resolved_run_id = %(run)s),
                          count(*) FILTER (WHERE resolved_at IS NULL AND run_id = %(run)s),
                          count(*) FILTER (WHERE resolution = 'not_found' AND resolved_run_id = %(run)s)
        FROM sync_rejected_keys WHERE sync_name = %(sync)s AND retry_run_id = %(run)s"""


EARLIER_KEYLESS = """SELECT count(*) FROM sync_rejections j JOIN sync_runs u ON u.run_id = j.run_id
        WHERE j.sync_name = %(sync)s AND u.sync_name = %(sync)s AND u.status = 'success' AND NOT u.preview
          AND u.run_id <> %(run)s AND u.counts ->> 'retry_only' IS NULL
          AND u.started_at > coalesce((SELECT max(p.started_at) FROM sync_runs p
                                       WHERE p.sync_name = %(sync)s AND p.status = 'success' AND p.run_id <> %(run)s
                                         AND p.counts ->> 'retry_only' IS NOT NULL), '-infinity')
          AND nullif(btrim((SELECT e.value FROM jsonb_each_text(j.row) e WHERE lower(e.key) = ANY(%(keys)s)
                            ORDER BY array_position(%(keys)s, lower(e.key)) LIMIT 1)), '') IS NULL"""
"""Rows rejected since the sync's previous retry-only run that have no key value: a retry cannot re-read them."""


def settle(
    conn: sa.Connection,
    sync: SyncConfig,
    record: sync_state.SyncRunRecord,
    staging_table: str,
    fields: DestinationFields,
) -> dict[str, int]:
    """In the write's transaction: keep the run's rejected key values, resolve the open keys it accepted, and for a
    run that retried keys, close those the query no longer returns. Returns the retry counts (retried, recovered,
    still_rejected, not_found, rejected_without_key) for a run that retried keys, else {}."""
    names = [c["name"] for c in record.source_columns or []]
    column = key_column(sync.destination.type, names)
    staged = _staged_key(record, sync, fields)[1] if column else None
    stage, rows = qualified(staging_table), qualified(rows_table(staging_table))
    params = {"sync": sync.name, "run": record.run_id, "column": column}
    keyless = 0
    if record.counts.get("rejected"):
        if staged is not None:
            conn.exec_driver_sql(keep_rejections_sql(stage, staged), params)
        keyless = conn.exec_driver_sql(keyless_rejections_sql(stage, staged), params).scalar_one()
    if staged is not None and conn.exec_driver_sql(HAS_OPEN_KEYS, params).scalar_one():
        conn.exec_driver_sql(resolve_accepted_sql(stage, rows, staged), params)
    if RETRIED not in record.counts:
        return {}
    if is_retry_only(record):
        keys = list(KEY_FIELDS.get(sync.destination.type, ()))
        keyless = conn.exec_driver_sql(EARLIER_KEYLESS, {**params, "keys": keys}).scalar_one()
    conn.exec_driver_sql(RESOLVE_NOT_FOUND, params)
    recovered, still, not_found = conn.exec_driver_sql(RETRY_OUTCOME, params).one()
    return {
        RETRIED: int(record.counts[RETRIED]),
        "recovered": recovered,
        "still_rejected": still,
        "not_found": not_found,
        "rejected_without_key": keyless,
    }


# --- what is open ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OpenKey:
    key_value: str
    key_column: str
    run_id: str
    code: str
    column_name: str | None
    message: str
    attempts: int


OPEN_KEY_LIST = """SELECT key_value, key_column, run_id, code, column_name, message, attempts FROM sync_rejected_keys
        WHERE sync_name = %(sync)s AND resolved_at IS NULL ORDER BY rejected_at, key_value LIMIT %(limit)s"""


def open_keys(conn: sa.Connection, sync_name: str, limit: int = 20) -> list[OpenKey]:
    """The sync's rejected keys no run has accepted since, oldest first."""
    rows = conn.exec_driver_sql(OPEN_KEY_LIST, {"sync": sync_name, "limit": limit}).mappings()
    return [OpenKey(**dict(row)) for row in rows]
