"""`make bench` does not rot: its paths run at a tiny scale (cheap), and the whole bench runs in the slow suite."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from bench import data
from bench.__main__ import Line, floor_run, main, render, sync_run
from bench.paths import CONTACTS, EVENTS, write_config
from conversion_sync.store.connection import libpq_url


def test_bench_paths_run_at_tiny_scale(store_url: str, tmp_path: Path) -> None:
    """The minimal floor and `conversion-sync run` as whole processes, first load and rerun, as the bench runs
    them; the report line shows their ratio."""
    warehouse = data.build_warehouse(tmp_path / "w.duckdb", 300, 200, 100)
    new = data.build_increments(warehouse, 300, 200, 100, 50)
    config = write_config(
        tmp_path / "config",
        warehouse,
        {
            "contacts": (CONTACTS, "SELECT * FROM users_300"),
            "events": (EVENTS, f"SELECT * FROM {new['events']}"),
        },
    )
    floor = floor_run("contacts", "floor_contacts", warehouse, "SELECT * FROM users_300", store_url)
    assert floor.result["rows"] == 300 and floor.seconds > 0 and floor.peak_rss_mb > 0
    first = sync_run(config, "contacts", store_url)
    assert first.result["counts"]["added"] == 300
    rerun = sync_run(config, "contacts", store_url)
    assert rerun.result["counts"]["unchanged"] == 300
    with psycopg.connect(libpq_url(store_url)) as conn:
        assert conn.execute("SELECT count(*) FROM floor_contacts").fetchone() == (300,)
        assert conn.execute("SELECT count(*) FROM contacts WHERE email LIKE 'user%'").fetchone() == (300,)
    assert new["contacts"] == "users_new_300_50"
    line = Line("contacts first load", 300, [first], None, [floor])
    assert f"{line.ratio(line.floor):.2f}" in render(line)


@pytest.mark.slow
def test_whole_bench_at_tiny_scale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every path of `make bench`, dlt included when it can be installed, at 1/10,000 of the full sizes."""
    monkeypatch.setenv("CONVERSION_SYNC_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("CONVERSION_STORE_URL", raising=False)
    results = tmp_path / "RESULTS.md"
    assert main(["--scale", "0.0001", "--repeat", "1", "--salesforce", "0", "--results", str(results)]) == 0
    text = results.read_text()
    for path in (
        "contacts first load",
        "rerun, no change",
        "events first load",
        "objects with relationships",
    ):
        assert path in text
    assert "process start-up" in text and "Four contacts syncs" in text
