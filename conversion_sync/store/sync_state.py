"""Per-sync state in the store: watermarks, run records and phases, fingerprints, rejections."""

from __future__ import annotations

import csv
import json
import logging
import os
import socket
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, TextIO

import sqlalchemy as sa

log = logging.getLogger(__name__)

HEARTBEAT_EVERY = timedelta(seconds=20)
"""How often a run's executing step refreshes sync_runs.heartbeat_at."""

CRASHED_AFTER = timedelta(minutes=2)
"""A 'running' run whose heartbeat is older than this is crashed: its process died (killed, out of memory,
machine lost). Several missed heartbeats, and room for the pause between two steps that run in separate
processes (the step that ends leaves a fresh heartbeat behind)."""

_RUN_COLUMNS = """run_id, sync_name, status, phase, started_at, finished_at, counts, error, watermark_used,
    next_watermark, staging_table, full_sync, source_columns, heartbeat_at, host, pid, preview"""


@dataclass
class SyncRunRecord:
    run_id: str
    sync_name: str
    status: str
    phase: str | None
    started_at: datetime
    finished_at: datetime | None
    counts: dict[str, Any]
    error: str | None
    watermark_used: datetime | None
    next_watermark: datetime | None
    staging_table: str | None
    full_sync: bool
    source_columns: list[dict[str, str]] | None
    """[{name, type}] of the query's result, type being the Arrow type as text."""
    heartbeat_at: datetime | None = None
    """When a step of the run last said it was alive (refreshed while a step executes)."""
    host: str | None = None
    pid: int | None = None
    """The process executing a step of the run now; None between steps and after the run."""
    preview: bool = False
    """A dry run's record: never a sync's latest run, deleted when the preview ends."""


GET_WATERMARK = "SELECT watermark FROM sync_state WHERE sync_name = %s"


def get_watermark(conn: sa.Connection, sync_name: str) -> datetime | None:
    return conn.exec_driver_sql(GET_WATERMARK, (sync_name,)).scalar()


LAST_SUCCESSFUL_RUN = "SELECT last_run_id FROM sync_state WHERE sync_name = %s"


def last_successful_run(conn: sa.Connection, sync_name: str) -> str | None:
    """The run that last wrote the sync's fingerprints (with its watermark); None before the first or after a reset."""
    return conn.exec_driver_sql(LAST_SUCCESSFUL_RUN, (sync_name,)).scalar()


LOCK_SYNC = "SELECT pg_advisory_xact_lock(hashtext('conversion_sync.sync_state.' || %s))"


def lock_sync(conn: sa.Connection, sync_name: str) -> None:
    """Serialise a sync's state changes (a run's final write, a reset) until this transaction ends."""
    conn.exec_driver_sql(LOCK_SYNC, (sync_name,))


SET_WATERMARK = """INSERT INTO sync_state (sync_name, watermark, last_run_id, last_success_at, updated_at, field_types)
        VALUES (%(sync)s, %(watermark)s, %(run)s, now(), now(), %(types)s::jsonb)
        ON CONFLICT (sync_name) DO UPDATE SET watermark = EXCLUDED.watermark, last_run_id = EXCLUDED.last_run_id,
            last_success_at = now(), updated_at = now(), field_types = EXCLUDED.field_types"""


def set_watermark(
    conn: sa.Connection,
    sync_name: str,
    watermark: datetime,
    run_id: str,
    field_types: dict[str, str] | None = None,
) -> None:
    """Move the watermark, and record the destination's field types the run wrote with; call in the
    transaction of the run's last write, after lock_sync and reset_after."""
    conn.exec_driver_sql(
        SET_WATERMARK,
        {"sync": sync_name, "watermark": watermark, "run": run_id, "types": json.dumps(field_types or {})},
    )


RESET_AFTER = "SELECT reset_at FROM sync_state WHERE sync_name = %s AND reset_at > %s"


def reset_after(conn: sa.Connection, sync_name: str, moment: datetime) -> datetime | None:
    """When the sync was reset, if that was after `moment` (a run's start): such a run must not move the state."""
    return conn.exec_driver_sql(RESET_AFTER, (sync_name, moment)).scalar()


RESET_STATE = """INSERT INTO sync_state (sync_name, reset_at, updated_at) VALUES (%(sync)s, clock_timestamp(), now())
        ON CONFLICT (sync_name) DO UPDATE SET watermark = NULL, last_run_id = NULL, field_types = NULL,
            reset_at = clock_timestamp(), updated_at = now()"""
