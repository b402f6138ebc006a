"""Campaign reconciliation end to end: real simple-salesforce over HTTPS against the stand-in, a real store."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from dagster._core.storage.dagster_run import DagsterRun

from conversion_sync.cli import main
from conversion_sync.config.salesforce import SalesforceConfig
from conversion_sync.defs.campaigns import RECONCILE_ASSET, RECONCILE_JOB, RECONCILE_SCHEDULE
from conversion_sync.defs.campaigns import build_defs as build_campaign_definitions
from conversion_sync.salesforce.budget import ApiBudget
from conversion_sync.salesforce.campaigns import (
    CampaignError,
    add_member,
    create_campaign,
    create_campaign_type,
    get_campaign,
    link_campaign,
    salesforce_campaign_id,
)
from conversion_sync.salesforce.client import ENV_VARS, SalesforceSettings
from conversion_sync.salesforce.reconcile import (
    RECONCILE_LOCK_KEY,
    CampaignReconciler,
    ReconcileInProgress,
    ReconcileOutcome,
)
from conversion_sync.store.contact_store import ContactStore
from conversion_sync.store.identity import IdentityMatcher
from conversion_sync_dev.salesforce_standin import Org, StandinServer, seed_demo

WRITE_KINDS = ("composite", "sobject_create", "sobject_update", "sobject_delete", "ingest")


def sf_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000+0000")


@dataclass
class Harness:
    """A store, the stand-in org and a resource pointed at it; `reconcile()` runs one reconciliation."""

    org: Org
    store: ContactStore
    resource: SalesforceSettings

    def reconcile(self, **kwargs: Any) -> ReconcileOutcome:
        client = self.resource.connect(ApiBudget())
        try:
            return CampaignReconciler(self.store, IdentityMatcher(), client, **kwargs).run()
        finally:
            client.close()

    def rows(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        with self.store.begin() as conn:
            return [dict(r) for r in conn.execute(sa.text(sql), params).mappings()]

    def execute(self, sql: str, **params: Any) -> Any:
        with self.store.begin() as conn:
            return conn.execute(sa.text(sql), params).scalar()

    def store_contacts(self, people: list[tuple[str, str | None, str | None]]) -> list[int]:
        """(email, salesforce id, type) → store contact ids (created or matched by the identity rules)."""
        with self.store.begin() as conn:
            ids, _ = IdentityMatcher().resolve(conn, people)
        return [i for i in ids if i is not None]

    def store_members(self, campaign: str, members: list[tuple[int, str, datetime]]) -> None:
        with self.store.begin() as conn:
            campaign_id = get_campaign(conn, campaign).id
            conn.exec_driver_sql(
                """INSERT INTO campaign_members (campaign_id, contact_id, status, updated_at)
                SELECT %(campaign)s, v.contact_id, v.status, v.updated_at
                FROM unnest(%(contacts)s::bigint[], %(statuses)s::text[], %(times)s::timestamptz[])
                    AS v(contact_id, status, updated_at)""",
                {
                    "campaign": campaign_id,
                    "contacts": [m[0] for m in members],
                    "statuses": [m[1] for m in members],
                    "times": [m[2] for m in members],
                },
            )

    def store_side(self, campaign: str, *, all_linked: bool = True) -> dict[str, str]:
        """Salesforce person id → status of the store campaign's members (`all_linked`: every one has one)."""
        rows = self.rows(
            """SELECT c.salesforce_id, m.status FROM campaign_members m JOIN campaigns k ON k.id = m.campaign_id
            JOIN contacts c ON c.id = m.contact_id WHERE k.name = :name""",
            name=campaign,
        )
        assert not all_linked or all(r["salesforce_id"] for r in rows), (
            "a store member has no Salesforce record"
        )
        return {r["salesforce_id"]: r["status"] for r in rows if r["salesforce_id"]}

    def salesforce_side(self, sf_campaign: str) -> dict[str, str]:
        records = self.org.query(
            f"SELECT ContactId, LeadId, Status FROM CampaignMember WHERE CampaignId = '{sf_campaign}'"
        )
        return {r["ContactId"] or r["LeadId"]: r["Status"] for r in records}

    def member_snapshot(self) -> list[tuple[Any, ...]]:
        return [
            tuple(r.values())
            for r in self.rows(
                "SELECT * FROM campaign_members ORDER BY campaign_id, contact_id",
            )
        ] + [tuple(r.values()) for r in self.rows("SELECT id, updated_at FROM contacts ORDER BY id")]

    def salesforce_writes(self) -> dict[str, int]:
        requests = self.org.stats()["requests"]
        return {k: v for k, v in requests.items() if k.startswith(WRITE_KINDS)}

    def api_calls(self) -> int:
        return int(self.org.stats()["requests"].get("api_requests", 0))


