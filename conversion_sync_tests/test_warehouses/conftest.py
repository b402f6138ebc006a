"""Real engines for the warehouse tests: a DuckDB file, pgserver Postgres, fakesnow's server, the BigQuery stand-in."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pytest

from conversion_sync.config.warehouses import (
    BigQueryWarehouseConfig,
    DuckDBWarehouseConfig,
    PostgresWarehouseConfig,
    SnowflakeWarehouseConfig,
)
from conversion_sync_tests.fakesnow_server import serve_fakesnow

from .bigquery_standin import StandIn, bigquery_standin

BIG_ROWS = 120_000
"""Rows in every engine's `big` table (id, label)."""

SAMPLE_COLUMNS = "id, name, score, active, born, seen_at, seen_at_tz, amount, props, note"
SAMPLE_QUERY = f"SELECT {SAMPLE_COLUMNS} FROM people ORDER BY id"

# (id, name, score, active, born, seen_at, seen_at_tz, amount, props) as SQL literals; note is always NULL.
_SAMPLE_VALUES = [
    (
        "1",
        "'Zoë Ångström 🚀 \"quoted\"'",
        "1.5",
        "TRUE",
        "'2024-01-02'",
        "'2024-01-02 03:04:05.123456'",
        "'2024-01-02 03:04:05.123456+02:00'",
        "12.34",
        """'{"a": [1, 2], "b": "ü"}'""",
    ),
    (
        "2",
        "'plain'",
        "-2.25",
        "FALSE",
        "'1999-12-31'",
        "'1999-12-31 23:59:59'",
        "'1999-12-31 23:59:59+00:00'",
        "-0.5",
        "'[]'",
    ),
    ("3", "NULL", "NULL", "NULL", "NULL", "NULL", "NULL", "NULL", "NULL"),
]

_DUCKDB_SAMPLE = """
CREATE TABLE people (id INTEGER, name VARCHAR, score DOUBLE, active BOOLEAN, born DATE, seen_at TIMESTAMP,
                     seen_at_tz TIMESTAMPTZ, amount DECIMAL(10, 2), props JSON, note VARCHAR);
INSERT INTO people VALUES {values};
CREATE TABLE big AS SELECT i::BIGINT AS id, 'label ' || i AS label FROM range({rows}) t(i);
"""

_POSTGRES_SAMPLE = """
CREATE TABLE people (id INTEGER, name TEXT, score DOUBLE PRECISION, active BOOLEAN, born DATE,
                     seen_at TIMESTAMP, seen_at_tz TIMESTAMPTZ, amount NUMERIC(10, 2), props JSON, note TEXT);
INSERT INTO people VALUES {values};
CREATE TABLE big AS SELECT i::BIGINT AS id, 'label ' || i AS label FROM generate_series(0, {rows} - 1) i;
CREATE ROLE planted LOGIN PASSWORD 'the-right-password';
"""

_SNOWFLAKE_SAMPLE = [
    """CREATE TABLE people (id INTEGER, name VARCHAR, score DOUBLE, active BOOLEAN, born DATE,
                            seen_at TIMESTAMP_NTZ, seen_at_tz TIMESTAMP_TZ, amount NUMBER(10, 2),
                            props VARIANT, note VARCHAR)""",
    "INSERT INTO people "
    + " UNION ALL ".join(
        f"SELECT {i}, {name}, {score}, {active}, {born}::DATE, {ts}::TIMESTAMP_NTZ, {tstz}::TIMESTAMP_TZ, "
        f"{amount}, PARSE_JSON({props}), NULL"
        for i, name, score, active, born, ts, tstz, amount, props in _SAMPLE_VALUES
    ),
    f"CREATE TABLE big AS SELECT SEQ8() AS id, 'label ' || SEQ8() AS label "
    f"FROM TABLE(GENERATOR(ROWCOUNT => {BIG_ROWS}))",
]


def _values() -> str:
    return ", ".join(f"({', '.join(row)}, NULL)" for row in _SAMPLE_VALUES)


@pytest.fixture(scope="session")
def duckdb_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DuckDB file holding `people` and `big`, closed so the adapter can open it read-only."""
    path = tmp_path_factory.mktemp("duckdb") / "warehouse.duckdb"
    with duckdb.connect(str(path)) as con:
        con.execute(_DUCKDB_SAMPLE.format(values=_values(), rows=BIG_ROWS))
    return path


@pytest.fixture
def duckdb_config(duckdb_path: Path) -> DuckDBWarehouseConfig:
    return DuckDBWarehouseConfig(type="duckdb", path=str(duckdb_path))


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real Postgres (pgserver) with `people`, `big`, and a role `planted` that needs its password."""
    import pgserver

    pgdata = tmp_path_factory.mktemp("pg")
    server = pgserver.get_server(pgdata, cleanup_mode="delete")
    with psycopg.connect(server.get_uri(), autocommit=True) as conn:
        conn.execute(_POSTGRES_SAMPLE.format(values=_values(), rows=BIG_ROWS))  # type: ignore[arg-type]
        hba = Path(conn.execute("SHOW hba_file").fetchone()[0])  # type: ignore[index]
        hba.write_text("local all planted scram-sha-256\n" + hba.read_text())
        conn.execute("SELECT pg_reload_conf()")
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def postgres_url(postgres_server: Any) -> str:
    return str(postgres_server.get_uri())


@pytest.fixture
def postgres_config(postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> PostgresWarehouseConfig:
    monkeypatch.setenv("CS_TEST_PG_URL", postgres_url)
    return PostgresWarehouseConfig(type="postgres", url={"env": "CS_TEST_PG_URL"})  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def fakesnow_server() -> Iterator[dict[str, Any]]:
    """fakesnow's HTTP server (the Snowflake wire protocol), with DB.PUBLIC.people and DB.PUBLIC.big."""
    import snowflake.connector

    with serve_fakesnow() as kwargs:
        with snowflake.connector.connect(**kwargs, database="CS_TEST", schema="PUBLIC") as conn:
            cur = conn.cursor()
            for statement in _SNOWFLAKE_SAMPLE:
                cur.execute(statement)
        yield kwargs


@pytest.fixture
def snowflake_config(
    fakesnow_server: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> SnowflakeWarehouseConfig:
    monkeypatch.setenv("CS_TEST_SNOWFLAKE_PASSWORD", fakesnow_server["password"])
    return SnowflakeWarehouseConfig.model_validate(
        {
            "type": "snowflake",
            "account": fakesnow_server["account"],
            "user": fakesnow_server["user"],
            "password": {"env": "CS_TEST_SNOWFLAKE_PASSWORD"},
            "database": "CS_TEST",
            "schema": "PUBLIC",
            "host": fakesnow_server["host"],
            "port": fakesnow_server["port"],
            "protocol": fakesnow_server["protocol"],
        }
    )


@pytest.fixture(scope="session")
def bigquery_server() -> Iterator[StandIn]:
    """The BigQuery REST stand-in with ds.people and ds.big."""
    with bigquery_standin() as standin:
        standin.execute("CREATE SCHEMA ds; SET schema = 'ds';")
        standin.execute(_DUCKDB_SAMPLE.format(values=_values(), rows=BIG_ROWS))
        yield standin


@pytest.fixture
def bigquery_config(bigquery_server: StandIn) -> BigQueryWarehouseConfig:
    return BigQueryWarehouseConfig(
        type="bigquery", project="cs-test", location="US", api_endpoint=bigquery_server.url
    )
