"""Sync logs written back to Snowflake (fakesnow over the wire protocol) and read back through the connector."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
import snowflake.connector

from conversion_sync.config.warehouses import (
    BigQueryWarehouseConfig,
    SnowflakeWarehouseConfig,
    SyncLogsConfig,
)
from conversion_sync.warehouses.sync_logs import RunLog, SyncLogError, sync_log_writer

SCHEMA = "conversion_logs"


def _config(snowflake_config: SnowflakeWarehouseConfig) -> SnowflakeWarehouseConfig:
    return snowflake_config.model_copy(
        update={"sync_logs": SyncLogsConfig.model_validate({"schema": SCHEMA})}
    )


def _query(server: dict[str, Any], sql: str) -> list[tuple[Any, ...]]:
    with snowflake.connector.connect(**server, database="CS_TEST", schema="PUBLIC") as conn:
        return list(conn.cursor().execute(sql).fetchall())


def _run(run_id: str, status: str = "success", error: str | None = None) -> RunLog:
    started = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    return RunLog(
        sync_name="people",
        run_id=run_id,
        status=status,
        started_at=started,
        finished_at=started.replace(second=9),
        counts={"queried": 6, "added": 3, "rejected": 3, "duplicates_merged": 0},
        error=error,
        watermark_used=datetime(1970, 1, 1, tzinfo=UTC),
        next_watermark=started,
    )


def _rejected(n: int) -> list[tuple[Any, ...]]:
    at = datetime(2026, 1, 2, 3, 4, 6, tzinfo=UTC)
    return [
        (
            f"bad{i}",
            "email",
            "invalid_field_value",
            f"email: 'bad{i}' is not a valid e-mail address",
            json.dumps({"email": f"bad{i}", "first_name": "O'Brien", "_row_number": i}),
            at,
        )
        for i in range(n)
    ]


def test_snowflake_sync_logs_are_written_and_replaced_per_run(
    snowflake_config: SnowflakeWarehouseConfig, fakesnow_server: dict[str, Any]
) -> None:
    config = _config(snowflake_config)
    writer = sync_log_writer("analytics", config)
    assert writer is not None and writer.kind == "snowflake"
    # two chunks, and a run logged twice (a re-delivered log) is replaced, not duplicated
    assert writer.append(_run("run-1"), [_rejected(2), _rejected(1)]) == 3
    assert writer.append(_run("run-1"), [_rejected(2)]) == 2
    assert writer.append(_run("run-2", "failed", "SQL error"), []) == 0

    runs = _query(
        fakesnow_server,
        f'SELECT "run_id", "status", "queried", "added", "rejected", "duration_s", "error", "started_at", '
        f'"counts":duplicates_merged::INT FROM "{SCHEMA}"."sync_runs" ORDER BY "run_id"',
    )
    assert [r[:7] for r in runs] == [
        ("run-1", "success", 6, 3, 3, 4.0, None),
        ("run-2", "failed", 6, 3, 3, 4.0, "SQL error"),
    ]
    assert runs[0][7].astimezone(UTC) == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert runs[0][8] == 0  # counts is VARIANT: its fields are addressable
    rejections = _query(
        fakesnow_server,
        f'SELECT "run_id", "row_key", "code", "row_json":first_name::VARCHAR FROM "{SCHEMA}"."sync_rejections" '
        'ORDER BY "row_key"',
    )
    assert rejections == [
        ("run-1", "bad0", "invalid_field_value", "O'Brien"),
        ("run-1", "bad1", "invalid_field_value", "O'Brien"),
    ]


def test_snowflake_sync_log_errors_name_the_warehouse_without_the_password(
    snowflake_config: SnowflakeWarehouseConfig,
    fakesnow_server: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CS_TEST_SNOWFLAKE_PASSWORD", "pw-Zq81-unguessable")
    config = _config(snowflake_config).model_copy(update={"port": 1})  # nothing listens there
    writer = sync_log_writer("analytics", config)
    assert writer is not None
    with pytest.raises(SyncLogError) as failure:
        writer.append(_run("run-3"), [])
    message = str(failure.value)
    assert message.startswith(f"warehouse 'analytics' (snowflake) schema '{SCHEMA}':")
    assert "connection failed" in message and "pw-Zq81-unguessable" not in message


def test_bigquery_sync_logs_are_not_supported_yet() -> None:
    config = BigQueryWarehouseConfig.model_validate(
        {"type": "bigquery", "project": "p", "sync_logs": {"schema": "logs"}}
    )
    with pytest.raises(SyncLogError, match="supported on duckdb, postgres, snowflake warehouses only"):
        sync_log_writer("lake", config)
