"""A run that fails midway leaves the watermark where it was, and the next run converges to a clean run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from conversion_sync.store.staging import StagingWriter
from conversion_sync.syncs.runner import SyncFailed
from conversion_sync_tests.conftest import create_database, drop_database

from .conftest import SyncWorld, store_snapshot

ROWS = 40_000  # rows are ~700 bytes, so the result spans several ADBC chunks (~16 MB each)
QUERY = "SELECT email, first_name, seats, updated_at FROM users WHERE updated_at > '{{last_sync_time}}'"


@pytest.fixture
def warehouse_url(pg_base_uri: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    url = create_database(pg_base_uri, "failing_warehouse", template=None)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            f"""CREATE TABLE users AS SELECT 'user' || i || '@example.com' AS email, 'Name' || i || repeat('x', 700) AS first_name,
                   (i % 50)::text AS seats, timestamp '2026-01-01' + i * interval '1 second' AS updated_at
            FROM generate_series(1, {ROWS}) i"""
        )
    monkeypatch.setenv("FAILING_WH_URL", url)
    yield url
    drop_database(pg_base_uri, url, "failing_warehouse")


def test_connection_dropped_after_first_batch(
    world: SyncWorld, warehouse_url: str, pg_base_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.warehouses["wh"] = "{type: postgres, url: {env: FAILING_WH_URL}}"
    world.add_sync("users", QUERY)
    real_append = StagingWriter.append

    def append_then_drop_warehouse(self: StagingWriter, batch) -> None:  # type: ignore[no-untyped-def]
        real_append(self, batch)
        with psycopg.connect(warehouse_url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = 'failing_warehouse' AND pid <> pg_backend_pid()"
            )

    monkeypatch.setattr(StagingWriter, "append", append_then_drop_warehouse)
    runner = world.runner("users")
    with pytest.raises(SyncFailed, match=r"^warehouse 'wh' \(postgres\): query failed: ") as failure:
        runner.query("run-that-fails", batch_rows=5_000)
    assert "terminat" in str(failure.value) or "connection" in str(failure.value)
    assert world.sql("SELECT watermark FROM sync_state") == []
    assert world.scalar("SELECT count(*) FROM contacts") == 0
    assert world.sql("SELECT status FROM sync_runs WHERE run_id = 'run-that-fails'") == [("failed",)]

    monkeypatch.setattr(StagingWriter, "append", real_append)
    retried = world.run("users")
    assert retried.counts["queried"] == ROWS and retried.counts["added"] == ROWS
    assert world.scalar("SELECT count(*) FROM pg_tables WHERE schemaname = 'conversion_staging'") == 0

    clean_url = create_database(pg_base_uri, "clean_store")
    try:
        (tmp_path / "clean").mkdir()
        clean = SyncWorld(tmp_path / "clean", clean_url)
        clean.warehouses["wh"] = world.warehouses["wh"]
        clean.add_sync("users", QUERY)
        clean.run("users")
        assert store_snapshot(world.store_url) == store_snapshot(clean_url)
    finally:
        drop_database(pg_base_uri, clean_url, "clean_store")


def test_failure_during_write_leaves_no_half_written_rows(
    world: SyncWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.warehouse(
        "CREATE TABLE users AS SELECT 'u' || i || '@example.com' AS email, 'N' || i AS first_name FROM range(1000) t(i)"
    )
    world.add_sync("users", "SELECT * FROM users")
    import conversion_sync.syncs.writers as writers

    real = writers.save_fingerprints

    def crash_after_merge(*args) -> None:  # type: ignore[no-untyped-def]
        real(*args)
        raise RuntimeError("disk full (simulated)")

    monkeypatch.setattr(writers, "save_fingerprints", crash_after_merge)
    with pytest.raises(RuntimeError, match="disk full"):
        world.run("users")
    assert world.scalar("SELECT count(*) FROM contacts") == 0
    assert world.scalar("SELECT count(*) FROM sync_fingerprints") == 0
    assert world.sql("SELECT watermark FROM sync_state") == []
    assert world.sql("SELECT status, error FROM sync_runs") == [
        ("failed", "RuntimeError: disk full (simulated)")
    ]
    monkeypatch.setattr(writers, "save_fingerprints", real)
    assert world.run("users").counts["added"] == 1000
