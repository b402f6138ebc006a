"""Campaign operations a marketer runs: reconcile now, list members, remove members (tombstones), add many from a
CSV file, links checked against Salesforce, standing errors reported once. Real simple-salesforce over HTTPS
against the stand-in, a real store, the real CLI."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
from click.testing import CliRunner, Result

from conversion_sync.alerts import webhook
from conversion_sync.alerts.webhook import WEBHOOK_URL_ENV
from conversion_sync.cli import main
from conversion_sync.config import ProjectConfig
from conversion_sync.config.salesforce import SalesforceConfig
from conversion_sync.defs.alerts import alert_sensors
from conversion_sync.defs.campaigns import RECONCILE_ASSET
from conversion_sync.defs.campaigns import build_defs as build_campaign_definitions
from conversion_sync.salesforce.campaigns import get_campaign
from conversion_sync.salesforce.client import ENV_VARS, SalesforceSettings
from conversion_sync.store.contact_store import ContactStore
from conversion_sync.store.identity import IdentityMatcher
from conversion_sync_dev.salesforce_standin import Org, StandinServer
from conversion_sync_tests.test_e2e.webhook_receiver import WebhookReceiver
from conversion_sync_tests.test_salesforce.test_campaigns import (
    Harness,
    seed_sf_members,
    setup_campaign,
)

MISSING_CAMPAIGN = "701Kc00000000ZZ"


@pytest.fixture
def sf_env(standin: StandinServer, standin_org: Org, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """SALESFORCE_* pointing the CLI at the stand-in."""
    env = {
        "SALESFORCE_USERNAME": standin.username,
        "SALESFORCE_PASSWORD": standin.password,
        "SALESFORCE_LOGIN_URL": standin.url,
        "SALESFORCE_SECURITY_TOKEN": standin.security_token,
        "SALESFORCE_CA_BUNDLE": str(standin.ca_path),
    }
    for var in ENV_VARS.values():
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    return env


@pytest.fixture
def h(
    store_url: str, standin_org: Org, salesforce_resource: SalesforceSettings, sf_env: dict[str, str]
) -> Harness:
    return Harness(standin_org, ContactStore(url=store_url), salesforce_resource)


def cli(*args: str, ok: bool = True) -> Result:
    result = CliRunner().invoke(main, ["campaigns", *args])
    if ok:
        assert result.exit_code == 0, result.output
    else:
        assert result.exit_code != 0, result.output
    return result


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- links ------------------------------------------------------------------------------------------------


def test_a_link_to_a_campaign_that_does_not_exist_is_refused(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    [sf_id] = h.org.seed("Campaign", [{"Name": "Real"}])
    cli("type", "create", "Mail", "--status", "Sent")
    refused = cli(
        "create",
        "Ghost",
        "--type",
        "Mail",
        "--link",
        "existing",
        "--salesforce-id",
        MISSING_CAMPAIGN,
        ok=False,
    )
    assert "does not exist" in refused.output and MISSING_CAMPAIGN in refused.output
    assert "nothing was linked" in refused.output
    assert h.execute("SELECT count(*) FROM campaigns") == 0
    cli("create", "Local", "--type", "Mail")
    refused = cli("link", "Local", "existing", MISSING_CAMPAIGN, ok=False)
    assert "does not exist" in refused.output
    assert h.execute("SELECT salesforce_link FROM campaigns WHERE name = 'Local'") == "none"
    assert "linked to Salesforce Campaign" in cli("link", "Local", "existing", sf_id).output

    # Salesforce unreachable: said so, nothing linked; --no-check links all the same
    cli("create", "Other", "--type", "Mail")
    monkeypatch.setenv("SALESFORCE_LOGIN_URL", f"https://127.0.0.1:{closed_port()}")
    unreachable = cli("link", "Other", "existing", MISSING_CAMPAIGN, ok=False)
    assert "could not be reached" in unreachable.output and "--no-check" in unreachable.output
    assert h.execute("SELECT salesforce_link FROM campaigns WHERE name = 'Other'") == "none"
    for var in ENV_VARS.values():
        monkeypatch.delenv(var, raising=False)
    not_configured = cli("link", "Other", "existing", MISSING_CAMPAIGN, ok=False)
    assert "Salesforce is not configured" in not_configured.output
    assert (
        "linked to Salesforce Campaign"
        in cli("link", "Other", "existing", MISSING_CAMPAIGN, "--no-check").output
    )


def test_list_shows_a_campaign_deleted_in_salesforce_and_its_error_is_reported_once(h: Harness) -> None:
    sf_id = setup_campaign(h, "Spring", ["Sent"])
    assert sf_id
    setup_campaign(h, "Autumn", ["Sent"])
    listing = cli("list").output
    assert "BROKEN" not in listing
    h.org.delete("Campaign", sf_id)
    listing = cli("list").output
    [spring] = [line for line in listing.splitlines() if line.startswith("Spring")]
    assert "BROKEN" in spring and "not found in Salesforce" in spring
    assert "BROKEN" not in next(line for line in listing.splitlines() if line.startswith("Autumn"))

    first = cli("reconcile", ok=False).output  # exit 1: a campaign failed
    assert "campaign 'Spring'" in first and "error: " in first and "was not found" in first
    again = cli("reconcile", ok=False).output
    assert "error (reported before): " in again
    [error] = h.rows("SELECT code, times_seen FROM campaign_member_errors")
    assert error == {"code": "salesforce_campaign_not_found", "times_seen": 2}
    with h.store.begin() as conn:
        autumn = get_campaign(conn, "Autumn")
    assert autumn.last_run_status == "reconciled" and autumn.salesforce_missing_since is None

    # linked anew to a campaign that exists: the broken mark goes
    [fresh] = h.org.seed("Campaign", [{"Name": "Spring again"}])
    cli("link", "Spring", "existing", fresh)
    assert "BROKEN" not in cli("list", "--offline").output


def test_dagster_reconciles_one_campaign_from_run_config_and_a_standing_failure_keeps_failing(
    h: Harness,
) -> None:
    setup_campaign(h, "One", ["Sent"])
    setup_campaign(h, "Two", ["Sent"])
    contacts = h.store_contacts([("one@example.com", None, None), ("two@example.com", None, None)])
    now = datetime.now(UTC)
    h.store_members("One", [(contacts[0], "Sent", now)])
    h.store_members("Two", [(contacts[1], "Sent", now)])
    defs = build_campaign_definitions(SalesforceConfig(api_reserve=0), h.resource)
    resources = {"contact_store": ContactStore(), "identity": IdentityMatcher(), "salesforce": h.resource}

    def materialize(campaign: str | None = None) -> dg.ExecuteInProcessResult:
        config = {"ops": {RECONCILE_ASSET: {"config": {"campaign": campaign}}}} if campaign else None
        return dg.materialize(defs.assets, resources=resources, run_config=config, raise_on_error=False)

    result = materialize("Two")
    assert result.success
    [materialization] = result.asset_materializations_for_node(RECONCILE_ASSET)
    [row] = materialization.metadata["campaigns"].value.records  # type: ignore[attr-defined]
    assert row.data["campaign"] == "Two" and row.data["pushed"] == 1
    assert h.execute("SELECT last_run_status FROM campaigns WHERE name = 'One'") is None
    unknown = materialize("Three")
    assert not unknown.success
    assert "unknown campaign 'Three'" in str(unknown.get_step_failure_events()[0].event_specific_data.error)

    with h.store.begin() as conn:
        conn.exec_driver_sql(
            f"UPDATE campaigns SET salesforce_campaign_id = '{MISSING_CAMPAIGN}AAA' WHERE name = 'One'"
        )
    assert not materialize().success  # a new failure fails the run (and alerts)
    standing = materialize()
    assert not standing.success  # the same failure again: still failed (alerted once, see test_alerts_once…)
    [failure] = standing.get_step_failure_events()
    data = failure.step_failure_data.user_failure_data
    assert data is not None and "(standing, reported before)" in str(data.description)
    metadata = {k: getattr(v, "value", v) for k, v in data.metadata.items()}
    assert metadata["campaigns_failed"] == 1 and metadata["standing_errors"] == 1 and metadata["errors"] == 0
    assert metadata["failure_kind"] == "campaigns_failed"
    assert h.execute("SELECT last_run_status FROM campaigns WHERE name = 'Two'") == "reconciled"


def test_alerts_once_per_standing_campaign_error_and_again_when_it_changes_or_returns(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through a real instance and the failure-alert sensor: a broken campaign fails every run, but is alerted
    once; fixed, the run succeeds; broken again it is alerted again, and a changed error text is a new alert.
    A run that fails for another reason (Salesforce unreachable) is alerted whatever the campaign errors."""
    setup_campaign(h, "One", ["Sent"])
    [real] = h.org.seed("Campaign", [{"Name": "Real"}])
    defs = build_campaign_definitions(SalesforceConfig(api_reserve=0), h.resource)
    resources = {"contact_store": ContactStore(), "identity": IdentityMatcher(), "salesforce": h.resource}
    [sensor] = [
        s for s in alert_sensors(ProjectConfig(directory=Path("."))) if s.name == "alert_on_run_failure"
    ]
    webhook.forget_failed_endpoints()
    with dg.instance_for_test() as instance, WebhookReceiver() as receiver:
        monkeypatch.setenv(WEBHOOK_URL_ENV, receiver.url)
        cursor: list[str | None] = [None]

        def tick() -> None:
            context = dg.build_sensor_context(
                instance=instance, cursor=cursor[0], resources={"contact_store": ContactStore()}
            )
            data = sensor.evaluate_tick(context)
            assert [r.error for r in data.dagster_run_reactions or [] if r.error is not None] == []
            cursor[0] = data.cursor

        def run(salesforce_id: str, resource: SalesforceSettings = h.resource) -> bool:
            with h.store.begin() as conn:
                conn.exec_driver_sql(
                    "UPDATE campaigns SET salesforce_campaign_id = %s WHERE name = 'One'", (salesforce_id,)
                )
            result = dg.materialize(
                defs.assets,
                resources={**resources, "salesforce": resource},
                instance=instance,
                raise_on_error=False,
            )
            tick()
            return result.success

        tick()  # the first tick places the cursor
        alerted = lambda: [r.json["error"] for r in receiver.received]  # noqa: E731
        broken, other = f"{MISSING_CAMPAIGN}AAA", "701Kc00000000YYAAA"
        assert not run(broken) and len(alerted()) == 1 and broken in alerted()[0]
        assert not run(broken) and not run(broken) and len(alerted()) == 1  # standing: failed, not re-alerted
        assert not run(other) and len(alerted()) == 2 and other in alerted()[1]  # another error text
        assert not run(other) and len(alerted()) == 2
        assert run(real) and len(alerted()) == 2  # fixed: a green run
        assert not run(other) and len(alerted()) == 3  # back after a success: alerted again
        unreachable = h.resource.model_copy(update={"login_url": f"https://127.0.0.1:{closed_port()}"})
        assert not run(other, unreachable) and len(alerted()) == 4  # not a campaign failure: alerted
        assert [r.json["event"] for r in receiver.received] == ["run_failed"] * 4
    webhook.forget_failed_endpoints()