@pytest.fixture
def harness(store_url: str, standin_org: Org, salesforce_resource: SalesforceSettings) -> Harness:
    return Harness(standin_org, ContactStore(url=store_url), salesforce_resource)


def setup_campaign(
    h: Harness, name: str, statuses: list[str], *, link: str = "existing", default: str | None = None
) -> str | None:
    """A store campaign type and campaign; with link `existing`, a new Salesforce Campaign it links to."""
    sf_id = None
    if link == "existing":
        [sf_id] = h.org.seed("Campaign", [{"Name": name}])
    with h.store.begin() as conn:
        create_campaign_type(conn, f"{name} type", statuses, default)
        create_campaign(conn, name, f"{name} type", link, sf_id)
    return sf_id


def seed_sf_members(h: Harness, sf_campaign: str, people: list[tuple[str, str, datetime]]) -> list[str]:
    """(person id, status, LastModifiedDate) → CampaignMember ids."""
    return h.org.seed(
        "CampaignMember",
        [
            {
                "CampaignId": sf_campaign,
                ("ContactId" if person.startswith("003") else "LeadId"): person,
                "Status": status,
                "LastModifiedDate": sf_time(modified),
            }
            for person, status, modified in people
        ],
    )


def first_link_scenario(h: Harness, name: str = "Webinar") -> tuple[str, dict[str, str]]:
    """300 Salesforce members, 250 store members, 100 of them on both sides (40 with different statuses:
    20 newer in Salesforce, 20 newer in the store). Returns the Salesforce campaign and the expected statuses
    of the 100 overlapping people."""
    now = datetime.now(UTC)
    sf_campaign = setup_campaign(h, name, ["Sent", "Responded"])
    assert sf_campaign
    people = h.org.seed("Contact", [{"LastName": f"P{i}", "Email": f"p{i}@example.com"} for i in range(300)])
    others = h.org.seed("Contact", [{"LastName": f"Q{i}", "Email": f"q{i}@example.com"} for i in range(50)])

    def sf_status(i: int) -> str:
        return "Sent" if i % 2 == 0 else "Responded"

    def flip(status: str) -> str:
        return "Responded" if status == "Sent" else "Sent"

    sf_modified = {i: now - timedelta(hours=2) for i in range(300)}
    sf_modified.update({i: now - timedelta(minutes=10) for i in range(60, 80)})  # Salesforce newer
    seed_sf_members(h, sf_campaign, [(people[i], sf_status(i), sf_modified[i]) for i in range(300)])

    # overlap: 50 store contacts already linked to their Salesforce Contact, 50 only sharing the email
    overlap = h.store_contacts(
        [
            (f"p{i}@example.com", people[i] if i < 50 else None, "Contact" if i < 50 else None)
            for i in range(100)
        ]
    )
    store_only = h.store_contacts(
        [(f"q{i}@example.com", others[i], "Contact") for i in range(50)]
        + [(f"s{i}@example.com", None, None) for i in range(100)]
    )
    members = []
    expected: dict[str, str] = {}
    for i, contact_id in enumerate(overlap):
        if i < 60:
            members.append((contact_id, sf_status(i), now - timedelta(hours=1)))
            expected[people[i]] = sf_status(i)
        elif i < 80:  # Salesforce changed later: Salesforce wins
            members.append((contact_id, flip(sf_status(i)), now - timedelta(hours=1)))
            expected[people[i]] = sf_status(i)
        else:  # the store changed later: the store wins
            members.append((contact_id, flip(sf_status(i)), now - timedelta(minutes=30)))
            expected[people[i]] = flip(sf_status(i))
    members += [
        (c, "Responded" if i % 3 else "Sent", now - timedelta(hours=1)) for i, c in enumerate(store_only)
    ]
    h.store_members(name, members)
    return sf_campaign, expected


# -- first link, conflicts, idempotence ---------------------------------------------------------------------


