"""Salesforce faults (401, 403 REQUEST_LIMIT_EXCEEDED, 503, QUERY_TIMEOUT) at random across polls and
campaign reconciliations: running again until complete gives what a fault-free run gives."""

from __future__ import annotations

import os
import random
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from conversion_sync.config.salesforce import SalesforceConfig
from conversion_sync.salesforce.budget import ApiBudget
from conversion_sync.salesforce.campaigns import create_campaign, create_campaign_type
from conversion_sync.salesforce.client import SalesforceApiError, SalesforceSettings
from conversion_sync.salesforce.poller import PollOutcome, SalesforcePoller
from conversion_sync.salesforce.reconcile import CampaignReconciler, ReconcileOutcome
from conversion_sync.store.connection import store_engine
from conversion_sync.store.contact_store import ContactStore
from conversion_sync.store.identity import IdentityMatcher
from conversion_sync_dev.salesforce_standin import Org
from conversion_sync_dev.salesforce_standin.org import FAULT_KINDS

from .conftest import Figures, StoreFactory

MAPPINGS: dict[str, Any] = {
    "Contact": {
        "first_name": "FirstName",
        "last_name": "LastName",
        "job_title": {"salesforce": "Title", "preference": "salesforce_wins"},
        "city": "MailingCity",
    },
    "Lead": {"first_name": "FirstName", "last_name": "LastName", "company_name": "Company"},
    "Account": {"name": "Name", "employees": "NumberOfEmployees"},
}
FAULT_PATHS = (None, "/queryAll", "/jobs/query", "/sobjects")
SNAPSHOT = {
    "contacts": """SELECT c.email_normalized, c.salesforce_id, c.salesforce_type, c.first_name, c.last_name,
                          c.job_title, c.city, c.company_name, c.custom_fields::text, c.field_updated_at::text,
                          co.salesforce_account_id
                   FROM contacts c LEFT JOIN companies co ON co.id = c.company_id
                   ORDER BY c.email_normalized, c.salesforce_id NULLS FIRST""",
    "companies": """SELECT salesforce_account_id, name, fields::text, field_updated_at::text FROM companies
                    ORDER BY salesforce_account_id NULLS FIRST, name""",
}


def salesforce_snapshot(url: str) -> dict[str, list[tuple[Any, ...]]]:
    with store_engine(url).connect() as conn:
        return {name: [tuple(r) for r in conn.execute(sa.text(q)).all()] for name, q in SNAPSHOT.items()}


