"""Per-destination writers: plan (added/changed/unchanged/removed) and set-based merge of typed rows."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime

import sqlalchemy as sa

from conversion_sync.config.store_schema import STANDARD_CONTACT_FIELDS
from conversion_sync.config.syncs import SyncConfig
from conversion_sync.store import fingerprints, sync_state
from conversion_sync.store.identity import IdentityMatcher, lock_identities
from conversion_sync.syncs.validation import json_object_sql


@dataclass
class WriteCounts:
    """What a write did (or, in a dry run, would do)."""

    added: int = 0
    changed: int = 0
    unchanged: int = 0
    removed: int = 0
    skipped: int = 0
    contacts_created: int = 0
    events_deduplicated: int = 0
    extra: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, int]:
        data = {k: v for k, v in self.__dict__.items() if k != "extra"}
        return {**data, **self.extra}


@dataclass
class WriteContext:
    sync: SyncConfig
    run_id: str
    rows_table: str
    """Qualified name of the typed rows table built by validation."""
    all_keys_select: str
    """SELECT row_key over every staged row, accepted or rejected (for removals in full syncs)."""
    written_fields: list[str]
    """Destination fields the query provides (for clear_fields)."""
    field_columns: dict[str, str]
    """Written field → its typed column in the rows table."""
    full_sync: bool
    run_started: datetime
    matcher: IdentityMatcher
    planned_after_run: str | None = None
    """The sync's last successful run when validation planned the rows' actions."""
    rebuild_rows: Callable[[sa.Connection], None] = lambda conn: None
    """Plans the rows again against the fingerprints stored now (Validator.rebuild)."""
    dry_run: bool = False
    """A preview: the transaction is rolled back, so nothing may be committed on the side."""


def _params(ctx: WriteContext) -> dict[str, object]:
    return {"sync": ctx.sync.name, "run_id": ctx.run_id, "started": ctx.run_started}


@dataclass
class Plan:
    accepted: int
    """Accepted rows (each key once)."""
    stored: int
    """Accepted rows whose key has a stored fingerprint (changed or unchanged)."""
    view: bool
    """Whether _writes is a view, which the writer drops before it commits."""
    rebuilt: bool
    """Whether the rows table was planned again in this transaction (other sessions cannot read it)."""


def _plan_changes(conn: sa.Connection, ctx: WriteContext) -> Plan:
    """Make _writes: the accepted rows that are new or changed.

    Validation planned each row's action against the sync's fingerprints. If another run of this sync wrote
    since (or it was reset), the rows table is first rebuilt against the fingerprints stored now: under the
    identity lock, nothing else can write them until this transaction ends. When most rows are to be written
    (a first run) _writes is a view of the rows table, so a million rows are not copied once more; when few
    are, a small copy spares each writing statement a scan of all the rows.
    """
    rebuilt = sync_state.last_successful_run(conn, ctx.sync.name) != ctx.planned_after_run
    if rebuilt:
        ctx.rebuild_rows(conn)
    total, writes, stored = conn.exec_driver_sql(
        f"""SELECT count(*), count(*) FILTER (WHERE action <> 'unchanged'), count(*) FILTER (WHERE action <> 'added')
        FROM {ctx.rows_table} WHERE problem IS NULL"""
    ).one()
    view = writes * 2 > total
    started = f"'{ctx.run_started.isoformat()}'::timestamptz"
    conn.exec_driver_sql(
        f"""CREATE TEMP {"VIEW _writes" if view else "TABLE _writes ON COMMIT DROP"} AS
        SELECT r.*, coalesce(r.updated_at, {started}) AS ts, to_jsonb(coalesce(r.updated_at, {started})) AS ts_json
        FROM {ctx.rows_table} r WHERE r.problem IS NULL AND r.action <> 'unchanged'"""
    )
    if not view:
        conn.exec_driver_sql("ANALYZE _writes")
    return Plan(accepted=total, stored=stored, view=view, rebuilt=rebuilt)


def _drop_writes(conn: sa.Connection, view: bool) -> None:
    """Temporary views outlive the transaction (unlike ON COMMIT DROP tables), and the session is pooled."""
    if view:
        conn.exec_driver_sql("DROP VIEW _writes")


def _count_actions(conn: sa.Connection, counts: WriteCounts, total: int) -> None:
    row = conn.exec_driver_sql(
        """SELECT count(*) FILTER (WHERE action = 'added' AND NOT skip),
                  count(*) FILTER (WHERE action = 'changed' AND NOT skip),
                  count(*) FILTER (WHERE skip), count(*) FROM _writes"""
    ).one()
    counts.added, counts.changed, counts.skipped = row[0], row[1], row[2]
    counts.unchanged = total - row[3]


CONCURRENT_BUILD_ROWS = 100_000
"""A sync's first fingerprints from this many new rows on are built on a second connection (PartitionBuild)."""


