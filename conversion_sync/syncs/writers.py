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
from conversion_sync.store.contacts import incoming_wins_sql, lock_identities, sql_literal
from conversion_sync.store.identity import IdentityMatcher
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
    queried: int = 0
    """Rows the query returned."""
    rejected: int = 0
    """Rows validation rejected (they count against the removal guard)."""
    peer_syncs: list[str] = field(default_factory=list)
    """Other configured syncs writing the same destination: a record one of them still provides is not deleted."""


class RemovalRefused(Exception):
    """A full sync would remove more keys than its removal guard allows; nothing was written."""


def _params(ctx: WriteContext) -> dict[str, object]:
    return {
        "sync": ctx.sync.name,
        "run_id": ctx.run_id,
        "started": ctx.run_started,
        "peers": ctx.peer_syncs,
        "object_type": ctx.sync.destination.object_type,
    }


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
    version: int = 0
    """This transaction's id as the xmin of the rows it writes (the version fingerprints record)."""


def _plan_changes(conn: sa.Connection, ctx: WriteContext) -> Plan:
    """Make _writes: the accepted rows to write or check (all but those planned unchanged).

    Validation planned each row's action against the sync's fingerprints (a fingerprint whose store record has
    changed since was forgotten first, so its row is written again). If another run of this sync wrote since
    (or it was reset), the rows table is first rebuilt against the fingerprints stored now: under the identity
    lock, nothing else can write them until this transaction ends. When most rows are to be written (a first
    run) _writes is a view of the rows table, so a million rows are not copied once more; when few are, a small
    copy spares each writing statement a scan of all the rows.
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
    version = conn.exec_driver_sql("SELECT pg_current_xact_id()::xid::text::bigint").scalar_one()
    return Plan(accepted=total, stored=stored, view=view, rebuilt=rebuilt, version=version)


def _drop_writes(conn: sa.Connection, view: bool) -> None:
    """Temporary views outlive the transaction (unlike ON COMMIT DROP tables), and the session is pooled."""
    if view:
        conn.exec_driver_sql("DROP VIEW _writes")


CONCURRENT_BUILD_ROWS = 100_000
"""A sync's first fingerprints from this many new rows on are built on a second connection (PartitionBuild)."""


@contextmanager
def _fingerprint_build(
    conn: sa.Connection, ctx: WriteContext, plan: Plan, only_new_records: str
) -> Iterator[fingerprints.PartitionBuild | None]:
    """For a sync's first large load, build its fingerprint partition on a second core while this transaction
    writes the store (discarded if the writer fails). Only in mode upsert (every new row is written, so the new
    keys are known before the writes), from the committed rows table (not one rebuilt in this transaction), and
    when `only_new_records` (SQL) says no row meets a stored record: then every row's record is written by this
    transaction, whose id is each fingerprint's version. Never in a dry run, whose work must not outlive it.
    Yields None when the partition is written inline."""
    build = None
    if not (
        ctx.dry_run
        or plan.rebuilt
        or ctx.sync.mode != "upsert"
        or plan.accepted - plan.stored < CONCURRENT_BUILD_ROWS
        or fingerprints.has_partition(conn, ctx.sync.name)
        or not conn.exec_driver_sql(only_new_records).scalar_one()
    ):
        build = fingerprints.PartitionBuild(
            conn.engine,
            ctx.sync.name,
            f"""SELECT row_key, fingerprint, %(version)s::bigint AS record_version,
                       CASE WHEN email_norm IS NOT NULL AND object_id IS NOT NULL THEN %(version)s::bigint END
                           AS link_version
                FROM {ctx.rows_table} WHERE problem IS NULL AND action = 'added'""",
            {**_params(ctx), "version": plan.version},
        )
    try:
        yield build
    except BaseException:
        if build is not None:
            build.discard()
        raise


