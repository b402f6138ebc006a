"""Per-sync state in the store: watermarks, run records and phases, fingerprints, rejections."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa


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


def get_watermark(conn: sa.Connection, sync_name: str) -> datetime | None:
    return conn.exec_driver_sql(
        "SELECT watermark FROM sync_state WHERE sync_name = %s", (sync_name,)
    ).scalar()


def last_successful_run(conn: sa.Connection, sync_name: str) -> str | None:
    """The run that last wrote the sync's fingerprints (with its watermark); None before the first or after a reset."""
    return conn.exec_driver_sql(
        "SELECT last_run_id FROM sync_state WHERE sync_name = %s", (sync_name,)
    ).scalar()


def set_watermark(conn: sa.Connection, sync_name: str, watermark: datetime, run_id: str) -> None:
    """Move the watermark; call in the transaction of the run's last write."""
    conn.exec_driver_sql(
        """INSERT INTO sync_state (sync_name, watermark, last_run_id, last_success_at, updated_at)
        VALUES (%(sync)s, %(watermark)s, %(run)s, now(), now())
        ON CONFLICT (sync_name) DO UPDATE SET watermark = EXCLUDED.watermark, last_run_id = EXCLUDED.last_run_id,
            last_success_at = now(), updated_at = now()""",
        {"sync": sync_name, "watermark": watermark, "run": run_id},
    )


def reset_sync(conn: sa.Connection, sync_name: str) -> tuple[bool, int]:
    """Forget the watermark and fingerprints so the next run reads and compares everything."""
    had_state = conn.exec_driver_sql("DELETE FROM sync_state WHERE sync_name = %s", (sync_name,)).rowcount > 0
    fingerprints = conn.exec_driver_sql(
        "DELETE FROM sync_fingerprints WHERE sync_name = %s", (sync_name,)
    ).rowcount
    return had_state, fingerprints


def start_run(
    conn: sa.Connection,
    *,
    run_id: str,
    sync_name: str,
    watermark_used: datetime,
    next_watermark: datetime,
    staging_table: str,
    full_sync: bool,
) -> None:
    conn.exec_driver_sql(
        """INSERT INTO sync_runs (run_id, sync_name, status, phase, watermark_used, next_watermark, staging_table,
                                  full_sync, started_at)
        VALUES (%(run)s, %(sync)s, 'running', 'querying', %(used)s, %(next)s, %(stage)s, %(full)s, now())
        ON CONFLICT (run_id) DO UPDATE SET status = 'running', phase = 'querying', error = NULL, finished_at = NULL,
            watermark_used = EXCLUDED.watermark_used, next_watermark = EXCLUDED.next_watermark,
            staging_table = EXCLUDED.staging_table, full_sync = EXCLUDED.full_sync, counts = '{}'::jsonb""",
        {
            "run": run_id,
            "sync": sync_name,
            "used": watermark_used,
            "next": next_watermark,
            "stage": staging_table,
            "full": full_sync,
        },
    )


def record_columns(conn: sa.Connection, run_id: str, names: list[str], arrow_types: list[str]) -> None:
    """The query's result columns and their Arrow types, for the steps that follow."""
    columns = [{"name": n, "type": t} for n, t in zip(names, arrow_types, strict=True)]
    conn.exec_driver_sql(
        "UPDATE sync_runs SET source_columns = %(cols)s::json WHERE run_id = %(run)s",
        {"cols": json.dumps(columns), "run": run_id},
    )


def set_phase(conn: sa.Connection, run_id: str, phase: str, counts: dict[str, Any] | None = None) -> None:
    conn.exec_driver_sql(
        "UPDATE sync_runs SET phase = %(phase)s, counts = counts || %(counts)s::jsonb WHERE run_id = %(run)s",
        {"phase": phase, "counts": json.dumps(counts or {}), "run": run_id},
    )


