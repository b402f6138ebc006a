"""Postgres adapter: READ ONLY transactions, type mapping, secret-free errors, dropped connections."""

from __future__ import annotations

import datetime as dt
import urllib.parse
from decimal import Decimal
from typing import Any

import psycopg
import pyarrow as pa
import pytest

from conversion_sync.config.warehouses import PostgresWarehouseConfig
from conversion_sync.warehouses import WarehouseConnectionError, WarehouseQueryError, open_warehouse

PLANTED = "PLANTED-s3cret-pw"


def _count(url: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT count(*) FROM people").fetchone()[0]  # type: ignore[index]


def _config_for(url: str, monkeypatch: pytest.MonkeyPatch) -> PostgresWarehouseConfig:
    monkeypatch.setenv("CS_TEST_PG_OTHER_URL", url)
    return PostgresWarehouseConfig(type="postgres", url={"env": "CS_TEST_PG_OTHER_URL"})  # type: ignore[arg-type]


def _with_user(url: str, user: str, password: str) -> str:
    """The server's unix-socket URL with another user and a (raw, unescaped) password."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:{password}@{parts.hostname or ''}"))


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("DELETE FROM people", "cannot execute DELETE in a read-only transaction"),
        ("UPDATE people SET name = 'x'", "cannot execute UPDATE in a read-only transaction"),
        ("WITH gone AS (DELETE FROM people RETURNING *) SELECT * FROM gone", "read-only transaction"),
        ("CREATE TABLE stolen AS SELECT * FROM people", "read-only transaction"),
        ("SELECT 1; DELETE FROM people", "cannot insert multiple commands"),
        ("SET TRANSACTION READ WRITE; DELETE FROM people", "cannot insert multiple commands"),
        ("COMMIT; DELETE FROM people", "cannot insert multiple commands"),
    ],
)
def test_writes_fail_and_change_nothing(
    postgres_config: PostgresWarehouseConfig, postgres_url: str, sql: str, reason: str
) -> None:
    with open_warehouse("app_db", postgres_config) as warehouse, pytest.raises(WarehouseQueryError) as err:
        list(warehouse.stream(sql))
    assert str(err.value).startswith("warehouse 'app_db' (postgres): query failed: ")
    assert reason in str(err.value)
    assert _count(postgres_url) == 3


def test_syntax_error_is_a_query_error(postgres_config: PostgresWarehouseConfig) -> None:
    with open_warehouse("app_db", postgres_config) as warehouse, pytest.raises(WarehouseQueryError) as err:
        list(warehouse.stream("SELEC id FROM people"))
    assert str(err.value) == (
        "warehouse 'app_db' (postgres): query failed: syntax error at or near \"SELEC\" (SQLSTATE 42601)"
    )
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_types_map_to_plain_arrow(postgres_config: PostgresWarehouseConfig) -> None:
    sql = """
        SELECT 12.5::numeric(6, 2) AS fixed, 1234567890.123456789::numeric AS free,
               '{"k": [1]}'::json AS doc, '{"k": 2}'::jsonb AS docb,
               'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS id, NULL::uuid AS no_id,
               '2024-05-06 07:08:09.5+02'::timestamptz AS at, 3::smallint AS small, 4::bigint AS big
    """
    with open_warehouse("app_db", postgres_config) as warehouse:
        (batch,) = list(warehouse.stream(sql))
    types = {f.name: f.type for f in batch.schema}
    assert types == {
        "fixed": pa.decimal128(6, 2),
        "free": pa.string(),
        "doc": pa.string(),
        "docb": pa.string(),
        "id": pa.string(),
        "no_id": pa.string(),
        "at": pa.timestamp("us", tz="UTC"),
        "small": pa.int16(),
        "big": pa.int64(),
    }
    row: dict[str, Any] = batch.to_pylist()[0]
    assert row["fixed"] == Decimal("12.50")
    assert row["free"] == "1234567890.123456789"
    assert row["doc"] == '{"k": [1]}' and row["docb"] == '{"k": 2}'
    assert row["id"] == "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11" and row["no_id"] is None
    assert row["at"] == dt.datetime(2024, 5, 6, 5, 8, 9, 500000, tzinfo=dt.UTC)


def test_numeric_nan_in_a_fixed_column_is_a_query_error(postgres_config: PostgresWarehouseConfig) -> None:
    with open_warehouse("app_db", postgres_config) as warehouse, pytest.raises(WarehouseQueryError) as err:
        list(warehouse.stream("SELECT 'NaN'::numeric(6, 2) AS amount"))
    assert "column 'amount' (numeric) cannot be read as decimal128(6, 2)" in str(err.value)


def test_wrong_password_is_a_connection_error_without_the_password(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config_for(_with_user(postgres_url, "planted", PLANTED), monkeypatch)
    with open_warehouse("app_db", config) as warehouse, pytest.raises(WarehouseConnectionError) as err:
        list(warehouse.stream("SELECT 1"))
    message = str(err.value)
    assert message.startswith("warehouse 'app_db' (postgres): connection failed: ")
    assert 'password authentication failed for user "planted"' in message
    assert PLANTED not in message


def test_driver_message_echoing_the_password_is_scrubbed(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # libpq quotes a malformed percent-escape back, i.e. the password itself
    password = f"{PLANTED}%ZZ"
    config = _config_for(_with_user(postgres_url, "planted", password), monkeypatch)
    with open_warehouse("app_db", config) as warehouse, pytest.raises(WarehouseConnectionError) as err:
        list(warehouse.stream("SELECT 1"))
    message = str(err.value)
    assert (
        message == "warehouse 'app_db' (postgres): connection failed: invalid percent-encoded token: \"***\""
    )
    assert PLANTED not in message


def test_unreachable_host_is_a_connection_error(monkeypatch: pytest.MonkeyPatch) -> None:
    config = _config_for(f"postgresql://someone:{PLANTED}@127.0.0.1:1/db", monkeypatch)
    with open_warehouse("app_db", config) as warehouse, pytest.raises(WarehouseConnectionError) as err:
        list(warehouse.stream("SELECT 1"))
    message = str(err.value)
    assert message.startswith(
        "warehouse 'app_db' (postgres): connection failed: connection to server at \"127.0.0.1\", port 1 failed"
    )
    assert PLANTED not in message


def test_missing_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("APP_DB_URL", raising=False)
    config = PostgresWarehouseConfig(type="postgres", url={"env": "APP_DB_URL"})  # type: ignore[arg-type]
    with open_warehouse("x", config) as warehouse, pytest.raises(WarehouseConnectionError) as err:
        list(warehouse.stream("SELECT 1"))
    assert str(err.value) == "warehouse 'x' (postgres): environment variable APP_DB_URL is not set"


def test_connection_dropped_mid_stream(postgres_config: PostgresWarehouseConfig, postgres_url: str) -> None:
    sql = "SELECT i, repeat('x', 200) AS pad FROM generate_series(1, 3000000) i"
    with open_warehouse("app_db", postgres_config) as warehouse:
        (pid,) = next(warehouse.stream("SELECT pg_backend_pid() AS pid")).column("pid").to_pylist()
        batches = warehouse.stream(sql, batch_rows=10_000)
        assert next(batches).num_rows == 10_000
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(WarehouseQueryError, match=r"^warehouse 'app_db' \(postgres\): query failed: "):
            for _ in batches:
                pass
        # the broken connection was dropped; the next stream reconnects
        assert next(warehouse.stream("SELECT count(*) AS n FROM people")).to_pylist() == [{"n": 3}]
