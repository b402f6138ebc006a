"""End to end: `dg dev` (as make dev runs it) with its daemon, runs through the GraphQL client, a schedule tick, alerts, the browser."""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from conversion_sync.alerts.webhook import WEBHOOK_URL_ENV
from conversion_sync.config.loader import RESERVED_FILES

from .harness import (
    LOCATION,
    REPO_ROOT,
    REPOSITORY,
    DagsterDev,
    chromium_path,
    dagster_dev,
    page_errors,
    page_text,
    render_page,
)
from .webhook_receiver import Received, WebhookReceiver

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

ARTIFACTS = REPO_ROOT / "test-artifacts"
GOOD_SYNC, BROKEN_SYNC, MINUTELY_SYNC = "contacts_from_users", "broken_sql", "minutely_products"
STALE_SYNC = "stale_products"
"""Enabled, every minute; its schedule is stopped (as someone would in the UI) after one run: it turns late."""

ENTRIES = """label __typename
  ... on IntMetadataEntry { intValue }
  ... on FloatMetadataEntry { floatValue }
  ... on TextMetadataEntry { text }
  ... on BoolMetadataEntry { boolValue }
  ... on MarkdownMetadataEntry { mdStr }
  ... on TableMetadataEntry { table { records schema { columns { name } } } }"""

RUN_QUERY = f"""query($runId: ID!) {{ runOrError(runId: $runId) {{ __typename ... on Run {{
  status jobName stepStats {{ stepKey status }}
  eventConnection(afterCursor: null) {{ events {{ __typename
    ... on MaterializationEvent {{ assetKey {{ path }} metadataEntries {{ {ENTRIES} }} }}
    ... on ExecutionStepFailureEvent {{ stepKey error {{ message }} }}
    ... on RunFailureEvent {{ message }}
    ... on AssetCheckEvaluationEvent {{ evaluation {{ checkName success metadataEntries {{ {ENTRIES} }} }} }}
  }} }} }} }} }}"""

ASSET_QUERY = f"""query($key: AssetKeyInput!) {{
  assetNodeOrError(assetKey: $key) {{ __typename ... on AssetNode {{
    description groupName kinds jobNames opNames
    tags {{ key value }}
    owners {{ __typename ... on UserAssetOwner {{ email }} ... on TeamAssetOwner {{ team }} }}
    metadataEntries {{ {ENTRIES} }}
    targetingInstigators {{ __typename ... on Schedule {{ name cronSchedule scheduleState {{ status }} }} }}
  }} }}
  assetOrError(assetKey: $key) {{ ... on Asset {{ assetMaterializations(limit: 1) {{ runId }} }} }}
}}"""

SCHEDULE_QUERY = """query($selector: ScheduleSelector!) { scheduleOrError(scheduleSelector: $selector) {
  __typename ... on Schedule { cronSchedule scheduleState { status
    ticks(limit: 10) { status timestamp runIds skipReason error { message } } } } } }"""

STOP_SCHEDULE = """mutation($id: String!) { stopRunningSchedule(id: $id) {
  __typename ... on ScheduleStateResult { scheduleState { status } } ... on PythonError { message } } }"""

SCHEDULE_ID = """query($selector: ScheduleSelector!) { scheduleOrError(scheduleSelector: $selector) {
  __typename ... on Schedule { id scheduleState { ticks(limit: 5) { runIds } } } } }"""

START_SCHEDULE = """mutation($selector: ScheduleSelector!) { startSchedule(scheduleSelector: $selector) {
  __typename ... on ScheduleStateResult { scheduleState { status } } ... on PythonError { message } } }"""