def test_first_link_ends_equal_with_conflicts_decided_by_updated_at(harness: Harness) -> None:
    h = harness
    sf_campaign, expected = first_link_scenario(h)
    h.org.reset_stats()
    outcome = h.reconcile()
    [campaign] = outcome.campaigns
    assert campaign.failed is None and campaign.first_link
    c = campaign.counts
    assert (c.read_salesforce, c.imported, c.updated_in_store, c.updated_in_salesforce) == (300, 200, 20, 20)
    assert (c.pushed, c.leads_created, c.unchanged, c.conflicts) == (150, 100, 60, 40)
    assert (c.skipped_status, c.errors, c.contacts_created, c.contacts_linked) == (0, 0, 200, 50)

    store, salesforce = h.store_side("Webinar"), h.salesforce_side(sf_campaign)
    assert len(store) == len(salesforce) == 450
    assert store == salesforce
    for person, status in expected.items():
        assert salesforce[person] == status
    # 2 queries (statuses, members) + 1 Lead collection + 1 member create + 1 status update collection
    assert h.api_calls() == campaign.api_calls == 5
    linked = h.rows(
        """SELECT count(*) AS n FROM campaign_members
        WHERE salesforce_member_id IS NOT NULL AND synced_status = status AND salesforce_synced_at IS NOT NULL"""
    )
    assert linked[0]["n"] == 450
    leads = h.org.query("SELECT Id, LastName, Company, Email FROM Lead")
    assert len(leads) == 100 and {(r["LastName"], r["Company"]) for r in leads} == {
        ("[not provided]", "[not provided]")
    }

    # nothing changed: a second run reads and writes nothing on either side
    before, writes_before = h.member_snapshot(), h.org.write_count
    h.org.reset_stats()
    again = h.reconcile()
    assert again.campaigns[0].counts.unchanged == 450 and not again.campaigns[0].first_link
    assert h.salesforce_writes() == {} and h.org.write_count == writes_before
    assert h.api_calls() == 2
    assert h.member_snapshot() == before


def test_unknown_statuses_are_skipped_on_import_and_errors_on_push_and_nothing_else_waits(
    harness: Harness,
) -> None:
    h = harness
    now = datetime.now(UTC)
    sf_campaign = setup_campaign(h, "Event", ["Sent", "Responded", "Attended"])
    assert sf_campaign
    h.org.seed("CampaignMemberStatus", [{"CampaignId": sf_campaign, "Label": "Waitlisted"}])
    people = h.org.seed("Contact", [{"LastName": f"E{i}", "Email": f"e{i}@example.com"} for i in range(12)])
    # 0-4 Waitlisted (unknown to the store type), 5-9 Sent; 10 Waitlisted and newer than the store's Sent;
    # 11 Sent, older than the store's Attended (which Salesforce lacks)
    seed_sf_members(
        h,
        sf_campaign,
        [
            (people[i], "Waitlisted" if i < 5 or i == 10 else "Sent", now - timedelta(hours=2))
            for i in range(10)
        ]
        + [
            (people[10], "Waitlisted", now - timedelta(minutes=5)),
            (people[11], "Sent", now - timedelta(hours=3)),
        ],
    )
    both = h.store_contacts([(f"e{i}@example.com", people[i], "Contact") for i in (10, 11)])
    attended = h.store_contacts([(f"a{i}@example.com", None, None) for i in range(3)])
    responded = h.store_contacts([(f"r{i}@example.com", None, None) for i in range(4)])
    h.store_members(
        "Event",
        [(both[0], "Sent", now - timedelta(hours=1)), (both[1], "Attended", now - timedelta(hours=1))]
        + [(c, "Attended", now - timedelta(hours=1)) for c in attended]
        + [(c, "Responded", now - timedelta(hours=1)) for c in responded],
    )
    outcome = h.reconcile()
    [campaign] = outcome.campaigns
    c = campaign.counts
    assert (c.imported, c.skipped_status, c.pushed, c.leads_created, c.errors) == (5, 6, 4, 4, 4)
    assert campaign.failed is None
    errors = h.rows("SELECT direction, code, email, status, message FROM campaign_member_errors ORDER BY id")
    by_code: dict[str, list[dict[str, Any]]] = {}
    for row in errors:
        by_code.setdefault(row["code"], []).append(row)
    assert {r["status"] for r in by_code["status_not_in_campaign_type"]} == {"Waitlisted"}
    assert len(by_code["status_not_in_campaign_type"]) == 6
    assert {r["direction"] for r in by_code["status_not_in_campaign_type"]} == {"salesforce_to_store"}
    pushed_errors = by_code["status_not_in_salesforce_campaign"]
    assert len(pushed_errors) == 4 and {r["direction"] for r in pushed_errors} == {"store_to_salesforce"}
    assert {r["email"] for r in pushed_errors} == {
        "e11@example.com",
        "a0@example.com",
        "a1@example.com",
        "a2@example.com",
    }
    assert "Attended" in pushed_errors[0]["message"] and "Waitlisted" in pushed_errors[0]["message"]
    assert len(outcome.errors_preview) == 10

    # the rest proceeded: Sent members imported, Responded members pushed (with their Leads); no Lead was
    # created for the members that could not be pushed
    store, salesforce = h.store_side("Event", all_linked=False), h.salesforce_side(sf_campaign)
    assert (
        sum(1 for s in store.values() if s == "Sent") == 6
    )  # 5 imported + the store's own (SF newer: skipped)
    assert sum(1 for s in salesforce.values() if s == "Responded") == 4
    assert store[people[10]] == "Sent" and salesforce[people[10]] == "Waitlisted"
    assert store[people[11]] == "Attended" and salesforce[people[11]] == "Sent"
    assert len(h.org.query("SELECT Id FROM Lead")) == 4
    download = CliRunner().invoke(main, ["campaigns", "errors", "Event", "--run", outcome.run_id])
    assert download.exit_code == 0, download.output
    lines = download.stdout.strip().splitlines()
    assert lines[0].startswith("created_at,direction,code,email") and len(lines) == 11

    # a re-run finds the same problems: they are standing, not reported again; nothing else is written
    before, writes_before = h.member_snapshot(), h.org.write_count
    again = h.reconcile()
    c = again.campaigns[0].counts
    assert (c.skipped_status, c.errors, c.standing_errors) == (6, 0, 10)
    assert again.errors_preview == []
    assert h.rows(
        "SELECT count(*) AS n, min(times_seen) AS lo, max(times_seen) AS hi FROM campaign_member_errors"
    ) == [{"n": 10, "lo": 2, "hi": 2}]
    assert h.org.write_count == writes_before and h.member_snapshot() == before


