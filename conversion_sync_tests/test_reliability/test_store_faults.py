"""Store and warehouse faults mid-run: a clear error, nothing half-written, and the next run succeeds."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from conversion_sync.store.connection import libpq_url, store_engine
from conversion_sync.store.contact_store import ContactStore
from conversion_sync.syncs import writers
from conversion_sync.syncs.runner import SyncFailed, SyncRunner
from conversion_sync_tests.conftest import create_database, drop_database
from conversion_sync_tests.test_syncs.conftest import SyncWorld, store_snapshot

from .conftest import Figures, StoreFactory

DESTINATIONS: dict[str, tuple[str, str, dict[str, str]]] = {
    # name → (warehouse table, sync query, destination)
    "contacts": (
        """CREATE TABLE users AS SELECT 'u' || i || '@example.com' AS email, 'First' || i AS first_name,
               (i % 40)::VARCHAR AS seats FROM range(5000) t(i)""",
        "SELECT email, first_name, seats FROM users",
        {"type": "contacts"},
    ),
    "custom_objects": (
        """CREATE TABLE owners AS SELECT 'p' || (i % 500) AS id, 'Widget ' || (i % 500) AS name,
               'u' || i || '@example.com' AS email, '{"role": "owner"}' AS relationshipFields FROM range(2000) t(i)""",
        "SELECT id, name, email, relationshipFields FROM owners",
        {"type": "custom_objects", "object_type": "product"},
    ),
    "events": (
        """CREATE TABLE clicks AS SELECT 'u' || (i % 3000) || '@example.com' AS email, 'click' AS event_name,
               TIMESTAMP '2026-01-01' + i * INTERVAL 1 MINUTE AS "timestamp", i % 7 AS page FROM range(5000) t(i)""",
        'SELECT email, event_name, "timestamp", page FROM clicks',
        {"type": "events"},
    ),
}
DATA_TABLES = (
    "contacts",
    "custom_objects",
    "object_relationships",
    "events",
    "sync_fingerprints",
    "sync_state",
)


def execute(world: SyncWorld, sql: str) -> None:
    with store_engine(world.store_url).begin() as conn:
        conn.exec_driver_sql(sql)


def data_counts(world: SyncWorld) -> dict[str, int]:
    return {table: world.scalar(f"SELECT count(*) FROM {table}") for table in DATA_TABLES}


def nothing_written(world: SyncWorld) -> None:
    assert data_counts(world) == dict.fromkeys(DATA_TABLES, 0)
    [(status, error)] = world.sql("SELECT status, error FROM sync_runs")
    assert status == "failed" and error


def clean_store_equals(world: SyncWorld, name: str, new_store: StoreFactory) -> None:
    """The recovered store equals a store that ran the sync once without the fault."""
    project = world.project()
    clean = new_store()
    SyncRunner(project.syncs[name], project, ContactStore(url=clean)).run()
    assert store_snapshot(world.store_url) == store_snapshot(clean)


def setup_sync(world: SyncWorld, destination: str) -> None:
    table, query, dest = DESTINATIONS[destination]
    world.warehouse(table)
    world.add_sync(destination, query, destination=dest)


class BackendKiller:
    """A thread that terminates the first store backend running a statement that contains `marker`."""

    def __init__(self, url: str, marker: str) -> None:
        self.url = libpq_url(url)
        self.marker = marker
        self.killed: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self._stop.is_set() and not self.killed:
                row = conn.execute(
                    """SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND state = 'active'
                       AND pid <> pg_backend_pid() AND position(%s in query) > 0""",
                    (self.marker,),
                ).fetchone()
                if row and conn.execute("SELECT pg_terminate_backend(%s)", (row[0],)).fetchone():
                    self.killed.append(row[0])
                time.sleep(0.01)

    def __enter__(self) -> BackendKiller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


SLOW = "/* reliability: a slow statement inside the merge */"


def slow_after(real: Callable[..., Any]) -> Callable[..., Any]:
    """`real`, then a long statement in the same transaction (the merge's earlier statements have run)."""

    def wrapper(conn: sa.Connection, *args: Any, **kwargs: Any) -> Any:
        result = real(conn, *args, **kwargs)
        conn.exec_driver_sql(f"SELECT pg_sleep(60) {SLOW}")
        return result

    return wrapper


def each_destination(light: str) -> list[Any]:
    """Every destination; only `light` in the default run, the others under the reliability marker."""
    return [d if d == light else pytest.param(d, marks=pytest.mark.reliability) for d in DESTINATIONS]


@pytest.mark.parametrize("destination", each_destination("contacts"))
def test_store_connection_killed_mid_merge(
    world: SyncWorld,
    destination: str,
    monkeypatch: pytest.MonkeyPatch,
    new_store: StoreFactory,
    figures: Figures,
) -> None:
    setup_sync(world, destination)
    # contacts and custom objects: after the records are merged; events: after contacts were created
    if destination == "events":
        # the events writer resolves its e-mails with create_email_table (resolve_table is never called)
        real_resolve = writers.IdentityMatcher.create_email_table
        slow_resolve = slow_after(
            lambda conn, *args, **kw: real_resolve(kw.pop("matcher"), conn, *args, **kw)
        )
        monkeypatch.setattr(
            writers.IdentityMatcher,
            "create_email_table",
            lambda self, conn, *args, **kw: slow_resolve(conn, *args, matcher=self, **kw),
        )
    else:
        monkeypatch.setattr(writers, "save_fingerprints", slow_after(writers.save_fingerprints))
    with BackendKiller(world.store_url, SLOW) as killer, pytest.raises(sa.exc.OperationalError) as failure:
        world.run(destination)
    assert killer.killed, "the merge's connection was not found"
    assert "terminating connection due to administrator command" in str(failure.value)
    nothing_written(world)
    [(error,)] = world.sql("SELECT error FROM sync_runs")
    assert error.startswith("OperationalError: ") and "terminating connection" in error.splitlines()[0]
    monkeypatch.undo()
    assert world.run(destination).counts["added"] > 0
    clean_store_equals(world, destination, new_store)
    figures.add("store_faults", connection_killed_mid_merge=1)


DISK_FULL_ON = {
    "contacts": "sync_state",  # the last statement of the write
    "custom_objects": "object_relationships",
    "events": "events",
}


@pytest.mark.parametrize("destination", each_destination("events"))
def test_store_out_of_disk_mid_merge(
    world: SyncWorld, destination: str, new_store: StoreFactory, figures: Figures
) -> None:
    setup_sync(world, destination)
    table = DISK_FULL_ON[destination]
    execute(
        world,
        """CREATE FUNCTION simulate_disk_full() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN RAISE EXCEPTION 'could not extend file "base/16384/16999": No space left on device'
                 USING ERRCODE = 'disk_full', HINT = 'Check free disk space.'; END $$;"""
        f"CREATE TRIGGER disk_full BEFORE INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION simulate_disk_full()",
    )
    with pytest.raises(sa.exc.OperationalError, match="No space left on device"):
        world.run(destination)
    nothing_written(world)
    [(error,)] = world.sql("SELECT error FROM sync_runs")
    assert error.splitlines()[0].startswith(
        "OperationalError: (psycopg.errors.DiskFull) could not extend file"
    )
    execute(world, f"DROP TRIGGER disk_full ON {table}")
    assert world.run(destination).counts["added"] > 0
    clean_store_equals(world, destination, new_store)
    figures.add("store_faults", out_of_disk_mid_merge=1)


ROWS = 30_000
PG_QUERY = """SELECT email, first_name FROM users
WHERE CASE WHEN n = 20000 AND (SELECT slow FROM control) THEN pg_sleep(60) IS NOT NULL ELSE true END
ORDER BY n"""


@pytest.fixture
def pg_warehouse(pg_base_uri: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A Postgres warehouse whose query pauses at row 20,000 while `control.slow` is true."""
    url = create_database(pg_base_uri, "reliability_warehouse", template=None)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            f"""CREATE TABLE users AS SELECT i AS n, 'user' || i || '@example.com' AS email,
                   'Name' || i AS first_name FROM generate_series(1, {ROWS}) i;
                CREATE TABLE control AS SELECT true AS slow"""
        )
    monkeypatch.setenv("RELIABILITY_WH_URL", url)
    yield url
    drop_database(pg_base_uri, url, "reliability_warehouse")


def test_warehouse_connection_dropped_mid_stream(
    world: SyncWorld, pg_warehouse: str, new_store: StoreFactory, figures: Figures, tmp_path: Path
) -> None:
    world.warehouses["wh"] = "{type: postgres, url: {env: RELIABILITY_WH_URL}}"
    world.add_sync("users", PG_QUERY)
    runner = world.runner("users")
    staged_before_drop: list[int] = []

    def drop_when_paused() -> None:
        with psycopg.connect(pg_warehouse, autocommit=True) as conn:
            for _ in range(3000):
                row = conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE wait_event = 'PgSleep' AND pid <> pg_backend_pid()"
                ).fetchone()
                if row:
                    staged_before_drop.append(
                        world.scalar("SELECT count(*) FROM sync_runs WHERE status = 'running'")
                    )
                    conn.execute("SELECT pg_terminate_backend(%s)", (row[0],))
                    return
                time.sleep(0.01)

    dropper = threading.Thread(target=drop_when_paused, daemon=True)
    dropper.start()
    with pytest.raises(SyncFailed, match=r"^warehouse 'wh' \(postgres\): query failed: .*terminat"):
        runner.run("dropped-mid-stream")
    dropper.join(timeout=30)
    assert staged_before_drop == [1], "the warehouse connection was not dropped mid-stream"
    nothing_written(world)
    with psycopg.connect(pg_warehouse, autocommit=True) as conn:
        conn.execute("UPDATE control SET slow = false")
    assert world.run("users").counts["added"] == ROWS
    assert world.sql("SELECT tablename FROM pg_tables WHERE schemaname = 'conversion_staging'") == []
    clean_store_equals(world, "users", new_store)
    figures.add("store_faults", warehouse_dropped_mid_stream=1)