# -- remove-member and tombstones -----------------------------------------------------------------------------


def pushed_campaign(h: Harness, name: str = "Drip", people: int = 3) -> tuple[str, list[str]]:
    """A linked campaign whose `people` members (a0@… a{n}@…) are reconciled; returns the Salesforce campaign
    and their Salesforce Contact ids."""
    sf_id = setup_campaign(h, name, ["Sent", "Opened"])
    assert sf_id
    h.org.seed("CampaignMemberStatus", [{"CampaignId": sf_id, "Label": "Opened"}])
    contacts = h.org.seed(
        "Contact", [{"LastName": f"A{i}", "Email": f"a{i}@example.com"} for i in range(people)]
    )
    seed_sf_members(h, sf_id, [(c, "Sent", datetime.now(UTC) - timedelta(hours=1)) for c in contacts])
    assert h.reconcile().complete
    assert len(h.store_side(name)) == people
    return sf_id, contacts


def test_a_removed_member_is_deleted_in_salesforce_and_does_not_come_back(h: Harness) -> None:
    sf_id, people = pushed_campaign(h)
    out = cli("remove-member", "Drip", "A0@Example.com ", "--later").output
    assert "a0@example.com: removed from 'Drip' (was Sent)" in out and "next reconciliation" in out
    assert people[0] in h.salesforce_side(sf_id)  # still there until the reconciliation
    removed = cli("members", "Drip", "--removed").output
    assert "removed" in removed and "Salesforce member deleted at the next reconciliation" in removed

    outcome = h.reconcile()
    c = outcome.campaigns[0].counts
    assert (c.removed_in_salesforce, c.imported, c.errors) == (1, 0, 0)
    assert people[0] not in h.salesforce_side(sf_id) and people[0] not in h.store_side("Drip")
    h.reconcile()  # and it stays gone
    assert people[0] not in h.store_side("Drip") and len(h.salesforce_side(sf_id)) == 2

    # removed now (Salesforce reachable): deleted at once, the next reconciliation has nothing to do
    out = cli("remove-member", "Drip", "a1@example.com").output
    assert "deleted in Salesforce: CampaignMember" in out
    assert people[1] not in h.salesforce_side(sf_id)
    again = h.reconcile().campaigns[0].counts
    assert (again.removed_in_salesforce, again.imported) == (0, 0)
    assert set(h.store_side("Drip")) == set(h.salesforce_side(sf_id)) == {people[2]}
    assert cli("remove-member", "Drip", "nobody@example.com", ok=False).output.count("is not a member") == 1


