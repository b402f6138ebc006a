"""The embedded Postgres: started and joined by many processes, stopped cleanly, and Dagster history survives."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from conversion_sync.dev.embedded_postgres import (
    dagster_storage_url,
    embedded_postgres_running,
    start_embedded_postgres,
    stop_embedded_postgres,
)
from conversion_sync.dev.launcher import prepare_dagster_home


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CONVERSION_SYNC_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    yield tmp_path / "data"
    stop_embedded_postgres(tmp_path / "data")


def test_processes_share_one_server(data_dir: Path) -> None:
    code = "from conversion_sync.dev.embedded_postgres import start_embedded_postgres as s; print(s())"
    procs = [
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
        for _ in range(3)
    ]
    urls = {p.stdout.strip() for p in procs}
    assert len(urls) == 1, urls
    assert embedded_postgres_running(data_dir)
    with psycopg.connect(urls.pop()) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("conversion",)


@dg.op
def say_hello() -> str:
    return "hello"


@dg.job
def hello_job() -> None:
    say_hello()


def test_dagster_run_history_survives_a_restart(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    start_embedded_postgres(data_dir)
    monkeypatch.setenv("DAGSTER_PG_URL", dagster_storage_url(data_dir))
    home = prepare_dagster_home(data_dir)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        run_id = hello_job.execute_in_process(instance=instance).run_id

    assert stop_embedded_postgres(data_dir)
    assert not embedded_postgres_running(data_dir)
    start_embedded_postgres(data_dir)

    with dg.DagsterInstance.get() as instance:
        run = instance.get_run_by_id(run_id)
        assert run is not None and run.status == dg.DagsterRunStatus.SUCCESS
