"""One sync run in three steps — query, validate, write — shared by the Dagster ops and the CLI."""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from conversion_sync.config import ProjectConfig
from conversion_sync.config.syncs import SyncConfig
from conversion_sync.store import sync_state
from conversion_sync.store.connection import prepare_bulk_transaction
from conversion_sync.store.contact_store import ContactStore
from conversion_sync.store.identity import IdentityMatcher
from conversion_sync.store.staging import (
    StagedColumns,
    StagingWriter,
    adbc_connections,
    create_staging_table,
    drop_run_tables,
    drop_staging_tables,
    qualified,
    staging_table_name,
    store_lowers_ascii_plainly,
)
from conversion_sync.syncs import retry_rejected
from conversion_sync.syncs.destinations import UnknownObjectType, destination_for
from conversion_sync.syncs.template import EPOCH, format_timestamp, is_incremental, render_query
from conversion_sync.syncs.validation import (
    ValidationResult,
    Validator,
    WholeRunError,
    email_column,
    fingerprinted_columns,
    map_columns,
    rows_table,
)
from conversion_sync.syncs.warehouse_diff import (
    WarehouseDiff,
    diffed_keys_select,
    drop_keys_table,
    remember_fingerprints,
    unchanged_without_reading,
)
from conversion_sync.syncs.writers import RemovalRefused, WriteContext, WriteCounts
from conversion_sync.warehouses import WarehouseError, open_warehouse
from conversion_sync.warehouses.base import ClientSource, source_type

PREVIEW_REJECTED_ROWS = 20


class SyncFailed(Exception):
    """A run failed as a whole; nothing was written and the watermark did not move."""


@dataclass
class SyncOutcome:
    """What one run did: counts, watermarks, timings and a preview of rejected rows."""

    sync_name: str
    run_id: str
    counts: dict[str, int]
    watermark_used: datetime
    next_watermark: datetime
    full_sync: bool
    durations: dict[str, float] = field(default_factory=dict)
    rejected_preview: list[dict[str, Any]] = field(default_factory=list)

    @property
    def download_command(self) -> str:
        return f"conversion-sync rejections {self.sync_name} --run {self.run_id}"


