"""The same sync set run against DuckDB, Postgres and Snowflake (fakesnow) gives identical store contents."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pytest

from conversion_sync_tests.conftest import create_database, drop_database
from conversion_sync_tests.fakesnow_server import serve_fakesnow

from .conftest import SyncWorld, store_snapshot

TABLES = [
    """CREATE TABLE users (email VARCHAR, first_name VARCHAR, seats VARCHAR, updated_at TIMESTAMP)""",
    """INSERT INTO users VALUES
        ('ann@example.com', 'Ann', '3', '2026-01-01 10:00:00'),
        ('Bob@Example.com', 'Bob', '7', '2026-01-02 10:00:00'),
        ('cy@example.com', 'Cy', 'ten', '2026-01-03 10:00:00'),
        ('dup@example.com', 'Old', '1', '2026-01-01 00:00:00'),
        ('dup@example.com', 'New', '2', '2026-01-05 00:00:00'),
        (NULL, 'Nobody', '1', '2026-01-01 00:00:00')""",
    """CREATE TABLE up (id VARCHAR, name VARCHAR, email VARCHAR, "relationshipFields" VARCHAR, updated_at TIMESTAMP)""",
    """INSERT INTO up VALUES
        ('p1', 'Widget', 'ann@example.com', '{"role": "owner"}', '2026-01-01 00:00:00'),
        ('p1', 'Widget', 'dan@example.com', '{"role": "viewer"}', '2026-01-01 00:00:00'),
        ('p2', 'Gadget', NULL, NULL, '2026-01-02 00:00:00')""",
    """CREATE TABLE orders (message_id VARCHAR, email VARCHAR, event_name VARCHAR, ts TIMESTAMP, amount DOUBLE)""",
    """INSERT INTO orders VALUES
        ('m1', 'ann@example.com', 'order_placed', '2026-01-01 10:00:00', 10.5),
        (NULL, 'eve@example.com', 'page_viewed', '2026-01-01 11:00:00', 2.25)""",
]

SYNCS = {
    "users": (
        "SELECT email, first_name, seats, updated_at FROM users WHERE updated_at > '{{last_sync_time}}'",
        {},
    ),
    "owners": (
        'SELECT id, name, email, "relationshipFields", updated_at FROM up',
        {"destination": {"type": "custom_objects", "object_type": "product"}},
    ),
    "orders": (
        "SELECT message_id, email, event_name, ts AS timestamp, amount FROM orders",
        {"destination": {"type": "events"}},
    ),
}


@pytest.fixture(scope="module")
def fakesnow_kwargs() -> Iterator[dict[str, Any]]:
    import snowflake.connector

    with serve_fakesnow() as kwargs:
        with snowflake.connector.connect(**kwargs, database="SRC", schema="PUBLIC") as conn:
            cursor = conn.cursor()
            cursor.execute("CREATE DATABASE IF NOT EXISTS SRC")
            cursor.execute("CREATE SCHEMA IF NOT EXISTS SRC.PUBLIC")
            for statement in TABLES:
                cursor.execute(statement.replace("DOUBLE", "FLOAT"))
        yield kwargs


def load_duckdb(path: Path) -> str:
    with duckdb.connect(str(path)) as conn:
        for statement in TABLES:
            conn.execute(statement)
    return f"{{type: duckdb, path: '{path}'}}"


def load_postgres(base_uri: str, monkeypatch: pytest.MonkeyPatch) -> str:
    url = create_database(base_uri, "cross_warehouse_src", template=None)
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in TABLES:
            conn.execute(statement.replace("DOUBLE", "DOUBLE PRECISION"))
    monkeypatch.setenv("CROSS_PG_URL", url)
    return "{type: postgres, url: {env: CROSS_PG_URL}}"


def load_fakesnow(kwargs: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("CROSS_SF_PASSWORD", kwargs["password"])
    return (
        f"{{type: snowflake, account: {kwargs['account']}, user: {kwargs['user']}, "
        f"password: {{env: CROSS_SF_PASSWORD}}, database: SRC, schema: PUBLIC, host: '{kwargs['host']}', "
        f"port: {kwargs['port']}, protocol: {kwargs['protocol']}}}"
    )


def run_all(tmp_path: Path, store_url: str, warehouse_spec: str) -> dict[str, list[tuple]]:
    world = SyncWorld(tmp_path, store_url)
    world.warehouses["wh"] = warehouse_spec
    for name, (query, settings) in SYNCS.items():
        world.add_sync(name, query, **settings)
    outcomes = {name: world.run(name).counts for name in SYNCS}
    assert outcomes["users"]["rejected"] == 3  # bad seats, null email, older duplicate
    assert outcomes["orders"]["added"] == 2
    return store_snapshot(store_url)


def test_duckdb_postgres_and_snowflake_give_identical_stores(
    tmp_path: Path, pg_base_uri: str, fakesnow_kwargs: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    specs = {
        "duckdb": load_duckdb(tmp_path / "src.duckdb"),
        "postgres": load_postgres(pg_base_uri, monkeypatch),
        "snowflake": load_fakesnow(fakesnow_kwargs, monkeypatch),
    }
    snapshots = {}
    for kind, spec in specs.items():
        name = f"cross_store_{kind}"
        url = create_database(pg_base_uri, name)
        (tmp_path / kind).mkdir()
        try:
            snapshots[kind] = run_all(tmp_path / kind, url, spec)
        finally:
            drop_database(pg_base_uri, url, name)
    assert snapshots["duckdb"]["contacts"], "the reference run wrote contacts"
    assert len(snapshots["duckdb"]["relationships"]) == 2
    assert snapshots["postgres"] == snapshots["duckdb"]
    assert snapshots["snowflake"] == snapshots["duckdb"]
