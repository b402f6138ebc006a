"""In-warehouse diffing: reruns fetch only new and changed rows, and the store ends as a full read would leave it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pytest
import sqlalchemy as sa
import sqlglot

from conversion_sync.config.warehouses import DuckDBWarehouseConfig, PostgresWarehouseConfig
from conversion_sync.store.connection import store_engine
from conversion_sync.syncs.runner import SyncFailed
from conversion_sync.warehouses import open_warehouse
from conversion_sync.warehouses.fingerprint import RowFingerprint, probe_query
from conversion_sync_tests.conftest import create_database, drop_database
from conversion_sync_tests.fakesnow_server import serve_fakesnow

from .conftest import SyncWorld, store_snapshot

ROWS = 200
QUERY = "SELECT email, first_name, seats, score, vip, updated_at FROM people"


def _create_people(conn: Any) -> None:
    conn.execute(
        "CREATE TABLE people (email text, first_name text, seats integer, score numeric(10, 2), vip boolean, "
        "updated_at timestamptz)"
    )
    conn.execute(
        "INSERT INTO people SELECT 'p' || i || '@example.com', 'Name ' || i, i, i / 4.0, i % 2 = 0, "
        f"timestamptz '2026-01-01 00:00:00+00' + i * interval '1 minute' FROM generate_series(1, {ROWS}) i"
    )


@pytest.fixture
def pg_warehouse(pg_base_uri: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    name = f"diff_wh_{os.getpid()}"
    url = create_database(pg_base_uri, name, template=None)
    with psycopg.connect(url, autocommit=True) as conn:
        _create_people(conn)
    monkeypatch.setenv("DIFF_PG_URL", url)
    yield url
    drop_database(pg_base_uri, url, name)


@pytest.fixture
def reference_store(pg_base_uri: str) -> Iterator[str]:
    """A second store, where the same sync runs with diffing off: what a full read leaves."""
    name = f"diff_ref_{os.getpid()}"
    url = create_database(pg_base_uri, name)
    yield url
    drop_database(pg_base_uri, url, name)


def engine_of(world: SyncWorld) -> sa.Engine:
    return store_engine(world.store_url)


def warehouse_sql(url: str, statement: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(statement)


def run_both(world: SyncWorld, reference: SyncWorld, name: str = "people") -> tuple[dict, dict]:
    diffed = world.run(name)
    full = reference.run(name)
    assert store_snapshot(world.store_url) == store_snapshot(reference.store_url)
    return diffed.counts, full.counts


def last_note(world: SyncWorld, name: str = "people") -> str:
    return world.scalar(
        "SELECT counts ->> 'diff' FROM sync_runs WHERE sync_name = %(s)s ORDER BY started_at DESC LIMIT 1",
        {"s": name},
    )


def make_world(path: Path, store_url: str) -> SyncWorld:
    path.mkdir()
    return SyncWorld(path, store_url)


@pytest.fixture
def worlds(
    tmp_path: Path, store_url: str, reference_store: str, pg_warehouse: str
) -> tuple[SyncWorld, SyncWorld]:
    diffed = make_world(tmp_path / "diffed", store_url)
    reference = make_world(tmp_path / "reference", reference_store)
    for world, setting in ((diffed, "auto"), (reference, "never")):
        world.warehouses = {"pg": "{type: postgres, url: {env: DIFF_PG_URL}}"}
        world.add_sync(
            "people",
            QUERY,
            warehouse="pg",
            delete_behavior="delete",
            max_removed="50%",
            diff_in_warehouse=setting,
        )
    return diffed, reference


def test_reruns_fetch_only_new_and_changed_rows_and_end_as_a_full_read(
    worlds: tuple[SyncWorld, SyncWorld], pg_warehouse: str
) -> None:
    world, reference = worlds
    first, _ = run_both(world, reference)
    assert last_note(world) == "full read (first run or reset)"
    assert first["added"] == ROWS and first["fetched_rows"] == ROWS

    again, full_again = run_both(world, reference)
    assert last_note(world) == "in warehouse"
    assert again["fetched_rows"] == 0 and again["warehouse_keys"] == ROWS
    assert {k: again[k] for k in ("queried", "added", "changed", "unchanged", "removed")} == {
        k: full_again[k] for k in ("queried", "added", "changed", "unchanged", "removed")
    }
    assert again["unchanged"] == ROWS

    # three changed (a value, a NULL, a timestamp), two added, one removed
    warehouse_sql(pg_warehouse, "UPDATE people SET first_name = 'Renamed' WHERE email = 'p1@example.com'")
    warehouse_sql(pg_warehouse, "UPDATE people SET seats = NULL WHERE email = 'p2@example.com'")
    warehouse_sql(
        pg_warehouse,
        "UPDATE people SET updated_at = updated_at + interval '1 microsecond' WHERE email = 'p3@example.com'",
    )
    warehouse_sql(pg_warehouse, "INSERT INTO people VALUES ('new1@example.com', 'N1', 1, 1.5, true, now())")
    warehouse_sql(pg_warehouse, "INSERT INTO people VALUES ('new2@example.com', 'N2', 2, 2.5, false, now())")
    warehouse_sql(pg_warehouse, "DELETE FROM people WHERE email = 'p4@example.com'")
    changed, full_changed = run_both(world, reference)
    assert last_note(world) == "in warehouse"
    assert changed["fetched_rows"] == 5
    # a new updated_at alone is fetched (the warehouse fingerprint covers every column) but changes no field
    assert (changed["added"], changed["changed"], changed["removed"]) == (2, 2, 1)
    assert {k: changed[k] for k in ("queried", "added", "changed", "unchanged", "removed")} == {
        k: full_changed[k] for k in ("queried", "added", "changed", "unchanged", "removed")
    }
    assert world.scalar("SELECT count(*) FROM sync_warehouse_fingerprints") == ROWS + 1
    # the run's keys table is gone with its staging tables
    assert world.scalar("SELECT count(*) FROM pg_tables WHERE schemaname = 'conversion_staging'") == 0


def test_a_record_another_writer_changed_is_fetched_and_restored(
    worlds: tuple[SyncWorld, SyncWorld], pg_warehouse: str
) -> None:
    world, _ = worlds
    world.run("people")
    with engine_of(world).begin() as conn:
        conn.exec_driver_sql(
            "UPDATE contacts SET first_name = 'Overwritten' WHERE email_normalized = 'p7@example.com'"
        )
    outcome = world.run("people")
    assert last_note(world) == "in warehouse"
    assert outcome.counts["fetched_rows"] == 1 and outcome.counts["changed"] == 1
    assert (
        world.scalar("SELECT first_name FROM contacts WHERE email_normalized = 'p7@example.com'") == "Name 7"
    )
    assert world.run("people").counts["fetched_rows"] == 0


def test_rejected_and_duplicate_keys_are_read_every_run_like_a_full_read(
    worlds: tuple[SyncWorld, SyncWorld], pg_warehouse: str
) -> None:
    world, reference = worlds
    warehouse_sql(pg_warehouse, "INSERT INTO people VALUES ('not an email', 'Bad', 1, 1, true, now())")
    warehouse_sql(pg_warehouse, "INSERT INTO people VALUES (NULL, 'Nobody', 1, 1, true, now())")
    warehouse_sql(
        pg_warehouse,
        "INSERT INTO people VALUES ('P9@Example.com', 'Later', 9, 9, true, '2030-01-01 00:00:00+00')",
    )
    run_both(world, reference)
    for _ in range(2):
        again, full = run_both(world, reference)
        assert last_note(world) == "in warehouse"
        # the bad e-mail, the NULL one and both rows of p9 (two rows, one store key) are read again
        assert again["fetched_rows"] == 4
        # the bad e-mail, the NULL one, and p9's older row (another value under the same key)
        assert again["rejected"] == full["rejected"] == 3
    assert (
        world.scalar("SELECT first_name FROM contacts WHERE email_normalized = 'p9@example.com'") == "Later"
    )


def test_every_uncertain_run_reads_everything_and_says_why(
    worlds: tuple[SyncWorld, SyncWorld], pg_warehouse: str
) -> None:
    world, _ = worlds
    world.run("people")
    world.run("people")
    assert last_note(world) == "in warehouse"

    # a column more: the fingerprints were made from other columns
    world.add_sync(
        "people",
        QUERY.replace("updated_at", "updated_at, 'x' AS plan"),
        warehouse="pg",
        diff_in_warehouse="auto",
    )
    world.run("people")
    assert last_note(world) == "full read (query columns or types changed)"
    world.run("people")
    assert last_note(world) == "in warehouse"

    # most rows changed: one read costs less than fetching them by key
    warehouse_sql(pg_warehouse, "UPDATE people SET first_name = first_name || '!' WHERE seats > 50")
    outcome = world.run("people")
    assert last_note(world).startswith("full read (150 of 200 keys new or changed")
    assert outcome.counts["changed"] == 150

    # a reset: nothing stored to compare with
    with world.runner("people").store.begin() as conn:
        from conversion_sync.store import sync_state

        sync_state.reset_sync(conn, "people")
    world.run("people")
    assert last_note(world) == "full read (first run or reset)"

    # diffing off for one run: the fingerprints it did not keep are not trusted afterwards
    world.add_sync(
        "people",
        QUERY.replace("updated_at", "updated_at, 'x' AS plan"),
        warehouse="pg",
        diff_in_warehouse="never",
    )
    world.run("people")
    assert last_note(world) == "off (diff_in_warehouse: never)"
    warehouse_sql(pg_warehouse, "UPDATE people SET first_name = 'Sneaky' WHERE email = 'p8@example.com'")
    world.add_sync(
        "people",
        QUERY.replace("updated_at", "updated_at, 'x' AS plan"),
        warehouse="pg",
        diff_in_warehouse="auto",
    )
    world.run("people")
    assert last_note(world) == "full read (no warehouse fingerprints yet)"
    assert (
        world.scalar("SELECT first_name FROM contacts WHERE email_normalized = 'p8@example.com'") == "Sneaky"
    )

    # an incremental query reads only changes anyway
    world.add_sync("inc", QUERY + " WHERE updated_at > '{{last_sync_time}}'", warehouse="pg")
    world.run("inc")
    assert last_note(world, "inc") == "off (the query reads only changes)"


def test_the_removal_guard_counts_keys_the_warehouse_no_longer_lists(
    worlds: tuple[SyncWorld, SyncWorld], pg_warehouse: str
) -> None:
    world, _ = worlds
    world.add_sync("people", QUERY, warehouse="pg", delete_behavior="delete", max_removed=5)
    world.run("people")
    warehouse_sql(pg_warehouse, "DELETE FROM people WHERE seats <= 10")
    with pytest.raises(SyncFailed, match="would delete 10 of the sync's 200 keys"):
        world.run("people")
    assert world.scalar("SELECT count(*) FROM contacts") == ROWS
    world.add_sync("people", QUERY, warehouse="pg", delete_behavior="delete", max_removed=10)
    outcome = world.run("people")
    assert last_note(world) == "in warehouse" and outcome.counts["fetched_rows"] == 0
    assert outcome.counts["removed"] == 10
    assert world.scalar("SELECT count(*) FROM contacts") == ROWS - 10


def test_a_local_duckdb_warehouse_is_read_whole_unless_always(tmp_path: Path, store_url: str) -> None:
    world = make_world(tmp_path / "duck", store_url)
    world.warehouse(
        "CREATE TABLE people AS SELECT 'd' || i || '@example.com' AS email, 'N' || i AS first_name "
        "FROM range(20) t(i)"
    )
    world.add_sync("people", "SELECT email, first_name FROM people")
    world.run("people")
    world.run("people")
    assert last_note(world) == "off (auto: a duckdb warehouse is read whole)"
    world.add_sync("people", "SELECT email, first_name FROM people", diff_in_warehouse="always")
    world.run("people")
    assert last_note(world) == "full read (no warehouse fingerprints yet)"
    world.warehouse("UPDATE people SET first_name = 'Changed' WHERE email = 'd3@example.com'")
    outcome = world.run("people")
    assert last_note(world) == "in warehouse"
    assert (outcome.counts["fetched_rows"], outcome.counts["changed"], outcome.counts["unchanged"]) == (
        1,
        1,
        19,
    )


# --- the fingerprint SQL, dialect by dialect ---------------------------------------------------------------

SAME_DATA = [
    "CREATE TABLE t (email VARCHAR, n INTEGER, d DECIMAL(10,2), b BOOLEAN, ts TIMESTAMP, tz {tz}, dt DATE, s VARCHAR)",
    """INSERT INTO t VALUES
        ('a@x.com', 1, 1.50, true, '2026-01-02 03:04:05.123456', '2026-01-02 03:04:05+02', '2026-01-02', 'hé'),
        ('b@x.com', NULL, 2.00, false, NULL, NULL, NULL, ''),
        ('c@x.com', -7, 0.00, NULL, '2026-01-02 00:00:00', '2026-06-30 23:59:59.5+00', '1999-12-31', NULL),
        ('d@x.com', 10, 10.10, true, '2026-01-02 00:00:00', '2026-06-30 23:59:59.5+00', '1999-12-31', 'a|V3:b'),
        ('e@x.com', 10, 10.10, true, '2026-01-02 00:00:00', '2026-06-30 23:59:59.5+00', '1999-12-31', 'a|V3:c')""",
]
SAME_QUERY = "SELECT email, n, d, b, ts, tz, dt, s FROM t"


def _fingerprints(warehouse: Any, kind: str) -> dict[str, str]:
    probe = next(iter(warehouse.stream(probe_query(kind, SAME_QUERY))))
    fp = RowFingerprint(kind, probe.schema, "email")
    rows = [r for b in warehouse.stream(fp.keys_query(SAME_QUERY)) for r in b.to_pylist()]
    return {r["k"]: r["h"] for r in rows}


def test_the_same_data_gets_the_same_fingerprints_in_duckdb_postgres_and_snowflake(
    tmp_path: Path, pg_base_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import snowflake.connector

    from conversion_sync.config.warehouses import SnowflakeWarehouseConfig

    path = tmp_path / "same.duckdb"
    with duckdb.connect(str(path)) as conn:
        for statement in SAME_DATA:
            conn.execute(statement.format(tz="TIMESTAMPTZ"))
    with open_warehouse("d", DuckDBWarehouseConfig(type="duckdb", path=str(path))) as wh:
        in_duckdb = _fingerprints(wh, "duckdb")

    url = create_database(pg_base_uri, f"diff_same_{os.getpid()}", template=None)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            for statement in SAME_DATA:
                conn.execute(statement.format(tz="timestamptz"))  # type: ignore[arg-type]
        monkeypatch.setenv("DIFF_SAME_PG", url)
        config = PostgresWarehouseConfig(type="postgres", url={"env": "DIFF_SAME_PG"})  # type: ignore[arg-type]
        with open_warehouse("p", config) as wh:
            in_postgres = _fingerprints(wh, "postgres")
    finally:
        drop_database(pg_base_uri, url, f"diff_same_{os.getpid()}")

    with serve_fakesnow() as kwargs:
        with snowflake.connector.connect(**kwargs, database="SAME", schema="PUBLIC") as conn:
            cursor = conn.cursor()
            cursor.execute("CREATE DATABASE IF NOT EXISTS SAME")
            cursor.execute("CREATE SCHEMA IF NOT EXISTS SAME.PUBLIC")
            for statement in SAME_DATA:
                cursor.execute(statement.format(tz="TIMESTAMP_TZ").replace("TIMESTAMP,", "TIMESTAMP_NTZ,"))
        monkeypatch.setenv("DIFF_SAME_SF", kwargs["password"])
        sf = SnowflakeWarehouseConfig.model_validate(
            {
                "type": "snowflake",
                **{k: kwargs[k] for k in ("account", "user", "host", "port", "protocol")},
                "password": {"env": "DIFF_SAME_SF"},
                "database": "SAME",
                "schema": "PUBLIC",
            }
        )
        with open_warehouse("s", sf) as wh:
            in_snowflake = _fingerprints(wh, "snowflake")

    assert in_duckdb == in_postgres == in_snowflake
    assert (
        len(set(in_duckdb.values())) == 5
    )  # d and e differ only inside a string that looks like a separator


def test_bigquery_fingerprint_sql_means_the_same_as_duckdbs(tmp_path: Path) -> None:
    """BigQuery's SQL (TO_HEX(MD5(...)), FORMAT_TIMESTAMP, backticks), read by sqlglot and run in DuckDB."""
    path = tmp_path / "bq.duckdb"
    with duckdb.connect(str(path)) as conn:
        for statement in SAME_DATA:
            conn.execute(statement.format(tz="TIMESTAMPTZ"))
    with open_warehouse("d", DuckDBWarehouseConfig(type="duckdb", path=str(path))) as wh:
        probe = next(iter(wh.stream(probe_query("duckdb", SAME_QUERY))))
    with duckdb.connect(str(path)) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        expected = dict(
            conn.execute(RowFingerprint("duckdb", probe.schema, "email").keys_query(SAME_QUERY)).fetchall()
        )
        bigquery_sql = RowFingerprint("bigquery", probe.schema, "email").keys_query(SAME_QUERY)
        assert "TO_HEX(MD5(" in bigquery_sql and "`email`" in bigquery_sql
        translated = sqlglot.transpile(bigquery_sql, read="bigquery", write="duckdb")[0]
        assert dict(conn.execute(translated).fetchall()) == expected