@pytest.mark.parametrize("with_leads", [True, False], ids=["new-leads", "existing-contacts"])
def test_1000_pushed_members_take_at_most_10_api_calls(harness: Harness, with_leads: bool) -> None:
    h = harness
    sf_campaign = setup_campaign(h, "Newsletter", ["Sent", "Responded"])
    assert sf_campaign
    emails = [f"n{i}@example.com" for i in range(1000)]
    if with_leads:
        people = h.store_contacts([(e, None, None) for e in emails])
    else:
        sf_people = h.org.seed("Contact", [{"LastName": f"N{i}", "Email": e} for i, e in enumerate(emails)])
        people = h.store_contacts([(e, p, "Contact") for e, p in zip(emails, sf_people, strict=True)])
    now = datetime.now(UTC)
    h.store_members("Newsletter", [(c, "Sent" if i % 4 else "Responded", now) for i, c in enumerate(people)])
    h.org.reset_stats()
    outcome = h.reconcile()
    [campaign] = outcome.campaigns
    assert (campaign.counts.pushed, campaign.counts.errors) == (1000, 0)
    assert campaign.counts.leads_created == (1000 if with_leads else 0)
    assert campaign.bulk_jobs == (2 if with_leads else 1)
    calls = h.api_calls()
    assert calls == campaign.api_calls <= (10 if with_leads else 6)
    assert h.store_side("Newsletter") == h.salesforce_side(sf_campaign)
    assert len(h.salesforce_side(sf_campaign)) == 1000
    h.org.reset_stats()
    writes_before = h.org.write_count
    h.reconcile()
    assert h.api_calls() == 2 and h.org.write_count == writes_before