def _save_fingerprints(
    conn: sa.Connection, ctx: WriteContext, plan: Plan, saved: str, build: fingerprints.PartitionBuild | None
) -> None:
    """Record what this run wrote or checked: `saved` (SQL) yields (row_key, fingerprint, record_version,
    link_version, action) for every row to remember, the store record's version being its xmin now. New keys
    are inserted, changed ones updated. A row left out (one whose values the store holds newer) keeps no
    fingerprint, so its key is planned again by the next run. Under the identity lock no other run of this
    sync can have written a key since _plan_changes, so a plain INSERT (much cheaper than ON CONFLICT) is safe.
    A sync's first fingerprints become its partition, loaded in bulk (or built meanwhile by `build`)."""
    params = _params(ctx)
    conn.exec_driver_sql(
        """DELETE FROM sync_fingerprints f USING _writes w
        WHERE f.sync_name = %(sync)s AND f.row_key = w.row_key AND w.action = 'changed' AND (w.skip OR w.declined)""",
        params,
    )
    if build is not None:
        build.attach(conn)
        return
    added = (
        f"SELECT row_key, fingerprint, record_version, link_version FROM ({saved}) s WHERE action = 'added'"
    )
    if not fingerprints.has_partition(conn, ctx.sync.name):
        fingerprints.create_partition(conn, ctx.sync.name, added, params)
        return
    conn.exec_driver_sql(
        f"""INSERT INTO sync_fingerprints (sync_name, row_key, fingerprint, record_version, link_version)
        SELECT %(sync)s, row_key, fingerprint, record_version, link_version FROM ({added}) a
        ORDER BY row_key COLLATE "C"  -- sorted, the primary key index is filled page by page""",
        params,
    )
    conn.exec_driver_sql(
        f"""UPDATE sync_fingerprints f SET fingerprint = w.fingerprint, record_version = w.record_version,
               link_version = w.link_version
        FROM ({saved}) w WHERE w.action = 'changed' AND f.sync_name = %(sync)s AND f.row_key = w.row_key""",
        params,
    )


def _plan_removed(conn: sa.Connection, ctx: WriteContext, plan: Plan) -> int:
    """Create _removed: keys this sync wrote before that the full query no longer returns; apply the guard."""
    stored = (
        conn.exec_driver_sql(
            "SELECT count(*) FROM sync_fingerprints WHERE sync_name = %(sync)s", _params(ctx)
        ).scalar_one()
        if ctx.full_sync
        else 0
    )
    if not ctx.full_sync or plan.stored == stored:
        # every stored key is among the accepted rows (each matched one, and they have distinct keys)
        conn.exec_driver_sql("CREATE TEMP TABLE _removed (row_key text) ON COMMIT DROP")
        return 0
    # CREATE TABLE AS, unlike INSERT … SELECT, may run its anti-join in parallel workers
    removed = conn.exec_driver_sql(
        f"""CREATE TEMP TABLE _removed ON COMMIT DROP AS SELECT f.row_key FROM sync_fingerprints f
        WHERE f.sync_name = %(sync)s AND NOT EXISTS (
            SELECT 1 FROM ({ctx.all_keys_select}) k WHERE k.row_key = f.row_key)""",
        _params(ctx),
    ).rowcount
    _guard_removals(ctx, removed, stored)
    return removed


def _guard_removals(ctx: WriteContext, removed: int, stored: int) -> None:
    """Refuse, before anything is written, a run that would remove more of the sync's keys than it allows."""
    sync = ctx.sync
    if not removed or sync.delete_behavior == "do_nothing":
        return
    what = "delete" if sync.delete_behavior == "delete" else "clear the fields of"
    if ctx.queried == 0 and not sync.allow_empty_result:
        raise RemovalRefused(
            f"sync '{sync.name}': the full query returned no rows, so this run would {what} all {removed} "
            f"keys the sync wrote (delete_behavior: {sync.delete_behavior}). Nothing was written and the "
            "watermark did not move. If the source is really empty now, set allow_empty_result: true in the "
            "sync's file and run it again."
        )
    limit = sync.removal_limit(stored)
    if removed + ctx.rejected > limit:
        rejected = f" and {ctx.rejected} rows were rejected" if ctx.rejected else ""
        raise RemovalRefused(
            f"sync '{sync.name}': this run would {what} {removed} of the sync's {stored} keys{rejected}, more "
            f"than max_removed: {sync.max_removed} allows ({limit}). Nothing was written and the watermark did "
            "not move. Check the query's result (a join that lost rows, a column that became NULL); if these "
            f"removals are intended, raise max_removed in the sync's file (for example max_removed: "
            f"{removed + ctx.rejected}) and run it again."
        )