@contextmanager
def _fingerprint_build(
    conn: sa.Connection, ctx: WriteContext, plan: Plan
) -> Iterator[fingerprints.PartitionBuild | None]:
    """For a sync's first large load, build its fingerprint partition on a second core while this transaction
    writes the store (discarded if the writer fails). Only in mode upsert (every new row is written, so the new
    keys are known before the writes) and from the committed rows table (not one rebuilt in this transaction);
    never in a dry run, whose work must not outlive it. Yields None when the partition is written inline."""
    build = None
    if not (
        ctx.dry_run
        or plan.rebuilt
        or ctx.sync.mode != "upsert"
        or plan.accepted - plan.stored < CONCURRENT_BUILD_ROWS
        or fingerprints.has_partition(conn, ctx.sync.name)
    ):
        build = fingerprints.PartitionBuild(
            conn.engine,
            ctx.sync.name,
            f"SELECT row_key, fingerprint FROM {ctx.rows_table} WHERE problem IS NULL AND action = 'added'",
            _params(ctx),
        )
    try:
        yield build
    except BaseException:
        if build is not None:
            build.discard()
        raise


def _save_fingerprints(
    conn: sa.Connection, ctx: WriteContext, counts: WriteCounts, build: fingerprints.PartitionBuild | None
) -> None:
    """New keys are inserted, changed ones updated. Under the identity lock no other run of this sync can
    have written a key since _plan_changes, so a plain INSERT (much cheaper than ON CONFLICT) is safe.
    A sync's first fingerprints become its partition, loaded in bulk (or built meanwhile by `build`)."""
    if build is not None:
        build.attach(conn)
        return
    added = "SELECT row_key, fingerprint FROM _writes WHERE NOT skip AND action = 'added'"
    if not fingerprints.has_partition(conn, ctx.sync.name):
        if counts.added:
            fingerprints.create_partition(conn, ctx.sync.name, added, _params(ctx))
        return
    if counts.added:
        conn.exec_driver_sql(
            f"""INSERT INTO sync_fingerprints (sync_name, row_key, fingerprint)
            SELECT %(sync)s, row_key, fingerprint FROM ({added}) a
            ORDER BY row_key COLLATE "C"  -- sorted, the primary key index is filled page by page""",
            _params(ctx),
        )
    if counts.changed:
        # only then: with no changed row in its statistics the planner may pick a plan that scans _writes
        # once per fingerprint of the sync
        conn.exec_driver_sql(
            """UPDATE sync_fingerprints f SET fingerprint = w.fingerprint
            FROM (SELECT row_key, fingerprint FROM _writes WHERE NOT skip AND action = 'changed') w
            WHERE f.sync_name = %(sync)s AND f.row_key = w.row_key""",
            _params(ctx),
        )


def _plan_removed(conn: sa.Connection, ctx: WriteContext, plan: Plan) -> int:
    """Create _removed: keys this sync wrote before that the full query no longer returns."""
    if (
        not ctx.full_sync
        or plan.stored
        == conn.exec_driver_sql(
            "SELECT count(*) FROM sync_fingerprints WHERE sync_name = %(sync)s", _params(ctx)
        ).scalar_one()
    ):
        # every stored key is among the accepted rows (each matched one, and they have distinct keys)
        conn.exec_driver_sql("CREATE TEMP TABLE _removed (row_key text) ON COMMIT DROP")
        return 0
    # CREATE TABLE AS, unlike INSERT … SELECT, may run its anti-join in parallel workers
    return conn.exec_driver_sql(
        f"""CREATE TEMP TABLE _removed ON COMMIT DROP AS SELECT f.row_key FROM sync_fingerprints f
        WHERE f.sync_name = %(sync)s AND NOT EXISTS (
            SELECT 1 FROM ({ctx.all_keys_select}) k WHERE k.row_key = f.row_key)""",
        _params(ctx),
    ).rowcount