def test_link_create_makes_the_salesforce_campaign_with_the_type_statuses(harness: Harness) -> None:
    h = harness
    setup_campaign(
        h, "Summit 2025", ["Registered", "Attended", "No Show"], link="create", default="Registered"
    )
    contacts = h.store_contacts([(f"c{i}@example.com", None, None) for i in range(3)])
    now = datetime.now(UTC)
    h.store_members(
        "Summit 2025",
        [(c, s, now) for c, s in zip(contacts, ["Registered", "Attended", "No Show"], strict=True)],
    )
    outcome = h.reconcile()
    [campaign] = outcome.campaigns
    assert campaign.created_salesforce_campaign and campaign.failed is None
    with h.store.begin() as conn:
        stored = get_campaign(conn, "Summit 2025")
    assert (
        stored.salesforce_link == "create"
        and stored.salesforce_campaign_id == campaign.salesforce_campaign_id
    )
    [sf_campaign] = h.org.query("SELECT Id, Name, IsActive FROM Campaign")
    assert (sf_campaign["Id"], sf_campaign["Name"]) == (stored.salesforce_campaign_id, "Summit 2025")
    statuses = h.org.query(
        f"SELECT Label, IsDefault FROM CampaignMemberStatus WHERE CampaignId = '{sf_campaign['Id']}'"
    )
    assert sorted(s["Label"] for s in statuses) == ["Attended", "No Show", "Registered"]
    assert [s["Label"] for s in statuses if s["IsDefault"]] == ["Registered"]
    assert campaign.counts.pushed == 3
    assert h.store_side("Summit 2025") == h.salesforce_side(sf_campaign["Id"])

    # a status added to the type later is added to the Salesforce campaign it created
    with h.store.begin() as conn:
        conn.exec_driver_sql(
            "UPDATE campaign_types SET statuses = statuses || '[\"Cancelled\"]'::jsonb WHERE name = 'Summit 2025 type'"
        )
    h.reconcile()
    labels = {
        s["Label"]
        for s in h.org.query(
            f"SELECT Label FROM CampaignMemberStatus WHERE CampaignId = '{sf_campaign['Id']}'"
        )
    }
    assert "Cancelled" in labels


@pytest.mark.parametrize("bulk_threshold", [1000, 50], ids=["collections", "bulk"])
def test_faults_during_a_reconciliation_still_end_equal(harness: Harness, bulk_threshold: int) -> None:
    h = harness
    sf_campaign, _ = first_link_scenario(h)
    h.org.add_fault("unavailable_503", count=2, after=1)
    h.org.add_fault("invalid_session", after=3)
    h.org.add_fault(
        "unavailable_503", after=1, path_contains="composite" if bulk_threshold > 100 else "jobs/ingest"
    )
    outcome = h.reconcile(bulk_threshold=bulk_threshold)
    assert outcome.complete, outcome.campaigns[0].failed
    assert h.org.pending_faults() == []
    stats = h.org.stats()["requests"]
    assert stats["fault:unavailable_503"] == 3 and stats["fault:invalid_session"] == 1
    assert (outcome.campaigns[0].bulk_jobs > 0) == (bulk_threshold < 100)
    assert h.store_side("Webinar") == h.salesforce_side(sf_campaign)
    assert len(h.salesforce_side(sf_campaign)) == 450
    writes_before = h.org.write_count
    h.reconcile(bulk_threshold=bulk_threshold)
    assert h.org.write_count == writes_before


def test_api_budget_stops_cleanly_and_the_next_run_finishes_without_duplicates(harness: Harness) -> None:
    h = harness
    sf_campaign, _ = first_link_scenario(h)
    h.org.set_limits(max=3, used=0)  # statuses, members, the Lead collection; then the allowance is used up
    stopped = h.reconcile()
    assert (
        stopped.stopped_early and "0 of 3 daily calls left" in stopped.stopped_early and not stopped.complete
    )
    assert stopped.campaigns[0].counts.leads_created == 100 and stopped.campaigns[0].counts.pushed == 0
    h.org.set_limits(max=100_000, used=0)
    finished = h.reconcile()
    assert finished.complete and finished.campaigns[0].counts.leads_created == 0
    assert len(h.org.query("SELECT Id FROM Lead")) == 100
    assert h.store_side("Webinar") == h.salesforce_side(sf_campaign)


def test_a_second_reconciliation_at_the_same_time_does_nothing(harness: Harness) -> None:
    setup_campaign(harness, "Busy", ["Sent"])
    with harness.store.engine().connect() as conn:
        conn.exec_driver_sql("SELECT pg_advisory_lock(%s)", (RECONCILE_LOCK_KEY,))
        with pytest.raises(ReconcileInProgress, match="this run did nothing"):
            harness.reconcile()
        conn.exec_driver_sql("SELECT pg_advisory_unlock(%s)", (RECONCILE_LOCK_KEY,))
    assert harness.reconcile().complete


