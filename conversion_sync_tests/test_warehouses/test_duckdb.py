"""DuckDB adapter: read-only file, bounded streaming, errors that name the warehouse."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from conversion_sync.config.warehouses import DuckDBWarehouseConfig
from conversion_sync.warehouses import WarehouseConnectionError, WarehouseQueryError, open_warehouse


def _count(path: Path) -> int:
    with duckdb.connect(str(path), read_only=True) as con:
        return con.execute("SELECT count(*) FROM people").fetchone()[0]  # type: ignore[index]


@pytest.mark.parametrize(
    "sql",
    [
        "DELETE FROM people",
        "UPDATE people SET name = 'x'",
        "INSERT INTO people (id) VALUES (99)",
        "CREATE TABLE stolen AS SELECT * FROM people",
        "DROP TABLE people",
        "SELECT 1; DELETE FROM people",
    ],
)
def test_writes_fail_and_change_nothing(
    duckdb_config: DuckDBWarehouseConfig, duckdb_path: Path, sql: str
) -> None:
    with open_warehouse("demo", duckdb_config) as warehouse, pytest.raises(WarehouseQueryError) as err:
        list(warehouse.stream(sql))
    assert str(err.value).startswith("warehouse 'demo' (duckdb): query failed: ")
    assert "read-only" in str(err.value)
    assert _count(duckdb_path) == 3


def test_syntax_error_is_a_query_error(duckdb_config: DuckDBWarehouseConfig) -> None:
    with open_warehouse("demo", duckdb_config) as warehouse, pytest.raises(WarehouseQueryError) as err:
        list(warehouse.stream("SELEC id FROM people"))
    assert str(err.value).startswith("warehouse 'demo' (duckdb): query failed: Parser Error: syntax error")
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_error_while_iterating_is_a_query_error(duckdb_config: DuckDBWarehouseConfig) -> None:
    sql = "SELECT CASE WHEN i < 150000 THEN i ELSE error('boom at ' || i) END AS i FROM range(300000) t(i)"
    with open_warehouse("demo", duckdb_config) as warehouse:
        with pytest.raises(
            WarehouseQueryError, match=r"^warehouse 'demo' \(duckdb\): query failed: .*boom at"
        ):
            for _ in warehouse.stream(sql, batch_rows=10_000):
                pass
        # the connection is still usable afterwards
        assert next(warehouse.stream("SELECT count(*) AS n FROM people")).to_pylist() == [{"n": 3}]


def test_missing_file_is_a_connection_error(tmp_path: Path) -> None:
    config = DuckDBWarehouseConfig(type="duckdb", path=str(tmp_path / "nope.duckdb"))
    with open_warehouse("demo", config) as warehouse, pytest.raises(WarehouseConnectionError) as err:
        list(warehouse.stream("SELECT 1"))
    assert str(err.value).startswith("warehouse 'demo' (duckdb): connection failed: ")
    assert "nope.duckdb" in str(err.value)
    assert not (tmp_path / "nope.duckdb").exists()


def test_relative_path_resolves_against_the_current_directory(
    duckdb_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(duckdb_path.parent.parent)
    config = DuckDBWarehouseConfig(type="duckdb", path=f"{duckdb_path.parent.name}/{duckdb_path.name}")
    with open_warehouse("demo", config) as warehouse:
        assert next(warehouse.stream("SELECT count(*) AS n FROM people")).to_pylist() == [{"n": 3}]


def test_in_memory_database_streams() -> None:
    config = DuckDBWarehouseConfig(type="duckdb", path=":memory:")
    with open_warehouse("mem", config) as warehouse:
        batches = list(warehouse.stream("SELECT i FROM range(7) t(i)", batch_rows=3))
    assert [b.num_rows for b in batches] == [3, 3, 1]


@pytest.mark.parametrize("batch_rows", [0, -1, 2.5, True])
def test_batch_rows_must_be_a_positive_integer(
    duckdb_config: DuckDBWarehouseConfig, batch_rows: object
) -> None:
    with open_warehouse("demo", duckdb_config) as warehouse, pytest.raises(ValueError, match="batch_rows"):
        warehouse.stream("SELECT 1", batch_rows=batch_rows)  # type: ignore[arg-type]
