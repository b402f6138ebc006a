"""Every source type arrives in the store faithfully, per warehouse, or its row is rejected with a reason.

One events sync and one contacts sync per warehouse (DuckDB, Postgres, Snowflake through fakesnow, the BigQuery
stand-in) read a row of every type the warehouse has; the test compares events.properties and
contacts.custom_fields with the exact JSON expected (numbers compared digit for digit), and checks that a row
holding NaN is rejected with a message, never stored as something else.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from conversion_sync_tests.test_syncs.conftest import SyncWorld

from .bigquery_standin import StandIn

TS = "2024-01-02T03:04:05.123456Z"
TSTZ = "2024-01-02T01:04:05.123456Z"
"""'2024-01-02 03:04:05.123456+02:00' in UTC."""
UUID = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
TEXT = 'Zoë Ångström 🚀 "quoted"'

COMMON = {
    "i": 42,
    "bi": 9223372036854775807,
    "f": Decimal("0.1"),
    "big": 10**300,
    "yes": True,
    "no": False,
    "s": TEXT,
    "numeric_text": "9.99",
    "d": "2024-01-02",
    "ts": TS,
    "tstz": TSTZ,
    "tm": "03:04:05",
    "nothing": None,
}
"""Properties every warehouse gives the same (a text column holding '9.99' stays a string: the source said so)."""


@pytest.fixture
def world(tmp_path: Path, store_url: str) -> SyncWorld:
    return SyncWorld(tmp_path, store_url)


CONTACT_FIELDS = {"seats": 3, "score": Decimal("0.1"), "vip": True, "plan": "pro"}


def exact_json(text: str) -> Any:
    """JSON with numbers kept exactly as written (Decimal for fractions, int for integers)."""
    return json.loads(text, parse_float=Decimal)


def run_matrix(world: SyncWorld, events_query: str, contacts_query: str) -> tuple[dict[str, Any], Any, Any]:
    world.add_sync("typed_events", events_query, destination={"type": "events"})
    world.add_sync("typed_contacts", contacts_query)
    assert world.run("typed_events").counts["rejected"] == 1
    assert world.run("typed_contacts").counts["rejected"] == 0
    rows = world.sql("SELECT event_name, properties::text FROM events ORDER BY event_name")
    assert [name for name, _ in rows] == ["typed"], rows
    properties = exact_json(rows[0][1])
    rejected = world.sql(
        "SELECT sync_name, column_name, code, message FROM sync_rejections ORDER BY sync_name, column_name"
    )
    fields = exact_json(
        world.scalar("SELECT custom_fields::text FROM contacts WHERE email_normalized = 'c@x.io'")
    )
    return properties, rejected, fields


def assert_nan_rejected(rejected: list[tuple], column: str = "f") -> None:
    events = [r for r in rejected if r[0] == "typed_events"]
    assert len(events) == 1, rejected
    _, label, code, message = events[0]
    assert (label, code) == (column, "invalid_field_value"), rejected
    assert "is not a finite number (JSON has no NaN or Infinity)" in message, message


def events_query(select: str, bad: str) -> str:
    """The typed row, and a row whose float is NaN (rejected)."""
    return f"""
        SELECT 'e@x.io' AS email, 'typed' AS event_name, TIMESTAMP '2024-05-01 00:00:00' AS timestamp, {select}
        UNION ALL
        SELECT 'e@x.io', 'nan', TIMESTAMP '2024-05-01 00:00:00', {bad}
    """


# --- DuckDB -----------------------------------------------------------------------------------------------------

DUCKDB_SELECT = f"""
    42::INTEGER AS i, 9223372036854775807::BIGINT AS bi, 0.1::DOUBLE AS f, 1e300::DOUBLE AS big,
    true AS yes, false AS no, '{TEXT}' AS s, '9.99' AS numeric_text, DATE '2024-01-02' AS d,
    TIMESTAMP '2024-01-02 03:04:05.123456' AS ts, TIMESTAMPTZ '2024-01-02 03:04:05.123456+02:00' AS tstz,
    TIME '03:04:05' AS tm, NULL AS nothing,
    12345678901234567890.1234567800::DECIMAL(38, 10) AS dec, 0.1::FLOAT AS real,
    170141183460469231731687303715884105727::HUGEINT AS huge, 2.50::DECIMAL(10, 2) AS money_like,
    '{UUID}'::UUID AS u, '{{"a": [1, 2.5], "b": "ü"}}'::JSON AS j, [1, 2, 3] AS l, [0.1, 0.25]::DOUBLE[] AS fl,
    {{'a': 1, 'b': 'x', 'c': [true]}} AS st, MAP {{'k': 1, 'z': 2}} AS mp, '\\xDE\\xAD'::BLOB AS bl,
    TIMETZ '10:00:00+02' AS ttz, '101'::BIT AS bits, 123456789012345678901234567890123456789012::BIGNUM AS bignum,
    TIMESTAMP_NS '2024-01-02 03:04:05.123456789' AS tns, INTERVAL '1 day 2 hours' AS iv