def test_later_runs_move_each_change_to_the_other_side(harness: Harness) -> None:
    h = harness
    sf_campaign = setup_campaign(h, "Drip", ["Sent", "Opened", "Clicked"])
    assert sf_campaign
    h.org.seed(
        "CampaignMemberStatus", [{"CampaignId": sf_campaign, "Label": s} for s in ("Opened", "Clicked")]
    )
    people = h.org.seed("Contact", [{"LastName": f"D{i}", "Email": f"d{i}@example.com"} for i in range(6)])
    old = datetime.now(UTC) - timedelta(hours=1)
    members = seed_sf_members(h, sf_campaign, [(p, "Sent", old) for p in people])
    h.reconcile()
    assert h.store_side("Drip") == dict.fromkeys(people, "Sent")

    contacts = {p: h.store_contacts([(f"d{i}@example.com", p, "Contact")])[0] for i, p in enumerate(people)}

    def store_status(person: str, status: str, at: str) -> None:
        h.execute(
            f"""UPDATE campaign_members SET status = :status, updated_at = {at}
            WHERE contact_id = :contact RETURNING 1""",
            status=status,
            contact=contacts[person],
        )

    h.org.update("CampaignMember", members[0], {"Status": "Opened"})  # only Salesforce changed
    store_status(people[1], "Clicked", "now()")  # only the store changed
    store_status(people[2], "Opened", "now() - interval '1 minute'")  # both: Salesforce later
    h.org.advance_clock(2)
    h.org.update("CampaignMember", members[2], {"Status": "Clicked"})
    h.org.update("CampaignMember", members[3], {"Status": "Opened"})  # both: the store later
    store_status(people[3], "Clicked", "now() + interval '1 minute'")
    h.org.delete("CampaignMember", members[4])  # deleted in Salesforce, unchanged in the store: removed
    h.org.delete("CampaignMember", members[5])  # deleted in Salesforce, changed in the store: pushed again
    store_status(people[5], "Opened", "now()")

    outcome = h.reconcile()
    c = outcome.campaigns[0].counts
    assert (c.updated_in_store, c.updated_in_salesforce, c.removed_in_store, c.pushed) == (2, 2, 1, 1)
    assert c.conflicts == 2
    expected = {
        people[0]: "Opened",
        people[1]: "Clicked",
        people[2]: "Clicked",
        people[3]: "Clicked",
        people[5]: "Opened",
    }
    assert h.store_side("Drip") == h.salesforce_side(sf_campaign) == expected


# -- store side: types, campaigns, links, members ---------------------------------------------------------


def test_campaign_types_and_links_are_validated(store_url: str) -> None:
    store = ContactStore(url=store_url)
    with store.begin() as conn:
        ctype = create_campaign_type(conn, "Webinar", ["Registered", "Attended"], "attended")
        assert ctype.default_status == "Attended"
        for statuses, default, problem in [
            ([], None, "at least one member status"),
            (["A", "a"], None, "listed twice"),
            (["A"], "B", "default status 'B' is not one of"),
        ]:
            with pytest.raises(CampaignError, match=problem):
                create_campaign_type(conn, "Other", statuses, default)
        with pytest.raises(CampaignError, match="already exists"):
            create_campaign_type(conn, "Webinar", ["X"])
        with pytest.raises(CampaignError, match="unknown campaign type 'Nope'; known types: Webinar"):
            create_campaign(conn, "Spring", "Nope")
        with pytest.raises(CampaignError, match="needs the Salesforce Campaign id"):
            create_campaign(conn, "Spring", "Webinar", "existing")
        with pytest.raises(CampaignError, match="not a Salesforce Campaign id"):
            create_campaign(conn, "Spring", "Webinar", "existing", "003000000000001")
        campaign = create_campaign(conn, "Spring", "Webinar", "existing", "701Kc0000000001")
        assert campaign.salesforce_campaign_id == salesforce_campaign_id("701Kc0000000001")
        assert len(campaign.salesforce_campaign_id or "") == 18 and campaign.first_link
        with pytest.raises(CampaignError, match="already linked to store campaign 'Spring'"):
            create_campaign(conn, "Autumn", "Webinar", "existing", campaign.salesforce_campaign_id)
        change = add_member(conn, "Spring", "Ada@Example.com", "registered")
        assert (change.action, change.status, change.contact_created) == ("added", "Registered", True)
        assert add_member(conn, "Spring", "ada@example.com", "Registered").action == "unchanged"
        assert add_member(conn, "Spring", "ada@example.com").action == "updated"  # the type's default
        with pytest.raises(CampaignError, match="allowed: Registered, Attended"):
            add_member(conn, "Spring", "ada@example.com", "Maybe")
        conn.exec_driver_sql(
            "UPDATE campaign_members SET salesforce_member_id = '00vKc0000000001AAA', synced_status = status"
        )
        conn.exec_driver_sql("UPDATE campaigns SET last_reconciled_at = now()")
        relinked = link_campaign(conn, "Spring", "create")
        assert (relinked.salesforce_link, relinked.salesforce_campaign_id, relinked.first_link) == (
            "create",
            None,
            True,
        )
        [row] = conn.exec_driver_sql("SELECT salesforce_member_id, synced_status FROM campaign_members").all()
        assert tuple(row) == (None, None)
        assert link_campaign(conn, "Spring", "none").linked_at is None


