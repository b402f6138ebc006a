"""The write steps every destination shares: the plan (_writes), fingerprints, the removal guard, e-mails.

Each destination's module (syncs/destinations/) writes its rows with these steps; none of them knows which
destination it serves. Static statements are module constants; the others are built by the `*_sql` functions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime

import sqlalchemy as sa

from conversion_sync.config.syncs import SyncConfig
from conversion_sync.store import fingerprints, statistics, sync_state, trace
from conversion_sync.store.identity import IdentityMatcher
from conversion_sync.store.sql_text import column_ref, json_object_sql, quote_literal


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
    """Qualified, quoted name of the typed rows table built by validation."""
    all_keys_select: str
    """SELECT row_key over every staged row, accepted or rejected (for removals in full syncs)."""
    written_fields: list[str]
    """Destination fields the query provides (for clear_fields)."""
    field_columns: dict[str, str]
    """Written field → its typed column in the rows table (not quoted)."""
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
    trace_aside: trace.TraceAside | None = None
    """A first load's trace, written on a connection of its own meanwhile (writers.fingerprint_build)."""


class RemovalRefused(Exception):
    """A full sync would remove more keys than its removal guard allows; nothing was written."""


def write_params(ctx: WriteContext) -> dict[str, object]:
    """The parameters the write statements use: %(sync)s, %(run_id)s, %(started)s, %(peers)s, %(object_type)s."""
    return {
        "sync": ctx.sync.name,
        "run_id": ctx.run_id,
        "started": ctx.run_started,
        "peers": ctx.peer_syncs,
        "object_type": ctx.sync.destination.object_type,
    }


def row_fields_json(ctx: WriteContext, alias: str) -> str:
    """SQL for a row's written fields as one JSON object (keys are the field names)."""
    return json_object_sql([(f, column_ref(alias, c)) for f, c in ctx.field_columns.items()])


# --- the plan: _writes ----------------------------------------------------------------------------------

ANALYZE_WRITES = "ANALYZE _writes"
DROP_WRITES_VIEW = "DROP VIEW _writes"
TRANSACTION_VERSION = "SELECT pg_current_xact_id()::xid::text::bigint"
"""This transaction's id as the xmin of the rows it writes."""


def plan_counts_sql(rows_table: str) -> str:
    """(accepted rows, rows to write or check, rows whose key has a stored fingerprint)."""
    return f"""SELECT count(*), count(*) FILTER (WHERE action <> 'unchanged'), count(*) FILTER (WHERE action <> 'added')
        FROM {rows_table} WHERE problem IS NULL"""


def writes_sql(rows_table: str, run_started: datetime, view: bool) -> str:
    """_writes: the accepted rows not planned unchanged, with their time (`ts`, the run's start without an
    updated_at). A view takes no parameters: the start is a literal."""
    started = f"{quote_literal(run_started.isoformat())}::timestamptz"
    return f"""CREATE TEMP {"VIEW _writes" if view else "TABLE _writes ON COMMIT DROP"} AS
        SELECT r.*, coalesce(r.updated_at, {started}) AS ts, to_jsonb(coalesce(r.updated_at, {started})) AS ts_json
        FROM {rows_table} r WHERE r.problem IS NULL AND r.action <> 'unchanged'"""


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


def plan_changes(conn: sa.Connection, ctx: WriteContext) -> Plan:
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
    total, writes, stored = conn.exec_driver_sql(plan_counts_sql(ctx.rows_table)).one()
    view = writes * 2 > total
    conn.exec_driver_sql(writes_sql(ctx.rows_table, ctx.run_started, view))
    if not view:
        conn.exec_driver_sql(ANALYZE_WRITES)
    version = conn.exec_driver_sql(TRANSACTION_VERSION).scalar_one()
    return Plan(accepted=total, stored=stored, view=view, rebuilt=rebuilt, version=version)


def refresh_statistics(conn: sa.Connection, ctx: WriteContext, written: dict[str, int]) -> None:
    """Analyse each store table this run grew past autovacuum's threshold (`written`: table → rows this run
    added to it), in the write transaction (store/statistics.py). Not in a dry run, which is rolled back."""
    if ctx.dry_run:
        return
    for table, rows in written.items():
        statistics.analyze_if_grown(conn, table, rows)


