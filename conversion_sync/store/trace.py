"""Per-key history: which runs wrote, declined, removed or rejected a key, with the values they brought.

Writes are recorded by `record_run`, one INSERT … SELECT from the run's staged writes (`_writes`) and removed keys
(`_removed`), in the transaction of the merge. A row's values are a JSON array in the order of the field names its
run records once (`sync_runs.trace_fields`): a JSON object per row, its names repeated, cost twice as much. A
sync's first large load (every row a new record) is traced instead on a connection of its own while the merge
runs (`TraceAside`, on a second core), from the committed rows table. Either way a trace row counts only once
its run is recorded successful, which happens in the merge's transaction: `key_history` reads the rows of
successful runs, so a key is traced exactly when its write commits.
Events are not copied: an event is written once and never changed by a sync, and its row names the run that
wrote it (`events.run_id`). Rejections are not copied either: `sync_rejections` already holds them per run, and
`key_history` reads all three. The history is bounded: rows older than the retention
(CONVERSION_TRACE_RETENTION_DAYS, default 90; 0 turns the trace off) are pruned per sync, set-based, by the same
call.
"""

from __future__ import annotations

import contextlib
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from conversion_sync.store import statistics
from conversion_sync.store.connection import prepare_bulk_transaction
from conversion_sync.store.contacts import email_key_sql
from conversion_sync.store.sql_text import column_ref, json_array_sql

if TYPE_CHECKING:
    from conversion_sync.syncs.writers import WriteContext

RETENTION_ENV = "CONVERSION_TRACE_RETENTION_DAYS"
DEFAULT_RETENTION_DAYS = 90
MINE = "xmin = pg_current_xact_id()::xid"
"""SQL (on an aliased store row) true when this transaction wrote the row."""


def retention_days() -> int:
    """Days a key's history is kept (0: not recorded at all)."""
    raw = os.environ.get(RETENTION_ENV, "").strip()
    if not raw:
        return DEFAULT_RETENTION_DAYS
    try:
        days = int(raw)
    except ValueError:
        raise ValueError(
            f"{RETENTION_ENV}={raw!r}: must be a whole number of days (0 turns the trace off)"
        ) from None
    if days < 0:
        raise ValueError(f"{RETENTION_ENV}={raw!r}: must be 0 or more days")
    return days


# --- statements ---------------------------------------------------------------------------------------------

_INSERT = "INSERT INTO sync_key_trace (run_id, sync_name, action, email_norm, object_id, fields)"
PRUNE = """DELETE FROM sync_key_trace WHERE sync_name = %(sync)s AND recorded_at < now() - make_interval(days => %(days)s)"""


RELATIONSHIP_FIELDS = "relationshipFields"
"""An object row's last traced value: its relationship's fields (left out of the history when it has none)."""


def trace_fields(ctx: WriteContext) -> list[str]:
    """The names of a run's traced values, in the order its rows hold them."""
    names = list(ctx.field_columns)
    return [*names, RELATIONSHIP_FIELDS] if ctx.sync.destination.type == "custom_objects" else names


def _written_fields(ctx: WriteContext) -> str:
    """SQL for a row's traced values (a JSON array in trace_fields' order)."""
    values = [column_ref("w", c) for c in ctx.field_columns.values()]
    if ctx.sync.destination.type == "custom_objects":
        values.append("w.rel_fields")
    return json_array_sql(values)


SET_TRACE_FIELDS = "UPDATE sync_runs SET trace_fields = %(trace_fields)s WHERE run_id = %(run_id)s"


def _removed_sql(email_norm: str, object_id: str) -> str:
    return f"""SELECT %(run_id)s, %(sync)s, 'removed', {email_norm}, {object_id},
                      jsonb_build_object('delete_behavior', %(delete_behavior)s::text)
               FROM _removed"""


REMOVED_CONTACTS = _removed_sql("row_key", "NULL")
REMOVED_OBJECTS = _removed_sql(
    "nullif(split_part(row_key, chr(31), 2), '')", "split_part(row_key, chr(31), 1)"
)
"""Removed keys: a contacts row key is the e-mail; an object's is its id and e-mail joined by chr(31)."""


def contacts_trace_sql(ctx: WriteContext) -> str:
    """Contacts: created (no contact matched), changed (this transaction wrote the contact, probed by id only
    for rows that had one), or declined (every differing value was older than the store's). Removed keys with
    the sync's delete_behavior."""
    return f"""{_INSERT}
        SELECT %(run_id)s, %(sync)s, t.action, w.email_norm, NULL, {_written_fields(ctx)}
        FROM _writes w
        CROSS JOIN LATERAL (SELECT CASE WHEN w.contact_id IS NULL THEN 'added'
                                        WHEN (SELECT c.{MINE} FROM contacts c WHERE c.id = w.contact_id) THEN 'changed'
                                        WHEN w.declined THEN 'declined' END AS action) t
        WHERE NOT w.skip AND t.action IS NOT NULL
        UNION ALL {REMOVED_CONTACTS}"""