def _forget_removed(conn: sa.Connection, ctx: WriteContext) -> None:
    conn.exec_driver_sql(
        "DELETE FROM sync_fingerprints f USING _removed r WHERE f.sync_name = %(sync)s AND f.row_key = r.row_key",
        _params(ctx),
    )


# --- contacts --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ContactField:
    """One written contact field: its typed value in `w`, its stored value in `c`, and the merge rule."""

    name: str
    value: str
    stored: str
    standard: bool
    keep_nulls: bool

    @property
    def differs(self) -> str:
        present = f"{self.value} IS NOT NULL AND " if self.keep_nulls else ""
        return f"({present}{self.value} IS DISTINCT FROM {self.stored})"

    @property
    def applies(self) -> str:
        """The row changes this field's stored value: it differs and it wins the merge rule."""
        return f"({self.differs} AND {incoming_wins_sql(self.name, 'w.ts')})"

    @property
    def declined(self) -> str:
        """The row's value differs, but the store holds a newer one."""
        return f"({self.differs} AND NOT {incoming_wins_sql(self.name, 'w.ts')})"


def contact_fields(ctx: WriteContext) -> list[_ContactField]:
    out = []
    for name in ctx.written_fields:
        column = f"w.{ctx.field_columns[name]}"
        if name in STANDARD_CONTACT_FIELDS:
            out.append(_ContactField(name, f"{column}::text", f"c.{name}", True, ctx.sync.nulls == "keep"))
        else:
            stored = f"NULLIF(c.custom_fields -> {sql_literal(name)}, 'null'::jsonb)"
            out.append(_ContactField(name, f"to_jsonb({column})", stored, False, ctx.sync.nulls == "keep"))
    return out


def _new_contact_stamps(ctx: WriteContext, fields: list[_ContactField]) -> str:
    """field_updated_at for a new contact: every written field stamped with the row's time (with `nulls: keep`,
    only those with a value). jsonb_object over two arrays builds it about three times faster than
    jsonb_build_object over the pairs."""
    if not fields:
        return "'{}'::jsonb"
    if ctx.sync.nulls == "keep":
        pairs = [(f.name, f"CASE WHEN {f.value} IS NOT NULL THEN w.ts_json END") for f in fields]
        return f"jsonb_strip_nulls({json_object_sql(pairs)})"
    keys = "ARRAY[" + ", ".join(sql_literal(f.name) for f in fields) + "]::text[]"
    return f"jsonb_object({keys}, array_fill(w.ts_json #>> '{{}}', ARRAY[{len(fields)}]))"


def _insert_contacts(conn: sa.Connection, ctx: WriteContext, fields: list[_ContactField]) -> int:
    """Rule 3 of identity matching, with the row's fields: one contact per new email (rows are unique by email)."""
    std = [f for f in fields if f.standard]
    custom_json = json_object_sql([(f.name, f.value) for f in fields if not f.standard])
    if ctx.sync.nulls == "keep":
        custom_json = f"jsonb_strip_nulls({custom_json})"
    columns = ", ".join(
        ["email", "email_normalized", *(f.name for f in std), "custom_fields", "field_updated_at"]
    )
    values = ", ".join(["w.email", "w.email_norm", *(f.value for f in std), custom_json])
    return conn.exec_driver_sql(
        f"""INSERT INTO contacts ({columns})
        SELECT {values}, {_new_contact_stamps(ctx, fields)}
        FROM _writes w WHERE w.contact_id IS NULL AND NOT w.skip"""
    ).rowcount