def drop_writes(conn: sa.Connection, view: bool) -> None:
    """Temporary views outlive the transaction (unlike ON COMMIT DROP tables), and the session is pooled."""
    if view:
        conn.exec_driver_sql(DROP_WRITES_VIEW)


# --- fingerprints ---------------------------------------------------------------------------------------

CONCURRENT_BUILD_ROWS = 100_000
"""A sync's first fingerprints from this many new rows on are built on a second connection (PartitionBuild)."""


def new_fingerprints_sql(rows_table: str) -> str:
    """The fingerprints of every new row, each record written by this transaction (%(version)s)."""
    return f"""SELECT row_key, fingerprint, %(version)s::bigint AS record_version,
                       CASE WHEN email_norm IS NOT NULL AND object_id IS NOT NULL THEN %(version)s::bigint END
                           AS link_version
                FROM {rows_table} WHERE problem IS NULL AND action = 'added'"""


@contextmanager
def fingerprint_build(
    conn: sa.Connection, ctx: WriteContext, plan: Plan, only_new_records: str
) -> Iterator[fingerprints.PartitionBuild | None]:
    """For a sync's first large load, build its fingerprint partition on a second core while this transaction
    writes the store (discarded if the writer fails). Only in mode upsert (every new row is written, so the new
    keys are known before the writes), from the committed rows table (not one rebuilt in this transaction), and
    when `only_new_records` (SQL) says no row meets a stored record: then every row's record is written by this
    transaction, whose id is each fingerprint's version. Never in a dry run, whose work must not outlive it.
    Yields None when the partition is written inline. Under the same conditions every accepted row creates its
    record, so the run's trace is written aside too (ctx.trace_aside, store/trace.py)."""
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
            new_fingerprints_sql(ctx.rows_table),
            {**write_params(ctx), "version": plan.version},
        )
    if build is not None:
        ctx.trace_aside = trace.trace_aside(conn.engine, ctx, after=build.built)
    try:
        yield build
    except BaseException:
        if build is not None:
            build.discard()
        if ctx.trace_aside is not None:
            ctx.trace_aside.discard()
        raise


FORGET_DECLINED_FINGERPRINTS = """DELETE FROM sync_fingerprints f USING _writes w
        WHERE f.sync_name = %(sync)s AND f.row_key = w.row_key AND w.action = 'changed' AND (w.skip OR w.declined)"""
"""A changed row not written (skipped by mode, or declined by the merge rule) keeps no fingerprint."""


def added_fingerprints_sql(saved: str) -> str:
    return (
        f"SELECT row_key, fingerprint, record_version, link_version FROM ({saved}) s WHERE action = 'added'"
    )


def insert_fingerprints_sql(added: str) -> str:
    return f"""INSERT INTO sync_fingerprints (sync_name, row_key, fingerprint, record_version, link_version)
        SELECT %(sync)s, row_key, fingerprint, record_version, link_version FROM ({added}) a
        ORDER BY row_key COLLATE "C"  -- sorted, the primary key index is filled page by page"""


def update_fingerprints_sql(saved: str) -> str:
    return f"""UPDATE sync_fingerprints f SET fingerprint = w.fingerprint, record_version = w.record_version,
               link_version = w.link_version
        FROM ({saved}) w WHERE w.action = 'changed' AND f.sync_name = %(sync)s AND f.row_key = w.row_key"""


def save_fingerprints(
    conn: sa.Connection, ctx: WriteContext, saved: str, build: fingerprints.PartitionBuild | None
) -> None:
    """Record what this run wrote or checked: `saved` (SQL) yields (row_key, fingerprint, record_version,
    link_version, action) for every row to remember, the store record's version being its xmin now. New keys
    are inserted, changed ones updated. A row left out (one whose values the store holds newer) keeps no
    fingerprint, so its key is planned again by the next run. Under the identity lock no other run of this
    sync can have written a key since plan_changes, so a plain INSERT (much cheaper than ON CONFLICT) is safe.
    A sync's first fingerprints become its partition, loaded in bulk (or built meanwhile by `build`)."""
    params = write_params(ctx)
    conn.exec_driver_sql(FORGET_DECLINED_FINGERPRINTS, params)
    if build is not None:
        build.attach(conn)
        return
    added = added_fingerprints_sql(saved)
    if not fingerprints.has_partition(conn, ctx.sync.name):
        fingerprints.create_partition(conn, ctx.sync.name, added, params)
        return
    inserted = conn.exec_driver_sql(insert_fingerprints_sql(added), params).rowcount
    conn.exec_driver_sql(update_fingerprints_sql(saved), params)
    refresh_statistics(conn, ctx, {fingerprints.partition_name(ctx.sync.name): inserted})