FORGET_FINGERPRINTS = "DELETE FROM sync_fingerprints WHERE sync_name = %s"
HAS_STATE = (
    "SELECT 1 FROM sync_state WHERE sync_name = %s AND (watermark IS NOT NULL OR last_run_id IS NOT NULL)"
)


def reset_sync(conn: sa.Connection, sync_name: str) -> tuple[bool, int]:
    """Forget the watermark and fingerprints so the next run reads and compares everything. The reset is
    remembered (reset_at): a run in flight that started before it writes nothing and leaves the reset in place;
    one whose write is committing now is waited for (lock_sync), and the reset applies after it."""
    lock_sync(conn, sync_name)
    had_state = (
        conn.exec_driver_sql(
            HAS_STATE,
            (sync_name,),
        ).first()
        is not None
    )
    conn.exec_driver_sql(
        RESET_STATE,
        {"sync": sync_name},
    )
    fingerprints = conn.exec_driver_sql(FORGET_FINGERPRINTS, (sync_name,)).rowcount
    return had_state, fingerprints


FIELD_TYPES = "SELECT field_types FROM sync_state WHERE sync_name = %s"


def changed_field_types(
    conn: sa.Connection, sync_name: str, field_types: dict[str, str]
) -> dict[str, list[str]]:
    """Fields whose type differs from the one the sync's last successful run wrote with: {field: [old, new]}."""
    stored = conn.exec_driver_sql(FIELD_TYPES, (sync_name,)).scalar() or {}
    return {f: [stored[f], t] for f, t in field_types.items() if f in stored and stored[f] != t}


START_RUN = """INSERT INTO sync_runs (run_id, sync_name, status, phase, watermark_used, next_watermark, staging_table,
                                  full_sync, started_at, heartbeat_at, host, pid, preview)
        VALUES (%(run)s, %(sync)s, 'running', 'querying', %(used)s, %(next)s, %(stage)s, %(full)s, now(), now(),
                %(host)s, %(pid)s, %(preview)s)
        ON CONFLICT (run_id) DO UPDATE SET status = 'running', phase = 'querying', error = NULL, finished_at = NULL,
            watermark_used = EXCLUDED.watermark_used, next_watermark = EXCLUDED.next_watermark,
            staging_table = EXCLUDED.staging_table, full_sync = EXCLUDED.full_sync, counts = '{}'::jsonb,
            heartbeat_at = now(), host = EXCLUDED.host, pid = EXCLUDED.pid, preview = EXCLUDED.preview"""


def start_run(
    conn: sa.Connection,
    *,
    run_id: str,
    sync_name: str,
    watermark_used: datetime,
    next_watermark: datetime | None,
    staging_table: str,
    full_sync: bool,
    preview: bool = False,
) -> None:
    """Record a run as running its query step in this process (host, pid, a fresh heartbeat)."""
    conn.exec_driver_sql(
        START_RUN,
        {
            "run": run_id,
            "sync": sync_name,
            "used": watermark_used,
            "next": next_watermark,
            "stage": staging_table,
            "full": full_sync,
            "host": this_host(),
            "pid": os.getpid(),
            "preview": preview,
        },
    )
    # a run re-started under the same id starts without the rejected rows of its earlier attempt
    discard_rejections(conn, [run_id])


SET_NEXT_WATERMARK = "UPDATE sync_runs SET next_watermark = %(moment)s WHERE run_id = %(run)s"


def set_next_watermark(conn: sa.Connection, run_id: str, moment: datetime) -> None:
    """The run's next watermark, once its query has read the warehouse's clock (None until then)."""
    conn.exec_driver_sql(
        SET_NEXT_WATERMARK,
        {"moment": moment, "run": run_id},
    )


RECORD_COLUMNS = "UPDATE sync_runs SET source_columns = %(cols)s::json WHERE run_id = %(run)s"


def record_columns(conn: sa.Connection, run_id: str, names: list[str], arrow_types: list[str]) -> None:
    """The query's result columns and their Arrow types, for the steps that follow."""
    columns = [{"name": n, "type": t} for n, t in zip(names, arrow_types, strict=True)]
    conn.exec_driver_sql(
        RECORD_COLUMNS,
        {"cols": json.dumps(columns), "run": run_id},
    )


SET_PHASE = (
    "UPDATE sync_runs SET phase = %(phase)s, counts = counts || %(counts)s::jsonb WHERE run_id = %(run)s"
)


