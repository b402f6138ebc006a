"""`status`, rejections and previews tell the truth: a preview leaves no trace, a run whose process died shows
as crashed without waiting for another run, and only finished runs own rejected rows."""

from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import conversion_sync
from conversion_sync.cli import main
from conversion_sync.store import sync_state
from conversion_sync.syncs.destinations import contacts as contacts_destination
from conversion_sync.syncs.runner import SyncFailed
from conversion_sync.syncs.validation import Validator

from .conftest import SyncWorld

USERS = (
    "CREATE TABLE users AS SELECT * FROM (VALUES ('ann@example.com', 'Ann', '1'), ('bad', 'Bad', '2'), "
    "('cy@example.com', 'Cy', 'ten'), ('dee@example.com', 'Dee', '4')) v(email, first_name, seats)"
)
REJECTED_PER_RUN = 2  # 'bad' (malformed e-mail) and 'ten' (not an integer)


@pytest.fixture
def cli(world: SyncWorld, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("CONVERSION_STORE_URL", world.store_url)
    world.warehouse(USERS)
    world.add_sync("users", "SELECT * FROM users")
    world.project()

    def invoke(*args: str) -> tuple[int, str, str]:
        result = CliRunner().invoke(main, ["--config", str(world.dir), *args])
        return result.exit_code, result.stdout, result.stderr

    return invoke


def status_of(cli: Any, sync: str = "users") -> list[str]:  # type: ignore[no-untyped-def]
    code, out, _ = cli("status")
    assert code == 0, out
    table = [line.split() for line in out.splitlines()[1:] if line.strip()]
    rows = {
        cells[0]: cells for cells in table if not cells[1].endswith(":")
    }  # not the "<sync> failed: …" lines
    return rows[sync]


def store_state(world: SyncWorld) -> dict[str, list[tuple]]:
    return {
        "sync_state": world.sql("SELECT * FROM sync_state ORDER BY sync_name"),
        "sync_runs": world.sql("SELECT * FROM sync_runs ORDER BY run_id"),
        "sync_rejections": world.sql("SELECT * FROM sync_rejections ORDER BY id"),
        "contacts": world.sql("SELECT * FROM contacts ORDER BY id"),
    }


# --- previews -----------------------------------------------------------------------------------------


def test_a_preview_whose_query_fails_leaves_status_and_state_as_before(world: SyncWorld, cli) -> None:  # type: ignore[no-untyped-def]
    assert cli("run", "users")[0] == 0
    _, status_before, _ = cli("status")
    before = store_state(world)

    world.add_sync("users", "SELECT email, first_name, seats FROM no_such_table")
    code, _, err = cli("preview", "users")
    assert code == 1 and "no_such_table" in err

    _, status_after, _ = cli("status")
    assert status_after == status_before  # before: the failed preview was the sync's latest run, "failed"
    assert store_state(world) == before
    assert world.sql("SELECT count(*) FROM pg_tables WHERE schemaname = 'conversion_staging'") == [(0,)]


def test_a_preview_whose_validation_fails_leaves_status_and_state_as_before(
    world: SyncWorld,
    cli,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert cli("run", "users")[0] == 0
    _, status_before, _ = cli("status")
    before = store_state(world)
    seen_during: list[str] = []

    def failing_validation(self: Validator, conn: Any, queried: int) -> Any:
        seen_during.append(cli("status")[1])  # what `status` says while the preview runs
        raise RuntimeError("validation broke")

    monkeypatch.setattr(Validator, "run", failing_validation)
    with pytest.raises(RuntimeError, match="validation broke"):
        world.runner("users").preview()

    # before: while the preview ran, status showed it as the sync's run ("preparing", its counts)
    assert seen_during == [status_before]
    assert cli("status")[1] == status_before
    assert store_state(world) == before
    assert world.sql("SELECT count(*) FROM pg_tables WHERE schemaname = 'conversion_staging'") == [(0,)]


def test_a_preview_shows_what_the_run_then_writes(world: SyncWorld, cli) -> None:  # type: ignore[no-untyped-def]
    assert cli("run", "users")[0] == 0
    world.warehouse(
        "UPDATE users SET first_name = 'Anne' WHERE email = 'ann@example.com';"
        "INSERT INTO users VALUES ('eve@example.com', 'Eve', '5'), ('eve@example.com', 'Eva', '6')"
    )
    before = store_state(world)
    preview = world.runner("users").preview(limit=50)
    assert store_state(world) == before
    outcome = world.run("users")
    keys = ("queried", "added", "changed", "unchanged", "removed", "rejected")
    assert {k: preview.counts[k] for k in keys} == {k: outcome.counts[k] for k in keys}
    rejected = world.sql(
        "SELECT row_key, code FROM sync_rejections WHERE run_id = %(run)s ORDER BY id",
        {"run": outcome.run_id},
    )
    assert [(r["row_key"], r["code"]) for r in preview.rejected] == rejected
    assert {r["key"] for r in preview.diff if r["action"] == "change"} == {"ann@example.com"}


# --- crashed runs ---------------------------------------------------------------------------------------


def test_a_run_that_died_between_steps_shows_as_crashed_without_another_run(
    world: SyncWorld,
    cli,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert cli("run", "users")[0] == 0
    dead = world.runner("users")
    dead.validate(dead.query("died-after-validating"))  # its process dies here: it never writes
    assert status_of(cli)[1] == "writing"  # a pause between steps is no crash

    monkeypatch.setattr(sync_state, "CRASHED_AFTER", timedelta(seconds=1), raising=False)
    time.sleep(1.5)
    assert status_of(cli)[1] == "crashed"  # before: "writing" until some later run succeeded
    _, out, _ = cli("status")
    assert "users crashed: no heartbeat for more than 1 second" in out
    [(status, error, finished)] = world.sql(
        "SELECT status, error, finished_at IS NOT NULL FROM sync_runs WHERE run_id = 'died-after-validating'"
    )
    assert (status, finished) == ("crashed", True) and error.startswith("crashed: no heartbeat")
    # its rejected rows are gone; the sync's count is the successful run's
    assert sync_state_count(world) == REJECTED_PER_RUN
    # the next run drops the crashed run's staging tables
    world.run("users")
    assert world.sql("SELECT count(*) FROM pg_tables WHERE schemaname = 'conversion_staging'") == [(0,)]


CHILD = """
import sys
from conversion_sync.config import load_project_config
from conversion_sync.store.contact_store import ContactStore
from conversion_sync.syncs.runner import SyncRunner

project = load_project_config(sys.argv[1])
SyncRunner(project.syncs["slow"], project, ContactStore(url=sys.argv[2])).query("killed-while-querying")
"""


def test_a_run_killed_while_querying_shows_as_crashed_at_once(world: SyncWorld, cli) -> None:  # type: ignore[no-untyped-def]
    world.add_sync(
        "slow",
        "SELECT 'u' || i || '@example.com' AS email, 'N' || i AS first_name FROM range(200000000) t(i)",
    )
    world.project()
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(world.dir), world.store_url],
        cwd=Path(conversion_sync.__file__).resolve().parents[1],
    )
    try:
        deadline = time.monotonic() + 120
        while not world.sql(
            "SELECT 1 FROM sync_runs WHERE run_id = 'killed-while-querying' AND status = 'running'"
        ):
            assert child.poll() is None and time.monotonic() < deadline, "the child never started its query"
            time.sleep(0.05)
        time.sleep(0.5)  # well into staging
        assert status_of(cli, "slow")[1] == "querying"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    # the default threshold (minutes) has not passed: the dead process on this host tells
    assert status_of(cli, "slow")[1] == "crashed"  # before: "querying" until some later run succeeded
    [(status, error)] = world.sql(
        "SELECT status, error FROM sync_runs WHERE run_id = 'killed-while-querying'"
    )
    assert status == "crashed" and f"its process {child.pid} on " in error and "no longer exists" in error


def test_a_live_step_keeps_its_heartbeat_and_is_never_crashed(
    world: SyncWorld,
    cli,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sync_state, "HEARTBEAT_EVERY", timedelta(seconds=0.1), raising=False)
    monkeypatch.setattr(sync_state, "CRASHED_AFTER", timedelta(seconds=1), raising=False)
    seen: list[tuple[Any, ...]] = []
    validate = Validator.run

    def slow_validation(self: Validator, conn: Any, queried: int) -> Any:
        first = world.sql("SELECT heartbeat_at, pid FROM sync_runs WHERE run_id = 'live'")[0]
        time.sleep(2)  # longer than CRASHED_AFTER
        last = world.sql("SELECT heartbeat_at, pid FROM sync_runs WHERE run_id = 'live'")[0]
        seen.append((first, last, status_of(cli)[1]))
        return validate(self, conn, queried)

    monkeypatch.setattr(Validator, "run", slow_validation)
    live = world.runner("users")
    table = live.query("live")
    assert world.sql("SELECT pid FROM sync_runs WHERE run_id = 'live'") == [(None,)]  # between steps
    live.validate(table)
    [(first, last, state)] = seen
    assert first[1] == last[1] == os.getpid()
    assert last[0] > first[0] + timedelta(seconds=1)
    assert state == "preparing"
    assert live.write(table).counts["added"] == 2
    assert status_of(cli)[1] == "healthy"


# --- rejections belong to finished runs ------------------------------------------------------------------


def sync_state_count(world: SyncWorld) -> int:
    return world.scalar("SELECT count(*) FROM sync_rejections WHERE sync_name = 'users'")


def test_rejections_of_a_run_killed_after_validation_are_counted_once(world: SyncWorld, cli) -> None:  # type: ignore[no-untyped-def]
    killed = world.runner("users")
    killed.validate(killed.query("killed-after-validating"))  # never writes
    outcome = world.run("users")
    assert outcome.counts["rejected"] == REJECTED_PER_RUN

    assert sync_state_count(world) == REJECTED_PER_RUN  # before: 4, the killed run's rows beside the run's
    with world.runner("users").store.begin() as conn:
        assert sync_state.rejection_count(conn, "users") == REJECTED_PER_RUN
    assert status_of(cli)[-1] == str(REJECTED_PER_RUN)
    code, out, err = cli("rejections", "users")
    assert code == 0 and f"of run {outcome.run_id}" in err
    assert {r["run_id"] for r in csv.DictReader(io.StringIO(out))} == {outcome.run_id}
    code, _, err = cli("rejections", "users", "--run", "killed-after-validating")
    assert code == 1 and "did not finish" in err and "discarded" in err


def test_the_default_rejections_run_is_the_last_finished_one(world: SyncWorld, cli) -> None:  # type: ignore[no-untyped-def]
    finished = world.run("users")
    running = world.runner("users")
    running.validate(running.query("still-running"))  # validated, not yet written
    code, _, err = cli("rejections", "users")
    assert code == 0 and f"of run {finished.run_id}" in err  # before: the unfinished run's
    code, _, err = cli("rejections", "users", "--run", "still-running")
    assert code == 1 and "still running" in err


def test_a_failed_write_keeps_no_rejections(world: SyncWorld, cli, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    def broken_writer(conn: Any, ctx: Any) -> Any:
        raise RuntimeError("the store refused the write")

    monkeypatch.setattr(contacts_destination.DESTINATION, "write", broken_writer)
    with pytest.raises(RuntimeError):
        world.run("users")
    assert sync_state_count(world) == 0  # before: the failed run's 2 rejected rows stayed
    assert status_of(cli)[1] == "failed"
    code, _, err = cli("rejections", "users")
    assert code == 1 and "has no rejected rows" in err


def test_a_failed_query_is_reported_as_before(world: SyncWorld, cli) -> None:  # type: ignore[no-untyped-def]
    world.add_sync("users", "SELECT email FROM no_such_table")
    with pytest.raises(SyncFailed):
        world.run("users")
    assert status_of(cli)[1] == "failed"