# --- removals -------------------------------------------------------------------------------------------

COUNT_STORED_KEYS = "SELECT count(*) FROM sync_fingerprints WHERE sync_name = %(sync)s"
NO_REMOVED_KEYS = "CREATE TEMP TABLE _removed (row_key text) ON COMMIT DROP"
FORGET_REMOVED = (
    "DELETE FROM sync_fingerprints f USING _removed r WHERE f.sync_name = %(sync)s AND f.row_key = r.row_key"
)


def removed_keys_sql(all_keys_select: str) -> str:
    """_removed: the sync's stored keys that no staged row has. CREATE TABLE AS, unlike INSERT … SELECT, may
    run its anti-join in parallel workers."""
    return f"""CREATE TEMP TABLE _removed ON COMMIT DROP AS SELECT f.row_key FROM sync_fingerprints f
        WHERE f.sync_name = %(sync)s AND NOT EXISTS (
            SELECT 1 FROM ({all_keys_select}) k WHERE k.row_key = f.row_key)"""


def plan_removed(conn: sa.Connection, ctx: WriteContext, plan: Plan) -> int:
    """Create _removed: keys this sync wrote before that the full query no longer returns; apply the guard."""
    stored = conn.exec_driver_sql(COUNT_STORED_KEYS, write_params(ctx)).scalar_one() if ctx.full_sync else 0
    if not ctx.full_sync or plan.stored == stored:
        # every stored key is among the accepted rows (each matched one, and they have distinct keys)
        conn.exec_driver_sql(NO_REMOVED_KEYS)
        return 0
    removed = conn.exec_driver_sql(removed_keys_sql(ctx.all_keys_select), write_params(ctx)).rowcount
    guard_removals(ctx, removed, stored)
    return removed


def guard_removals(ctx: WriteContext, removed: int, stored: int) -> None:
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


def forget_removed(conn: sa.Connection, ctx: WriteContext) -> None:
    conn.exec_driver_sql(FORGET_REMOVED, write_params(ctx))


def applies_removals(ctx: WriteContext, removed: int) -> bool:
    """Whether removed keys change the store (delete_behavior other than do_nothing)."""
    return bool(removed) and ctx.sync.delete_behavior != "do_nothing"


# --- e-mails of the rows to write -----------------------------------------------------------------------

RELATED_EMAILS = """SELECT DISTINCT ON (email_norm COLLATE "C") email, email_norm FROM _writes
        WHERE NOT skip AND email_norm IS NOT NULL ORDER BY email_norm COLLATE "C", email"""


def resolve_emails(conn: sa.Connection, ctx: WriteContext, create: bool) -> int:
    """Resolve each distinct email of the rows to write into `_related` (email_norm → contact_id), once per
    email rather than once per row; writers join it. Returns the contacts created."""
    identity = ctx.matcher.create_email_table(conn, "_related", RELATED_EMAILS, create=create)
    conn.exec_driver_sql(INDEX_RELATED)
    return identity.created


INDEX_RELATED = "CREATE INDEX ON _related (email_norm); ANALYZE _related"
"""_related's rows reached by index and counted after rule 3 gave the new e-mails their contacts. The writers join
it with _writes, whose row count the planner cannot know for events (it takes the new message_ids to be none:
rows=1 for NOT EXISTS against a larger events table), and whose contact_id statistics, taken before rule 3, said
no new e-mail had a contact. On those estimates a nested loop scanning all of _related once per new event was
the cheapest plan, and its cost grew with the square of the new events; with the index a nested loop probes it
(log n a row), so no plan's cost hinges on those estimates."""
