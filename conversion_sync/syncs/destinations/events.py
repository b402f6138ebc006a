"""The events destination: each event stored once per message_id (given, or derived from its content), for the
contact of its e-mail."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from conversion_sync.config.store_schema import StoreSchemaConfig
from conversion_sync.config.syncs import SyncConfig
from conversion_sync.store import trace
from conversion_sync.store.contacts import lock_identities, trimmed_email_sql
from conversion_sync.store.sql_text import json_object_sql
from conversion_sync.syncs import writers
from conversion_sync.syncs.destinations.base import DestinationFields, StagedRow, TypedColumns
from conversion_sync.syncs.field_rules import UNIT_SEPARATOR, blank_to_null
from conversion_sync.syncs.writers import WriteContext, WriteCounts


class EventsDestination:
    """Events, keyed by message_id; the columns that are no field become the event's properties."""

    kind = "events"
    skips_unchanged = False

    def fields(self, sync: SyncConfig, schema: StoreSchemaConfig) -> DestinationFields:
        return DestinationFields(
            kind=self.kind,
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

    def rejection_key_sql(self, row: StagedRow) -> str:
        email = row.staged("email")
        shown = trimmed_email_sql(email) if email else "NULL::text"
        message_id = row.staged("message_id")
        return f"coalesce({blank_to_null(message_id)}, {shown})" if message_id else shown

    def typed_columns(self, row: StagedRow) -> TypedColumns:
        explicit = row.value("properties") + "::jsonb"
        properties = f"coalesce({explicit}, '{{}}'::jsonb) || {json_object_sql(row.property_pairs())}"
        event_ts, event_name = row.value("timestamp"), row.value("event_name")
        derived = derived_message_id_sql(row.email_key(), event_name, event_ts, properties)
        return TypedColumns(
            row_key="message_id",
            event_name=event_name,
            event_ts=event_ts,
            message_id=f"coalesce({row.value('message_id')}, {derived})",
            properties=properties,
        )

    def fingerprint_keys(self, row: StagedRow) -> None:
        """Events keep no fingerprints: the stored message_ids deduplicate them."""
        return None

    def write(self, conn: sa.Connection, ctx: WriteContext) -> WriteCounts:
        return write_events(conn, ctx)

    def preview(self, conn: sa.Connection, ctx: WriteContext, limit: int) -> list[dict[str, Any]]:
        rows = conn.exec_driver_sql(
            event_diff_sql(ctx.rows_table), {"sync": ctx.sync.name, "limit": limit}
        ).mappings()
        return [dict(r) for r in rows]


DESTINATION = EventsDestination()


def derived_message_id_sql(email_key: str, event_name: str, event_ts: str, properties: str) -> str:
    """The id of an event without `message_id`: md5 of its typed content, not of the sync that read it.

    The e-mail's key (trimmed, lower-cased), the event name, the timestamp as UTC microseconds since the epoch
    (so '2024-01-01T00:00:00Z' and '2024-01-01 00:00:00+00' agree) and the properties as jsonb text (canonical:
    keys sorted, no insignificant white space). Numbers of typed columns are written without trailing zeros
    (see field_rules.property_rule), so 2, 2.0 and 2.00 agree; inside a JSON value (a `properties` column, a JSON
    column) numbers keep the digits the JSON was written with, and 1.0 there differs from 1.
    """
    micros = f"(extract(epoch FROM ({event_ts})::timestamptz) * 1000000)::bigint"
    return f"md5(concat_ws({UNIT_SEPARATOR}, {email_key}, {event_name}, {micros}, ({properties})::text))"


# --- statements ------------------------------------------------------------------------------------------


def new_events_view_sql(rows_table: str) -> str:
    """_writes: the accepted rows whose message_id is not stored yet (a view: each statement reads the events
    as they are when it starts)."""
    return f"""CREATE TEMP VIEW _writes AS SELECT r.* FROM {rows_table} r
        WHERE r.problem IS NULL AND NOT EXISTS (SELECT 1 FROM events e WHERE e.message_id = r.message_id)"""


def accepted_rows_sql(rows_table: str) -> str:
    return f"SELECT count(*) FROM {rows_table} WHERE problem IS NULL"


INSERT_EVENTS = """INSERT INTO events (message_id, contact_id, event_name, timestamp, properties, sync_name, run_id)
        SELECT w.message_id, r.contact_id, w.event_name, w.event_ts, w.properties, %(sync)s, %(run_id)s
        FROM _writes w JOIN _related r ON r.email_norm = w.email_norm WHERE r.contact_id IS NOT NULL
        -- sorted, the unique index on message_id is filled page by page; byte order sorts several times
        -- faster than a linguistic collation's, and is the index's own order under C and C.UTF-8
        ORDER BY w.message_id COLLATE "C"
        """
COUNT_WITHOUT_CONTACT = (
    "SELECT count(*) FROM _writes w LEFT JOIN _related r ON r.email_norm = w.email_norm "
    "WHERE r.contact_id IS NULL"
)


def event_diff_sql(rows_table: str) -> str:
    """Each accepted event: `add` when its message_id is not stored yet, else `unchanged`."""
    return f"""SELECT r.message_id AS key, CASE WHEN e.id IS NULL THEN 'add' ELSE 'unchanged' END AS action,
                       jsonb_build_object('email', r.email, 'event_name', r.event_name, 'timestamp', r.event_ts,
                                          'properties', r.properties) AS new, NULL::jsonb AS old
            FROM {rows_table} r LEFT JOIN events e ON e.message_id = r.message_id
            WHERE r.problem IS NULL ORDER BY (e.id IS NULL) DESC, r.row_number LIMIT %(limit)s"""


# --- the write -------------------------------------------------------------------------------------------


def write_events(conn: sa.Connection, ctx: WriteContext) -> WriteCounts:
    """Events are inserted once per message_id. _writes is a view of the accepted rows whose message_id is not
    stored yet (every statement reads the events as they are when it starts), not a copy of them.

    A plain INSERT, not ON CONFLICT DO NOTHING (whose speculative insertion made a million events 1.3 times as
    slow): validation keeps one row per message_id, the view leaves out stored ones, and only this writer
    inserts events, under the identity lock, so none can appear in between. Were one to, the unique index
    fails the run, which changes nothing."""
    counts = WriteCounts()
    lock_identities(conn)
    conn.exec_driver_sql(new_events_view_sql(ctx.rows_table))
    total = conn.exec_driver_sql(accepted_rows_sql(ctx.rows_table)).scalar_one()
    create = ctx.sync.mode != "update"
    counts.contacts_created = writers.resolve_emails(conn, ctx, create=create)
    trace.record_run(conn, ctx)  # prunes the history; each event row names its run (store/trace.py)
    inserted = conn.exec_driver_sql(INSERT_EVENTS, writers.write_params(ctx)).rowcount
    if not create:  # mode update: events of emails with no contact are skipped (and not stored since)
        counts.skipped = conn.exec_driver_sql(COUNT_WITHOUT_CONTACT).scalar_one()
    writers.drop_writes(conn, view=True)
    writers.refresh_statistics(conn, ctx, {"events": inserted, "contacts": counts.contacts_created})
    counts.added = inserted
    counts.events_deduplicated = total - counts.skipped - inserted
    counts.unchanged = counts.events_deduplicated
    return counts