def test_cli_campaign_commands(store_url: str, standin_org: Org, planted_env: dict[str, str]) -> None:
    runner = CliRunner()  # Salesforce configured: a link to an existing Campaign is checked there

    def invoke(*args: str) -> str:
        result = runner.invoke(main, ["campaigns", *args])
        assert result.exit_code == 0, result.output
        return result.output

    [sf_id] = standin_org.seed("Campaign", [{"Name": "Launch"}])
    assert "campaign type 'Launch' with statuses Sent, Opened (default Opened)" in invoke(
        "type", "create", "Launch", "--status", "Sent", "--status", "Opened", "--default", "Opened"
    )
    assert "linked to Salesforce Campaign" in invoke(
        "create", "Launch Q1", "--type", "Launch", "--link", "existing", "--salesforce-id", sf_id
    )
    assert "create a Salesforce Campaign on the next reconciliation" in invoke(
        "create", "Launch Q2", "--type", "Launch", "--link", "create"
    )
    invoke("create", "Local", "--type", "Launch")
    assert "added" in invoke("add-member", "Launch Q1", "grace@example.com", "--status", "Sent")
    assert "not linked" in invoke("link", "Launch Q2", "none")
    listing = invoke("list")
    assert "Launch Q1" in listing and sf_id in listing and "existing" in listing and "Sent, Opened" in listing
    bad = runner.invoke(
        main, ["campaigns", "add-member", "Launch Q1", "grace@example.com", "--status", "Gone"]
    )
    assert bad.exit_code != 0 and "allowed: Sent, Opened" in bad.output
    none = runner.invoke(main, ["campaigns", "errors", "Launch Q1"])
    assert none.exit_code != 0 and "no reconciliation errors" in none.output


# -- Dagster ------------------------------------------------------------------------------------------------

PLANTED_PASSWORD = "Pl4nted-campaign-secret"