def set_phase(conn: sa.Connection, run_id: str, phase: str, counts: dict[str, Any] | None = None) -> None:
    conn.exec_driver_sql(
        SET_PHASE,
        {"phase": phase, "counts": json.dumps(counts or {}), "run": run_id},
    )


FINISH_RUN = """UPDATE sync_runs SET status = %(status)s, phase = NULL, finished_at = now(),
            counts = counts || %(counts)s::jsonb, error = %(error)s WHERE run_id = %(run)s"""


def finish_run(
    conn: sa.Connection, run_id: str, status: str, counts: dict[str, Any], error: str | None = None
) -> None:
    conn.exec_driver_sql(
        FINISH_RUN,
        {"status": status, "counts": json.dumps(counts), "error": error, "run": run_id},
    )


def fail_run(conn: sa.Connection, run_id: str, error: str) -> None:
    """A run failed as a whole: mark it failed and discard its rejected rows (only finished runs keep them).
    A preview's record is deleted instead: a dry run leaves no trace."""
    if discard_preview_run(conn, run_id):
        return
    finish_run(conn, run_id, "failed", {}, error=error)
    discard_rejections(conn, [run_id])


DELETE_PREVIEW_RUN = "DELETE FROM sync_runs WHERE run_id = %s AND preview RETURNING run_id"


def discard_preview_run(conn: sa.Connection, run_id: str) -> bool:
    """Delete a preview's run record and anything recorded under it; False when `run_id` is no preview."""
    deleted = conn.exec_driver_sql(DELETE_PREVIEW_RUN, (run_id,)).first()
    if deleted is None:
        return False
    discard_rejections(conn, [run_id])
    return True


DISCARD_REJECTIONS = "DELETE FROM sync_rejections WHERE run_id = ANY(%(runs)s)"


def discard_rejections(conn: sa.Connection, run_ids: list[str]) -> int:
    """Delete the rejected rows recorded by runs that will never finish (failed, crashed, abandoned)."""
    if not run_ids:
        return 0
    return conn.exec_driver_sql(DISCARD_REJECTIONS, {"runs": list(run_ids)}).rowcount


ABANDON_OLDER_RUNS = """UPDATE sync_runs SET status = 'failed', phase = NULL, finished_at = now(), pid = NULL,
            error = 'abandoned: the run never finished (its process died) and run ' || %(run)s
                    || ', which started later, succeeded'
        WHERE sync_name = %(sync)s AND status = 'running' AND run_id <> %(run)s AND started_at < %(started)s
        RETURNING run_id, staging_table"""


def abandon_older_runs(conn: sa.Connection, sync_name: str, run_id: str, started_at: datetime) -> list[str]:
    """Mark runs of the sync that started before `started_at` and are still 'running' as failed
    (superseded by `run_id`, which succeeded) and discard their rejected rows; returns their staging tables."""
    rows = conn.exec_driver_sql(
        ABANDON_OLDER_RUNS,
        {"sync": sync_name, "run": run_id, "started": started_at},
    ).all()
    discard_rejections(conn, [r for r, _ in rows])
    return [t for _, t in rows if t]


# --- crash detection -----------------------------------------------------------------------------------