def test_a_member_re_added_in_salesforce_after_its_removal_wins(h: Harness) -> None:
    sf_id, people = pushed_campaign(h)
    cli("remove-member", "Drip", "a0@example.com")
    cli("remove-member", "Drip", "a1@example.com", "--later")
    h.org.advance_clock(5)
    # later, someone adds a0 again in Salesforce, and edits a1's member (not deleted yet) after the removal
    [readded] = h.org.seed(
        "CampaignMember", [{"CampaignId": sf_id, "ContactId": people[0], "Status": "Opened"}]
    )
    [a1_member] = h.org.query(f"SELECT Id FROM CampaignMember WHERE ContactId = '{people[1]}'")
    h.org.update("CampaignMember", a1_member["Id"], {"Status": "Opened"})
    c = h.reconcile().campaigns[0].counts
    assert (c.imported, c.removed_in_salesforce) == (2, 0)
    assert h.store_side("Drip") == h.salesforce_side(sf_id)
    assert h.store_side("Drip")[people[0]] == "Opened" and h.store_side("Drip")[people[1]] == "Opened"
    assert h.execute("SELECT count(*) FROM campaign_member_tombstones") == 0
    assert (
        h.execute(
            "SELECT salesforce_member_id FROM campaign_members m JOIN contacts c ON c.id = m.contact_id "
            "WHERE c.email = 'a0@example.com'"
        )
        == readded
    )