def _forget_removed(conn: sa.Connection, ctx: WriteContext) -> None:
    conn.exec_driver_sql(
        "DELETE FROM sync_fingerprints f USING _removed r WHERE f.sync_name = %(sync)s AND f.row_key = r.row_key",
        _params(ctx),
    )


# --- contacts --------------------------------------------------------------------------------------------


def _newer(field: str) -> str:
    """The row is at least as recent as the store's value of this field."""
    return f"w.ts >= coalesce((c.field_updated_at ->> '{field}')::timestamptz, '-infinity')"


def _same_stamp(fields: list[str]) -> str:
    """field_updated_at for a new contact: every written field stamped with the row's time. jsonb_object over
    two arrays builds it about three times faster than jsonb_build_object over the pairs."""
    if not fields:
        return "'{}'::jsonb"
    keys = "ARRAY[" + ", ".join(f"'{f}'" for f in fields) + "]::text[]"
    return f"jsonb_object({keys}, array_fill(w.ts_json #>> '{{}}', ARRAY[{len(fields)}]))"


def delete_contacts(conn: sa.Connection, ids_select: str) -> int:
    """Delete contacts with their events and relationships (those tables carry no foreign keys)."""
    conn.exec_driver_sql(f"DELETE FROM events WHERE contact_id IN ({ids_select})")
    conn.exec_driver_sql(f"DELETE FROM object_relationships WHERE contact_id IN ({ids_select})")
    return conn.exec_driver_sql(f"DELETE FROM contacts WHERE id IN ({ids_select})").rowcount


def write_contacts(conn: sa.Connection, ctx: WriteContext) -> WriteCounts:
    """New emails become contacts with all their fields in one INSERT; known ones get the fields they are newer for."""
    counts = WriteCounts()
    lock_identities(conn)
    plan = _plan_changes(conn, ctx)
    with _fingerprint_build(conn, ctx, plan) as build:
        mode = ctx.sync.mode
        ctx.matcher.resolve_table(
            conn,
            "_writes",
            email_column="email",
            create=False,
            unique_emails=True,
            normalized_email_column="email_norm",
        )
        if mode == "update":
            conn.exec_driver_sql("UPDATE _writes SET skip = true WHERE contact_id IS NULL")
        elif mode == "insert":
            conn.exec_driver_sql("UPDATE _writes SET skip = true WHERE contact_id IS NOT NULL")
        std = [f for f in STANDARD_CONTACT_FIELDS if f in ctx.written_fields]
        custom = [f for f in ctx.written_fields if f not in STANDARD_CONTACT_FIELDS]
        col = {f: f"w.{c}" for f, c in ctx.field_columns.items()}
        custom_json = json_object_sql([(f, col[f]) for f in custom])
        # Rule 3 of identity matching, with the row's fields: one contact per new email (rows are unique by email).
        counts.contacts_created = conn.exec_driver_sql(
            f"""INSERT INTO contacts (email, email_normalized, {", ".join([*std, "custom_fields", "field_updated_at"])})
            SELECT w.email, w.email_norm, {", ".join([*(f"{col[f]}::text" for f in std), custom_json, _same_stamp(ctx.written_fields)])}
            FROM _writes w WHERE w.contact_id IS NULL AND NOT w.skip"""
        ).rowcount
        sets = [f"{f} = CASE WHEN {_newer(f)} THEN {col[f]}::text ELSE c.{f} END" for f in std]
        # "Not newer" implies the field was written before with its timestamp, so the ELSE values exist.
        if custom:
            merged = json_object_sql(
                [
                    (f, f"CASE WHEN {_newer(f)} THEN to_jsonb({col[f]}) ELSE c.custom_fields -> '{f}' END")
                    for f in custom
                ]
            )
            sets.append(f"custom_fields = c.custom_fields || {merged}")
        stamps = json_object_sql(
            [
                (f, f"CASE WHEN {_newer(f)} THEN w.ts_json ELSE c.field_updated_at -> '{f}' END")
                for f in ctx.written_fields
            ]
        )
        sets += [f"field_updated_at = c.field_updated_at || {stamps}", "updated_at = now()"]
        conn.exec_driver_sql(
            f"UPDATE contacts c SET {', '.join(sets)} FROM _writes w "
            "WHERE w.contact_id IS NOT NULL AND c.id = w.contact_id AND NOT w.skip"
        )
        _count_actions(conn, counts, plan.accepted)
        counts.removed = _plan_removed(conn, ctx, plan)
        _save_fingerprints(conn, ctx, counts, build)
        if counts.removed and ctx.sync.delete_behavior != "do_nothing":
            conn.exec_driver_sql(
                "CREATE TEMP TABLE _removed_contacts (email text, contact_id bigint) ON COMMIT DROP;"
                "INSERT INTO _removed_contacts (email) SELECT row_key FROM _removed"
            )
            ctx.matcher.resolve_table(conn, "_removed_contacts", email_column="email", create=False)
            if ctx.sync.delete_behavior == "delete":
                delete_contacts(conn, "SELECT contact_id FROM _removed_contacts WHERE contact_id IS NOT NULL")
            else:
                clears = [f"{f} = NULL" for f in std]
                array = "ARRAY[" + ", ".join(f"'{f}'" for f in custom) + "]::text[]"
                clears += [f"custom_fields = c.custom_fields - {array}", "updated_at = now()"]
                conn.exec_driver_sql(
                    f"UPDATE contacts c SET {', '.join(clears)} FROM _removed_contacts r WHERE c.id = r.contact_id"
                )
        _forget_removed(conn, ctx)
        _drop_writes(conn, plan.view)
        return counts