def _update_contacts(conn: sa.Connection, fields: list[_ContactField]) -> int:
    """Known contacts take each field the row changes and wins (the merge rule); a contact whose stored values
    all equal the row's, or hold newer ones, is not written at all. Returns the contacts changed."""
    if not fields:
        return 0
    sets = [
        f"{f.name} = CASE WHEN {f.applies} THEN {f.value} ELSE c.{f.name} END" for f in fields if f.standard
    ]
    custom = [f for f in fields if not f.standard]
    if custom:
        merged = json_object_sql(
            [
                (
                    f.name,
                    f"CASE WHEN {f.applies} THEN {f.value} ELSE c.custom_fields -> {sql_literal(f.name)} END",
                )
                for f in custom
            ]
        )
        sets.append(f"custom_fields = c.custom_fields || {merged}")
    stamps = json_object_sql(
        [
            (
                f.name,
                f"CASE WHEN {f.applies} THEN w.ts_json ELSE c.field_updated_at -> {sql_literal(f.name)} END",
            )
            for f in fields
        ]
    )
    sets += [f"field_updated_at = jsonb_strip_nulls(c.field_updated_at || {stamps})", "updated_at = now()"]
    return conn.exec_driver_sql(
        f"""UPDATE contacts c SET {", ".join(sets)} FROM _writes w
        WHERE w.contact_id IS NOT NULL AND c.id = w.contact_id AND NOT w.skip
          AND ({" OR ".join(f.applies for f in fields)})"""
    ).rowcount


def _mark_declined(conn: sa.Connection, fields: list[_ContactField]) -> int:
    """Rows with a value the store holds newer (the merge rule kept the stored one): they record no fingerprint,
    so a later row with a newer updated_at is applied even if its values are the same."""
    if not fields:
        return 0
    return conn.exec_driver_sql(
        f"""UPDATE _writes w SET declined = true FROM contacts c
        WHERE w.contact_id IS NOT NULL AND c.id = w.contact_id AND NOT w.skip
          AND ({" OR ".join(f.declined for f in fields)})"""
    ).rowcount


def _contact_fingerprints(plan: Plan) -> str:
    """(row_key, fingerprint, record_version, link_version, action) of the contact rows to remember."""
    return f"""SELECT w.row_key, w.fingerprint, coalesce(c.xmin::text::bigint, {plan.version}) AS record_version,
               NULL::bigint AS link_version, w.action
        FROM _writes w LEFT JOIN contacts c ON c.id = w.contact_id
        WHERE NOT w.skip AND NOT w.declined"""


def provided_elsewhere_sql(contact: str, email_key: str) -> str:
    """SQL true when a contact is still provided by something other than this sync: a Salesforce record, a
    campaign membership, a custom object's relationship or an event (written by other syncs), or another
    contacts sync's last write of its e-mail."""
    return f"""({contact}.salesforce_id IS NOT NULL
        OR EXISTS (SELECT 1 FROM campaign_members m WHERE m.contact_id = {contact}.id)
        OR EXISTS (SELECT 1 FROM object_relationships o WHERE o.contact_id = {contact}.id)
        OR EXISTS (SELECT 1 FROM events e WHERE e.contact_id = {contact}.id)
        OR EXISTS (SELECT 1 FROM sync_fingerprints f
                   WHERE f.sync_name = ANY(%(peers)s::text[]) AND f.row_key = {email_key}))"""


def _remove_contacts(
    conn: sa.Connection, ctx: WriteContext, fields: list[_ContactField], counts: WriteCounts
) -> None:
    """Apply delete_behavior to the contacts of removed keys: clear_fields clears this sync's fields (and their
    stamps, so the next value any writer brings applies); delete deletes a contact nothing else provides and
    clears this sync's fields of the others (counted apart)."""
    conn.exec_driver_sql(
        "CREATE TEMP TABLE _removed_contacts (email text, contact_id bigint) ON COMMIT DROP;"
        "INSERT INTO _removed_contacts (email) SELECT row_key FROM _removed"
    )
    ctx.matcher.resolve_table(conn, "_removed_contacts", email_column="email", create=False)
    params = _params(ctx)
    if ctx.sync.delete_behavior == "delete":
        deleted = conn.exec_driver_sql(
            f"""DELETE FROM contacts c USING _removed_contacts r
            WHERE c.id = r.contact_id AND NOT {provided_elsewhere_sql("c", "r.email")}""",
            params,
        ).rowcount
        counts.extra["contacts_deleted"] = deleted
    clears = [f"{f.name} = NULL" for f in fields if f.standard]
    custom = [f.name for f in fields if not f.standard]
    if custom:
        clears.append(
            f"custom_fields = c.custom_fields - ARRAY[{', '.join(sql_literal(n) for n in custom)}]::text[]"
        )
    if not clears:
        return
    # a cleared field keeps no stamp: the next value any writer brings applies
    names = ", ".join(sql_literal(f.name) for f in fields)
    clears += [f"field_updated_at = c.field_updated_at - ARRAY[{names}]::text[]", "updated_at = now()"]
    cleared = conn.exec_driver_sql(
        f"UPDATE contacts c SET {', '.join(clears)} FROM _removed_contacts r WHERE c.id = r.contact_id",
        params,
    ).rowcount
    if ctx.sync.delete_behavior == "delete":
        counts.extra["kept_provided_elsewhere"] = cleared