"""
DUCKDB_EXPECTED = COMMON | {
    "dec": Decimal("12345678901234567890.12345678"),
    "real": Decimal("0.1"),
    "huge": 170141183460469231731687303715884105727,
    "money_like": Decimal("2.5"),
    "u": UUID,
    "j": {"a": [1, Decimal("2.5")], "b": "ü"},
    "l": [1, 2, 3],
    "fl": [Decimal("0.1"), Decimal("0.25")],
    "st": {"a": 1, "b": "x", "c": [True]},
    "mp": {"k": 1, "z": 2},
    "bl": "DEAD",
    "ttz": "10:00:00+02",
    "bits": "101",
    "bignum": 123456789012345678901234567890123456789012,
    "tns": "2024-01-02T03:04:05.123456789Z",
    "iv": "1 day 02:00:00",
}
DUCKDB_BAD = DUCKDB_SELECT.replace("0.1::DOUBLE AS f", "'nan'::DOUBLE AS f")
CONTACTS = """
    SELECT 'c@x.io' AS email, {seats} AS seats, {score} AS score, {vip} AS vip, 'pro' AS plan, {prefs} AS prefs
"""


def test_duckdb_types(world: SyncWorld) -> None:
    world.warehouse("CREATE TABLE IF NOT EXISTS nothing (x INTEGER)")
    properties, rejected, fields = run_matrix(
        world,
        events_query(DUCKDB_SELECT, DUCKDB_BAD),
        CONTACTS.format(
            seats="3::INTEGER", score="0.1::DOUBLE", vip="true", prefs="{'a': 0.1, 'b': [1, 2], 'c': NULL}"
        ),
    )
    assert properties == DUCKDB_EXPECTED
    assert_nan_rejected(rejected)
    assert fields == CONTACT_FIELDS | {"prefs": {"a": Decimal("0.1"), "b": [1, 2], "c": None}}


# --- Postgres ---------------------------------------------------------------------------------------------------

POSTGRES_SETUP = """
    DROP TYPE IF EXISTS tm_addr; DROP TYPE IF EXISTS tm_mood;
    CREATE TYPE tm_addr AS (street text, zip int, price money);
    CREATE TYPE tm_mood AS ENUM ('happy', 'sad');