def e2e_config(base: Path, data_dir: Path) -> Path:
    """The demo config, trimmed to the contacts sync, plus a minutely schedule, a sync with broken SQL, and a
    minutely sync whose schedule is stopped (late_after: 1 minute, so late a minute after its one run).

    The contacts sync's schedule is stopped (enabled: false) so no scheduled run races the launched one, and
    its rejected-row threshold is below the demo's 4 of 504 so the check fails and alerts.
    """
    config = base / "config"
    shutil.copytree(REPO_ROOT / "syncs", config)
    for path in config.glob("*.yaml"):
        if path.name not in RESERVED_FILES and path.name != f"{GOOD_SYNC}.yaml":
            path.unlink()
    (config / "warehouses.yaml").write_text(
        f"warehouses:\n  demo: {{type: duckdb, path: '{data_dir / 'warehouse.duckdb'}'}}\n"
    )
    contacts = yaml.safe_load((config / f"{GOOD_SYNC}.yaml").read_text(encoding="utf-8"))
    contacts.update({"enabled": False, "rejected_rate_threshold": 0.005})
    (config / f"{GOOD_SYNC}.yaml").write_text(yaml.safe_dump(contacts, sort_keys=False, allow_unicode=True))
    (config / f"{MINUTELY_SYNC}.yaml").write_text(
        f"name: {MINUTELY_SYNC}\nwarehouse: demo\ndestination: {{type: custom_objects, object_type: product}}\n"
        'query: SELECT id, name, sku, category, updated_at FROM products\nschedule: cron "* * * * *"\n'
        "enabled: false\n"
    )
    (config / f"{STALE_SYNC}.yaml").write_text(
        f"name: {STALE_SYNC}\ndescription: Products every minute, but its schedule was stopped\nwarehouse: demo\n"
        "destination: {type: custom_objects, object_type: product}\n"
        'query: SELECT id, name, sku, category, updated_at FROM products\nschedule: cron "* * * * *"\n'
        "late_after: 1 minute\n"
    )
    (config / f"{BROKEN_SYNC}.yaml").write_text(
        f"name: {BROKEN_SYNC}\ndescription: SQL that names a table the warehouse does not have\n"
        "warehouse: demo\ndestination: {type: contacts}\nquery: SELECT email FROM missing_table\n"
    )
    return config


@dataclass
class Session:
    dev: DagsterDev
    receiver: WebhookReceiver
    good_run: str
    broken_run: str
    stale_run: str
    statuses: dict[str, str]
    schedule_started_at: float

    def run(self, run_id: str) -> dict[str, Any]:
        run = self.dev.graphql(RUN_QUERY, {"runId": run_id})["runOrError"]
        assert run["__typename"] == "Run", run
        return run


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    """`dg dev` on a free port; the stale sync's schedule stopped; the minutely schedule started; a good, a
    broken and a stale sync's run launched."""
    base = tmp_path_factory.mktemp("e2e")
    config = e2e_config(base, base / "data")
    with (
        WebhookReceiver() as receiver,
        dagster_dev(base, config, extra_env={WEBHOOK_URL_ENV: receiver.url}) as dev,
    ):
        stale = stop_schedule_and_run_once(dev, f"sync_{STALE_SYNC}")
        started = dev.graphql(
            START_SCHEDULE, {"selector": dev.schedule_selector(f"sync_{MINUTELY_SYNC}_schedule")}
        )
        assert started["startSchedule"]["__typename"] == "ScheduleStateResult", started
        schedule_started_at = time.time()
        client = dev.client()
        good = client.submit_job_execution(f"sync_{GOOD_SYNC}", LOCATION, REPOSITORY)
        broken = client.submit_job_execution(f"sync_{BROKEN_SYNC}", LOCATION, REPOSITORY)
        statuses = dev.wait_for_runs([good, broken, stale], timeout=120)
        yield Session(dev, receiver, good, broken, stale, statuses, schedule_started_at)


def stop_schedule_and_run_once(dev: DagsterDev, job: str) -> str:
    """Stop the job's running schedule as someone would in the UI, and launch one run of it: the one its
    schedule may have started already before it was stopped, else a new one."""
    selector = dev.schedule_selector(f"{job}_schedule")
    schedule = dev.graphql(SCHEDULE_ID, {"selector": selector})["scheduleOrError"]
    assert schedule["__typename"] == "Schedule", schedule
    stopped = dev.graphql(STOP_SCHEDULE, {"id": schedule["id"]})["stopRunningSchedule"]
    assert stopped["__typename"] == "ScheduleStateResult", stopped
    assert stopped["scheduleState"]["status"] == "STOPPED"
    ticks = dev.graphql(SCHEDULE_ID, {"selector": selector})["scheduleOrError"]["scheduleState"]["ticks"]
    started = [run for tick in ticks for run in tick["runIds"]]
    return started[0] if started else dev.client().submit_job_execution(job, LOCATION, REPOSITORY)