def write_contacts(conn: sa.Connection, ctx: WriteContext) -> WriteCounts:
    """New emails become contacts with all their fields in one INSERT; known ones take the fields they change
    and win by the merge rule. Counts say what happened: added (contact created), changed (a stored value
    changed), unchanged (nothing written), skipped (by mode), older_than_store (a value kept because the store's
    is newer)."""
    counts = WriteCounts()
    lock_identities(conn)
    plan = _plan_changes(conn, ctx)
    counts.removed = _plan_removed(conn, ctx, plan)
    ctx.matcher.resolve_table(
        conn,
        "_writes",
        email_column="email",
        create=False,
        unique_emails=True,
        normalized_email_column="email_norm",
    )
    only_new = "SELECT NOT EXISTS (SELECT 1 FROM _writes WHERE contact_id IS NOT NULL)"
    with _fingerprint_build(conn, ctx, plan, only_new) as build:
        if ctx.sync.mode == "update":
            conn.exec_driver_sql("UPDATE _writes SET skip = true WHERE contact_id IS NULL")
        elif ctx.sync.mode == "insert":
            conn.exec_driver_sql("UPDATE _writes SET skip = true WHERE contact_id IS NOT NULL")
        fields = contact_fields(ctx)
        counts.added = counts.contacts_created = _insert_contacts(conn, ctx, fields)
        counts.changed = _update_contacts(conn, fields)
        counts.extra["older_than_store"] = _mark_declined(conn, fields)
        counts.skipped = conn.exec_driver_sql("SELECT count(*) FROM _writes WHERE skip").scalar_one()
        counts.unchanged = plan.accepted - counts.added - counts.changed - counts.skipped
        _save_fingerprints(conn, ctx, plan, _contact_fingerprints(plan), build)
        if counts.removed and ctx.sync.delete_behavior != "do_nothing":
            _remove_contacts(conn, ctx, fields, counts)
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
    """Objects take the fields of their latest row; each (object, e-mail) row relates the object to a contact.
    Counts are per row: added (its object or relationship created), changed (a stored value of either
    changed), unchanged (nothing written), skipped (by mode)."""
    counts = WriteCounts()
    object_type = ctx.sync.destination.object_type or ""
    params = _params(ctx)
    lock_identities(conn)
    plan = _plan_changes(conn, ctx)
    counts.removed = _plan_removed(conn, ctx, plan)
    only_new = f"""SELECT NOT EXISTS (SELECT 1 FROM _writes w JOIN custom_objects o
                                  ON o.object_type = {sql_literal(object_type)} AND o.object_id = w.object_id)"""
    with _fingerprint_build(conn, ctx, plan, only_new) as build:
        mode = ctx.sync.mode
        if mode in ("update", "insert"):
            exists = "EXISTS" if mode == "update" else "NOT EXISTS"
            conn.exec_driver_sql(
                f"""UPDATE _writes w SET skip = true WHERE NOT {exists} (
                    SELECT 1 FROM custom_objects o WHERE o.object_type = %(object_type)s AND o.object_id = w.object_id)""",
                params,
            )
        counts.contacts_created = _resolve_emails(conn, ctx, create=mode != "update")
        _write_objects(conn, ctx, params)
        _write_relationships(conn, params)
        _count_object_rows(conn, plan, params, counts)
        _save_fingerprints(conn, ctx, plan, _object_fingerprints(plan), build)
        _refresh_object_versions(conn, params)
        if counts.removed and ctx.sync.delete_behavior != "do_nothing":
            _remove_objects(conn, ctx, params, counts)
        _forget_removed(conn, ctx)
        _drop_writes(conn, plan.view)
        return counts


