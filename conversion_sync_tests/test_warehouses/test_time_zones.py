"""Watermarks and time zones: every warehouse session runs in UTC, `{{last_sync_time}}` compares correctly with
every timestamp column type, the watermark is the warehouse's own clock, and the lookback re-reads late commits."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import snowflake.connector

from conversion_sync.config.syncs import SyncConfig
from conversion_sync.config.warehouses import (
    BigQueryWarehouseConfig,
    DuckDBWarehouseConfig,
    PostgresWarehouseConfig,
    SnowflakeWarehouseConfig,
)
from conversion_sync.syncs.template import render_query
from conversion_sync.warehouses import open_warehouse
from conversion_sync_tests.conftest import create_database, drop_database
from conversion_sync_tests.test_syncs.conftest import SyncWorld

from .bigquery_standin import StandIn

NEW_YORK = "America/New_York"
AT_TEN = datetime(2026, 1, 15, 10, 0, tzinfo=UTC)
"""Every `tz_check` table holds this moment in each of its timestamp columns."""
JUST_BEFORE = AT_TEN - timedelta(microseconds=1)
JUST_AFTER = AT_TEN + timedelta(microseconds=1)
USERS_QUERY = "SELECT email, first_name, updated_at FROM users WHERE updated_at > '{{last_sync_time}}'"


@pytest.fixture
def new_york_process() -> Iterator[None]:
    """The engine's process runs with TZ=America/New_York (restored afterwards)."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = NEW_YORK
    time.tzset()
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = before
        time.tzset()