def this_host() -> str:
    """This machine as run records name it: the host name, and on Linux the PID namespace, so that two
    containers that share a host name never judge each other's process ids."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return socket.gethostname()
    return f"{socket.gethostname()} {namespace}"


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this host (a zombie still counts: its parent has not
    reaped it yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, owned by another user
    return True


RUNNING_RUNS = """SELECT run_id, host, pid, preview, coalesce(heartbeat_at, started_at) < now() - %(after)s AS stale
        FROM sync_runs WHERE status = 'running' AND (%(sync)s::text IS NULL OR sync_name = %(sync)s)"""

_SILENT = "run_id = %(run)s AND status = 'running' AND coalesce(heartbeat_at, started_at) < now() - %(after)s"
"""The run, still running, has no heartbeat for CRASHED_AFTER."""
_DEAD_PROCESS = "run_id = %(run)s AND status = 'running' AND host = %(host)s AND pid = %(pid)s"
"""The run, still running, was executing in the process on this host that no longer exists."""
DELETE_SILENT_PREVIEW = f"DELETE FROM sync_runs WHERE {_SILENT} RETURNING run_id"
DELETE_DEAD_PREVIEW = f"DELETE FROM sync_runs WHERE {_DEAD_PROCESS} RETURNING run_id"
_MARK_CRASHED = "UPDATE sync_runs SET status = 'crashed', finished_at = now(), error = %(error)s WHERE "
MARK_SILENT_CRASHED = f"{_MARK_CRASHED}{_SILENT} RETURNING run_id"
MARK_DEAD_CRASHED = f"{_MARK_CRASHED}{_DEAD_PROCESS} RETURNING run_id"


def mark_crashed_runs(conn: sa.Connection, sync_name: str | None = None) -> list[str]:
    """Mark as crashed the runs still 'running' whose process is gone: their heartbeat is older than
    CRASHED_AFTER, or a step of theirs was executing on this host in a process that no longer exists.
    Their rejected rows are discarded (only finished runs keep them) and a dead preview's record is deleted.
    Returns the crashed runs' ids (the next query step of the sync drops their staging tables)."""
    rows = conn.exec_driver_sql(
        RUNNING_RUNS,
        {"sync": sync_name, "after": CRASHED_AFTER},
    ).all()
    here = this_host()
    crashed: list[str] = []
    for run_id, host, pid, preview, stale in rows:
        if stale:
            reason = (
                f"crashed: no heartbeat for more than {_describe(CRASHED_AFTER)} "
                "(its process died: killed, out of memory or machine lost)"
            )
            delete, mark = DELETE_SILENT_PREVIEW, MARK_SILENT_CRASHED
        elif host == here and pid is not None and not pid_alive(pid):
            reason = f"crashed: its process {pid} on {host.split()[0]} no longer exists"
            delete, mark = DELETE_DEAD_PREVIEW, MARK_DEAD_CRASHED
        else:
            continue
        params = {"run": run_id, "after": CRASHED_AFTER, "host": host, "pid": pid, "error": reason}
        if preview:
            if conn.exec_driver_sql(delete, params).first():
                discard_rejections(conn, [run_id])
            continue
        marked = conn.exec_driver_sql(mark, params).first()
        if marked:
            crashed.append(run_id)
    discard_rejections(conn, crashed)
    return crashed


def _describe(interval: timedelta) -> str:
    seconds = int(interval.total_seconds())
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds // 60} minute{'s' if seconds > 60 else ''}"
    return f"{seconds} second{'s' if seconds != 1 else ''}"


HEARTBEAT_START = (
    "UPDATE sync_runs SET heartbeat_at = now(), host = %(host)s, pid = %(pid)s "
    "WHERE run_id = %(run)s AND status = 'running'"
)
HEARTBEAT_STOP = (
    "UPDATE sync_runs SET heartbeat_at = now(), pid = NULL "
    "WHERE run_id = %(run)s AND status = 'running' AND pid = %(pid)s"
)
HEARTBEAT_BEAT = """UPDATE sync_runs SET heartbeat_at = now() WHERE run_id = (
                    SELECT run_id FROM sync_runs WHERE run_id = %(run)s AND status = 'running'
                    FOR UPDATE SKIP LOCKED)"""
HEARTBEAT_LOCK_TIMEOUT = "SET LOCAL lock_timeout = '5s'"


class RunHeartbeat:
    """While a step of a run executes in this process: the run records this host and process, and a daemon
    thread refreshes its heartbeat every HEARTBEAT_EVERY on its own short connection. When the step ends,
    the run records no process (the pause until its next step starts) and a fresh heartbeat."""

    def __init__(self, engine: sa.Engine, run_id: str) -> None:
        self.engine = engine
        self.run_id = run_id
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned = False

    def __enter__(self) -> RunHeartbeat:
        self._update(
            HEARTBEAT_START,
            {"run": self.run_id, "host": this_host(), "pid": os.getpid()},
        )
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat {self.run_id}", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._update(
            HEARTBEAT_STOP,
            {"run": self.run_id, "pid": os.getpid()},
        )

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_EVERY.total_seconds()):
            # SKIP LOCKED: the step's own transaction may hold the row for a moment as it records its phase
            self._update(
                HEARTBEAT_BEAT,
                {"run": self.run_id},
            )

    def _update(self, sql: str, params: dict[str, Any]) -> None:
        try:
            with self.engine.begin() as conn:
                conn.exec_driver_sql(HEARTBEAT_LOCK_TIMEOUT)
                conn.exec_driver_sql(sql, params)
        except Exception as exc:  # a missed heartbeat must never fail the step
            if not self._warned:
                self._warned = True
                log.warning("run %s: could not record its heartbeat: %s", self.run_id, exc)