_OBJECT_ROWS = """FROM _writes w
        JOIN custom_objects o ON o.object_type = %(object_type)s AND o.object_id = w.object_id
        LEFT JOIN _related rl ON rl.email_norm = w.email_norm
        LEFT JOIN object_relationships r
               ON r.object_type = %(object_type)s AND r.object_id = w.object_id AND r.contact_id = rl.contact_id
        WHERE NOT w.skip"""
"""Each written row with its object and (if it has an e-mail) its relationship, as stored now."""


def _count_object_rows(
    conn: sa.Connection, plan: Plan, params: dict[str, object], counts: WriteCounts
) -> None:
    """Per row, what this transaction did to its object and relationship: created one, changed one, or neither."""
    mine = f"xmin::text::bigint = {plan.version}"
    created = f"((o.{mine} AND o.created_at = now()) OR coalesce(r.{mine} AND r.created_at = now(), false))"
    row = conn.exec_driver_sql(
        f"""SELECT count(*) FILTER (WHERE {created}), count(*) FILTER (WHERE NOT {created} AND (o.{mine} OR r.{mine})),
                   (SELECT count(*) FROM _writes WHERE skip)
        {_OBJECT_ROWS}""",
        params,
    ).one()
    counts.added, counts.changed, counts.skipped = row
    counts.unchanged = plan.accepted - counts.added - counts.changed - counts.skipped


def _object_fingerprints(plan: Plan) -> str:
    """(row_key, fingerprint, record_version, link_version, action) of the object rows to remember."""
    del plan
    return f"""SELECT w.row_key, w.fingerprint, o.xmin::text::bigint AS record_version,
               r.xmin::text::bigint AS link_version, w.action
        {_OBJECT_ROWS}"""


def _refresh_object_versions(conn: sa.Connection, params: dict[str, object]) -> None:
    """An object rewritten from all of this run's rows holds what each of them would write: the sync's other
    keys of that object (rows planned unchanged) take its new version, or their next run would see it as moved."""
    conn.exec_driver_sql(
        """UPDATE sync_fingerprints f SET record_version = o.xmin::text::bigint
        FROM _objects x JOIN custom_objects o ON o.object_type = %(object_type)s AND o.object_id = x.object_id
        WHERE f.sync_name = %(sync)s AND f.row_key >= x.object_id || chr(31) AND f.row_key < x.object_id || chr(32)
          AND f.record_version IS DISTINCT FROM o.xmin::text::bigint""",
        params,
    )


