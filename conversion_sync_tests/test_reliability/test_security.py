"""Security: planted secrets never surface (Dagster event log, errors, CLI), sync queries are read-only,
the query template cannot inject SQL, and the local services listen on 127.0.0.1 only."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import psycopg
import pytest
from click.testing import CliRunner
from dagster._serdes import serialize_value
from hypothesis import given, settings
from hypothesis import strategies as st

from conversion_sync.cli import main as cli
from conversion_sync.config import load_project_config
from conversion_sync.definitions import build_definitions
from conversion_sync.store.connection import STORE_URL_ENV
from conversion_sync.syncs.runner import SyncFailed
from conversion_sync.syncs.template import render_query
from conversion_sync_dev import launcher
from conversion_sync_dev.salesforce_standin import Org, StandinServer
from conversion_sync_tests.conftest import REPO_ROOT, create_database, drop_database
from conversion_sync_tests.test_syncs.conftest import SyncWorld

from .conftest import Figures

WAREHOUSE_PASSWORD = "Wh-pl4nted-s3cret-9f3k"
STORE_PASSWORD = "St0re-pl4nted-s3cret-22x"
SALESFORCE_PASSWORD = "Sf-pl4nted-passw0rd-x81"
SALESFORCE_TOKEN = "Sf-pl4nted-t0ken-q77"
SECRETS = (WAREHOUSE_PASSWORD, STORE_PASSWORD, SALESFORCE_PASSWORD, SALESFORCE_TOKEN)


def with_password(url: str, password: str) -> str:
    """The pgserver URL (trust authentication: the password is carried, not checked)."""
    return url.replace("postgres:@", f"postgres:{urllib.parse.quote(password, safe='')}@", 1)


def leaks(text: str) -> list[str]:
    forms = {s: (s, urllib.parse.quote(s, safe="")) for s in SECRETS}
    return [secret for secret, variants in forms.items() if any(v in text for v in variants)]


@pytest.fixture
def planted(
    world: SyncWorld, pg_base_uri: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[tuple[SyncWorld, StandinServer]]:
    """A Postgres warehouse and a store whose URLs carry passwords, and a stand-in with planted credentials."""
    warehouse = create_database(pg_base_uri, "secret_warehouse", template=None)
    with psycopg.connect(warehouse, autocommit=True) as conn:
        conn.execute(
            """CREATE TABLE users AS SELECT 'user' || i || '@example.com' AS email, 'Name' || i AS first_name,
                   timestamp '2026-01-01' + i * interval '1 minute' AS updated_at FROM generate_series(1, 50) i;
               INSERT INTO users VALUES ('not-an-email', 'Bad', '2026-01-01')"""
        )
    monkeypatch.setenv("SECRET_WH_URL", with_password(warehouse, WAREHOUSE_PASSWORD))
    # libpq quotes the whole URI (password included) when it cannot parse it
    monkeypatch.setenv("BROKEN_WH_URL", f"postgresql://reader:{WAREHOUSE_PASSWORD}@[::1/nowhere")
    monkeypatch.setenv(STORE_URL_ENV, with_password(world.store_url, STORE_PASSWORD))
    world.store_url = os.environ[STORE_URL_ENV]
    world.warehouses = {
        "app": "{type: postgres, url: {env: SECRET_WH_URL}}",
        "down": "{type: postgres, url: {env: BROKEN_WH_URL}}",
    }
    query = "SELECT email, first_name, updated_at FROM users WHERE updated_at > '{{last_sync_time}}'"
    world.add_sync("users", query, warehouse="app")
    world.add_sync("missing", "SELECT email FROM no_such_table", warehouse="app")
    world.add_sync("unreachable", "SELECT email FROM users", warehouse="down")
    (world.dir / "salesforce.yaml").write_text(
        "api_reserve: 0\nfield_mappings: {Contact: {first_name: FirstName}}\n"
    )
    org = Org(password=SALESFORCE_PASSWORD, security_token=SALESFORCE_TOKEN)
    with StandinServer(org) as standin:
        org.advance_clock(-600)
        org.seed(
            "Contact",
            [{"LastName": f"P{i}", "FirstName": "Sf", "Email": f"user{i}@example.com"} for i in range(20)],
        )
        for key, value in {
            "SALESFORCE_USERNAME": standin.username,
            "SALESFORCE_PASSWORD": SALESFORCE_PASSWORD,
            "SALESFORCE_SECURITY_TOKEN": SALESFORCE_TOKEN,
            "SALESFORCE_LOGIN_URL": standin.url,
            "SALESFORCE_CA_BUNDLE": str(standin.ca_path),
        }.items():
            monkeypatch.setenv(key, value)
        world.project()
        yield world, standin
    drop_database(pg_base_uri, warehouse, "secret_warehouse")


def dagster_records(instance: dg.DagsterInstance, run_id: str) -> str:
    """Everything Dagster keeps about a run: the run (config, tags) and every event with its metadata."""
    run = instance.get_run_by_id(run_id)
    events = instance.all_logs(run_id)
    return serialize_value(run) + "\n".join(serialize_value(e) for e in events)


def test_no_secret_in_the_dagster_event_log_errors_or_cli(
    planted: tuple[SyncWorld, StandinServer], monkeypatch: pytest.MonkeyPatch, figures: Figures
) -> None:
    world, _ = planted
    defs = build_definitions(load_project_config(world.dir))
    scanned: dict[str, str] = {}
    with dg.instance_for_test() as instance:
        for job in ("sync_users", "sync_missing", "sync_unreachable", "salesforce_poll_job"):
            result = defs.resolve_job_def(job).execute_in_process(instance=instance, raise_on_error=False)
            assert result.success == (job in ("sync_users", "salesforce_poll_job")), job
            scanned[f"dagster {job}"] = dagster_records(instance, result.run_id)
        monkeypatch.setenv("SALESFORCE_PASSWORD", "wrong-" + SALESFORCE_PASSWORD)
        failed_login = build_definitions(load_project_config(world.dir)).resolve_job_def(
            "salesforce_poll_job"
        )
        result = failed_login.execute_in_process(instance=instance, raise_on_error=False)
        assert not result.success
        scanned["dagster salesforce_poll_job (refused login)"] = dagster_records(instance, result.run_id)
    failures = "\n".join(e for (e,) in world.sql("SELECT coalesce(error, '') FROM sync_runs"))
    assert (
        "no_such_table" in failures and "warehouse 'down' (postgres): " in failures
    )  # errors are kept, readable
    scanned["sync_runs errors"] = failures
    runner = CliRunner()
    for args in (
        ["validate"],
        ["run", "users"],
        ["run", "missing"],
        ["run", "unreachable"],
        ["preview", "users"],
        ["status"],
        ["rejections", "users"],
        ["resync", "users"],
        ["migrate"],
    ):
        result = runner.invoke(cli, ["--config", str(world.dir), *args])
        assert result.exception is None or isinstance(result.exception, SystemExit), (args, result.exception)
        scanned["conversion-sync " + " ".join(args)] = result.stdout + result.stderr
    assert "no_such_table" in scanned["conversion-sync run missing"]
    assert "warehouse 'down' (postgres)" in scanned["conversion-sync run unreachable"]
    found = {where: leaks(text) for where, text in scanned.items() if leaks(text)}
    assert found == {}, f"secrets leaked: {found}"
    figures.add("security", outputs_scanned=len(scanned), secrets_planted=len(SECRETS), secrets_found=0)


# -- read-only sync queries ------------------------------------------------------------------------------


def heavy(*statements: str) -> list[Any]:
    return [pytest.param(s, marks=pytest.mark.reliability) for s in statements]


WRITES = [
    "DELETE FROM users",
    "DELETE FROM users RETURNING *",
    "SELECT 1 AS email; DELETE FROM users",
    *heavy(
        "UPDATE users SET first_name = 'x' RETURNING *",
        "INSERT INTO users SELECT * FROM users RETURNING *",
        "DROP TABLE users",
        "CREATE TABLE stolen AS SELECT * FROM users",
        "TRUNCATE users",
    ),
]
PG_ONLY_WRITES = [
    "WITH gone AS (DELETE FROM users RETURNING *) SELECT * FROM gone",
    *heavy("SELECT nextval('counter') AS email"),
]


@pytest.mark.parametrize("statement", WRITES)
def test_a_writing_duckdb_sync_query_fails_and_changes_nothing(world: SyncWorld, statement: str) -> None:
    world.warehouse(
        "CREATE TABLE users AS SELECT 'u' || i || '@example.com' AS email, 'N' AS first_name FROM range(10) t(i)"
    )
    world.add_sync("writer", statement)
    with pytest.raises(SyncFailed, match=r"^warehouse 'wh' \(duckdb\): "):
        world.run("writer")
    with duckdb.connect(str(world.duckdb_path), read_only=True) as conn:
        assert conn.sql("SELECT count(*), min(first_name) FROM users").fetchall() == [(10, "N")]
        assert conn.sql("SELECT count(*) FROM information_schema.tables").fetchall() == [(1,)]
    assert world.scalar("SELECT count(*) FROM contacts") == 0


@pytest.fixture
def pg_source(pg_base_uri: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    url = create_database(pg_base_uri, "readonly_warehouse", template=None)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE users AS SELECT 'u' || i || '@example.com' AS email, 'N' AS first_name "
            "FROM generate_series(1, 10) i; CREATE SEQUENCE counter"
        )
    monkeypatch.setenv("READONLY_WH_URL", url)
    yield url
    drop_database(pg_base_uri, url, "readonly_warehouse")


@pytest.mark.parametrize("statement", WRITES + PG_ONLY_WRITES)
def test_a_writing_postgres_sync_query_fails_and_changes_nothing(
    world: SyncWorld, pg_source: str, statement: str
) -> None:
    world.warehouses["wh"] = "{type: postgres, url: {env: READONLY_WH_URL}}"
    world.add_sync("writer", statement)
    with pytest.raises(SyncFailed, match=r"^warehouse 'wh' \(postgres\): "):
        world.run("writer")
    with psycopg.connect(pg_source) as conn:
        assert conn.execute("SELECT count(*), min(first_name) FROM users").fetchall() == [(10, "N")]
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchall() == [(1,)]
        assert conn.execute("SELECT last_value, is_called FROM counter").fetchall() == [(1, False)]
    assert world.scalar("SELECT count(*) FROM contacts") == 0


# -- the query template ----------------------------------------------------------------------------------

RENDERED = re.compile(r"^SELECT '\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{6}' AS t, \d+ AS u$")


@settings(max_examples=200, deadline=None, database=None)
@given(
    moment=st.datetimes(
        min_value=datetime(1970, 1, 1), max_value=datetime(9999, 12, 31), timezones=st.timezones()
    )
)
def test_template_values_are_generated_digits_only(moment: datetime) -> None:
    rendered = render_query("SELECT '{{last_sync_time}}' AS t, {{ last_sync_time_unix }} AS u", moment)
    assert RENDERED.match(rendered), rendered


@pytest.mark.parametrize(
    "placeholder",
    [
        "{{last_sync_time'; DROP TABLE users; --}}",
        "{{ env.SECRET_WH_URL }}",
        "{{SECRET_WH_URL}}",
        "{{last_sync_time | safe}}",
        "{{ self.__class__ }}",
        "{{}}",
        "{{lAST_sync_time}}",
    ],
)
def test_unknown_template_names_are_a_config_error(tmp_path: Path, placeholder: str) -> None:
    (tmp_path / "warehouses.yaml").write_text("warehouses: {wh: {type: duckdb, path: w.duckdb}}\n")
    (tmp_path / "s.yaml").write_text(
        f"name: s\nwarehouse: wh\ndestination: {{type: contacts}}\nquery: \"SELECT email FROM u WHERE x > '{placeholder}'\"\n"
    )
    project = load_project_config(tmp_path)
    assert "s" in project.broken_syncs and not project.syncs
    [problem] = project.problems
    assert problem.key == "query" and "unknown template name" in problem.message


def test_a_watermark_is_rendered_from_the_store_not_from_data(world: SyncWorld) -> None:
    """The watermark is the moment the run started (a datetime), whatever the data holds."""
    world.warehouse(
        "CREATE TABLE users AS SELECT 'a@example.com' AS email, '2099-01-01''; DROP TABLE users; --' AS first_name, "
        "TIMESTAMP '2099-01-01' AS updated_at"
    )
    world.add_sync("users", "SELECT * FROM users WHERE updated_at > '{{last_sync_time}}'")
    before = datetime.now(UTC)
    first = world.run("users")
    assert before - timedelta(seconds=5) < first.next_watermark < datetime.now(UTC)
    assert world.run("users").counts["queried"] == 1  # the 2099 row is re-read: the watermark is not data


# -- loopback only ---------------------------------------------------------------------------------------


def listening_addresses(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every listening TCP socket the process holds (from /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd) if fd.is_symlink() else ""
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in inodes:  # 0A: LISTEN
                continue
            address, port = local.split(":")
            raw = bytes.fromhex(address)
            if family == socket.AF_INET:
                raw = raw[::-1]
            else:
                raw = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
            found.add((socket.inet_ntop(family, raw), int(port, 16)))
    return found


def test_the_standin_listens_on_loopback_only(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "conversion_sync_dev.salesforce_standin",
            "--port",
            "0",
            "--state-dir",
            str(tmp_path),
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        info_path = tmp_path / "standin.json"
        deadline = time.monotonic() + 60
        while not info_path.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        info: dict[str, Any] = json.loads(info_path.read_text())
        assert info["pid"] == process.pid
        addresses = listening_addresses(process.pid)
        assert addresses and {address for address, _ in addresses} == {"127.0.0.1"}, addresses
        assert info["url"].startswith("https://127.0.0.1:")
    finally:
        process.terminate()
        process.wait(timeout=30)
    refused = subprocess.run(
        [
            sys.executable,
            "-m",
            "conversion_sync_dev.salesforce_standin",
            "--host",
            "0.0.0.0",
            "--port",
            "0",
            "--state-dir",
            str(tmp_path / "other"),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode != 0 and "loopback only" in refused.stderr
    with pytest.raises(ValueError, match="loopback only"):
        StandinServer(host="0.0.0.0")


def test_make_dev_serves_dagster_and_the_standin_on_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[list[str]] = []

    class Exited:
        pid = 0
        returncode = 0

        def __init__(self, command: list[str], **kwargs: Any) -> None:
            started.append(list(command))

        def poll(self) -> int:
            return 0

        def wait(self, timeout: float | None = None) -> int:
            return 0

    monkeypatch.setattr(launcher.subprocess, "Popen", Exited)
    monkeypatch.setattr(launcher, "prepare_environment", lambda: {STORE_URL_ENV: "postgresql://x@/y"})
    monkeypatch.setattr(launcher, "store_is_fresh", lambda url: False)
    monkeypatch.setattr(launcher.signal, "signal", lambda *args: None)
    monkeypatch.setenv(STORE_URL_ENV, "postgresql://x@/y")  # not the embedded store: nothing to stop
    assert launcher.main([]) == 0
    [dagster_dev] = started
    assert dagster_dev[1] == "dev" and dagster_dev[dagster_dev.index("-h") + 1] == "127.0.0.1"
    assert launcher._start_salesforce_standin(Path("/nonexistent/state"), timeout_seconds=1) == {}
    standin_command = started[-1]
    assert standin_command[2] == "conversion_sync_dev.salesforce_standin" and "--host" not in standin_command
    makefile = (REPO_ROOT / "Makefile").read_text()
    [dev_recipe] = re.findall(r"^dev:.*\n\t(.+)$", makefile, flags=re.MULTILINE)
    assert dev_recipe.endswith("-m conversion_sync_dev.launcher"), dev_recipe
