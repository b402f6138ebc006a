"""Memory stays flat: streaming results several times larger than the allowed growth."""

from __future__ import annotations

import os
from pathlib import Path

import duckdb

from conversion_sync.config.warehouses import DuckDBWarehouseConfig, PostgresWarehouseConfig
from conversion_sync.warehouses import open_warehouse

MB = 1024 * 1024


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _stream_and_measure(
    config: DuckDBWarehouseConfig | PostgresWarehouseConfig, sql: str
) -> tuple[int, int, int]:
    """(rows, bytes streamed, peak RSS growth) while consuming and dropping every batch."""
    rows = streamed = growth = 0
    with open_warehouse("big", config) as warehouse:
        before = _rss()
        for batch in warehouse.stream(sql, batch_rows=50_000):
            rows += batch.num_rows
            streamed += batch.nbytes
            growth = max(growth, _rss() - before)
    return rows, streamed, growth


def test_duckdb_memory_is_flat(duckdb_config: DuckDBWarehouseConfig) -> None:
    sql = "SELECT i, repeat('x', 100) || i AS pad FROM range(4000000) t(i)"
    rows, streamed, growth = _stream_and_measure(duckdb_config, sql)
    assert rows == 4_000_000
    assert streamed > 400 * MB
    assert growth < 150 * MB, f"RSS grew {growth / MB:.0f} MB while streaming {streamed / MB:.0f} MB"


def test_postgres_memory_is_flat(postgres_config: PostgresWarehouseConfig) -> None:
    sql = "SELECT i, repeat('x', 100) || i AS pad FROM generate_series(1, 1500000) i"
    rows, streamed, growth = _stream_and_measure(postgres_config, sql)
    assert rows == 1_500_000
    assert streamed > 150 * MB
    assert growth < 120 * MB, f"RSS grew {growth / MB:.0f} MB while streaming {streamed / MB:.0f} MB"


def test_duckdb_does_not_keep_a_streamed_tables_blocks(tmp_path: Path) -> None:
    """DuckDB caches each block of a stored table that a scan reads until its memory_limit (80% of RAM); the
    adapter has it release them as the read goes, so a bigger table does not make a bigger process."""
    path = tmp_path / "big.duckdb"
    with duckdb.connect(str(path)) as con:  # random text: ~100 MB of blocks that do not compress
        con.execute(
            "CREATE TABLE big AS SELECT i, md5(i::VARCHAR) || md5((-i)::VARCHAR) AS pad FROM range(3000000) t(i)"
        )
        stored = con.execute("SELECT total_blocks * block_size FROM pragma_database_size()").fetchone()[0]  # type: ignore[index]
    assert stored > 90 * MB
    config = DuckDBWarehouseConfig(type="duckdb", path=str(path))
    rows, streamed, growth = _stream_and_measure(config, "SELECT * FROM big")
    assert rows == 3_000_000 and streamed > 200 * MB
    assert growth < 100 * MB, f"RSS grew {growth / MB:.0f} MB while streaming a table of {stored / MB:.0f} MB"
    with duckdb.connect(str(path), read_only=True) as con:
        assert (
            con.execute("SELECT current_setting('memory_limit')").fetchone()
            == con.execute("SELECT current_setting('max_memory')").fetchone()
        ), "the memory limit is left as it was"