@pytest.fixture
def new_york_postgres(pg_base_uri: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A Postgres warehouse database whose TimeZone is America/New_York, with `users` and `tz_check`."""
    name = "tz_new_york_wh"
    url = create_database(pg_base_uri, name, template=None)
    with psycopg.connect(pg_base_uri, autocommit=True) as conn:
        conn.execute(f"ALTER DATABASE {name} SET timezone TO '{NEW_YORK}'")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE users (email text, first_name text, updated_at timestamptz)")
        conn.execute("CREATE TABLE tz_check (naive timestamp, aware timestamptz, day date)")
        conn.execute(
            "INSERT INTO tz_check VALUES (%s, %s, %s)",
            (AT_TEN.replace(tzinfo=None), AT_TEN, AT_TEN.date()),
        )
        assert conn.execute("SHOW TimeZone").fetchone() == (NEW_YORK,)
    monkeypatch.setenv("TZ_PG_URL", url)
    yield url
    drop_database(pg_base_uri, url, name)


def _pg_insert(url: str, email: str, updated_at: str = "now()") -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"INSERT INTO users VALUES (%s, 'X', {updated_at})", (email,))  # type: ignore[arg-type]


def _count(config: Any, sql: str) -> int:
    with open_warehouse("wh", config) as warehouse:
        (batch,) = list(warehouse.stream(sql))
    return int(batch.column(0)[0].as_py())


def _assert_literal_compares(config: Any, kind: str, table: str, columns: list[str]) -> None:
    """`col > '{{last_sync_time}}'` is true one microsecond before the stored moment and false one after."""
    for column in columns:
        query = f"SELECT count(*) AS n FROM {table} WHERE {column} > '{{{{last_sync_time}}}}'"
        assert _count(config, render_query(query, JUST_BEFORE, kind)) == 1, (kind, column, "before")
        assert _count(config, render_query(query, JUST_AFTER, kind)) == 0, (kind, column, "after")


def _assert_clock_is_the_warehouses(config: Any) -> None:
    with open_warehouse("wh", config) as warehouse:
        assert warehouse.query_started_at is None
        list(warehouse.stream("SELECT 1 AS one"))
        clock = warehouse.query_started_at
    assert clock is not None and clock.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - clock) < timedelta(minutes=1)


# --- sessions run in UTC; the literal compares correctly with every timestamp type -------------------------


def test_postgres_session_is_utc_in_a_new_york_database(new_york_postgres: str) -> None:
    config = PostgresWarehouseConfig(type="postgres", url={"env": "TZ_PG_URL"})  # type: ignore[arg-type]
    with open_warehouse("wh", config) as warehouse:
        (batch,) = list(warehouse.stream("SELECT current_setting('TimeZone') AS tz"))
    assert batch.to_pylist() == [{"tz": "UTC"}]
    _assert_literal_compares(config, "postgres", "tz_check", ["naive", "aware"])
    query = "SELECT count(*) FROM tz_check WHERE day >= '{{last_sync_time}}'::timestamptz::date"
    assert _count(config, render_query(query, JUST_AFTER, "postgres")) == 1
    _assert_clock_is_the_warehouses(config)


def test_duckdb_session_is_utc_in_a_new_york_process(tmp_path: Path, new_york_process: None) -> None:
    import duckdb

    path = tmp_path / "tz.duckdb"
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE TABLE tz_check (naive TIMESTAMP, aware TIMESTAMPTZ, day DATE)")
        con.execute(
            "INSERT INTO tz_check VALUES (?, ?, ?)", [AT_TEN.replace(tzinfo=None), AT_TEN, AT_TEN.date()]
        )
    config = DuckDBWarehouseConfig(type="duckdb", path=str(path))
    with open_warehouse("wh", config) as warehouse:
        (batch,) = list(warehouse.stream("SELECT current_setting('TimeZone') AS tz"))
    assert batch.to_pylist() == [{"tz": "UTC"}]
    _assert_literal_compares(config, "duckdb", "tz_check", ["naive", "aware"])
    query = (
        "SELECT count(*) FROM tz_check WHERE day >= CAST(CAST('{{last_sync_time}}' AS TIMESTAMPTZ) AS DATE)"
    )
    assert _count(config, render_query(query, JUST_AFTER, "duckdb")) == 1
    _assert_clock_is_the_warehouses(config)


def test_snowflake_session_parameter_timezone_is_utc(
    snowflake_config: SnowflakeWarehouseConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[dict[str, Any]] = []
    real_connect = snowflake.connector.connect

    def recording_connect(**kwargs: Any) -> Any:
        seen.append(dict(kwargs.get("session_parameters") or {}))  # the connector updates it in place
        return real_connect(**kwargs)

    monkeypatch.setattr(snowflake.connector, "connect", recording_connect)
    with open_warehouse("wh", snowflake_config) as warehouse:
        list(warehouse.stream("SELECT 1 AS one"))
    assert seen and seen[0].get("TIMEZONE") == "UTC"


def test_snowflake_literal_compares_with_ntz_tz_and_ltz(
    snowflake_config: SnowflakeWarehouseConfig, fakesnow_server: dict[str, Any]
) -> None:
    with snowflake.connector.connect(**fakesnow_server, database="CS_TEST", schema="PUBLIC") as conn:
        cur = conn.cursor()
        cur.execute(
            "CREATE OR REPLACE TABLE tz_check (ntz TIMESTAMP_NTZ, tz TIMESTAMP_TZ, ltz TIMESTAMP_LTZ, day DATE)"
        )
        cur.execute(
            "INSERT INTO tz_check SELECT '2026-01-15 10:00:00'::TIMESTAMP_NTZ, '2026-01-15 10:00:00 +0000'::TIMESTAMP_TZ, "
            "'2026-01-15 10:00:00 +0000'::TIMESTAMP_LTZ, '2026-01-15'::DATE"
        )
    _assert_literal_compares(snowflake_config, "snowflake", "tz_check", ["ntz", "tz", "ltz"])
    query = "SELECT count(*) FROM tz_check WHERE day >= TO_DATE('{{last_sync_time}}'::TIMESTAMP_TZ)"
    assert _count(snowflake_config, render_query(query, JUST_AFTER, "snowflake")) == 1
    _assert_clock_is_the_warehouses(snowflake_config)


def test_bigquery_literal_compares_with_timestamp_and_datetime(
    bigquery_config: BigQueryWarehouseConfig, bigquery_server: StandIn
) -> None:
    bigquery_server.execute(
        "CREATE OR REPLACE TABLE ds.tz_check AS SELECT TIMESTAMP '2026-01-15 10:00:00' AS dt, "
        "TIMESTAMPTZ '2026-01-15 10:00:00+00' AS ts"
    )
    _assert_literal_compares(bigquery_config, "bigquery", "ds.tz_check", ["dt", "ts"])
    assert render_query("'{{last_sync_time}}'", AT_TEN, "bigquery") == "'2026-01-15 10:00:00.000000'"
    _assert_clock_is_the_warehouses(bigquery_config)


# --- whole syncs: rows committed after a run are read by the next one -------------------------------------


def _users_world(tmp_path: Path, store_url: str, spec: str, **settings: Any) -> SyncWorld:
    world = SyncWorld(tmp_path, store_url)
    world.warehouses["wh"] = spec
    world.add_sync("users", USERS_QUERY, **settings)
    return world


def _stored_emails(world: SyncWorld) -> list[str]:
    return [r[0] for r in world.sql("SELECT email_normalized FROM contacts ORDER BY 1")]


def test_postgres_new_york_database_reads_rows_committed_after_a_run(
    tmp_path: Path, store_url: str, new_york_postgres: str
) -> None:
    world = _users_world(tmp_path, store_url, "{type: postgres, url: {env: TZ_PG_URL}}", lookback=0)
    _pg_insert(new_york_postgres, "ann@example.com")
    assert world.run("users").counts["added"] == 1
    _pg_insert(new_york_postgres, "bob@example.com")
    second = world.run("users")
    assert second.counts["queried"] == 1
    assert second.counts["added"] == 1
    assert _stored_emails(world) == ["ann@example.com", "bob@example.com"]


def test_duckdb_new_york_process_reads_rows_committed_after_a_run(
    tmp_path: Path, store_url: str, new_york_process: None
) -> None:
    world = SyncWorld(tmp_path, store_url)
    world.add_sync("users", USERS_QUERY, lookback=0)
    world.warehouse("CREATE TABLE users (email VARCHAR, first_name VARCHAR, updated_at TIMESTAMPTZ)")
    world.warehouse("INSERT INTO users VALUES ('ann@example.com', 'Ann', now())")
    assert world.run("users").counts["added"] == 1
    world.warehouse("INSERT INTO users VALUES ('bob@example.com', 'Bob', now())")
    second = world.run("users")
    assert (second.counts["queried"], second.counts["added"]) == (1, 1)
    assert _stored_emails(world) == ["ann@example.com", "bob@example.com"]


def test_snowflake_reads_rows_committed_after_a_run(
    tmp_path: Path, store_url: str, fakesnow_server: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    def execute(sql: str) -> None:
        with snowflake.connector.connect(**fakesnow_server, database="CS_TEST", schema="PUBLIC") as conn:
            conn.cursor().execute(sql)

    execute("CREATE OR REPLACE TABLE users (email VARCHAR, first_name VARCHAR, updated_at TIMESTAMP_LTZ)")
    execute("INSERT INTO users SELECT 'ann@example.com', 'Ann', CURRENT_TIMESTAMP()")
    monkeypatch.setenv("TZ_SF_PASSWORD", fakesnow_server["password"])
    spec = (
        f"{{type: snowflake, account: {fakesnow_server['account']}, user: {fakesnow_server['user']}, "
        f"password: {{env: TZ_SF_PASSWORD}}, database: CS_TEST, schema: PUBLIC, host: '{fakesnow_server['host']}', "
        f"port: {fakesnow_server['port']}, protocol: {fakesnow_server['protocol']}}}"
    )
    world = _users_world(tmp_path, store_url, spec, lookback=0)
    assert world.run("users").counts["added"] == 1
    execute("INSERT INTO users SELECT 'bob@example.com', 'Bob', CURRENT_TIMESTAMP()")
    second = world.run("users")
    assert (second.counts["queried"], second.counts["added"]) == (1, 1)


# --- the lookback re-reads rows stamped before they were committed -----------------------------------------


def test_lookback_defaults_to_five_minutes_and_zero_opts_out() -> None:
    base = {"name": "s", "warehouse": "wh", "destination": {"type": "contacts"}, "query": USERS_QUERY}
    assert SyncConfig.model_validate(base).lookback == timedelta(minutes=5)
    assert SyncConfig.model_validate({**base, "lookback": 0}).lookback == timedelta(0)


@pytest.mark.parametrize(("lookback", "read"), [(None, True), ("0", False)])
def test_a_row_stamped_before_the_watermark_but_committed_after_the_run(
    tmp_path: Path, store_url: str, lookback: str | None, read: bool
) -> None:
    world = SyncWorld(tmp_path, store_url)
    world.add_sync("users", USERS_QUERY, **({"lookback": lookback} if lookback is not None else {}))
    world.warehouse("CREATE TABLE users (email VARCHAR, first_name VARCHAR, updated_at TIMESTAMPTZ)")
    world.warehouse("INSERT INTO users VALUES ('ann@example.com', 'Ann', now() - INTERVAL 1 HOUR)")
    first = world.run("users")
    assert first.counts["added"] == 1
    watermark = world.scalar("SELECT watermark FROM sync_state WHERE sync_name = 'users'")
    assert watermark == first.next_watermark
    # its transaction began (and stamped updated_at) two minutes before the run's query, and committed after it
    late = (watermark - timedelta(minutes=2)).isoformat()
    world.warehouse(f"INSERT INTO users VALUES ('late@example.com', 'Late', '{late}')")
    second = world.run("users")
    assert second.counts["added"] == (1 if read else 0)
    assert ("late@example.com" in _stored_emails(world)) is read
    if read:
        assert second.watermark_used == watermark - timedelta(minutes=5)


def test_engine_host_clock_far_ahead_of_the_warehouse_loses_nothing(
    tmp_path: Path, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import conversion_sync.syncs.runner as runner_module

    class HostClockADayAhead(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Any:
            return datetime.now(tz) + timedelta(days=1)

    monkeypatch.setattr(runner_module, "datetime", HostClockADayAhead)
    world = SyncWorld(tmp_path, store_url)
    world.add_sync("users", USERS_QUERY, lookback=0)
    world.warehouse("CREATE TABLE users (email VARCHAR, first_name VARCHAR, updated_at TIMESTAMPTZ)")
    world.warehouse("INSERT INTO users VALUES ('ann@example.com', 'Ann', now())")
    first = world.run("users")
    assert first.next_watermark < datetime.now(UTC) + timedelta(minutes=1)
    world.warehouse("INSERT INTO users VALUES ('bob@example.com', 'Bob', now())")
    assert world.run("users").counts["added"] == 1
    assert _stored_emails(world) == ["ann@example.com", "bob@example.com"]
