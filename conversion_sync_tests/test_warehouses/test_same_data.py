"""One table of mixed types read from DuckDB, Postgres, Snowflake (fakesnow) and BigQuery (stand-in) gives the same data.

Documented type differences, normalised before comparing:
- integers: DuckDB/Postgres INTEGER → int32; Snowflake NUMBER(38,0) and BigQuery INT64 → int64.
- timestamps with time zone: the same UTC instant; the zone is named 'Etc/UTC' (DuckDB, Snowflake) or 'UTC'.
- numeric(10,2): decimal128(10, 2), except BigQuery NUMERIC → decimal128(38, 9) (same values).
- JSON (Postgres json, DuckDB JSON, Snowflake VARIANT, BigQuery JSON) → text; Snowflake re-serialises it
  (`{"a":[1,2]}`), so documents are compared parsed.

A fakesnow limitation (not Snowflake's, not the adapter's): fakesnow 0.12 encodes timestamps as Snowflake's
(epoch, fraction) structs without a null bitmap (`fakesnow/arrow.py: timestamp_to_sf_struct`), so NULL
timestamps arrive as 1970-01-01 00:00:00. For fakesnow only, that exact value is read back as NULL.
"""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pytest

from conversion_sync.warehouses import open_warehouse

from .conftest import SAMPLE_QUERY

UTC = dt.UTC
EXPECTED = [
    {
        "id": 1,
        "name": 'Zoë Ångström 🚀 "quoted"',
        "score": 1.5,
        "active": True,
        "born": dt.date(2024, 1, 2),
        "seen_at": dt.datetime(2024, 1, 2, 3, 4, 5, 123456),
        "seen_at_tz": dt.datetime(2024, 1, 2, 1, 4, 5, 123456, tzinfo=UTC),
        "amount": Decimal("12.34"),
        "props": {"a": [1, 2], "b": "ü"},
        "note": None,
    },
    {
        "id": 2,
        "name": "plain",
        "score": -2.25,
        "active": False,
        "born": dt.date(1999, 12, 31),
        "seen_at": dt.datetime(1999, 12, 31, 23, 59, 59),
        "seen_at_tz": dt.datetime(1999, 12, 31, 23, 59, 59, tzinfo=UTC),
        "amount": Decimal("-0.5"),
        "props": [],
        "note": None,
    },
    {
        "id": 3,
        "name": None,
        "score": None,
        "active": None,
        "born": None,
        "seen_at": None,
        "seen_at_tz": None,
        "amount": None,
        "props": None,
        "note": None,
    },
]

TYPE_CHECKS = {
    "id": pa.types.is_integer,
    "name": pa.types.is_string,
    "score": pa.types.is_float64,
    "active": pa.types.is_boolean,
    "born": pa.types.is_date32,
    "seen_at": lambda t: pa.types.is_timestamp(t) and t.tz is None,
    "seen_at_tz": lambda t: pa.types.is_timestamp(t) and t.tz in ("UTC", "Etc/UTC", "+00:00"),
    "amount": pa.types.is_decimal,
    "props": pa.types.is_string,
    "note": pa.types.is_string,
}


_FAKESNOW_NULL_TIMESTAMPS = {
    "seen_at": dt.datetime(1970, 1, 1),
    "seen_at_tz": dt.datetime(1970, 1, 1, tzinfo=UTC),
}


def _normalise(row: dict[str, Any], kind: str) -> dict[str, Any]:
    out = dict(row)
    if kind == "snowflake":
        for column, epoch in _FAKESNOW_NULL_TIMESTAMPS.items():
            if out[column] == epoch:
                out[column] = None
    if isinstance(out["seen_at_tz"], dt.datetime):
        out["seen_at_tz"] = out["seen_at_tz"].astimezone(UTC)
    if out["props"] is not None:
        out["props"] = json.loads(out["props"])
    return out


@pytest.mark.parametrize("kind", ["duckdb", "postgres", "snowflake", "bigquery"])
def test_same_table_same_arrow_data(kind: str, request: pytest.FixtureRequest) -> None:
    config = request.getfixturevalue(f"{kind}_config")
    with open_warehouse(f"{kind}_wh", config) as warehouse:
        assert warehouse.kind == kind
        batches = list(warehouse.stream(SAMPLE_QUERY))
    table = pa.Table.from_batches(batches)
    assert table.column_names == list(EXPECTED[0])
    for f in table.schema:
        assert TYPE_CHECKS[f.name](f.type), f"{kind}: column {f.name} has type {f.type}"
        assert not isinstance(f.type, pa.BaseExtensionType)
    assert [_normalise(row, kind) for row in table.to_pylist()] == EXPECTED


@pytest.mark.parametrize("kind", ["duckdb", "postgres", "snowflake", "bigquery"])
def test_empty_result_still_carries_the_columns(kind: str, request: pytest.FixtureRequest) -> None:
    config = request.getfixturevalue(f"{kind}_config")
    with open_warehouse(f"{kind}_wh", config) as warehouse:
        batches = list(warehouse.stream("SELECT id, name FROM people WHERE id < 0"))
    assert len(batches) == 1
    assert batches[0].num_rows == 0
    assert batches[0].schema.names == ["id", "name"]


@pytest.mark.parametrize("kind", ["duckdb", "postgres", "snowflake", "bigquery"])
def test_batches_are_bounded(kind: str, request: pytest.FixtureRequest) -> None:
    config = request.getfixturevalue(f"{kind}_config")
    with open_warehouse(f"{kind}_wh", config) as warehouse:
        sizes = [batch.num_rows for batch in warehouse.stream("SELECT id, label FROM big", batch_rows=50_000)]
    assert sum(sizes) == 120_000
    assert len(sizes) >= 3
    assert max(sizes) <= 50_000


@pytest.mark.parametrize("kind", ["duckdb", "postgres", "snowflake", "bigquery"])
def test_a_warehouse_streams_more_than_once(kind: str, request: pytest.FixtureRequest) -> None:
    config = request.getfixturevalue(f"{kind}_config")
    with open_warehouse(f"{kind}_wh", config) as warehouse:
        abandoned = warehouse.stream("SELECT id, label FROM big", batch_rows=1_000)
        assert next(abandoned).num_rows == 1_000
        abandoned.close()
        first = pa.Table.from_batches(list(warehouse.stream("SELECT id FROM people ORDER BY id")))
        second = pa.Table.from_batches(list(warehouse.stream("SELECT id FROM people ORDER BY id")))
    assert first.column("id").to_pylist() == second.column("id").to_pylist() == [1, 2, 3]
