"""Per-key history: which runs wrote, declined, removed or rejected a key, with the values they brought.

Writes are recorded by `record_run`, one INSERT … SELECT from the run's staged writes (`_writes`) and removed keys
(`_removed`), in the transaction of the merge: a key is traced exactly when its write commits. Rejections are not
copied: `sync_rejections` already holds them per run, and `key_history` reads both. The history is bounded:
rows older than the retention (CONVERSION_TRACE_RETENTION_DAYS, default 90; 0 turns the trace off) are pruned
per sync, set-based, by the same call.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from conversion_sync.store.contacts import email_key_sql
from conversion_sync.store.sql_text import column_ref, json_object_sql

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


def _written_fields(ctx: WriteContext) -> str:
    return json_object_sql([(f, column_ref("w", c)) for f, c in ctx.field_columns.items()])


def _removed_sql(email_norm: str, object_id: str) -> str:
    return f"""SELECT %(run_id)s, %(sync)s, 'removed', {email_norm}, {object_id},
                      jsonb_build_object('delete_behavior', %(delete_behavior)s::text)
               FROM _removed"""


def contacts_trace_sql(ctx: WriteContext) -> str:
    """Contacts: created (no contact matched), changed (this transaction wrote the contact), or declined (every
    differing value was older than the store's). Removed keys with the sync's delete_behavior."""
    return f"""{_INSERT}
        SELECT %(run_id)s, %(sync)s, t.action, w.email_norm, NULL, {_written_fields(ctx)}
        FROM _writes w LEFT JOIN contacts c ON c.id = w.contact_id
        CROSS JOIN LATERAL (SELECT CASE WHEN w.contact_id IS NULL THEN 'added' WHEN c.{MINE} THEN 'changed'
                                        WHEN w.declined THEN 'declined' END AS action) t
        WHERE NOT w.skip AND t.action IS NOT NULL
        UNION ALL {_removed_sql("row_key", "NULL")}"""


def custom_objects_trace_sql(ctx: WriteContext) -> str:
    """Custom objects: a row traced when this transaction created or changed its object or relationship."""
    fields = (
        f"{_written_fields(ctx)} || jsonb_strip_nulls(jsonb_build_object('relationshipFields', w.rel_fields))"
    )
    created = f"((o.{MINE} AND o.created_at = now()) OR coalesce(r.{MINE} AND r.created_at = now(), false))"
    return f"""{_INSERT}
        SELECT %(run_id)s, %(sync)s, CASE WHEN {created} THEN 'added' ELSE 'changed' END, w.email_norm, w.object_id,
               {fields}
        FROM _writes w
        JOIN custom_objects o ON o.object_type = %(object_type)s AND o.object_id = w.object_id
        LEFT JOIN _related rl ON rl.email_norm = w.email_norm
        LEFT JOIN object_relationships r
               ON r.object_type = %(object_type)s AND r.object_id = w.object_id AND r.contact_id = rl.contact_id
        WHERE NOT w.skip AND (o.{MINE} OR coalesce(r.{MINE}, false))
        UNION ALL {_removed_sql("nullif(split_part(row_key, chr(31), 2), '')", "split_part(row_key, chr(31), 1)")}"""


EVENTS_TRACE = f"""{_INSERT}
        SELECT %(run_id)s, %(sync)s, 'added', w.email_norm, w.message_id,
               jsonb_build_object('event_name', w.event_name, 'timestamp', w.event_ts, 'properties', w.properties)
        FROM _writes w JOIN _related r ON r.email_norm = w.email_norm WHERE r.contact_id IS NOT NULL"""
"""Events: called before the insert, while _writes still lists the events not stored yet; those whose e-mail
has a contact are the ones the insert writes (under the identity lock nothing else inserts events)."""


def record_run(conn: sa.Connection, ctx: WriteContext) -> None:
    """Trace the keys this run writes, declines or removes (one INSERT … SELECT), and prune the sync's history
    past the retention. Call in the write transaction, after the merge statements and before `_writes` is dropped
    (events: before their insert). Does nothing in a dry run or when the trace is off."""
    days = retention_days()
    if ctx.dry_run or days == 0:
        return
    kind = ctx.sync.destination.type
    statement = {
        "contacts": contacts_trace_sql,
        "custom_objects": custom_objects_trace_sql,
    }.get(kind, lambda _ctx: EVENTS_TRACE)(ctx)
    params = {
        "run_id": ctx.run_id,
        "sync": ctx.sync.name,
        "object_type": ctx.sync.destination.object_type,
        "delete_behavior": ctx.sync.delete_behavior,
        "days": days,
    }
    conn.exec_driver_sql(statement, params)
    conn.exec_driver_sql(PRUNE, params)


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


KEY_HISTORY = f"""
    SELECT t.recorded_at AS at, t.sync_name, t.run_id, t.action,
           coalesce(t.object_id || coalesce(' / ' || t.email_norm, ''), t.email_norm) AS key,
           t.fields AS values, NULL AS code, NULL AS column_name, NULL AS message
    FROM sync_key_trace t
    WHERE t.email_norm = {email_key_sql("%(key)s")} OR t.object_id = btrim(%(key)s)
    UNION ALL
    SELECT coalesce(u.finished_at, j.created_at), j.sync_name, j.run_id, 'rejected', j.row_key, j.row - '_row_number',
           j.code, j.column_name, j.message
    FROM sync_rejections j JOIN sync_runs u ON u.run_id = j.run_id AND u.status = 'success' AND NOT u.preview
    WHERE {email_key_sql("j.row_key")} = {email_key_sql("%(key)s")} OR j.row_key = btrim(%(key)s)
       OR split_part(j.row_key, ' / ', 1) = btrim(%(key)s)
       OR {email_key_sql("nullif(split_part(j.row_key, ' / ', 2), '')")} = {email_key_sql("%(key)s")}
    ORDER BY 1, 2, 4"""
"""A key's history, oldest first: the traced writes by e-mail or object id (message id for events), and the
rejections whose key is that e-mail, object id (alone or with its e-mail) or message id."""


def key_history(conn: sa.Connection, key: str) -> list[TraceEntry]:
    """Every run that wrote, declined, removed or rejected `key` (an e-mail, object id or message id)."""
    rows = conn.exec_driver_sql(KEY_HISTORY, {"key": key}).mappings()
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