def test_a_member_re_added_in_the_store_clears_its_tombstone(h: Harness) -> None:
    sf_id, people = pushed_campaign(h)
    cli("remove-member", "Drip", "a2@example.com")
    assert people[2] not in h.salesforce_side(sf_id)
    cli("add-member", "Drip", "a2@example.com", "--status", "Opened")
    assert h.execute("SELECT count(*) FROM campaign_member_tombstones") == 0
    c = h.reconcile().campaigns[0].counts
    assert c.pushed == 1 and h.salesforce_side(sf_id)[people[2]] == "Opened"
    assert h.store_side("Drip") == h.salesforce_side(sf_id)


# -- members ----------------------------------------------------------------------------------------------------


def test_members_lists_ids_and_pushed_pending_error(h: Harness) -> None:
    sf_id, people = pushed_campaign(h, people=2)
    cli("add-member", "Drip", "new@example.com")  # pending: not in Salesforce yet
    cli("add-member", "Drip", "a1@example.com", "--status", "Opened")  # pending: status changed
    lines = cli("members", "Drip").output.splitlines()
    assert lines[0].split() == [
        "EMAIL",
        "STATUS",
        "SALESFORCE",
        "PERSON",
        "CAMPAIGN",
        "MEMBER",
        "STATE",
        "DETAIL",
    ]
    by_email = {line.split()[0]: line for line in lines[1:]}
    [a0_member] = h.org.query(f"SELECT Id FROM CampaignMember WHERE ContactId = '{people[0]}'")
    assert (
        f"Contact {people[0]}" in by_email["a0@example.com"] and a0_member["Id"] in by_email["a0@example.com"]
    )
    assert "pushed" in by_email["a0@example.com"]
    assert "pending" in by_email["a1@example.com"] and "status changed" in by_email["a1@example.com"]
    assert "pending" in by_email["new@example.com"] and "not in Salesforce yet" in by_email["new@example.com"]

    # Salesforce's campaign loses 'Opened': a1's change cannot be pushed: error, with Salesforce's reason
    [opened] = h.org.query(
        f"SELECT Id FROM CampaignMemberStatus WHERE CampaignId = '{sf_id}' AND Label = 'Opened'"
    )
    h.org.delete("CampaignMemberStatus", opened["Id"])
    h.reconcile()
    by_email = {line.split()[0]: line for line in cli("members", "Drip").output.splitlines()[1:]}
    assert (
        "error" in by_email["a1@example.com"]
        and "status_not_in_salesforce_campaign" in by_email["a1@example.com"]
    )
    assert "pushed" in by_email["new@example.com"] and "Lead 00Q" in by_email["new@example.com"]
    assert "unknown campaign 'Nope'" in cli("members", "Nope", ok=False).output


# -- add-members ------------------------------------------------------------------------------------------------