def entries(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Metadata entries by label → their value."""
    out = {}
    for entry in items:
        value_keys = [k for k in entry if k not in ("label", "__typename")]
        out[entry["label"]] = entry[value_keys[0]] if value_keys else None
    return out


def test_sync_asset_shows_description_kinds_tags_owner_and_schedule(ui: Session) -> None:
    data = ui.dev.graphql(ASSET_QUERY, {"key": {"path": [f"sync_{GOOD_SYNC}"]}})
    node = data["assetNodeOrError"]
    assert node["__typename"] == "AssetNode", node
    assert node["description"].startswith("Users table → contacts")
    assert "FROM users WHERE updated_at > '{{last_sync_time}}'" in node["description"]
    assert node["groupName"] == "warehouse_syncs"
    assert {"duckdb", "postgres"} <= set(node["kinds"])
    tags = {t["key"]: t["value"] for t in node["tags"]}
    assert tags["warehouse"] == "demo" and tags["warehouse_kind"] == "duckdb"
    assert tags["destination"] == "contacts" and tags["mode"] == "upsert"
    assert {o["__typename"]: o.get("email") for o in node["owners"]} == {
        "UserAssetOwner": "growth-data@example.com"
    }
    assert entries(node["metadataEntries"])["schedule"] == "every 15 minutes"
    assert f"sync_{GOOD_SYNC}" in node["jobNames"]
    assert [op.rsplit("_", 1)[-1] for op in node["opNames"]] == ["query", "validate", "write"]
    (schedule,) = [i for i in node["targetingInstigators"] if i["__typename"] == "Schedule"]
    assert schedule["name"] == f"sync_{GOOD_SYNC}_schedule" and schedule["cronSchedule"] == "*/15 * * * *"
    assert schedule["scheduleState"]["status"] == "STOPPED", "enabled: false creates the schedule stopped"
    assert data["assetOrError"]["assetMaterializations"][0]["runId"] == ui.good_run


def test_successful_run_carries_counts_watermarks_and_rejected_preview(ui: Session) -> None:
    assert ui.statuses[ui.good_run] == "SUCCESS", ui.dev.log_tail()
    run = ui.run(ui.good_run)
    steps = {s["stepKey"].rsplit("_", 1)[-1]: s["status"] for s in run["stepStats"]}
    assert {steps["query"], steps["validate"], steps["write"]} == {"SUCCESS"}
    (materialization,) = [
        e for e in run["eventConnection"]["events"] if e["__typename"] == "MaterializationEvent"
    ]
    meta = entries(materialization["metadataEntries"])
    assert (meta["queried"], meta["added"], meta["changed"], meta["unchanged"], meta["rejected"]) == (
        504,
        500,
        0,
        0,
        4,
    )
    assert meta["watermark_used"] == "1970-01-01 00:00:00.000000"
    assert datetime.strptime(meta["next_watermark"], "%Y-%m-%d %H:%M:%S.%f").year >= 2024
    assert all(isinstance(meta[f"duration_{step}_s"], float) for step in ("query", "validate", "write"))
    table = meta["rejected_preview"]
    assert [c["name"] for c in table["schema"]["columns"]] == ["row_key", "column_name", "code", "message"]
    codes = sorted(json.loads(r)["code"] for r in table["records"])
    assert codes == [
        "duplicate_key_in_batch",
        "invalid_field_value",
        "invalid_field_value",
        "missing_required_field",
    ]
    assert f"conversion-sync rejections {GOOD_SYNC} --run {ui.good_run}" in meta["rejected_download"]
    (check,) = [
        e["evaluation"]
        for e in run["eventConnection"]["events"]
        if e["__typename"] == "AssetCheckEvaluationEvent"
    ]
    assert check["checkName"] == "rejected_row_rate" and check["success"] is False
    assert entries(check["metadataEntries"])["threshold"] == 0.005


def test_failed_sync_shows_its_error(ui: Session) -> None:
    assert ui.statuses[ui.broken_run] == "FAILURE"
    run = ui.run(ui.broken_run)
    events = run["eventConnection"]["events"]
    (failure,) = [e for e in events if e["__typename"] == "ExecutionStepFailureEvent"]
    assert failure["stepKey"].endswith(f"{BROKEN_SYNC}_query")
    message = failure["error"]["message"]
    assert "warehouse 'demo' (duckdb): query failed" in message
    assert "missing_table does not exist" in message
    assert any(e["__typename"] == "RunFailureEvent" for e in events)


def test_alert_sensors_post_through_the_daemon(ui: Session) -> None:
    def alert_for(event: str, run_id: str) -> Received | None:
        return ui.receiver.wait_for(
            lambda r: r.json.get("event") == event and r.json.get("run_id") == run_id, 60
        )

    failed = alert_for("run_failed", ui.broken_run)
    assert failed is not None, f"no failure alert; received {[r.json for r in ui.receiver.received]}"
    alert = failed.json
    assert alert["sync"] == BROKEN_SYNC and alert["job"] == f"sync_{BROKEN_SYNC}"
    assert "missing_table does not exist" in alert["error"]
    assert alert["run_url"] == f"{ui.dev.url}/runs/{ui.broken_run}"
    rejected = alert_for("rejected_rows_above_threshold", ui.good_run)
    assert rejected is not None, f"no rejected-rows alert; received {[r.json for r in ui.receiver.received]}"
    assert (rejected.json["rejected"], rejected.json["queried"]) == (4, 504)
    assert ui.receiver.token not in failed.raw.decode() + rejected.raw.decode()


def test_run_pages_render_in_the_browser(ui: Session) -> None:
    if chromium_path() is None:
        pytest.skip("chromium is not installed (make test installs it where apt-get and root are available)")
    ui.dev.set_nux_seen()
    canary = page_text(render_page(f"{ui.dev.url}/runs/00000000-0000-0000-0000-000000000000"))
    assert page_errors(canary), f"the error detector must flag a missing run's page: {canary[:300]}"

    shot = ARTIFACTS / "e2e-run-success.png"
    text = page_text(render_page(f"{ui.dev.url}/runs/{ui.good_run}", screenshot=shot))
    assert page_errors(text) == [], text[:2000]
    assert ui.good_run[:8] in text and "Success" in text, text[:2000]
    assert f"sync_{GOOD_SYNC}" in text
    assert shot.stat().st_size > 20_000, "a rendered page, not a blank one"

    text = page_text(
        render_page(f"{ui.dev.url}/runs/{ui.broken_run}", screenshot=ARTIFACTS / "e2e-run-failure.png")
    )
    assert page_errors(text) == [], text[:2000]
    assert ui.broken_run[:8] in text and "Failure" in text, text[:2000]
    assert re.search(r"missing_table", text), "the run page shows the sync's error"


def test_started_schedule_ticks(ui: Session) -> None:
    """The daemon evaluates the started minutely schedule at the next minute: a tick within ~70 s."""
    selector = ui.dev.schedule_selector(f"sync_{MINUTELY_SYNC}_schedule")
    window_end = ui.schedule_started_at + 75  # the first tick is due at the next minute
    wait_until = window_end + 30  # the daemon records a due tick on its next pass
    while True:
        schedule = ui.dev.graphql(SCHEDULE_QUERY, {"selector": selector})["scheduleOrError"]
        assert schedule["cronSchedule"] == "* * * * *" and schedule["scheduleState"]["status"] == "RUNNING"
        ticks = [
            t for t in schedule["scheduleState"]["ticks"] if t["timestamp"] >= ui.schedule_started_at - 1
        ]
        done = sorted(
            (t for t in ticks if t["status"] in ("SUCCESS", "SKIPPED", "FAILURE")),
            key=lambda t: t["timestamp"],
        )
        if done:
            tick = done[0]
            assert tick["timestamp"] <= window_end, (
                f"first tick came {tick['timestamp'] - ui.schedule_started_at:.0f} s late"
            )
            assert tick["status"] != "FAILURE", tick["error"]
            assert tick["status"] == "SKIPPED" or len(tick["runIds"]) == 1, tick
            return
        if time.time() > wait_until:
            pytest.fail(
                f"no tick within 75 s of starting the schedule; ticks seen: {ticks}\n{ui.dev.log_tail()}"
            )
        time.sleep(2)


LINEAGE_QUERY = """query($key: AssetKeyInput!) { assetNodeOrError(assetKey: $key) { __typename ... on AssetNode {
  groupName isMaterializable dependencyKeys { path } dependedByKeys { path }
  internalFreshnessPolicy { __typename ... on TimeWindowFreshnessPolicy { failWindowSeconds warnWindowSeconds } }
  freshnessStatusInfo { freshnessStatus freshnessStatusMetadata { lastMaterializedTimestamp } } } } }"""


def asset_node(ui: Session, *path: str) -> dict[str, Any]:
    node = ui.dev.graphql(LINEAGE_QUERY, {"key": {"path": list(path)}})["assetNodeOrError"]
    assert node["__typename"] == "AssetNode", node
    return node


@pytest.mark.timeout(480)
def test_asset_graph_shows_upstream_tables_destinations_and_a_late_sync(ui: Session) -> None:
    """The tables a sync reads are upstream of it, the store's tables downstream; a sync that ran once and
    whose schedule is stopped turns late (DEGRADED) once its latest materialization is older than its
    late_after (a minute),
    evaluated by the daemon, and the UI says so."""
    good = asset_node(ui, f"sync_{GOOD_SYNC}")
    assert {"path": ["users"]} in good["dependencyKeys"]
    assert {"path": ["contact_store", "contacts"]} in good["dependedByKeys"]
    table = asset_node(ui, "users")
    assert table["groupName"] == "warehouse_tables" and table["isMaterializable"] is False
    assert {"path": [f"sync_{GOOD_SYNC}"]} in table["dependedByKeys"]
    contacts = asset_node(ui, "contact_store", "contacts")
    assert {"path": ["salesforce_poll"]} in contacts["dependencyKeys"]

    assert ui.statuses[ui.stale_run] == "SUCCESS", ui.dev.log_tail()
    stale = asset_node(ui, f"sync_{STALE_SYNC}")
    assert stale["internalFreshnessPolicy"] == {
        "__typename": "TimeWindowFreshnessPolicy",
        "failWindowSeconds": 60,
        "warnWindowSeconds": None,
    }
    seen = []
    deadline = time.time() + 300
    while True:
        status = asset_node(ui, f"sync_{STALE_SYNC}")["freshnessStatusInfo"]
        seen.append(status["freshnessStatus"])
        if status["freshnessStatus"] == "DEGRADED":
            break
        if time.time() > deadline:
            pytest.fail(f"sync_{STALE_SYNC} never turned late; freshness seen: {seen}\n{ui.dev.log_tail()}")
        time.sleep(5)
    materialized = status["freshnessStatusMetadata"]["lastMaterializedTimestamp"]
    assert time.time() - materialized >= 60, "late only once the fail window has passed"
    assert asset_node(ui, f"sync_{GOOD_SYNC}")["freshnessStatusInfo"] is None, "disabled: nothing expected"

    if chromium_path() is None:
        pytest.skip("chromium is not installed (make test installs it where apt-get and root are available)")
    ui.dev.set_nux_seen()
    # the sync group's lineage: each sync between the tables it reads and the store tables it writes
    text = page_text(
        render_page(
            f"{ui.dev.url}/locations/{LOCATION}/asset-groups/warehouse_syncs",
            screenshot=ARTIFACTS / "asset-graph-lineage.png",
            window=(1600, 1250),
        )
    )
    assert page_errors(text) == [], text[:2000]
    for name in ("users", "products", "missing_table", f"sync_{STALE_SYNC}", "contacts", "product"):
        assert re.search(rf"\b{name}\b", text), f"{name} not in the lineage view: {text[:2000]}"
    text = page_text(
        render_page(f"{ui.dev.url}/assets/sync_{STALE_SYNC}", screenshot=ARTIFACTS / "freshness-late.png")
    )
    assert page_errors(text) == [], text[:2000]
    assert re.search(r"Freshness policy\s+Failed", text), text[:2000]