def _resolve_emails(conn: sa.Connection, ctx: WriteContext, create: bool) -> int:
    """Resolve each distinct email of the rows to write into `_related` (email_norm → contact_id), once per
    email rather than once per row; writers join it. Returns the contacts created."""
    identity = ctx.matcher.create_email_table(
        conn,
        "_related",
        """SELECT DISTINCT ON (email_norm COLLATE "C") email, email_norm FROM _writes
        WHERE NOT skip AND email_norm IS NOT NULL ORDER BY email_norm COLLATE "C", email""",
        create=create,
    )
    return identity.created


# --- custom objects --------------------------------------------------------------------------------------


def row_fields_json(ctx: WriteContext, alias: str) -> str:
    """SQL for a row's written fields as one JSON object (keys are the field names)."""
    return json_object_sql([(f, f"{alias}.{c}") for f, c in ctx.field_columns.items()])


def write_custom_objects(conn: sa.Connection, ctx: WriteContext) -> WriteCounts:
    counts = WriteCounts()
    object_type = ctx.sync.destination.object_type
    params = {**_params(ctx), "object_type": object_type}
    lock_identities(conn)
    plan = _plan_changes(conn, ctx)
    with _fingerprint_build(conn, ctx, plan) as build:
        mode = ctx.sync.mode
        if mode in ("update", "insert"):
            exists = "EXISTS" if mode == "update" else "NOT EXISTS"
            conn.exec_driver_sql(
                f"""UPDATE _writes w SET skip = true WHERE NOT {exists} (
                    SELECT 1 FROM custom_objects o WHERE o.object_type = %(object_type)s AND o.object_id = w.object_id)""",
                params,
            )
        counts.contacts_created = _resolve_emails(conn, ctx, create=mode != "update")
        _count_actions(conn, counts, plan.accepted)
        _write_objects(conn, ctx, params)
        _write_relationships(conn, params)
        counts.removed = _plan_removed(conn, ctx, plan)
        _save_fingerprints(conn, ctx, counts, build)
        if counts.removed and ctx.sync.delete_behavior != "do_nothing":
            _remove_objects(conn, ctx, params)
        _forget_removed(conn, ctx)
        _drop_writes(conn, plan.view)
        return counts