"""
POSTGRES_SELECT = f"""
    42::integer AS i, 9223372036854775807::bigint AS bi, 0.1::float8 AS f, 1e300::float8 AS big,
    true AS yes, false AS no, '{TEXT}'::text AS s, '9.99'::text AS numeric_text, DATE '2024-01-02' AS d,
    TIMESTAMP '2024-01-02 03:04:05.123456' AS ts, TIMESTAMPTZ '2024-01-02 03:04:05.123456+02:00' AS tstz,
    TIME '03:04:05' AS tm, NULL::text AS nothing,
    12345678901234567890.1234567800::numeric(38, 10) AS dec, 0.1::real AS real,
    123456789012345678901234567890123456789012.50::numeric AS free, '$1,234.50'::money AS price,
    '{UUID}'::uuid AS u, '{{"a": [1, 2.5], "b": "ü"}}'::json AS j, '{{"b": 2, "a": [1.0]}}'::jsonb AS jb,
    ARRAY[1, 2, 3] AS l, ARRAY['$1.00'::money] AS prices, ARRAY[ROW('x', 1, '$2')::tm_addr] AS addrs,
    ROW('Main St', 123, '$1,234.50')::tm_addr AS addr, ROW(1, 'a') AS anon, 'happy'::tm_mood AS mood,
    '\\xdeadbeef'::bytea AS bl, '10.0.0.1/8'::inet AS ip, '10.0.0.0/8'::cidr AS net,
    '08:00:2b:01:02:03'::macaddr AS mac, '08:00:2b:01:02:03:04:05'::macaddr8 AS mac8, '(1.5,2)'::point AS pt,
    '((0,0),(1,1))'::lseg AS seg, '<(1,2),3>'::circle AS circ, '10:00:00+02'::timetz AS ttz,
    '1 day 2 hours'::interval AS iv, '[1,5)'::int4range AS rng, B'101' AS bits, 'fat cat'::tsvector AS tsv
"""
POSTGRES_EXPECTED = COMMON | {
    "dec": Decimal("12345678901234567890.12345678"),
    "real": Decimal("0.1"),
    "free": Decimal("123456789012345678901234567890123456789012.5"),
    "price": Decimal("1234.5"),
    "u": UUID,
    "j": {"a": [1, Decimal("2.5")], "b": "ü"},
    "jb": {"a": [Decimal("1.0")], "b": 2},
    "l": [1, 2, 3],
    "prices": [Decimal("1.00")],
    "addrs": [{"street": "x", "zip": 1, "price": "$2.00"}],
    "addr": {"street": "Main St", "zip": 123, "price": "$1,234.50"},
    "anon": {"f1": 1, "f2": "a"},
    "mood": "happy",
    "bl": "DEADBEEF",
    "ip": "10.0.0.1/8",
    "net": "10.0.0.0/8",
    "mac": "08:00:2b:01:02:03",
    "mac8": "08:00:2b:01:02:03:04:05",
    "pt": "(1.5,2)",
    "seg": "[(0,0),(1,1)]",
    "circ": "<(1,2),3>",
    "ttz": "10:00:00+02",
    "iv": "1 day 02:00:00",
    "rng": "[1,5)",
    "bits": "101",
    "tsv": "'cat' 'fat'",
}
POSTGRES_BAD = POSTGRES_SELECT.replace("0.1::float8 AS f", "'NaN'::float8 AS f")


def test_postgres_types(world: SyncWorld, postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(POSTGRES_SETUP)  # type: ignore[arg-type]
    monkeypatch.setenv("TM_PG_URL", postgres_url)
    world.warehouses["wh"] = "{type: postgres, url: {env: TM_PG_URL}}"
    properties, rejected, fields = run_matrix(
        world,
        events_query(POSTGRES_SELECT, POSTGRES_BAD) + ";  -- a trailing semicolon and comment",
        CONTACTS.format(
            seats="3::smallint",
            score="0.1::float8",
            vip="true",
            prefs="""ROW('Main St', 123, '$1,234.50')::tm_addr""",
        ),
    )
    assert properties == POSTGRES_EXPECTED
    assert_nan_rejected(rejected)
    assert fields == CONTACT_FIELDS | {"prefs": {"street": "Main St", "zip": 123, "price": "$1,234.50"}}


# --- Snowflake (fakesnow) ---------------------------------------------------------------------------------------

SNOWFLAKE_SELECT = f"""
    42::INTEGER AS i, 9223372036854775807::NUMBER(19, 0) AS bi, 0.1::FLOAT AS f, 1e300::FLOAT AS big,
    true AS yes, false AS no, '{TEXT}' AS s, '9.99' AS numeric_text, '2024-01-02'::DATE AS d,
    '2024-01-02 03:04:05.123456'::TIMESTAMP_NTZ AS ts, '2024-01-02 03:04:05.123456+02:00'::TIMESTAMP_TZ AS tstz,
    '03:04:05'::TIME AS tm, NULL AS nothing,
    12345678901234567890.1234567800::NUMBER(38, 10) AS dec,
    PARSE_JSON('{{"a": [1, 2.5], "b": "ü"}}') AS v, PARSE_JSON('[1, 2, 3]') AS arr,
    TO_BINARY('DEAD', 'HEX') AS bl
