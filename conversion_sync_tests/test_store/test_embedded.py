"""The embedded Postgres: started and joined by many processes, stopped cleanly, and Dagster history survives."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from conversion_sync_dev.embedded_postgres import (
    EMBEDDED_SETTINGS,
    dagster_storage_url,
    embedded_postgres_running,
    start_embedded_postgres,
    stop_embedded_postgres,
)
from conversion_sync_dev.launcher import prepare_dagster_home


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CONVERSION_SYNC_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    yield tmp_path / "data"
    stop_embedded_postgres(tmp_path / "data")


def test_processes_share_one_server(data_dir: Path) -> None:
    code = "from conversion_sync_dev.embedded_postgres import start_embedded_postgres as s; print(s())"
    procs = [
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
        for _ in range(3)
    ]
    urls = {p.stdout.strip() for p in procs}
    assert len(urls) == 1, urls
    assert embedded_postgres_running(data_dir)
    with psycopg.connect(urls.pop()) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("conversion",)
        # the first start restarted the server for the settings read at start only
        for name, value in EMBEDDED_SETTINGS.items():
            assert conn.execute(f"SHOW {name}").fetchone() == (value,), name
        assert conn.execute("SELECT count(*) FROM pg_settings WHERE pending_restart").fetchone() == (0,)


def test_a_start_that_outlasts_pg_ctl_waits_for_the_server(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After an unclean stop the server replays its WAL before it takes connections, which can take longer
    than pgserver's pg_ctl waits (10 s): the start waits for the server instead of failing."""
    import pgserver.postgres_server as pgserver_module
    from pgserver.utils import PostmasterInfo

    url = start_embedded_postgres(data_dir)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept AS SELECT i FROM generate_series(1, 50000) i")
    info = PostmasterInfo.read_from_pgdata(data_dir / "postgres")
    assert info is not None
    info.process.kill()  # SIGKILL: no shutdown checkpoint, the next start recovers
    info.process.wait(timeout=30)
    real, starts = pgserver_module.pg_ctl, []

    def impatient_pg_ctl(args: list[str], **kwargs: object) -> object:
        if "start" in args:
            starts.append(args)
            if len(starts) == 1:
                kwargs["timeout"] = 0.01  # as if recovery outlasted pg_ctl's 10 s
        return real(args, **kwargs)

    monkeypatch.setattr(pgserver_module, "pg_ctl", impatient_pg_ctl)
    url = start_embedded_postgres(data_dir)
    assert starts, "the server was not restarted"
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM kept").fetchone() == (50000,)


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