def seed_org(org: Org, rng: random.Random, people: int) -> None:
    """Accounts, Contacts and Leads; then edits, deletions, merges and conversions, all before polling."""
    org.set_limits(max=10_000_000, used=0)
    accounts = org.seed(
        "Account", [{"Name": f"Account {i}", "NumberOfEmployees": i} for i in range(people // 20)]
    )
    contacts = org.seed(
        "Contact",
        [
            {
                "FirstName": f"First{i}",
                "LastName": f"Person {i}",
                "Email": f"p{i}@example.com" if i % 17 else None,
                "Title": rng.choice(["CTO", "VP", None]),
                "MailingCity": f"City {i % 31}",
                "AccountId": accounts[i % len(accounts)] if i % 5 else None,
            }
            for i in range(people)
        ],
    )
    leads = org.seed(
        "Lead",
        [
            {
                "LastName": f"Lead {i}",
                "Company": f"Co {i}",
                "Email": f"p{i * 3}@example.com" if i % 2 else f"l{i}@x.io",
            }
            for i in range(people // 4)
        ],
    )
    org.advance_clock(5)
    for contact in rng.sample(contacts, people // 10):
        org.update("Contact", contact, {"MailingCity": "Moved", "Title": "CEO"})
    deleted = set(rng.sample(contacts, people // 50))
    for contact in deleted:
        org.delete("Contact", contact)
    for lead in rng.sample(leads, len(leads) // 10):
        org.convert_lead(lead)
    live = [c for c in contacts if c not in deleted]
    for master, duplicate in zip(live[:10], live[10:20], strict=True):
        org.merge(master, [duplicate])
    org.advance_clock(90)  # everything is older than the poll's upper bound (now − 1 minute)


def poll(org: Org, store_url: str, resource: SalesforceSettings, config: SalesforceConfig) -> PollOutcome:
    client = resource.connect(ApiBudget(reserve=config.api_reserve))
    try:
        return SalesforcePoller(
            config, ContactStore(url=store_url), IdentityMatcher(), client, now=org.now
        ).run()
    finally:
        client.close()


def fault_trial(
    org: Org,
    resource: SalesforceSettings,
    new_store: StoreFactory,
    figures: Figures,
    *,
    seed: int,
    people: int,
    faults: int,
) -> None:
    rng = random.Random(seed)
    org.reset()
    seed_org(org, rng, people)
    # a first load of Contacts above bulk_threshold goes through Bulk API 2.0; Leads and Accounts page by REST
    config = SalesforceConfig(api_reserve=0, field_mappings=MAPPINGS, bulk_threshold=max(people // 2, 1))
    clean = new_store()
    assert poll(org, clean, resource, config).complete
    expected = salesforce_snapshot(clean)

    store = new_store()
    for _ in range(faults):
        org.add_fault(
            rng.choice(FAULT_KINDS),
            count=rng.randint(1, 3),
            after=rng.randint(0, 12),
            path_contains=rng.choice(FAULT_PATHS),
        )
    polls = failed = stopped = 0
    while True:
        polls += 1
        assert polls <= 4 * faults + 2, f"seed {seed}: the polls never completed"
        try:
            outcome = poll(org, store, resource, config)
        except SalesforceApiError as exc:
            failed += 1
            assert "Traceback" not in str(exc) and str(exc), exc
            continue
        if outcome.complete:
            break
        stopped += 1
        assert outcome.stopped_early and "REQUEST_LIMIT_EXCEEDED" in outcome.stopped_early
    fired = {k.split(":", 1)[1]: v for k, v in org.stats()["requests"].items() if k.startswith("fault:")}
    assert salesforce_snapshot(store) == expected, f"seed {seed}: the store differs from a fault-free poll"
    figures.add(
        "salesforce_poll_faults",
        trials=1,
        faults_fired=sum(fired.values()),
        faults_by_kind=fired,
        polls=polls,
        polls_failed=failed,
        polls_stopped_early=stopped,
        records=sum(org.stats()["records"].values()),
    )
    org.clear_faults()


def test_random_salesforce_faults_across_a_poll(
    standin_org: Org, salesforce_resource: SalesforceSettings, new_store: StoreFactory, figures: Figures
) -> None:
    seed = int(os.environ.get("RELIABILITY_SEED", time.time_ns() % 1_000_000))
    fault_trial(standin_org, salesforce_resource, new_store, figures, seed=seed, people=2_500, faults=8)


@pytest.mark.reliability
@pytest.mark.parametrize("trial", range(10))
def test_random_salesforce_faults_across_polls_many_trials(
    standin_org: Org,
    salesforce_resource: SalesforceSettings,
    new_store: StoreFactory,
    figures: Figures,
    trial: int,
) -> None:
    seed = int(os.environ.get("RELIABILITY_SEED", time.time_ns() % 1_000_000)) + trial
    fault_trial(standin_org, salesforce_resource, new_store, figures, seed=seed, people=6_000, faults=20)


# -- campaign member reconciliation ------------------------------------------------------------------------

RECONCILE_FAULT_PATHS = (None, "/query", "/composite", "/jobs/ingest", "/sobjects")


def seed_campaign(org: Org, store_url: str, rng: random.Random, people: int) -> None:
    """A store campaign linked to a Salesforce one; members on both sides, half overlapping, some in conflict."""
    now = datetime.now(UTC)
    org.set_limits(max=10_000_000, used=0)
    [sf_campaign] = org.seed("Campaign", [{"Name": "Webinar"}])
    contacts = org.seed(
        "Contact", [{"LastName": f"P{i}", "Email": f"p{i}@example.com"} for i in range(people)]
    )
    org.seed(
        "CampaignMember",
        [
            {
                "CampaignId": sf_campaign,
                "ContactId": contacts[i],
                "Status": rng.choice(["Sent", "Responded"]),
                "LastModifiedDate": (now - timedelta(minutes=rng.randint(5, 120))).strftime(
                    "%Y-%m-%dT%H:%M:%S.000+0000"
                ),
            }
            for i in range(people * 2 // 3)
        ],
    )
    store = ContactStore(url=store_url)
    with store.begin() as conn:
        create_campaign_type(conn, "Webinar type", ["Sent", "Responded"])
        create_campaign(conn, "Webinar", "Webinar type", "existing", sf_campaign)
        ids, _ = IdentityMatcher().resolve(
            conn, [(f"p{i}@example.com", None, None) for i in range(people // 3, people + people // 3)]
        )
        conn.exec_driver_sql(
            """INSERT INTO campaign_members (campaign_id, contact_id, status, updated_at)
            SELECT (SELECT id FROM campaigns WHERE name = 'Webinar'), v.contact_id, v.status, v.updated_at
            FROM unnest(%(ids)s::bigint[], %(statuses)s::text[], %(times)s::timestamptz[]) AS v(contact_id, status, updated_at)""",
            {
                "ids": ids,
                "statuses": [rng.choice(["Sent", "Responded"]) for _ in ids],
                "times": [now - timedelta(minutes=rng.randint(5, 120)) for _ in ids],
            },
        )


def campaign_state(org: Org, store_url: str) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], int]:
    """Both sides by email and status, and how many Leads exist (a duplicate Lead would show here)."""
    with store_engine(store_url).connect() as conn:
        store_side = [
            tuple(r)
            for r in conn.exec_driver_sql(
                """SELECT c.email_normalized, c.salesforce_type, m.status, m.synced_status FROM campaign_members m
                JOIN contacts c ON c.id = m.contact_id ORDER BY 1"""
            ).all()
        ]
    emails = {r["Id"]: r["Email"] for r in org.query("SELECT Id, Email FROM Contact")}
    emails |= {r["Id"]: r["Email"] for r in org.query("SELECT Id, Email FROM Lead")}
    members = org.query("SELECT ContactId, LeadId, Status FROM CampaignMember")
    salesforce_side = sorted((emails[m["ContactId"] or m["LeadId"]], m["Status"]) for m in members)
    return store_side, salesforce_side, len(org.query("SELECT Id FROM Lead"))


def reconcile(resource: SalesforceSettings, store_url: str, bulk_threshold: int) -> ReconcileOutcome:
    client = resource.connect(ApiBudget(reserve=0))
    try:
        return CampaignReconciler(
            ContactStore(url=store_url), IdentityMatcher(), client, bulk_threshold=bulk_threshold
        ).run()
    finally:
        client.close()


def reconcile_fault_trial(
    org: Org,
    resource: SalesforceSettings,
    new_store: StoreFactory,
    figures: Figures,
    *,
    seed: int,
    people: int,
    faults: int,
    bulk_threshold: int,
) -> None:
    states = []
    for with_faults in (False, True):
        rng = random.Random(seed)
        org.reset()
        store = new_store()
        seed_campaign(org, store, rng, people)
        for _ in range(faults if with_faults else 0):
            org.add_fault(
                rng.choice(FAULT_KINDS),
                count=rng.randint(1, 3),
                after=rng.randint(0, 8),
                path_contains=rng.choice(RECONCILE_FAULT_PATHS),
            )
        runs = failed = 0
        while True:
            runs += 1
            assert runs <= 4 * faults + 2, f"seed {seed}: the reconciliation never completed"
            try:
                outcome = reconcile(resource, store, bulk_threshold)
            except SalesforceApiError:
                failed += 1
                continue
            if outcome.complete:
                break
            failed += 1
        states.append(campaign_state(org, store))
        if with_faults:
            fired = {
                k.split(":", 1)[1]: v for k, v in org.stats()["requests"].items() if k.startswith("fault:")
            }
            figures.add(
                "salesforce_reconcile_faults",
                trials=1,
                faults_fired=sum(fired.values()),
                faults_by_kind=fired,
                runs=runs,
                runs_incomplete=failed,
            )
    clean, faulty = states
    assert faulty == clean, f"seed {seed}: reconciling under faults ended differently"
    store_side, salesforce_side, _ = faulty
    assert {(e, s) for e, _, s, _ in store_side} == set(salesforce_side), "the two sides differ"
    org.clear_faults()


def test_random_salesforce_faults_across_a_campaign_reconciliation(
    standin_org: Org, salesforce_resource: SalesforceSettings, new_store: StoreFactory, figures: Figures
) -> None:
    seed = int(os.environ.get("RELIABILITY_SEED", time.time_ns() % 1_000_000))
    reconcile_fault_trial(
        standin_org,
        salesforce_resource,
        new_store,
        figures,
        seed=seed,
        people=600,
        faults=8,
        bulk_threshold=1000,
    )


@pytest.mark.reliability
@pytest.mark.parametrize("trial", range(10))
def test_random_salesforce_faults_across_reconciliations_many_trials(
    standin_org: Org,
    salesforce_resource: SalesforceSettings,
    new_store: StoreFactory,
    figures: Figures,
    trial: int,
) -> None:
    seed = int(os.environ.get("RELIABILITY_SEED", time.time_ns() % 1_000_000)) + trial
    reconcile_fault_trial(
        standin_org,
        salesforce_resource,
        new_store,
        figures,
        seed=seed,
        people=3_000,
        faults=20,
        bulk_threshold=1000 if trial % 2 else 200,
    )


@pytest.mark.parametrize(
    "interrupted_at",
    ["successfulResults", "/batches", "/jobs/ingest/"],
    ids=["reading results", "uploading", "after closing"],
)
def test_a_bulk_lead_job_cut_short_never_creates_a_lead_twice(
    standin_org: Org, salesforce_resource: SalesforceSettings, new_store: StoreFactory, interrupted_at: str
) -> None:
    """The API allowance runs out between creating a Leads job and reading its results: the next run links the
    Leads that job created (or aborts a job left open) instead of creating them again."""
    org = standin_org
    store = new_store()
    seed_campaign(org, store, random.Random(7), 600)  # 400 store members without a Salesforce record
    # after: 2 queries; for "/jobs/ingest/", skip the upload and the close and stop at the first status poll
    org.add_fault(
        "request_limit", after=2 if interrupted_at == "/jobs/ingest/" else 0, path_contains=interrupted_at
    )
    stopped = reconcile(salesforce_resource, store, bulk_threshold=50)
    assert stopped.stopped_early and not stopped.complete
    assert org.pending_faults() == []
    leads_after_stop = len(org.query("SELECT Id FROM Lead"))
    assert leads_after_stop == (0 if interrupted_at == "/batches" else 400)
    finished = reconcile(salesforce_resource, store, bulk_threshold=50)
    assert finished.complete
    store_side, salesforce_side, leads = campaign_state(org, store)
    assert leads == 400, "a contact got a second Lead"
    assert {(e, s) for e, _, s, _ in store_side} == set(salesforce_side)
    with store_engine(store).connect() as conn:
        assert (
            conn.exec_driver_sql(
                "SELECT count(*) FROM sync_state WHERE sync_name LIKE 'campaign_reconcile:%%'"
            ).scalar()
            == 0
        )