@pytest.fixture
def planted_env(standin: StandinServer, standin_org: Org, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    standin_org.password = PLANTED_PASSWORD
    env = {
        "SALESFORCE_USERNAME": standin.username,
        "SALESFORCE_PASSWORD": PLANTED_PASSWORD,
        "SALESFORCE_LOGIN_URL": standin.url,
        "SALESFORCE_SECURITY_TOKEN": standin.security_token,
        "SALESFORCE_CA_BUNDLE": str(standin.ca_path),
    }
    for var in ENV_VARS.values():
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    yield env
    standin_org.password = "standin-password"


def test_dagster_asset_reports_counts_errors_and_api_calls(
    store_url: str, standin_org: Org, planted_env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    h = Harness(standin_org, ContactStore(url=store_url), SalesforceSettings.from_env(backoff_seconds=0.01))
    setup_campaign(h, "Dagster", ["Sent", "Attended"])
    contacts = h.store_contacts([("x@example.com", None, None), ("y@example.com", None, None)])
    h.store_members(
        "Dagster", [(contacts[0], "Sent", datetime.now(UTC)), (contacts[1], "Attended", datetime.now(UTC))]
    )
    defs = build_campaign_definitions(SalesforceConfig(api_reserve=0), h.resource)
    [schedule] = defs.schedules
    assert (
        schedule.default_status == dg.DefaultScheduleStatus.RUNNING
        and schedule.cron_schedule == "*/15 * * * *"
    )
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        defs.assets,
        instance=instance,
        resources={"contact_store": ContactStore(), "identity": IdentityMatcher(), "salesforce": h.resource},
    )
    assert result.success
    [materialization] = result.asset_materializations_for_node(RECONCILE_ASSET)
    metadata = {k: v.value for k, v in materialization.metadata.items()}
    assert (metadata["pushed"], metadata["errors"], metadata["leads_created"]) == (1, 1, 1)
    assert metadata["api_calls_used"] == 4 and metadata["complete"] is True
    [row] = metadata["campaigns"].records
    assert row.data["campaign"] == "Dagster" and row.data["api_calls"] == 4 and row.data["first_link"] is True
    [error] = metadata["errors_preview"].records
    assert (
        error.data["code"] == "status_not_in_salesforce_campaign" and error.data["email"] == "y@example.com"
    )
    assert f"--run {result.run_id}" in metadata["errors_command"]
    everything = "\n".join([caplog.text, str(metadata), *(str(e) for e in instance.all_logs(result.run_id))])
    assert PLANTED_PASSWORD not in everything and planted_env["SALESFORCE_SECURITY_TOKEN"] not in everything

    # a campaign whose Salesforce campaign is gone fails the run, after the others were reconciled
    with h.store.begin() as conn:
        create_campaign(conn, "Gone", "Dagster type", "existing", "701Kc00000000ZZ")
    failed = dg.materialize(
        defs.assets,
        resources={"contact_store": ContactStore(), "identity": IdentityMatcher(), "salesforce": h.resource},
        raise_on_error=False,
    )
    assert not failed.success
    error_text = str(failed.get_step_failure_events()[0].event_specific_data.error)
    assert "1 of 2 campaign(s) could not be reconciled" in error_text and "was not found" in error_text


def test_schedule_skips_while_running_and_loads_stopped_without_credentials(
    planted_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    defs = build_campaign_definitions(SalesforceConfig(), SalesforceSettings.from_env())
    [schedule] = defs.schedules
    assert schedule.name == RECONCILE_SCHEDULE
    with dg.instance_for_test() as instance:
        assert (
            len(schedule.evaluate_tick(dg.build_schedule_context(instance=instance)).run_requests or []) == 1
        )
        run_id = str(uuid.uuid4())
        instance.add_run(
            DagsterRun(job_name=RECONCILE_JOB, run_id=run_id, status=dg.DagsterRunStatus.STARTED)
        )
        data = schedule.evaluate_tick(dg.build_schedule_context(instance=instance))
        assert not data.run_requests and data.skip_message and run_id in data.skip_message

    for var in ENV_VARS.values():
        monkeypatch.delenv(var, raising=False)
    resource = SalesforceSettings.from_env()
    defs = build_campaign_definitions(SalesforceConfig(), resource)
    [asset], [schedule] = defs.assets, defs.schedules
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    assert "NOT CONFIGURED" in (asset.specs_by_key[dg.AssetKey(RECONCILE_ASSET)].description or "")
    dg.Definitions.validate_loadable(
        dg.Definitions(
            assets=defs.assets,
            jobs=defs.jobs,
            schedules=defs.schedules,
            resources={
                "contact_store": ContactStore(),
                "identity": IdentityMatcher(),
                "salesforce": resource,
            },
        )
    )


# -- the make dev demo ----------------------------------------------------------------------------------


def test_demo_campaign_shows_both_directions_a_conflict_and_an_error(
    store_url: str, standin: StandinServer, standin_org: Org, salesforce_resource: SalesforceSettings
) -> None:
    from conversion_sync_dev.demo_campaigns import DEMO_CAMPAIGN, seed_demo_campaign

    seed_demo(standin_org)
    env = {
        "SALESFORCE_USERNAME": standin.username,
        "SALESFORCE_PASSWORD": standin.password,
        "SALESFORCE_SECURITY_TOKEN": standin.security_token,
        "SALESFORCE_LOGIN_URL": standin.url,
        "SALESFORCE_CA_BUNDLE": str(standin.ca_path),
    }
    assert seed_demo_campaign(store_url, env) is not None
    assert seed_demo_campaign(store_url, env) is None  # already there: left alone
    h = Harness(standin_org, ContactStore(url=store_url), salesforce_resource)
    outcome = h.reconcile()
    [campaign] = outcome.campaigns
    c = campaign.counts
    assert campaign.failed is None and c.imported > 0 and c.pushed >= 2 and c.leads_created >= 2
    assert c.updated_in_salesforce == 1 and c.errors == 1
    assert outcome.errors_preview[0]["code"] == "status_not_in_salesforce_campaign"
    with h.store.begin() as conn:
        assert get_campaign(conn, DEMO_CAMPAIGN).salesforce_link == "existing"