GET_RUN = f"SELECT {_RUN_COLUMNS} FROM sync_runs WHERE run_id = %s"
GET_RUN_BY_STAGING_TABLE = f"SELECT {_RUN_COLUMNS} FROM sync_runs WHERE staging_table = %s"


def get_run(conn: sa.Connection, run_id: str) -> SyncRunRecord | None:
    return _get_run_by(conn, GET_RUN, run_id)


def get_run_by_staging_table(conn: sa.Connection, staging_table: str) -> SyncRunRecord | None:
    """The run whose query step filled this staging table (ops hand each other only its name)."""
    return _get_run_by(conn, GET_RUN_BY_STAGING_TABLE, staging_table)


def _get_run_by(conn: sa.Connection, statement: str, value: str) -> SyncRunRecord | None:
    row = conn.exec_driver_sql(statement, (value,)).one_or_none()
    return SyncRunRecord(*row) if row else None


LATEST_RUNS = f"""SELECT DISTINCT ON (sync_name) {_RUN_COLUMNS},
                  status = 'running' AND coalesce(heartbeat_at, started_at) < now() - %(after)s AS stale
        FROM sync_runs WHERE NOT preview ORDER BY sync_name, started_at DESC"""
"""Each sync's latest run, and whether it is silent for longer than CRASHED_AFTER."""


def latest_runs(conn: sa.Connection) -> dict[str, SyncRunRecord]:
    """Each sync's latest run (previews are not runs). A run still 'running' whose heartbeat is older than
    CRASHED_AFTER reads as 'crashed' even before mark_crashed_runs records it."""
    rows = conn.exec_driver_sql(LATEST_RUNS, {"after": CRASHED_AFTER}).all()
    runs = {}
    for *columns, stale in rows:
        run = SyncRunRecord(*columns)
        if stale:
            run.status, run.phase = "crashed", None
            run.error = f"crashed: no heartbeat for more than {_describe(CRASHED_AFTER)}"
        runs[run.sync_name] = run
    return runs


REJECTION_PREVIEW = """SELECT row_key, column_name, code, message FROM sync_rejections
        WHERE sync_name = %s AND run_id = %s ORDER BY id LIMIT %s"""


def rejection_preview(
    conn: sa.Connection, sync_name: str, run_id: str, limit: int = 20
) -> list[dict[str, Any]]:
    rows = conn.exec_driver_sql(
        REJECTION_PREVIEW,
        (sync_name, run_id, limit),
    ).mappings()
    return [dict(r) for r in rows]


LAST_RUN_WITH_REJECTIONS = """SELECT run_id FROM sync_runs u WHERE sync_name = %(sync)s AND status = 'success' AND NOT preview
            AND EXISTS (SELECT 1 FROM sync_rejections r WHERE r.sync_name = u.sync_name AND r.run_id = u.run_id)
        ORDER BY finished_at DESC LIMIT 1"""


def last_run_with_rejections(conn: sa.Connection, sync_name: str) -> str | None:
    """The latest finished (successful) run of the sync that rejected rows; a run that failed, crashed or is
    still running has no rejected rows to show."""
    return conn.exec_driver_sql(
        LAST_RUN_WITH_REJECTIONS,
        {"sync": sync_name},
    ).scalar()


REJECTION_COUNT = """SELECT count(*) FROM sync_rejections r JOIN sync_runs u ON u.run_id = r.run_id
        WHERE r.sync_name = %(sync)s AND u.status = 'success' AND NOT u.preview
          AND (%(run)s::text IS NULL OR r.run_id = %(run)s)"""


def rejection_count(conn: sa.Connection, sync_name: str, run_id: str | None = None) -> int:
    """Rejected rows of the sync's finished (successful) runs, or of one of them."""
    return conn.exec_driver_sql(
        REJECTION_COUNT,
        {"sync": sync_name, "run": run_id},
    ).scalar_one()


REJECTIONS_CSV = """SELECT run_id, sync_name, row_key, column_name, code, message, row::text FROM sync_rejections
        WHERE sync_name = %s AND run_id = %s ORDER BY id"""


def rejections_csv(conn: sa.Connection, sync_name: str, run_id: str, out: TextIO) -> int:
    """Write every rejected row of a run as CSV; returns how many."""
    writer = csv.writer(out)
    writer.writerow(["run_id", "sync", "row_key", "column", "code", "message", "row"])
    count = 0
    result = conn.execution_options(stream_results=True, yield_per=5000).exec_driver_sql(
        REJECTIONS_CSV,
        (sync_name, run_id),
    )
    for row in result:
        writer.writerow(row)
        count += 1
    return count