def _write_objects(conn: sa.Connection, ctx: WriteContext, params: dict[str, object]) -> None:
    """Each object written takes the fields of its latest row among all rows of the run, changed or not. Known
    objects are updated and new ones inserted without ON CONFLICT, as relationships are (only this writer
    writes objects, under the identity lock)."""
    # only the written columns go through the sort, not whole rows
    columns = "".join(f", r.{column}" for column in ctx.field_columns.values())
    conn.exec_driver_sql(
        f"""CREATE TEMP TABLE _objects ON COMMIT DROP AS
        SELECT x.object_id, {row_fields_json(ctx, "x")} AS fields
        FROM (
            SELECT DISTINCT ON (r.object_id COLLATE "C") r.object_id{columns} FROM {ctx.rows_table} r
            WHERE r.problem IS NULL AND r.object_id IN (SELECT object_id FROM _writes WHERE NOT skip)
            ORDER BY r.object_id COLLATE "C", r.updated_at DESC NULLS LAST, r.row_number DESC
        ) x;
        ANALYZE _objects"""
    )
    conn.exec_driver_sql(
        """UPDATE custom_objects o SET fields = o.fields || x.fields, updated_at = now() FROM _objects x
        WHERE o.object_type = %(object_type)s AND o.object_id = x.object_id""",
        params,
    )
    conn.exec_driver_sql(
        """INSERT INTO custom_objects (object_type, object_id, fields)
        SELECT %(object_type)s, x.object_id, x.fields FROM _objects x
        WHERE NOT EXISTS (SELECT 1 FROM custom_objects o WHERE o.object_type = %(object_type)s AND o.object_id = x.object_id)
        ORDER BY x.object_id COLLATE "C"
        """,
        params,
    )


def _write_relationships(conn: sa.Connection, params: dict[str, object]) -> None:
    """One relationship per (object, contact), with the fields of its latest row. Known pairs are updated and
    new ones inserted with a plain INSERT (only this writer adds pairs, under the identity lock):
    ON CONFLICT's speculative insertion made a first load's inserts 1.7 times as slow."""
    conn.exec_driver_sql(
        """CREATE TEMP TABLE _pairs ON COMMIT DROP AS
        SELECT DISTINCT ON (w.object_id COLLATE "C", r.contact_id) w.object_id, r.contact_id,
               coalesce(w.rel_fields, '{}') AS fields
        FROM _writes w JOIN _related r ON r.email_norm = w.email_norm
        WHERE NOT w.skip AND r.contact_id IS NOT NULL
        ORDER BY w.object_id COLLATE "C", r.contact_id, w.updated_at DESC NULLS LAST, w.row_number DESC;
        ANALYZE _pairs"""
    )
    conn.exec_driver_sql(
        """UPDATE object_relationships o SET fields = p.fields, updated_at = now() FROM _pairs p
        WHERE o.object_type = %(object_type)s AND o.object_id = p.object_id AND o.contact_id = p.contact_id""",
        params,
    )
    conn.exec_driver_sql(
        """INSERT INTO object_relationships (object_type, object_id, contact_id, fields)
        SELECT %(object_type)s, p.object_id, p.contact_id, p.fields FROM _pairs p
        WHERE NOT EXISTS (SELECT 1 FROM object_relationships o
                          WHERE o.object_type = %(object_type)s AND o.object_id = p.object_id
                            AND o.contact_id = p.contact_id)
        ORDER BY p.object_id COLLATE "C", p.contact_id  -- the primary key's order: filled page by page""",
        params,
    )


