"""README screenshots: run the demo in `dg dev`, sync it, and capture the asset graph, a run and an asset.

    .venv/bin/python -m conversion_sync_tests.test_e2e.screenshots [--out docs/screenshots]

Uses the same harness as the end-to-end test (embedded store and Dagster in a temp dir, a free port,
headless Chromium), so it never touches `.data/` or a running `make dev`.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from conversion_sync_tests.test_e2e.harness import (
    LOCATION,
    REPO_ROOT,
    REPOSITORY,
    DagsterDev,
    HarnessError,
    chromium_path,
    dagster_dev,
    page_errors,
    page_text,
    render_page,
)

FIRST_SYNCS = ("contacts_from_users", "products", "order_events")
"""Launched directly; product_owners and subscriptions follow through their `after:` sensors."""
IN_PROGRESS = ["QUEUED", "NOT_STARTED", "STARTING", "STARTED"]


def demo_config(base: Path) -> Path:
    """A copy of the demo config whose DuckDB warehouse lives in the temp data dir."""
    config = base / "config"
    shutil.copytree(REPO_ROOT / "syncs", config)
    warehouse = base / "data" / "warehouse.duckdb"
    (config / "warehouses.yaml").write_text(f"warehouses:\n  demo: {{type: duckdb, path: '{warehouse}'}}\n")
    return config


def wait_until_idle(dev: DagsterDev, settle_seconds: float, timeout: float) -> None:
    """Until no run is queued or running for `settle_seconds` (sensors may still be launching follow-ups)."""
    deadline = time.monotonic() + timeout
    idle_since: float | None = None
    while time.monotonic() < deadline:
        data = dev.graphql(
            "query($s: [RunStatus!]) { runsOrError(filter: {statuses: $s}) { ... on Runs { results { runId } } } }",
            {"s": IN_PROGRESS},
        )
        busy = bool(data["runsOrError"]["results"])
        if busy:
            idle_since = None
        elif idle_since is None:
            idle_since = time.monotonic()
        elif time.monotonic() - idle_since >= settle_seconds:
            return
        time.sleep(1)
    raise dev.fail(f"runs still in progress after {timeout:.0f}s")


def capture(dev: DagsterDev, path: str, target: Path, must_show: list[str], height: int = 1000) -> None:
    text = page_text(render_page(f"{dev.url}{path}", screenshot=target, window=(1600, height)))
    errors = page_errors(text)
    missing = [needle for needle in must_show if needle not in text]
    if errors or missing:
        raise HarnessError(f"{path}: page errors {errors}, missing {missing}: {text[:1500]}")
    print(f"wrote {target} ({target.stat().st_size // 1024} KiB)", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "screenshots")
    args = parser.parse_args(argv)
    if chromium_path() is None:
        print("chromium is not installed (apt-get install chromium)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="cs-screenshots-") as tmp:
        base = Path(tmp)
        with dagster_dev(base, demo_config(base)) as dev:
            dev.set_nux_seen()
            client = dev.client()
            runs = {
                name: client.submit_job_execution(f"sync_{name}", LOCATION, REPOSITORY)
                for name in FIRST_SYNCS
            }
            statuses = dev.wait_for_runs(list(runs.values()), timeout=180)
            if set(statuses.values()) != {"SUCCESS"}:
                raise dev.fail(f"demo runs did not all succeed: {statuses}")
            wait_until_idle(dev, settle_seconds=20, timeout=240)
            capture(
                dev,
                f"/locations/{LOCATION}/asset-groups/warehouse_syncs",
                args.out / "asset-graph.png",
                [f"sync_{name}" for name in FIRST_SYNCS],
            )
            run_id = runs["contacts_from_users"]
            # the run's steps (query → validate → write) and its materialization with the counts
            capture(
                dev,
                f"/runs/{run_id}?logs=type%3AASSET_MATERIALIZATION",
                args.out / "run.png",
                [run_id[:8], "Success", "queried"],
            )
            # what the UI says about a sync: description, SQL, owner, kinds, tags, job, schedule, counts
            capture(
                dev,
                "/assets/sync_contacts_from_users",
                args.out / "asset.png",
                ["Users table", "growth-data@example.com", "warehouse_kind", "Every 15 minutes"],
                height=1200,
            )
            # the latest materialization in full: counts, watermarks, step durations, rejected rows, download
            capture(
                dev,
                "/assets/sync_contacts_from_users?view=events",
                args.out / "materialization.png",
                [
                    "watermark_used",
                    "rejected_preview",
                    "missing_required_field",
                    "conversion-sync rejections",
                ],
                height=1200,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