def finish_run(
    conn: sa.Connection, run_id: str, status: str, counts: dict[str, Any], error: str | None = None
) -> None:
    conn.exec_driver_sql(
        """UPDATE sync_runs SET status = %(status)s, phase = NULL, finished_at = now(),
            counts = counts || %(counts)s::jsonb, error = %(error)s WHERE run_id = %(run)s""",
        {"status": status, "counts": json.dumps(counts), "error": error, "run": run_id},
    )


def abandon_older_runs(conn: sa.Connection, sync_name: str, run_id: str, started_at: datetime) -> list[str]:
    """Mark runs of the sync that started before `started_at` and are still 'running' as failed
    (superseded by `run_id`, which succeeded); returns their staging tables."""
    tables = (
        conn.exec_driver_sql(
            """UPDATE sync_runs SET status = 'failed', phase = NULL, finished_at = now(),
                error = 'abandoned: the run never finished (its process died) and run ' || %(run)s
                        || ', which started later, succeeded'
            WHERE sync_name = %(sync)s AND status = 'running' AND run_id <> %(run)s AND started_at < %(started)s
            RETURNING staging_table""",
            {"sync": sync_name, "run": run_id, "started": started_at},
        )
        .scalars()
        .all()
    )
    return [t for t in tables if t]


def get_run(conn: sa.Connection, run_id: str) -> SyncRunRecord | None:
    return _get_run_by(conn, "run_id", run_id)


def get_run_by_staging_table(conn: sa.Connection, staging_table: str) -> SyncRunRecord | None:
    """The run whose query step filled this staging table (ops hand each other only its name)."""
    return _get_run_by(conn, "staging_table", staging_table)


def _get_run_by(conn: sa.Connection, column: str, value: str) -> SyncRunRecord | None:
    row = conn.exec_driver_sql(
        f"""SELECT run_id, sync_name, status, phase, started_at, finished_at, counts, error, watermark_used,
                  next_watermark, staging_table, full_sync, source_columns FROM sync_runs WHERE {column} = %s""",
        (value,),
    ).one_or_none()
    return SyncRunRecord(*row) if row else None


def latest_runs(conn: sa.Connection) -> dict[str, SyncRunRecord]:
    rows = conn.exec_driver_sql(
        """SELECT DISTINCT ON (sync_name) run_id, sync_name, status, phase, started_at, finished_at, counts, error,
                  watermark_used, next_watermark, staging_table, full_sync, source_columns
        FROM sync_runs ORDER BY sync_name, started_at DESC"""
    ).all()
    return {row[1]: SyncRunRecord(*row) for row in rows}


def rejection_preview(
    conn: sa.Connection, sync_name: str, run_id: str, limit: int = 20
) -> list[dict[str, Any]]:
    rows = conn.exec_driver_sql(
        """SELECT row_key, column_name, code, message FROM sync_rejections
        WHERE sync_name = %s AND run_id = %s ORDER BY id LIMIT %s""",
        (sync_name, run_id, limit),
    ).mappings()
    return [dict(r) for r in rows]


def last_run_with_rejections(conn: sa.Connection, sync_name: str) -> str | None:
    return conn.exec_driver_sql(
        "SELECT run_id FROM sync_rejections WHERE sync_name = %s ORDER BY id DESC LIMIT 1", (sync_name,)
    ).scalar()


def rejections_csv(conn: sa.Connection, sync_name: str, run_id: str, out: io.TextIOBase) -> int:
    """Write every rejected row of a run as CSV; returns how many."""
    writer = csv.writer(out)
    writer.writerow(["run_id", "sync", "row_key", "column", "code", "message", "row"])
    count = 0
    result = conn.execution_options(stream_results=True, yield_per=5000).exec_driver_sql(
        """SELECT run_id, sync_name, row_key, column_name, code, message, row::text FROM sync_rejections
        WHERE sync_name = %s AND run_id = %s ORDER BY id""",
        (sync_name, run_id),
    )
    for row in result:
        writer.writerow(row)
        count += 1
    return count