def custom_objects_trace_sql(ctx: WriteContext) -> str:
    """Custom objects: a row traced when this transaction created or changed its object or relationship (read
    from the writer's _object_rows, each written row with its object's and relationship's versions)."""
    mine = "pg_current_xact_id()::xid::text::bigint"
    created = f"""((w.object_version = {mine} AND w.object_created_at = now())
                   OR coalesce(w.link_version = {mine} AND w.link_created_at = now(), false))"""
    return f"""{_INSERT}
        SELECT %(run_id)s, %(sync)s, CASE WHEN {created} THEN 'added' ELSE 'changed' END, w.email_norm, w.object_id,
               {_written_fields(ctx)}
        FROM _object_rows w
        WHERE w.object_version = {mine} OR coalesce(w.link_version = {mine}, false)
        UNION ALL {REMOVED_OBJECTS}"""


def first_load_trace_sql(ctx: WriteContext) -> str:
    """A first load's trace from the committed rows table: every accepted row to write creates its record (a
    contact, or an object with its relationship), so each is `added` with the values it brings."""
    objects = ctx.sync.destination.type == "custom_objects"
    keys = "w.email_norm, w.object_id" if objects else "w.email_norm, NULL"
    return f"""{_INSERT}
        SELECT %(run_id)s, %(sync)s, 'added', {keys}, {_written_fields(ctx)}
        FROM {ctx.rows_table} w WHERE w.problem IS NULL AND w.action = 'added'"""


DISCARD_RUN = "DELETE FROM sync_key_trace WHERE run_id = %(run_id)s"


def _params(ctx: WriteContext, days: int) -> dict[str, object]:
    return {
        "run_id": ctx.run_id,
        "sync": ctx.sync.name,
        "object_type": ctx.sync.destination.object_type,
        "delete_behavior": ctx.sync.delete_behavior,
        "days": days,
        "trace_fields": trace_fields(ctx),
    }


class TraceAside:
    """A first load's trace written and committed on a connection of its own while the writer's transaction
    merges (on a second core). Its rows count once the run is recorded successful (in the writer's transaction);
    a writer that fails discards them. Start it only when every accepted row creates its record and the rows
    table is committed (writers.fingerprint_build's conditions)."""

    def __init__(self, engine: sa.Engine, ctx: WriteContext, after: Future[Any] | None = None) -> None:
        self._engine = engine
        self._params = _params(ctx, retention_days())
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trace-aside")
        self._result: Future[None] = self._executor.submit(self._write, first_load_trace_sql(ctx), after)
        self._executor.shutdown(wait=False)

    def _write(self, statement: str, after: Future[Any] | None) -> None:
        if after is not None:
            # the other side work (the fingerprint partition) first: with the merge, three busy statements on
            # two cores made the merge itself 1.1-1.6 x slower
            with contextlib.suppress(Exception):
                after.result()
        with self._engine.begin() as conn:
            prepare_bulk_transaction(conn)
            conn.exec_driver_sql(PRUNE, self._params)  # before its own rows, which it would only scan again
            traced = conn.exec_driver_sql(statement, self._params).rowcount
            statistics.analyze_if_grown(conn, "sync_key_trace", traced)

    def wait(self) -> None:
        """Wait for the trace (raising its error)."""
        self._result.result()

    def discard(self) -> None:
        """Wait and delete what it wrote (best effort: the writer is failing already; rows of a run that never
        succeeded are not shown, and the retention prunes them)."""
        with contextlib.suppress(Exception):
            self._result.result()
        with contextlib.suppress(Exception), self._engine.begin() as conn:
            conn.exec_driver_sql(DISCARD_RUN, self._params)


def trace_aside(engine: sa.Engine, ctx: WriteContext, after: Future[Any] | None = None) -> TraceAside | None:
    """Start tracing a first load aside, once `after` (other work on the second core) is done (None in a dry run
    or when the trace is off)."""
    if ctx.dry_run or retention_days() == 0:
        return None
    return TraceAside(engine, ctx, after)


def record_run(conn: sa.Connection, ctx: WriteContext, aside: TraceAside | None = None) -> None:
    """Trace the keys this run writes, declines or removes (one INSERT … SELECT), and prune the sync's history
    past the retention. Call in the write transaction, after the merge statements and before `_writes` is dropped.
    Events are not copied: each event row names the run that wrote it (events.run_id). With `aside`, the written
    keys were traced by it: wait for it. Does nothing in a dry run or when the trace is off."""
    days = retention_days()
    if ctx.dry_run or days == 0:
        return
    params = _params(ctx, days)
    kind = ctx.sync.destination.type
    if kind == "events":  # an event row names the run that wrote it: it is its own history
        conn.exec_driver_sql(PRUNE, params)
        return
    conn.exec_driver_sql(SET_TRACE_FIELDS, params)
    if aside is not None:  # it pruned the history already
        aside.wait()
        removed = REMOVED_OBJECTS if kind == "custom_objects" else REMOVED_CONTACTS
        conn.exec_driver_sql(f"{_INSERT} {removed}", params)
        return
    # pruned first: the rows just written are not yet summarised by the BRIN index, so a prune after them read
    # every one of their pages (0.37 s after a million)
    conn.exec_driver_sql(PRUNE, params)
    statement = custom_objects_trace_sql(ctx) if kind == "custom_objects" else contacts_trace_sql(ctx)
    traced = conn.exec_driver_sql(statement, params).rowcount
    statistics.analyze_if_grown(conn, "sync_key_trace", traced)