def _heartbeat(by: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A step keeps its run's heartbeat going while it executes (sync_state.RunHeartbeat), so that a run
    whose process died reads as crashed. The step's first argument names the run: its id (`by="run_id"`)
    or its staging table (`by="table"`)."""

    def decorate(step: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(step)
        def wrapper(self: SyncRunner, key: str, *args: Any, **kwargs: Any) -> Any:
            run_id: str | None = key
            if by == "table":
                with self.store.begin() as conn:
                    record = sync_state.get_run_by_staging_table(conn, key)
                run_id = record.run_id if record else None
            if run_id is None:
                return step(self, key, *args, **kwargs)
            with sync_state.RunHeartbeat(self.store.engine(), run_id):
                return step(self, key, *args, **kwargs)

        return wrapper

    return decorate


class SyncRunner:
    """Runs one sync's steps against the store. Each step finds the previous one's work by staging table."""

    _previewing = False
    """True while preview() runs the query step: the run record is a preview's."""
    _diff: WarehouseDiff
    """The query step's in-warehouse diffing (syncs/warehouse_diff.py)."""

    def __init__(
        self,
        sync: SyncConfig,
        project: ProjectConfig,
        store: ContactStore,
        matcher: IdentityMatcher | None = None,
        mode: retry_rejected.RunMode = "normal",
        warehouse_client: ClientSource | None = None,
    ) -> None:
        self.mode = mode
        self.warehouse_client = warehouse_client
        """Provides the warehouse's client when the orchestrator has one (a BigQuery resource in a Dagster run)."""
        """normal, retry_rejected (only the unresolved rejected keys) or full_resync (reset first)."""
        self.sync = sync
        self.project = project
        self.store = store
        self.matcher = matcher or IdentityMatcher()
        self.destination = destination_for(sync.destination.type)
        """The destination's module: its validation specifics, write and preview."""
        try:
            self.fields = self.destination.fields(sync, project.store_schema)
        except UnknownObjectType as exc:
            raise SyncFailed(f"sync '{sync.name}': {exc}") from None

    # --- step 1: query ----------------------------------------------------------------------------------

    @_heartbeat(by="run_id")
    def query(self, run_id: str, batch_rows: int = 50_000) -> str:
        """Run the warehouse query and stage every batch; returns the staging table name.

        The run's next watermark is the warehouse's own clock read in the query's session just before the
        query ran (so neither this host's clock nor the wait for a connection can lose rows); it is kept
        with the run and becomes the sync's watermark only when the run's write commits.
        """
        engine = self.store.engine()
        table = staging_table_name(self.sync.name, run_id)
        kind = self.project.warehouses[self.sync.warehouse].type
        if self.mode == "full_resync" and not self._previewing:
            with engine.begin() as conn:
                sync_state.reset_sync(conn, self.sync.name)
        with engine.begin() as conn:
            sync_state.mark_crashed_runs(conn, self.sync.name)  # their staging tables go with the leftovers
            running = conn.exec_driver_sql(
                "SELECT staging_table FROM sync_runs WHERE sync_name = %s AND status = 'running' AND run_id <> %s",
                (self.sync.name, run_id),
            ).scalars()
            drop_staging_tables(conn, self.sync.name, keep=[t for t in running if t])
            watermark = sync_state.get_watermark(conn, self.sync.name) or EPOCH
            used = max(EPOCH, watermark - self.sync.lookback) if watermark > EPOCH else EPOCH
            retry_only = self.mode == "retry_rejected"  # re-reads from the epoch, never moves the watermark
            used = EPOCH if retry_only else used
            retyped = sync_state.changed_field_types(conn, self.sync.name, self.fields.field_types)
            if retyped:
                # stored values were written with another type: read everything again and rewrite them
                used = EPOCH
                if not self._previewing:
                    conn.exec_driver_sql(
                        "DELETE FROM sync_fingerprints WHERE sync_name = %s", (self.sync.name,)
                    )
            sync_state.start_run(
                conn,
                run_id=run_id,
                sync_name=self.sync.name,
                watermark_used=used,
                next_watermark=None,
                staging_table=table,
                full_sync=not is_incremental(self.sync.query, kind) and not retry_only,
                preview=self._previewing,
            )
            retry = retry_rejected.RetryPlan()
            if not self._previewing:
                reads_all = used == EPOCH or not is_incremental(self.sync.query, kind)
                retry = retry_rejected.plan_retry(conn, self.sync, run_id, self.mode, reads_all)
            if retyped:
                sync_state.set_phase(conn, run_id, "querying", {"retyped_fields": len(retyped)})
        self._diff = WarehouseDiff(
            self.sync,
            kind,
            self.store,
            table,
            render_query(self.sync.query, used, kind),
            retyped=bool(retyped),
        )
        started = time.monotonic()
        try:
            sql = render_query(self.sync.query, used, kind)
            queries = retry.queries(sql, render_query(self.sync.query, EPOCH, kind), kind)
            rows, warehouse_clock = self._stage(queries, table, run_id, batch_rows)
        except (WarehouseError, WholeRunError) as exc:
            self._fail(run_id, str(exc))
            raise SyncFailed(str(exc)) from None
        except Exception as exc:
            self._fail(run_id, f"{type(exc).__name__}: {exc}")
            raise
        with engine.begin() as conn:
            sync_state.set_next_watermark(conn, run_id, warehouse_clock)
            sync_state.set_phase(
                conn,
                run_id,
                "preparing",
                {
                    "queried": self._diff.state.counts.get("warehouse_keys", rows),
                    "duration_query_s": round(time.monotonic() - started, 3),
                    **({"diff": self._diff.state.note} if self._diff.state.note else {}),
                    **self._diff.state.counts,
                },
            )
        return table

    def _stage(self, sql: str | list[str], table: str, run_id: str, batch_rows: int) -> tuple[int, datetime]:
        """Stage the query's result (several queries' results as one: a run that retries rejected keys); returns
        the row count and the warehouse's clock when the (first) query began."""
        config = self.project.warehouses[self.sync.warehouse]
        writer: StagingWriter | None = None
        first = retry_rejected.FirstQueryClock()
        with (
            open_warehouse(self.sync.warehouse, config, self.warehouse_client) as warehouse,
            adbc_connections(self.store.resolved_url()) as copy_connections,
        ):
            # the run's own query reads only new and changed rows when it can
            warehouse = self._diff.wrap(warehouse)
            try:
                for batch in first.batches(warehouse, [sql] if isinstance(sql, str) else sql, batch_rows):
                    if writer is None:
                        names = list(batch.schema.names)
                        mapped = map_columns(names, self.fields, self.sync.name)
                        columns = StagedColumns(names)
                        with self.store.begin() as conn:
                            create_staging_table(conn, table, columns)
                            sync_state.record_columns(
                                conn, run_id, names, [source_type(f) for f in batch.schema]
                            )
                            keyed = store_lowers_ascii_plainly(conn)
                        writer = StagingWriter(
                            copy_connections,
                            table,
                            columns,
                            fingerprinted_columns(mapped, self.fields),
                            email_column(mapped) if keyed else None,
                        )
                    if self.sync.max_rows is not None and writer.rows + batch.num_rows > self.sync.max_rows:
                        raise WholeRunError(
                            f"sync '{self.sync.name}': the query returned more than max_rows={self.sync.max_rows} "
                            "rows; nothing was written"
                        )
                    writer.append(batch)
                if writer is not None:
                    writer.finish()
            finally:
                if writer is not None:
                    writer.close()
            clock = first.clock
        if writer is None:
            raise WholeRunError(f"sync '{self.sync.name}': the warehouse returned no result set")
        if clock is None:
            raise WholeRunError(
                f"sync '{self.sync.name}': warehouse '{self.sync.warehouse}' did not report its clock"
            )
        return writer.rows, clock

    # --- step 2: validate -------------------------------------------------------------------------------

    def _run_for(self, conn: sa.Connection, table: str) -> sync_state.SyncRunRecord:
        record = sync_state.get_run_by_staging_table(conn, table)
        if record is None:
            raise SyncFailed(f"sync '{self.sync.name}': no run owns staging table {table}")
        return record

    def _validator(self, record: sync_state.SyncRunRecord, table: str) -> Validator:
        names = [c["name"] for c in record.source_columns or []]
        return Validator(
            sync_name=self.sync.name,
            run_id=record.run_id,
            staging_table=table,
            destination=self.destination,
            fields=self.fields,
            columns=map_columns(names, self.fields, self.sync.name),
            source_names=names,
            source_types={c["name"]: c["type"] for c in record.source_columns or []},
            object_type=self.sync.destination.object_type,
        )

    @_heartbeat(by="table")
    def validate(self, table: str) -> ValidationResult:
        """Reject bad rows (kept with code and message) and build the typed rows table."""
        started = time.monotonic()
        with self.store.begin() as conn:
            record = self._run_for(conn, table)
        try:
            with self.store.begin() as conn:
                prepare_bulk_transaction(conn)
                result = self._validator(record, table).run(conn, record.counts.get("queried", 0))
                sync_state.set_phase(
                    conn,
                    record.run_id,
                    "writing",
                    {
                        "rejected": result.rejected,
                        "duplicates_merged": result.merged,
                        "duration_validate_s": round(time.monotonic() - started, 3),
                        "planned_after_run": result.planned_after_run,
                    },
                )
        except Exception as exc:
            self._fail(record.run_id, f"{type(exc).__name__}: {exc}")
            raise
        return result

    # --- step 3: write ----------------------------------------------------------------------------------

    def _write_context(
        self,
        record: sync_state.SyncRunRecord,
        table: str,
        validator: Validator,
        planned_after_run: str | None,
    ) -> WriteContext:
        return WriteContext(
            sync=self.sync,
            run_id=record.run_id,
            rows_table=qualified(rows_table(table)),
            all_keys_select=diffed_keys_select(record.counts, table) or validator.all_keys_select(),
            written_fields=validator.written_fields(),
            field_columns=validator.field_columns(),
            full_sync=record.full_sync,
            run_started=record.next_watermark or datetime.now(UTC),
            matcher=self.matcher,
            planned_after_run=planned_after_run,
            rebuild_rows=validator.rebuild,
            queried=record.counts.get("queried", 0),
            rejected=record.counts.get("rejected", 0),
            peer_syncs=[
                name
                for name, other in self.project.syncs.items()
                if name != self.sync.name and other.destination == self.sync.destination
            ],
        )

    @_heartbeat(by="table")
    def write(self, table: str) -> SyncOutcome:
        """Merge the typed rows into the store and move the watermark, in one transaction."""
        started = time.monotonic()
        with self.store.begin() as conn:
            record = self._run_for(conn, table)
        validator = self._validator(record, table)
        try:
            next_watermark = self._next_watermark(record)
            with self.store.begin() as conn:
                prepare_bulk_transaction(conn)
                self._check_not_reset(conn, record)
                ctx = self._write_context(record, table, validator, record.counts.get("planned_after_run"))
                counts = self.destination.write(conn, ctx)
                remember_fingerprints(
                    conn, self.sync.name, record.counts, table, validator.columns.fields.get("email")
                )
                all_counts = self._counts(record, counts)
                all_counts |= retry_rejected.settle(conn, self.sync, record, table, self.fields)
                durations = {
                    "query": record.counts.get("duration_query_s", 0.0),
                    "validate": record.counts.get("duration_validate_s", 0.0),
                    "write": round(time.monotonic() - started, 3),
                }
                if retry_rejected.is_retry_only(record):
                    next_watermark = retry_rejected.keep_watermark(conn, self.sync.name, record.run_id)
                else:
                    sync_state.set_watermark(
                        conn, self.sync.name, next_watermark, record.run_id, self.fields.field_types
                    )
                sync_state.finish_run(
                    conn, record.run_id, "success", {**all_counts, "duration_write_s": durations["write"]}
                )
                preview = sync_state.rejection_preview(
                    conn, self.sync.name, record.run_id, PREVIEW_REJECTED_ROWS
                )
        except (RemovalRefused, SyncFailed) as exc:
            self._fail(record.run_id, str(exc))
            raise SyncFailed(str(exc)) from None
        except Exception as exc:
            self._fail(record.run_id, f"{type(exc).__name__}: {exc}")
            raise
        with self.store.begin() as conn:
            drop_run_tables(conn, table)
            drop_keys_table(conn, table)
        self._abandon_older_runs(record)
        return SyncOutcome(
            sync_name=self.sync.name,
            run_id=record.run_id,
            counts=all_counts,
            watermark_used=record.watermark_used or EPOCH,
            next_watermark=next_watermark,
            full_sync=record.full_sync,
            durations=durations,
            rejected_preview=preview,
        )

    def _next_watermark(self, record: sync_state.SyncRunRecord) -> datetime:
        """The watermark the run's query step read from the warehouse's clock."""
        if record.next_watermark is None:
            raise SyncFailed(
                f"sync '{self.sync.name}': run {record.run_id} has no next watermark (its query step did not "
                "finish); nothing was written: run the sync again"
            )
        return record.next_watermark

    def _check_not_reset(self, conn: sa.Connection, record: sync_state.SyncRunRecord) -> None:
        """A reset (`conversion-sync resync`) after this run started wins: the run writes nothing, so the reset's
        empty watermark and fingerprints stay, and the next run reads everything. Holds the sync's state lock
        until the write commits, so a reset arriving meanwhile waits and applies after it."""
        sync_state.lock_sync(conn, self.sync.name)
        reset_at = sync_state.reset_after(conn, self.sync.name, record.started_at)
        if reset_at is not None:
            raise SyncFailed(
                f"sync '{self.sync.name}' was reset (conversion-sync resync) at {reset_at:%Y-%m-%d %H:%M:%S} UTC, "
                f"after this run started at {record.started_at:%Y-%m-%d %H:%M:%S} UTC: this run wrote nothing, so "
                "the reset stands; the next run reads everything"
            )

    def _counts(self, record: sync_state.SyncRunRecord, counts: WriteCounts) -> dict[str, int]:
        base = {"queried": record.counts.get("queried", 0), **counts.as_dict()}
        base["rejected"] = record.counts.get("rejected", 0)
        # rows identical to another row with the same key: with the others, every queried row is counted
        base["duplicates_merged"] = record.counts.get("duplicates_merged", 0)
        if record.counts.get("retyped_fields"):
            base["retyped_fields"] = record.counts["retyped_fields"]
        base["unchanged"] += unchanged_without_reading(record.counts)
        base.update({k: record.counts[k] for k in ("warehouse_keys", "fetched_rows") if k in record.counts})
        order = ["queried", "added", "changed", "unchanged", "removed", "rejected", "skipped"]
        return {k: base[k] for k in order} | {k: v for k, v in base.items() if k not in order}

    def _abandon_older_runs(self, record: sync_state.SyncRunRecord) -> None:
        """Runs of this sync that started before this successful one and never finished (their process
        died: killed, out of memory, machine lost) are marked failed and their staging tables dropped;
        without this, each crash would leave its staged copy of the query result behind for good.
        A table still locked by a live transaction is left for a later run."""
        with self.store.begin() as conn:
            stale = sync_state.abandon_older_runs(conn, self.sync.name, record.run_id, record.started_at)
        for table in stale:
            try:
                with self.store.begin() as conn:
                    conn.exec_driver_sql("SET LOCAL lock_timeout = '1s'")
                    drop_run_tables(conn, table)
            except sa.exc.OperationalError:
                continue

    def _fail(self, run_id: str, error: str) -> None:
        """The run failed: marked failed, its rejected rows discarded; a preview's record is deleted."""
        with self.store.begin() as conn:
            sync_state.fail_run(conn, run_id, error)

    # --- whole runs -------------------------------------------------------------------------------------

    def run(self, run_id: str | None = None) -> SyncOutcome:
        """All three steps in this process (the CLI's `run`)."""
        run_id = run_id or f"cli-{uuid.uuid4()}"
        table = self.query(run_id)
        self.validate(table)
        return self.write(table)

    def preview(self, limit: int = 20, run_id: str | None = None) -> PreviewResult:
        """Dry run: what would be added, changed, removed and rejected. Writes nothing lasting.

        Its run record is flagged as a preview (never a sync's latest run) and deleted, with its staging
        tables, whether the preview succeeds or fails; its rejected rows are never committed."""
        run_id = run_id or f"preview-{uuid.uuid4()}"
        table = staging_table_name(self.sync.name, run_id)
        self._previewing = True
        try:
            with sync_state.RunHeartbeat(self.store.engine(), run_id):
                table = self.query(run_id)
                self._previewing = False
                with self.store.engine().connect() as conn, conn.begin() as transaction:
                    record = self._run_for(conn, table)
                    validator = self._validator(record, table)
                    prepare_bulk_transaction(conn)
                    validation = validator.run(conn, record.counts.get("queried", 0))
                    rejected = sync_state.rejection_preview(conn, self.sync.name, run_id, limit)
                    ctx = self._write_context(record, table, validator, validation.planned_after_run)
                    ctx.dry_run = True
                    diff = self.destination.preview(conn, ctx, limit)
                    counts = self.destination.write(conn, ctx)
                    transaction.rollback()
        finally:
            self._previewing = False
            with self.store.begin() as conn:
                drop_run_tables(conn, table)
                drop_keys_table(conn, table)
                sync_state.discard_preview_run(conn, run_id)
        all_counts = {
            "queried": validation.queried,
            **counts.as_dict(),
            "rejected": validation.rejected,
            "duplicates_merged": validation.merged,
        }
        return PreviewResult(self.sync.name, record.watermark_used or EPOCH, all_counts, diff, rejected)


@dataclass
class PreviewResult:
    sync_name: str
    watermark_used: datetime
    counts: dict[str, int]
    diff: list[dict[str, Any]]
    rejected: list[dict[str, Any]]

    def describe_watermark(self) -> str:
        return format_timestamp(self.watermark_used)