def test_add_members_from_a_messy_csv_keeps_the_good_rows(h: Harness, tmp_path: Path) -> None:
    setup_campaign(h, "Fair", ["Registered", "Attended"], link="none")
    cli("add-member", "Fair", "old@example.com", "--status", "Registered")
    cli("add-member", "Fair", "gone@example.com")
    cli("remove-member", "Fair", "gone@example.com")
    text = (
        "\ufeffEmail,Status\r\n"
        "ada@example.com,Attended\r\n"
        "\r\n"
        " Bob@Example.com ,registered\r\n"
        "not-an-email,Attended\r\n"
        "carol@example.com,Maybe\r\n"
        ",Attended\r\n"
        "bob@example.com,Attended\r\n"
        "   \r\n"
        "old@example.com,Attended\r\n"
        "dave@example.com\r\n"
        "gone@example.com,Registered\r\n"
        '"eve@example.com","Attended"\r\n'
    )
    path = tmp_path / "members.csv"
    path.write_bytes(text.encode("utf-8"))
    result = cli("add-members", "Fair", "--csv", str(path))
    out = result.output
    assert "members.csv:5: 'not-an-email' is not an email address" in out
    assert (
        "members.csv:6: status 'Maybe' is not allowed in campaign Fair" in out
        and "allowed: Registered, Attended" in out
    )
    assert "members.csv:7: no email" in out
    assert "members.csv:4: Bob@Example.com is listed again on line 8, which wins" in out
    assert "5 added, 1 status changed, 0 unchanged, 4 line(s) with problems of 10" in out
    members = dict(
        (r["email"], r["status"])
        for r in h.rows(
            "SELECT c.email, m.status FROM campaign_members m JOIN contacts c ON c.id = m.contact_id"
        )
    )
    assert members == {
        "ada@example.com": "Attended",
        "bob@example.com": "Attended",
        "old@example.com": "Attended",
        "dave@example.com": "Registered",
        "gone@example.com": "Registered",
        "eve@example.com": "Attended",
    }
    assert h.execute("SELECT count(*) FROM campaign_member_tombstones") == 0
    # the same file again: nothing changes
    assert "0 added, 0 status changed, 6 unchanged" in cli("add-members", "Fair", "--csv", str(path)).output

    # without a header: email, status; a line with more columns is a problem, the rest go in
    bare = tmp_path / "bare.csv"
    bare.write_text("fay@example.com\ngus@example.com,Attended,extra\n")
    out = cli("add-members", "Fair", "--csv", str(bare)).output
    assert "bare.csv:2: 3 columns; expected email[,status]" in out and "1 added" in out
    assert "unknown campaign" in cli("add-members", "Nope", "--csv", str(bare), ok=False).output


def test_add_members_10000_rows_in_one_command(h: Harness, tmp_path: Path) -> None:
    setup_campaign(h, "Big", ["Sent", "Opened"], link="none")
    path = tmp_path / "big.csv"
    lines = ["email,status", *(f"user{i}@example.com,{'Opened' if i % 3 else 'Sent'}" for i in range(10_000))]
    path.write_text("\n".join(lines) + "\n")
    started = time.perf_counter()
    out = cli("add-members", "Big", "--csv", str(path)).output
    seconds = time.perf_counter() - started
    print(f"add-members: 10,000 rows in {seconds:.2f}s")
    assert "10000 added" in out and "10000 new contact(s)" in out
    assert h.execute("SELECT count(*) FROM campaign_members") == 10_000
    assert seconds < 30


# -- reconcile now --------------------------------------------------------------------------------------------


def test_reconcile_one_campaign_or_all_from_the_cli(h: Harness) -> None:
    setup_campaign(h, "A", ["Sent"])
    setup_campaign(h, "B", ["Sent"])
    setup_campaign(h, "Local", ["Sent"], link="none")
    cli("add-member", "A", "x@example.com")
    cli("add-member", "B", "y@example.com")
    out = cli("reconcile", "A").output
    assert "campaign 'A'" in out and "campaign 'B'" not in out
    assert "pushed" in out and "leads created" in out
    assert h.execute("SELECT last_run_status FROM campaigns WHERE name = 'A'") == "reconciled"
    assert h.execute("SELECT last_run_status FROM campaigns WHERE name = 'B'") is None
    out = cli("reconcile").output
    assert "campaign 'A'" in out and "campaign 'B'" in out
    assert "is not linked to Salesforce" in cli("reconcile", "Local", ok=False).output
    assert "unknown campaign 'Z'" in cli("reconcile", "Z", ok=False).output


@pytest.fixture
def no_salesforce(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for var in ENV_VARS.values():
        monkeypatch.delenv(var, raising=False)
    yield


def test_reconcile_without_salesforce_says_so(store_url: str, no_salesforce: None) -> None:
    cli("type", "create", "T", "--status", "Sent")
    cli("create", "C", "--type", "T", "--link", "create")
    assert "Salesforce is not configured" in cli("reconcile", ok=False).output