def _remove_objects(conn: sa.Connection, ctx: WriteContext, params: dict[str, object]) -> None:
    """Apply delete_behavior to relationships and objects the full query no longer returns."""
    conn.exec_driver_sql(
        f"""CREATE TEMP TABLE _removed_pairs ON COMMIT DROP AS
        SELECT split_part(row_key, chr(31), 1) AS object_id, NULLIF(split_part(row_key, chr(31), 2), '') AS email,
               NULL::bigint AS contact_id,
               NOT EXISTS (SELECT 1 FROM ({ctx.all_keys_select}) k
                           WHERE split_part(k.row_key, chr(31), 1) = split_part(r.row_key, chr(31), 1)) AS object_gone
        FROM _removed r""",
        params,
    )
    ctx.matcher.resolve_table(conn, "_removed_pairs", email_column="email", create=False)
    if ctx.sync.delete_behavior == "delete":
        conn.exec_driver_sql(
            """DELETE FROM object_relationships o USING _removed_pairs p
            WHERE o.object_type = %(object_type)s AND o.object_id = p.object_id AND o.contact_id = p.contact_id""",
            params,
        )
        conn.exec_driver_sql(
            """DELETE FROM object_relationships o USING _removed_pairs p
            WHERE o.object_type = %(object_type)s AND o.object_id = p.object_id AND p.object_gone""",
            params,
        )
        conn.exec_driver_sql(
            """DELETE FROM custom_objects o USING _removed_pairs p
            WHERE o.object_type = %(object_type)s AND o.object_id = p.object_id AND p.object_gone""",
            params,
        )
    else:
        array = "ARRAY[" + ", ".join(f"'{f}'" for f in ctx.written_fields) + "]::text[]"
        conn.exec_driver_sql(
            """UPDATE object_relationships o SET fields = '{}'::jsonb, updated_at = now() FROM _removed_pairs p
            WHERE o.object_type = %(object_type)s AND o.object_id = p.object_id AND o.contact_id = p.contact_id""",
            params,
        )
        conn.exec_driver_sql(
            f"""UPDATE custom_objects o SET fields = o.fields - {array}, updated_at = now() FROM _removed_pairs p
            WHERE o.object_type = %(object_type)s AND o.object_id = p.object_id AND p.object_gone""",
            params,
        )


# --- events ----------------------------------------------------------------------------------------------


def write_events(conn: sa.Connection, ctx: WriteContext) -> WriteCounts:
    """Events are inserted once per message_id. _writes is a view of the accepted rows whose message_id is not
    stored yet (every statement reads the events as they are when it starts), not a copy of them.

    A plain INSERT, not ON CONFLICT DO NOTHING (whose speculative insertion made a million events 1.3 times as
    slow): validation keeps one row per message_id, the view leaves out stored ones, and only this writer
    inserts events, under the identity lock, so none can appear in between. Were one to, the unique index
    fails the run, which changes nothing."""
    counts = WriteCounts()
    lock_identities(conn)
    conn.exec_driver_sql(
        f"""CREATE TEMP VIEW _writes AS SELECT r.* FROM {ctx.rows_table} r
        WHERE r.problem IS NULL AND NOT EXISTS (SELECT 1 FROM events e WHERE e.message_id = r.message_id)"""
    )
    total = conn.exec_driver_sql(f"SELECT count(*) FROM {ctx.rows_table} WHERE problem IS NULL").scalar_one()
    create = ctx.sync.mode != "update"
    counts.contacts_created = _resolve_emails(conn, ctx, create=create)
    inserted = conn.exec_driver_sql(
        """INSERT INTO events (message_id, contact_id, event_name, timestamp, properties, sync_name)
        SELECT w.message_id, r.contact_id, w.event_name, w.event_ts, w.properties, %(sync)s
        FROM _writes w JOIN _related r ON r.email_norm = w.email_norm WHERE r.contact_id IS NOT NULL
        -- sorted, the unique index on message_id is filled page by page; byte order sorts several times
        -- faster than a linguistic collation's, and is the index's own order under C and C.UTF-8
        ORDER BY w.message_id COLLATE "C"
        """,
        _params(ctx),
    ).rowcount
    if not create:  # mode update: events of emails with no contact are skipped (and not stored since)
        counts.skipped = conn.exec_driver_sql(
            "SELECT count(*) FROM _writes w LEFT JOIN _related r ON r.email_norm = w.email_norm "
            "WHERE r.contact_id IS NULL"
        ).scalar_one()
    _drop_writes(conn, view=True)
    counts.added = inserted
    counts.events_deduplicated = total - counts.skipped - inserted
    counts.unchanged = counts.events_deduplicated
    return counts


WRITERS = {"contacts": write_contacts, "custom_objects": write_custom_objects, "events": write_events}