"""
SNOWFLAKE_EXPECTED = COMMON | {
    "dec": Decimal("12345678901234567890.12345678"),
    "v": {"a": [1, Decimal("2.5")], "b": "ü"},
    "arr": [1, 2, 3],
    "bl": "DEAD",
}
SNOWFLAKE_BAD = SNOWFLAKE_SELECT.replace("0.1::FLOAT AS f", "'NaN'::FLOAT AS f")


def test_snowflake_types(
    world: SyncWorld, fakesnow_server: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    kwargs = fakesnow_server
    monkeypatch.setenv("TM_SF_PASSWORD", kwargs["password"])
    world.warehouses["wh"] = (
        f"{{type: snowflake, account: {kwargs['account']}, user: {kwargs['user']}, "
        f"password: {{env: TM_SF_PASSWORD}}, database: CS_TEST, schema: PUBLIC, host: '{kwargs['host']}', "
        f"port: {kwargs['port']}, protocol: {kwargs['protocol']}}}"
    )
    properties, rejected, fields = run_matrix(
        world,
        events_query(SNOWFLAKE_SELECT, SNOWFLAKE_BAD).replace(
            "TIMESTAMP '2024-05-01 00:00:00'", "'2024-05-01'::TIMESTAMP_NTZ"
        ),
        CONTACTS.format(
            seats="3::INTEGER", score="0.1::FLOAT", vip="true", prefs="""PARSE_JSON('{"a": 0.1}')"""
        ),
    )
    assert properties == SNOWFLAKE_EXPECTED
    assert_nan_rejected(rejected)
    assert fields == CONTACT_FIELDS | {"prefs": {"a": Decimal("0.1")}}


# --- BigQuery (the stand-in: scalar types and JSON; it does not model RECORD or REPEATED) -----------------------

BIGQUERY_SELECT = f"""
    42::BIGINT AS i, 9223372036854775807::BIGINT AS bi, 0.1::DOUBLE AS f, 1e300::DOUBLE AS big,
    true AS yes, false AS no, '{TEXT}' AS s, '9.99' AS numeric_text, DATE '2024-01-02' AS d,
    TIMESTAMP '2024-01-02 03:04:05.123456' AS ts, TIMESTAMPTZ '2024-01-02 03:04:05.123456+02:00' AS tstz,
    TIME '03:04:05' AS tm, NULL::VARCHAR AS nothing,
    12345678901234567890.12345678::DECIMAL(38, 9) AS dec, 2.50::DECIMAL(10, 2) AS money_like,
    '{{"a": [1, 2.5], "b": "ü"}}'::JSON AS j, '\\xDE\\xAD'::BLOB AS bl
"""
BIGQUERY_EXPECTED = COMMON | {
    "dec": Decimal("12345678901234567890.12345678"),
    "money_like": Decimal("2.5"),
    "j": {"a": [1, Decimal("2.5")], "b": "ü"},
    "bl": "DEAD",
}
BIGQUERY_BAD = BIGQUERY_SELECT.replace("0.1::DOUBLE AS f", "'nan'::DOUBLE AS f")


def test_bigquery_types(world: SyncWorld, bigquery_server: StandIn, tmp_path: Path) -> None:
    world.warehouses["wh"] = (
        f"{{type: bigquery, project: cs-test, location: US, api_endpoint: '{bigquery_server.url}'}}"
    )
    properties, rejected, fields = run_matrix(
        world,
        events_query(BIGQUERY_SELECT, BIGQUERY_BAD),
        CONTACTS.format(seats="3::BIGINT", score="0.1::DOUBLE", vip="true", prefs="""'{"a": 0.1}'::JSON"""),
    )
    assert properties == BIGQUERY_EXPECTED
    assert_nan_rejected(rejected)
    assert fields == CONTACT_FIELDS | {"prefs": {"a": Decimal("0.1")}}
