"""Sync logs back to the warehouse: run summaries and rejected rows, on DuckDB and Postgres, success and failure."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import psycopg
import pytest
from psycopg import sql

from conversion_sync.config import ProjectConfig, load_project_config
from conversion_sync.definitions import build_definitions
from conversion_sync.defs.alerts import alert_sensors
from conversion_sync.store.contact_store import ContactStore
from conversion_sync.warehouses import sync_logs
from conversion_sync.warehouses.sync_logs import write_sync_log

SCHEMA = "conversion_logs"
PEOPLE = [
    ("ada@example.com", "Ada"),
    ("bo@example.com", "Bo"),
    ("cy@example.com", "Cy"),
    ("not-an-email", "Bad"),
    (None, "Nobody"),
    ("also bad", "Worse"),
]
_databases = itertools.count()


class LoggedWarehouse:
    """A warehouse of one kind with `people` and sync_logs configured, a config around it, and a Dagster instance."""

    def __init__(self, kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: Any) -> None:
        self.kind = kind
        self.dir = tmp_path / "config"
        self.dir.mkdir()
        if kind == "duckdb":
            self.path = tmp_path / "warehouse.duckdb"
            with duckdb.connect(str(self.path)) as con:
                con.execute("CREATE TABLE people (email VARCHAR, first_name VARCHAR)")
                con.executemany("INSERT INTO people VALUES (?, ?)", PEOPLE)
            spec = f"{{type: duckdb, path: '{self.path}', sync_logs: {{schema: {SCHEMA}}}}}"
        else:
            self.database = f"sync_logs_{next(_databases)}"
            with psycopg.connect(server.get_uri(), autocommit=True) as conn:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.database))
                )
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.database)))
            self.url = str(server.get_uri(self.database))
            with psycopg.connect(self.url, autocommit=True) as conn:
                conn.execute("CREATE TABLE people (email text, first_name text)")
                with conn.cursor() as cur:
                    cur.executemany("INSERT INTO people VALUES (%s, %s)", PEOPLE)
            monkeypatch.setenv("CS_SYNC_LOGS_WH_URL", self.url)
            spec = f"{{type: postgres, url: {{env: CS_SYNC_LOGS_WH_URL}}, sync_logs: {{schema: {SCHEMA}}}}}"
        (self.dir / "warehouses.yaml").write_text(f"warehouses:\n  wh: {spec}\n")
        (self.dir / "people.yaml").write_text(
            "name: people\nwarehouse: wh\ndestination: {type: contacts}\nquery: SELECT email, first_name FROM people\n"
        )
        (self.dir / "broken.yaml").write_text(
            "name: broken\nwarehouse: wh\ndestination: {type: contacts}\nquery: SELECT email FROM missing_table\n"
        )

    def project(self) -> ProjectConfig:
        project = load_project_config(self.dir)
        assert not project.problems, project.problems
        return project

    def execute(self, instance: dg.DagsterInstance, job: str) -> dg.ExecuteInProcessResult:
        defs = build_definitions(self.project())
        return defs.resolve_job_def(job).execute_in_process(instance=instance, raise_on_error=False)

    def query(self, statement: str) -> list[tuple[Any, ...]]:
        """Read the warehouse (the sync-log tables are `logs.sync_runs` and `logs.sync_rejections`)."""
        statement = statement.replace("logs.", f"{SCHEMA}.")
        if self.kind == "duckdb":
            with duckdb.connect(str(self.path), read_only=True) as con:
                return con.execute(statement).fetchall()
        with psycopg.connect(self.url) as conn:
            return conn.execute(statement).fetchall()  # type: ignore[arg-type]

    def execute_sql(self, statement: str) -> None:
        if self.kind == "duckdb":
            with duckdb.connect(str(self.path)) as con:
                con.execute(statement)
        else:
            with psycopg.connect(self.url, autocommit=True) as conn:
                conn.execute(statement)  # type: ignore[arg-type]


@pytest.fixture(params=["duckdb", "postgres"])
def warehouse(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store_url: str
) -> LoggedWarehouse:
    server = request.getfixturevalue("postgres_server") if request.param == "postgres" else None
    return LoggedWarehouse(request.param, tmp_path, monkeypatch, server)


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as test_instance:
        yield test_instance


def as_json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def test_successful_runs_append_summary_and_rejected_rows(
    warehouse: LoggedWarehouse, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sync_logs, "CHUNK_ROWS", 2)  # three rejected rows cross a chunk boundary
    first = warehouse.execute(instance, "sync_people")
    assert first.success
    runs = warehouse.query(
        """SELECT run_id, sync_name, status, queried, added, changed, unchanged, removed, rejected, skipped,
                  started_at IS NOT NULL AND finished_at >= started_at, duration_s >= 0, error, counts,
                  watermark_used IS NOT NULL, next_watermark IS NOT NULL FROM logs.sync_runs"""
    )
    assert len(runs) == 1
    run_id, sync_name, status, *counts, times_ok, duration_ok, error, all_counts, wm_used, wm_next = runs[0]
    assert (run_id, sync_name, status) == (first.run_id, "people", "success")
    assert counts == [6, 3, 0, 0, 0, 3, 0]
    assert times_ok and duration_ok and wm_used and wm_next and error is None
    assert as_json(all_counts)["contacts_created"] == 3
    rejected = warehouse.query(
        "SELECT run_id, row_key, column_name, code, message, row_json, rejected_at IS NOT NULL "
        "FROM logs.sync_rejections ORDER BY code, row_key NULLS FIRST"
    )
    assert [(r[0], r[3]) for r in rejected] == [
        (first.run_id, "invalid_field_value"),
        (first.run_id, "invalid_field_value"),
        (first.run_id, "missing_required_field"),
    ]
    assert {r[1] for r in rejected} == {"also bad", "not-an-email", None}
    assert all(r[2] == "email" and r[4] and r[6] for r in rejected)
    assert {as_json(r[5])["first_name"] for r in rejected} == {"Bad", "Nobody", "Worse"}

    second = warehouse.execute(instance, "sync_people")
    assert second.success
    runs = warehouse.query(
        "SELECT run_id, added, unchanged, rejected FROM logs.sync_runs ORDER BY started_at"
    )
    assert runs == [(first.run_id, 3, 0, 3), (second.run_id, 0, 3, 3)], "one row per run, appended"
    assert warehouse.query("SELECT count(*) FROM logs.sync_rejections") == [(6,)]


def test_writing_a_run_again_replaces_its_entries(
    warehouse: LoggedWarehouse, instance: dg.DagsterInstance
) -> None:
    result = warehouse.execute(instance, "sync_people")
    assert result.success
    store = ContactStore()
    assert write_sync_log(warehouse.project(), "people", result.run_id, store)
    assert warehouse.query("SELECT count(*) FROM logs.sync_runs") == [(1,)]
    assert warehouse.query("SELECT count(*) FROM logs.sync_rejections") == [(3,)]


def test_failed_run_is_logged_by_the_failure_sensor(
    warehouse: LoggedWarehouse, instance: dg.DagsterInstance
) -> None:
    project = warehouse.project()
    (sensor,) = [s for s in alert_sensors(project) if s.name == "sync_logs_on_run_failure"]
    resources = {"contact_store": ContactStore()}
    cursor = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, resources=resources)).cursor
    result = warehouse.execute(instance, "sync_broken")
    assert not result.success
    data = sensor.evaluate_tick(
        dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources)
    )
    assert [r.error for r in data.dagster_run_reactions or []] == [None]
    ((run_id, status, error, queried, started, finished),) = warehouse.query(
        "SELECT run_id, status, error, queried, started_at IS NOT NULL, finished_at IS NOT NULL FROM logs.sync_runs"
    )
    assert (run_id, status, queried) == (result.run_id, "failed", None)
    assert "missing_table" in error and "query failed" in error
    assert started and finished
    assert warehouse.query("SELECT count(*) FROM logs.sync_rejections") == [(0,)]


def test_a_log_that_cannot_be_written_is_a_warning_not_a_failed_sync(
    warehouse: LoggedWarehouse, instance: dg.DagsterInstance
) -> None:
    # the customer's schema already has a sync_runs table of another shape
    warehouse.execute_sql(f"CREATE SCHEMA {SCHEMA}")
    warehouse.execute_sql(f"CREATE TABLE {SCHEMA}.sync_runs (something_else INTEGER)")
    result = warehouse.execute(instance, "sync_people")
    assert result.success
    with ContactStore().begin() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM contacts").scalar() == 3
    warnings = [
        entry.user_message
        for entry in instance.all_logs(result.run_id)
        if entry.level == 30 and "sync logs:" in entry.user_message
    ]
    assert len(warnings) == 1 and "was not written" in warnings[0] and f"schema '{SCHEMA}'" in warnings[0]
    assert warehouse.query("SELECT count(*) FROM logs.sync_runs") == [(0,)], "nothing half-written"