def _write_objects(conn: sa.Connection, ctx: WriteContext, params: dict[str, object]) -> None:
    """Each object written takes the fields of its latest row among all rows of the run, changed or not (with
    `nulls: keep`, its non-null ones). Known objects are updated only where a value changes, and new ones
    inserted without ON CONFLICT, as relationships are (only this writer writes objects, under the identity
    lock)."""
    # only the written columns go through the sort, not whole rows
    columns = "".join(f", r.{column}" for column in ctx.field_columns.values())
    fields = row_fields_json(ctx, "x")
    if ctx.sync.nulls == "keep":
        fields = f"jsonb_strip_nulls({fields})"
    conn.exec_driver_sql(
        f"""CREATE TEMP TABLE _objects ON COMMIT DROP AS
        SELECT x.object_id, {fields} AS fields
        FROM (
            SELECT DISTINCT ON (r.object_id COLLATE "C") r.object_id{columns} FROM {ctx.rows_table} r
            WHERE r.problem IS NULL AND r.object_id IN (SELECT object_id FROM _writes WHERE NOT skip)
            ORDER BY r.object_id COLLATE "C", r.updated_at DESC NULLS LAST, r.row_number DESC
        ) x;
        ANALYZE _objects"""
    )
    conn.exec_driver_sql(
        """UPDATE custom_objects o SET fields = o.fields || x.fields, updated_at = now() FROM _objects x
        WHERE o.object_type = %(object_type)s AND o.object_id = x.object_id AND o.fields || x.fields <> o.fields""",
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
    """One relationship per (object, contact), with the fields of its latest row. Known pairs are updated where
    their fields change, and new ones inserted with a plain INSERT (only this writer adds pairs, under the
    identity lock): ON CONFLICT's speculative insertion made a first load's inserts 1.7 times as slow."""
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
        WHERE o.object_type = %(object_type)s AND o.object_id = p.object_id AND o.contact_id = p.contact_id
          AND o.fields <> p.fields""",
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


def _remove_objects(
    conn: sa.Connection, ctx: WriteContext, params: dict[str, object], counts: WriteCounts
) -> None:
    """Apply delete_behavior to relationships and objects the full query no longer returns. `delete` deletes a
    relationship, or an object no row returns any more, only when no other sync writing this object type still
    provides it (its last run wrote that key); those are cleared of this sync's fields instead (counted apart).
    Contacts are never deleted by an objects sync."""
    conn.exec_driver_sql(
        f"""CREATE TEMP TABLE _removed_pairs ON COMMIT DROP AS
        SELECT split_part(row_key, chr(31), 1) AS object_id, NULLIF(split_part(row_key, chr(31), 2), '') AS email,
               NULL::bigint AS contact_id,
               NOT EXISTS (SELECT 1 FROM ({ctx.all_keys_select}) k
                           WHERE split_part(k.row_key, chr(31), 1) = split_part(r.row_key, chr(31), 1)) AS object_gone,
               EXISTS (SELECT 1 FROM sync_fingerprints f WHERE f.sync_name = ANY(%(peers)s::text[])
                       AND f.row_key = r.row_key) AS pair_provided,
               EXISTS (SELECT 1 FROM sync_fingerprints f WHERE f.sync_name = ANY(%(peers)s::text[])
                       AND f.row_key >= split_part(r.row_key, chr(31), 1) || chr(31)
                       AND f.row_key < split_part(r.row_key, chr(31), 1) || chr(32)) AS object_provided
        FROM _removed r""",
        params,
    )
    ctx.matcher.resolve_table(conn, "_removed_pairs", email_column="email", create=False)
    array = "ARRAY[" + ", ".join(sql_literal(f) for f in ctx.written_fields) + "]::text[]"
    delete = ctx.sync.delete_behavior == "delete"
    pair_kept = "p.pair_provided" if delete else "true"
    object_kept = "p.object_provided" if delete else "true"
    if delete:
        conn.exec_driver_sql(
            """DELETE FROM object_relationships o USING _removed_pairs p
            WHERE o.object_type = %(object_type)s AND o.object_id = p.object_id AND o.contact_id = p.contact_id
              AND NOT p.pair_provided""",
            params,
        )
        deleted = conn.exec_driver_sql(
            """DELETE FROM custom_objects o USING _removed_pairs p
            WHERE o.object_type = %(object_type)s AND o.object_id = p.object_id AND p.object_gone
              AND NOT p.object_provided""",
            params,
        ).rowcount
        counts.extra["objects_deleted"] = deleted
    kept = conn.exec_driver_sql(
        f"""UPDATE object_relationships o SET fields = '{{}}'::jsonb, updated_at = now() FROM _removed_pairs p
        WHERE o.object_type = %(object_type)s AND o.object_id = p.object_id AND o.contact_id = p.contact_id
          AND {pair_kept}""",
        params,
    ).rowcount
    kept += conn.exec_driver_sql(
        f"""UPDATE custom_objects o SET fields = o.fields - {array}, updated_at = now() FROM _removed_pairs p
        WHERE o.object_type = %(object_type)s AND o.object_id = p.object_id AND p.object_gone AND {object_kept}""",
        params,
    ).rowcount
    if delete:
        counts.extra["kept_provided_elsewhere"] = kept


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
