"""`conversion-sync status`: the warehouse syncs, then the Salesforce poll, the push and each campaign, after
real runs (a warehouse sync, a poll and reconciliations over HTTPS against the stand-in)."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner

from conversion_sync.cli import main
from conversion_sync.salesforce.client import ENV_VARS
from conversion_sync_dev.salesforce_standin import Org
from conversion_sync_tests.conftest import DEMO_CONFIG
from conversion_sync_tests.test_salesforce.conftest import (  # noqa: F401  (fixtures)
    salesforce_resource,
    standin,
    standin_org,
)
from conversion_sync_tests.test_salesforce.test_campaign_ops import sf_env  # noqa: F401  (fixture)
from conversion_sync_tests.test_syncs.conftest import SyncWorld


@pytest.fixture
def world(tmp_path, store_url: str) -> SyncWorld:  # type: ignore[no-untyped-def]
    world = SyncWorld(tmp_path, store_url)
    world.warehouse(
        "CREATE TABLE users AS SELECT * FROM (VALUES ('ann@example.com', 'Ann')) v(email, first_name)"
    )
    world.add_sync("users", "SELECT * FROM users")
    world.project()
    shutil.copy(DEMO_CONFIG / "salesforce.yaml", world.dir / "salesforce.yaml")
    return world


def invoke(world: SyncWorld, *args: str, ok: bool = True) -> str:
    result = CliRunner().invoke(main, ["--config", str(world.dir), *args])
    assert (result.exit_code == 0) == ok, result.output
    return result.output


def salesforce_rows(output: str) -> dict[str, list[str]]:
    """The Salesforce table of `status`: first column → the other columns (split on 2+ spaces)."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("SALESFORCE"))
    header = lines[start]
    starts = [header.index(name) for name in ("STATE", "LAST RUN", "COUNTS")]
    rows = {}
    for line in lines[start + 1 :]:
        if not line.startswith(("poll", "push", "campaign ")):
            break
        cells = [
            line[: starts[0]],
            line[starts[0] : starts[1]],
            line[starts[1] : starts[2]],
            line[starts[2] :],
        ]
        rows[cells[0].strip()] = [c.strip() for c in cells[1:]]
    return rows


def test_status_without_salesforce_says_not_configured_and_never_run(
    world: SyncWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ENV_VARS.values():
        monkeypatch.delenv(var, raising=False)
    invoke(world, "campaigns", "type", "create", "News", "--status", "Sent")
    invoke(world, "campaigns", "create", "Local", "--type", "News")
    invoke(world, "campaigns", "create", "Later", "--type", "News", "--link", "create")
    out = invoke(world, "status")
    assert out.splitlines()[0].split()[:3] == ["SYNC", "STATE", "LAST"]
    assert any(line.startswith("users") and "pending" in line for line in out.splitlines())
    rows = salesforce_rows(out)
    assert rows["poll"] == ["not configured", "-", "-"]
    assert rows["push"] == ["not configured", "-", "-"]
    assert rows["campaign Local"] == ["not linked", "-", "members 0"]
    assert rows["campaign Later"] == ["not configured", "-", "members 0"]
    assert "Salesforce is not configured here" in out


def test_status_after_real_runs_shows_poll_push_and_each_campaign(
    world: SyncWorld,
    standin_org: Org,  # noqa: F811
    sf_env: dict[str, str],  # noqa: F811
) -> None:
    rows = salesforce_rows(invoke(world, "status"))
    assert rows["poll"] == ["never run", "-", "-"] and rows["push"][0] == "never run"

    invoke(world, "run", "users")
    hour_ago = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S.000+0000")
    people = standin_org.seed(  # modified before the poll's upper bound (now minus its lag)
        "Contact",
        [
            {
                "LastName": f"P{i}",
                "Email": f"p{i}@example.com",
                "LastModifiedDate": hour_ago,
                "SystemModstamp": hour_ago,
            }
            for i in range(3)
        ],
    )
    invoke(world, "salesforce", "poll")
    [good, gone] = standin_org.seed("Campaign", [{"Name": "Webinar"}, {"Name": "Gone"}])
    standin_org.seed(
        "CampaignMember",
        [
            {
                "CampaignId": good,
                "ContactId": p,
                "Status": "Sent",
                "LastModifiedDate": hour_ago,
            }
            for p in people
        ],
    )
    invoke(world, "campaigns", "type", "create", "News", "--status", "Sent", "--status", "Opened")
    invoke(
        world,
        "campaigns",
        "create",
        "Webinar",
        "--type",
        "News",
        "--link",
        "existing",
        "--salesforce-id",
        good,
    )
    invoke(
        world, "campaigns", "create", "Gone", "--type", "News", "--link", "existing", "--salesforce-id", gone
    )
    invoke(world, "campaigns", "add-member", "Webinar", "new@example.com", "--status", "Sent")
    invoke(world, "campaigns", "add-member", "Webinar", "p0@example.com", "--status", "Opened")  # not in SF
    standin_org.delete("Campaign", gone)
    invoke(world, "campaigns", "reconcile", ok=False)  # Gone fails

    out = invoke(world, "status")
    print(out)
    rows = salesforce_rows(out)
    state, when, counts = rows["poll"]
    assert state == "healthy" and when.startswith(str(datetime.now(UTC).year)) and "read 3" in counts
    assert rows["push"][0] == "never run"
    state, when, counts = rows["campaign Webinar"]
    assert state == "healthy" and when != "-"
    assert counts.startswith("members 4") and "imported 2" in counts and "pushed 1" in counts
    assert "errors 1" in counts  # Opened is not a status of the Salesforce campaign
    assert rows["campaign Gone"][0] == "broken link"
    assert any(line.startswith("campaign Gone broken link: Salesforce campaign") for line in out.splitlines())
    assert any(line.startswith("users") and "healthy" in line for line in out.splitlines())

    # the same problems again: standing, not counted as new errors
    invoke(world, "campaigns", "reconcile", ok=False)
    counts = salesforce_rows(invoke(world, "status"))["campaign Webinar"][2]
    assert "errors" not in counts.replace("standing errors", "") and "standing errors 1" in counts