# --- reading a key's history --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TraceEntry:
    """One run's effect on a key."""

    at: datetime
    sync_name: str
    run_id: str
    action: str
    """added | changed | declined | removed | rejected"""
    key: str
    values: dict[str, Any] | None
    """The values the run brought (written fields; a rejection's row as sent; a removal's delete_behavior)."""
    code: str | None = None
    column: str | None = None
    message: str | None = None


EVENT_VALUES = (
    "jsonb_build_object('event_name', e.event_name, 'timestamp', e.timestamp, 'properties', e.properties)"
)
"""An event's values as its history shows them (events are written once and never changed by a sync)."""

NAMED_VALUES = f"""CASE WHEN jsonb_typeof(t.fields) = 'array' THEN coalesce((
        SELECT jsonb_object_agg(f.name, t.fields -> (f.n - 1)::int)
        FROM unnest(u.trace_fields) WITH ORDINALITY f(name, n)
        WHERE NOT (f.name = '{RELATIONSHIP_FIELDS}' AND jsonb_typeof(t.fields -> (f.n - 1)::int) = 'null')),
        '{{}}'::jsonb) ELSE t.fields END"""
"""A trace row's values named by its run's trace_fields (rows traced before 0017, and removals, hold objects)."""

KEY_HISTORY = f"""
    SELECT t.recorded_at AS at, t.sync_name, t.run_id, t.action,
           coalesce(t.object_id || coalesce(' / ' || t.email_norm, ''), t.email_norm) AS key,
           {NAMED_VALUES} AS values, NULL AS code, NULL AS column_name, NULL AS message
    FROM sync_key_trace t JOIN sync_runs u ON u.run_id = t.run_id AND u.status = 'success' AND NOT u.preview
    WHERE t.email_norm = {email_key_sql("%(key)s")} OR t.object_id = btrim(%(key)s)
    UNION ALL
    SELECT e.created_at, e.sync_name, e.run_id, 'added', e.message_id || coalesce(' / ' || c.email_normalized, ''),
           {EVENT_VALUES}, NULL, NULL, NULL
    FROM events e LEFT JOIN contacts c ON c.id = e.contact_id
    WHERE e.message_id = btrim(%(key)s) AND e.run_id IS NOT NULL
      AND e.created_at >= now() - make_interval(days => %(days)s)
    UNION ALL
    SELECT e.created_at, e.sync_name, e.run_id, 'added', e.message_id || ' / ' || c.email_normalized, {EVENT_VALUES},
           NULL, NULL, NULL
    FROM contacts c JOIN events e ON e.contact_id = c.id
    WHERE c.email_normalized = {email_key_sql("%(key)s")} AND e.run_id IS NOT NULL
      AND e.created_at >= now() - make_interval(days => %(days)s) AND e.message_id <> btrim(%(key)s)
    UNION ALL
    SELECT coalesce(u.finished_at, j.created_at), j.sync_name, j.run_id, 'rejected', j.row_key, j.row - '_row_number',
           j.code, j.column_name, j.message
    FROM sync_rejections j JOIN sync_runs u ON u.run_id = j.run_id AND u.status = 'success' AND NOT u.preview
    WHERE {email_key_sql("j.row_key")} = {email_key_sql("%(key)s")} OR j.row_key = btrim(%(key)s)
       OR split_part(j.row_key, ' / ', 1) = btrim(%(key)s)
       OR {email_key_sql("nullif(split_part(j.row_key, ' / ', 2), '')")} = {email_key_sql("%(key)s")}
    ORDER BY 1, 2, 4"""
"""A key's history, oldest first: the traced writes by e-mail or object id, the events by message id or their
contact's e-mail (written within the retention by a run that recorded itself), and the rejections whose key is
that e-mail, object id (alone or with its e-mail) or message id. Traced writes and rejections of successful runs
only (a failed run's first-load trace, written aside, may outlive it until discarded or pruned)."""


def key_history(conn: sa.Connection, key: str) -> list[TraceEntry]:
    """Every run that wrote, declined, removed or rejected `key` (an e-mail, object id or message id)."""
    rows = conn.exec_driver_sql(KEY_HISTORY, {"key": key, "days": retention_days()}).mappings()
    return [
        TraceEntry(
            at=row["at"],
            sync_name=row["sync_name"],
            run_id=row["run_id"],
            action=row["action"],
            key=row["key"],
            values=row["values"],
            code=row["code"],
            column=row["column_name"],
            message=row["message"],
        )
        for row in rows
    ]
