"""The contact push end to end: a real store, the stand-in over HTTPS with the unmodified simple-salesforce, the
real poll beside it; every Salesforce write counted from the stand-in's request stats."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa
import yaml

from conversion_sync.config.salesforce import SalesforceConfig
from conversion_sync.defs.salesforce import PUSH_ASSET, PUSH_JOB, PUSH_SENSOR
from conversion_sync.defs.salesforce import build_defs as build_salesforce_definitions
from conversion_sync.defs.salesforce.push import salesforce_push_asset
from conversion_sync.salesforce.budget import ApiBudget
from conversion_sync.salesforce.client import SalesforceSettings
from conversion_sync.salesforce.poller import PollOutcome, SalesforcePoller
from conversion_sync.salesforce.push import (
    PUSH_RUN_NAME,
    PushOptions,
    PushOutcome,
    SalesforcePusher,
    mark_for_push,
    push_errors,
    push_summary,
)
from conversion_sync.store.connection import STORE_URL_ENV
from conversion_sync.store.contact_store import ContactStore
from conversion_sync.store.identity import IdentityMatcher
from conversion_sync_dev.salesforce_standin import Org, StandinServer

WRITE_KINDS = (
    "sobject_create",
    "sobject_update",
    "composite_create",
    "composite_update",
    "composite_delete",
    "bulk2_ingest_create",
)


def writes(org: Org) -> int:
    """Salesforce write calls since the last reset of the stand-in's stats."""
    requests = org.stats()["requests"]
    return sum(requests.get(kind, 0) for kind in WRITE_KINDS)


@dataclass
class Harness:
    """A store, the stand-in org and settings pointed at it; `poll()` and `push()` run with the org's clock."""

    org: Org
    store: ContactStore
    resource: SalesforceSettings
    config: SalesforceConfig

    def settle(self) -> None:
        """Move the org clock past the poll's upper-bound lag, so everything changed so far is polled."""
        self.org.advance_clock(90)

    def poll(self) -> PollOutcome:
        client = self.resource.connect(ApiBudget(reserve=0))
        try:
            return SalesforcePoller(
                self.config, self.store, IdentityMatcher(), client, now=self.org.now
            ).run()
        finally:
            client.close()

    def push(self, **options: Any) -> PushOutcome:
        client = self.resource.connect(ApiBudget(reserve=0))
        try:
            return SalesforcePusher(self.config, self.store, client, options=PushOptions(**options)).run()
        finally:
            client.close()

    def rows(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        with self.store.begin() as conn:
            return [dict(r) for r in conn.execute(sa.text(sql), params).mappings()]

    def execute(self, sql: str, **params: Any) -> None:
        with self.store.begin() as conn:
            conn.execute(sa.text(sql), params)

    def add_contacts(self, contacts: list[dict[str, Any]], stamp: datetime | None = None) -> list[int]:
        """Store contacts as a writer adds them: each given field stamped `stamp` (default: the org's now)."""
        stamp = stamp or self.org.now()
        ids = []
        with self.store.begin() as conn:
            for contact in contacts:
                fields = {k: v for k, v in contact.items() if k != "email"}
                columns = ", ".join(["email", "email_normalized", "field_updated_at", *fields])
                values = ", ".join(
                    [
                        ":email",
                        "conversion_email_key(:email)",
                        "CAST(:stamps AS jsonb)",
                        *(f":{k}" for k in fields),
                    ]
                )
                stamps = json.dumps({k: stamp.isoformat() for k in fields})
                ids.append(
                    conn.execute(
                        sa.text(f"INSERT INTO contacts ({columns}) VALUES ({values}) RETURNING id"),
                        {**contact, "stamps": stamps},
                    ).scalar_one()
                )
        return ids

    def edit_contact(self, email: str, stamp: datetime | None = None, **values: Any) -> None:
        """A store-side edit of one contact's fields, stamped `stamp` (default: the org's now)."""
        stamp = stamp or self.org.now()
        sets = ", ".join(f"{k} = :{k}" for k in values)
        stamps = json.dumps({k: stamp.isoformat() for k in values})
        self.execute(
            f"UPDATE contacts SET {sets}, field_updated_at = field_updated_at || CAST(:stamps AS jsonb), "
            "updated_at = now() WHERE email = :email",
            email=email,
            stamps=stamps,
            **values,
        )

    def contact(self, email: str) -> dict[str, Any]:
        [row] = self.rows("SELECT * FROM contacts WHERE email = :email", email=email)
        return row

    def salesforce(self, sobject: str, email: str) -> list[dict[str, Any]]:
        """The live records of `sobject` with this email (from the org, not through the API)."""
        return self.org.query(
            f"SELECT Id, Title, FirstName, LastName, LastModifiedDate FROM {sobject} WHERE Email = '{email}'"
        )


def config(**overrides: Any) -> SalesforceConfig:
    return SalesforceConfig(**{"poll_overlap": "10 minutes", "api_reserve": 0, **overrides})


@pytest.fixture
def harness(store_url: str, standin_org: Org, salesforce_resource: SalesforceSettings) -> Harness:
    return Harness(standin_org, ContactStore(url=store_url), salesforce_resource, config())


# -- creating and linking ---------------------------------------------------------------------------


def test_store_contacts_become_leads_with_their_mapped_fields_and_nothing_echoes(harness: Harness) -> None:
    org = harness.org
    harness.add_contacts(
        [
            {
                "email": "ada@example.com",
                "first_name": "Ada",
                "last_name": "Lovelace",
                "job_title": "CTO",
                "phone": "+44 1",
                "city": "London",
                "company_name": "Analytical",
            },
            {"email": "bare@example.com"},
        ]
    )
    org.reset_stats()
    outcome = harness.push()
    assert outcome.counts.created == 2 and outcome.counts.failed == 0
    [ada] = org.query(
        "SELECT Id, FirstName, LastName, Title, Phone, City, Company, Email FROM Lead WHERE Email = 'ada@example.com'"
    )
    assert (ada["FirstName"], ada["LastName"], ada["Title"], ada["Phone"], ada["City"], ada["Company"]) == (
        "Ada",
        "Lovelace",
        "CTO",
        "+44 1",
        "London",
        "Analytical",
    )
    [bare] = org.query("SELECT LastName, Company FROM Lead WHERE Email = 'bare@example.com'")
    assert (bare["LastName"], bare["Company"]) == ("[not provided]", "[not provided]")
    assert harness.contact("ada@example.com")["salesforce_id"] == ada["Id"]
    assert harness.contact("ada@example.com")["salesforce_type"] == "Lead"
    # two emails searched (one query per object), one collection create, one read of the new LastModifiedDates
    assert org.stats()["requests"]["query"] == 3 and writes(org) == 1
    [run] = harness.rows("SELECT * FROM sync_runs WHERE sync_name = :n", n=PUSH_RUN_NAME)
    assert run["status"] == "success" and run["counts"]["created"] == 2

    # the poll reads the new Leads back: nothing changes but the placeholders Salesforce now holds
    before = harness.rows(
        "SELECT id, first_name, job_title, city, company_name FROM contacts WHERE email LIKE 'ada%'"
    )
    harness.settle()
    polled = harness.poll()
    assert polled.objects["Lead"].counts.created == 0
    assert (
        harness.rows(
            "SELECT id, first_name, job_title, city, company_name FROM contacts WHERE email LIKE 'ada%'"
        )
        == before
    )
    org.reset_stats()
    again = harness.push()
    assert writes(org) == 0 and again.counts.created == again.counts.updated == 0


def test_an_email_salesforce_has_is_linked_not_duplicated(harness: Harness) -> None:
    org = harness.org
    [lead] = org.seed(
        "Lead", [{"LastName": "Lead", "Company": "X", "Email": "lead@example.com", "Title": "Old"}]
    )
    [contact] = org.seed("Contact", [{"LastName": "Contact", "Email": "Contact@Example.com"}])
    [converted] = org.seed("Lead", [{"LastName": "Conv", "Company": "Y", "Email": "conv@example.com"}])
    org.convert_lead(converted)
    [conv_contact] = [r["Id"] for r in org.query("SELECT Id FROM Contact WHERE Email = 'conv@example.com'")]
    # created in Salesforce after the last poll: the store does not know them yet
    harness.settle()
    org.advance_clock(5)
    harness.add_contacts(
        [
            {"email": "lead@example.com", "job_title": "New"},
            {"email": "contact@example.com", "first_name": "Cora"},
            {"email": "conv@example.com"},
        ]
    )
    org.reset_stats()
    outcome = harness.push()
    assert (outcome.counts.linked, outcome.counts.created) == (3, 0)
    assert harness.contact("lead@example.com")["salesforce_id"] == lead
    assert harness.contact("contact@example.com")["salesforce_id"] == contact
    assert harness.contact("conv@example.com")["salesforce_id"] == conv_contact  # the Contact, not the Lead
    assert org.stats()["records"]["Lead"] == 2 and org.stats()["records"]["Contact"] == 2
    # the store values are newer than the records: written over them in the same run
    assert harness.salesforce("Lead", "lead@example.com")[0]["Title"] == "New"
    assert harness.salesforce("Contact", "contact@example.com")[0]["FirstName"] == "Cora"
    assert outcome.counts.updated == 2 and outcome.counts.unchanged == 1

    harness.settle()
    harness.poll()
    org.reset_stats()
    assert harness.push().counts.created == 0 and writes(org) == 0


def test_later_contacts_go_only_when_asked(harness: Harness) -> None:
    org = harness.org
    harness.config = config(push={"create": "later"})
    harness.add_contacts([{"email": f"l{i}@example.com", "last_name": f"L{i}"} for i in range(4)])
    org.reset_stats()
    assert harness.push().counts.created == 0 and writes(org) == 0
    assert org.stats()["requests"].get("query", 0) == 0  # nothing to search for either

    with harness.store.begin() as conn:
        assert mark_for_push(conn, ["L0@example.com", "nobody@example.com"]) == (1, ["nobody@example.com"])
        assert push_summary(conn)["requested"] == 1
    assert harness.push().counts.created == 1
    assert [r["LastName"] for r in harness.salesforce("Lead", "l0@example.com")] == ["L0"]
    assert harness.push(emails=("l1@example.com",)).counts.created == 1
    assert harness.contact("l2@example.com")["salesforce_id"] is None
    assert harness.push(all_pending=True).counts.created == 2
    assert org.stats()["records"]["Lead"] == 4
    with harness.store.begin() as conn:
        assert push_summary(conn)["requested"] == 0


def test_rules_per_source_and_as_contact(harness: Harness) -> None:
    org = harness.org
    harness.config = config(
        push={
            "create": "never",
            "as": "Lead",
            "sources": {
                "campaigns": {"Webinar": {"create": "immediately", "as": "Contact"}},
                "manual": {"create": "later"},
            },
        }
    )
    [member, _other] = harness.add_contacts(
        [{"email": "member@example.com", "last_name": "Member"}, {"email": "other@example.com"}]
    )
    with harness.store.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO campaign_types (name, statuses, default_status) "
                "VALUES ('t', '[\"Sent\"]', 'Sent')"
            )
        )
        conn.execute(
            sa.text("INSERT INTO campaigns (name, campaign_type_id) SELECT 'Webinar', id FROM campaign_types")
        )
        conn.execute(
            sa.text(
                "INSERT INTO campaign_members (campaign_id, contact_id, status) "
                "SELECT id, :c, 'Sent' FROM campaigns"
            ),
            {"c": member},
        )
    assert harness.push().counts.created == 1
    assert harness.contact("member@example.com")["salesforce_type"] == "Contact"
    assert harness.salesforce("Contact", "member@example.com")[0]["LastName"] == "Member"
    assert harness.contact("other@example.com")["salesforce_id"] is None  # manual: later
    assert harness.push(all_pending=True).counts.created == 1
    assert harness.contact("other@example.com")["salesforce_type"] == "Lead"
    assert org.stats()["records"]["Lead"] == 1


# -- preferences both ways, and no echo ----------------------------------------------------------

EXPECTED = {
    # contact: (store value, Salesforce value) after one poll and one push
    "most_recent": {
        "sf": ("SF", "SF"),
        "store": ("Store", "Store"),
        "both_store_newer": ("Store", "Store"),
        "both_sf_newer": ("SF2", "SF2"),
    },
    "salesforce_wins": {
        "sf": ("SF", "SF"),
        "store": ("Old", "Old"),
        "both_store_newer": ("SF", "SF"),
        "both_sf_newer": ("SF2", "SF2"),
    },
    # the store wins both ways: a Salesforce-only edit is marked by the poll and reverted by the push
    "conversion_wins": {
        "sf": ("Old", "Old"),
        "store": ("Store", "Store"),
        "both_store_newer": ("Store", "Store"),
        "both_sf_newer": ("Store", "Store"),
    },
    "do_not_sync": {
        "sf": ("Old", "SF"),
        "store": ("Store", "Old"),
        "both_store_newer": ("Store", "SF"),
        "both_sf_newer": ("Store", "SF2"),
    },
}


@pytest.mark.parametrize("preference", list(EXPECTED))
def test_each_preference_both_ways_then_a_second_poll_and_push_write_nothing(
    harness: Harness, preference: str
) -> None:
    """Title ↔ job_title with `preference`: edited in Salesforce only, in the store only, and on both sides
    (either one newer); after one poll and one push each system holds the expected value, and a second poll and
    push write nothing to either system."""
    org = harness.org
    lead_mappings = {
        "first_name": "FirstName",
        "last_name": "LastName",
        "job_title": {"salesforce": "Title", "preference": preference},
    }
    harness.config = config(field_mappings={"Lead": lead_mappings, "Contact": {}, "Account": {}})
    cases = list(EXPECTED[preference])
    ids = dict(
        zip(
            cases,
            org.seed(
                "Lead",
                [
                    {"LastName": c, "Company": "Acme", "Email": f"{c}@example.com", "Title": "Old"}
                    for c in cases
                ],
            ),
            strict=True,
        )
    )
    harness.settle()
    harness.poll()
    if preference == "do_not_sync":  # the poll does not bring the title: the store has its own
        for case in cases:
            harness.edit_contact(f"{case}@example.com", org.now() - timedelta(seconds=60), job_title="Old")
    org.reset_stats()
    baseline = harness.push()
    assert writes(org) == 0 and baseline.counts.unchanged == len(cases)  # nothing differs: nothing written

    org.advance_clock(5)
    for case in ("sf", "both_store_newer"):
        org.update("Lead", ids[case], {"Title": "SF"})
    org.advance_clock(5)
    for case in ("store", "both_store_newer", "both_sf_newer"):
        harness.edit_contact(f"{case}@example.com", job_title="Store")
    org.advance_clock(5)
    org.update("Lead", ids["both_sf_newer"], {"Title": "SF2"})

    harness.settle()
    harness.poll()
    harness.push()
    for case, (in_store, in_salesforce) in EXPECTED[preference].items():
        email = f"{case}@example.com"
        assert (harness.contact(email)["job_title"], harness.salesforce("Lead", email)[0]["Title"]) == (
            in_store,
            in_salesforce,
        ), case

    store_before = harness.rows(
        "SELECT id, updated_at, field_updated_at, job_title FROM contacts ORDER BY id"
    )
    modified_before = {
        c: harness.salesforce("Lead", f"{c}@example.com")[0]["LastModifiedDate"] for c in cases
    }
    harness.settle()
    org.reset_stats()
    second_poll = harness.poll()
    second_push = harness.push()
    assert writes(org) == 0
    assert second_poll.objects["Lead"].counts.updated == 0
    assert second_push.counts.updated == second_push.counts.created == 0
    assert (
        harness.rows("SELECT id, updated_at, field_updated_at, job_title FROM contacts ORDER BY id")
        == store_before
    )
    assert {
        c: harness.salesforce("Lead", f"{c}@example.com")[0]["LastModifiedDate"] for c in cases
    } == modified_before


# -- volume, per-record errors, conversion ---------------------------------------------------------


PHONE_RULE = {
    "object": "Lead",
    "name": "Phone_Format",
    "condition": {"field": "Phone", "not_matches": r"\+?[0-9 ()-]{7,20}"},
    "error_message": "Phone must be digits, spaces, dashes or parentheses",
    "error_field": "Phone",
}


def test_5000_contacts_in_few_calls_and_one_refused_record_waits_for_a_change(harness: Harness) -> None:
    """5,000 new contacts go as Leads through one Bulk API 2.0 ingest job; the one a validation rule refuses
    is kept with Salesforce's message and not sent again until the contact changes."""
    org = harness.org
    org.set_validation_rules([PHONE_RULE])
    harness.settle()
    harness.poll()  # the push runs after a poll: it searches only what changed in Salesforce since
    stamp = org.now().isoformat()
    harness.execute(
        """INSERT INTO contacts (email, email_normalized, first_name, last_name, phone, field_updated_at)
        SELECT 'p' || i || '@example.com', 'p' || i || '@example.com', 'First' || i, 'Last' || i,
               CASE WHEN i = 1234 THEN 'call me maybe' ELSE '+1 555 ' || i END,
               jsonb_build_object('first_name', CAST(:stamp AS text), 'last_name', CAST(:stamp AS text),
                                  'phone', CAST(:stamp AS text))
        FROM generate_series(1, 5000) i""",
        stamp=stamp,
    )
    org.reset_stats()
    started = time.perf_counter()
    outcome = harness.push()
    elapsed = time.perf_counter() - started
    calls = org.stats()["requests"]["api_requests"]
    print(f"5000 contacts pushed: {calls} API calls, {outcome.bulk_jobs} bulk job(s), {elapsed:.1f}s")
    assert calls <= 40 and calls == outcome.budget.calls_made
    assert (outcome.counts.created, outcome.counts.failed, outcome.bulk_jobs) == (4999, 1, 1)
    assert org.stats()["records"]["Lead"] == 4999
    with harness.store.begin() as conn:
        [error] = push_errors(conn)
        assert push_summary(conn)["failed"] == 1
    assert error["email"] == "p1234@example.com"
    assert error["error_code"] == "FIELD_CUSTOM_VALIDATION_EXCEPTION"
    assert "Phone must be digits, spaces, dashes or parentheses" in error["error_message"]
    assert harness.contact("p1234@example.com")["salesforce_id"] is None
    [run] = harness.rows("SELECT counts FROM sync_runs WHERE sync_name = :n", n=PUSH_RUN_NAME)
    assert (run["counts"]["created"], run["counts"]["failed"]) == (4999, 1)

    org.reset_stats()
    assert harness.push().counts.created == 0 and writes(org) == 0  # unchanged: not tried again
    harness.edit_contact("p1234@example.com", phone="+1 555 1234")
    retried = harness.push()
    assert (retried.counts.created, retried.counts.failed) == (1, 0)
    assert [r["Id"] for r in harness.salesforce("Lead", "p1234@example.com")] == [
        harness.contact("p1234@example.com")["salesforce_id"]
    ]
    with harness.store.begin() as conn:
        assert push_errors(conn) == [] and push_summary(conn)["failed"] == 0


def test_a_converted_leads_updates_go_to_its_contact(harness: Harness) -> None:
    org = harness.org
    [lead] = org.seed("Lead", [{"LastName": "Conv", "Company": "Acme", "Email": "conv@example.com"}])
    harness.settle()
    harness.poll()
    assert harness.contact("conv@example.com")["salesforce_id"] == lead
    org.convert_lead(lead)  # not polled yet: the store still links the Lead
    [contact] = [r["Id"] for r in org.query("SELECT Id FROM Contact WHERE Email = 'conv@example.com'")]
    org.advance_clock(5)
    harness.edit_contact("conv@example.com", job_title="Head of Ops")
    outcome = harness.push()
    assert (outcome.counts.relinked, outcome.counts.updated) == (1, 1)
    assert harness.contact("conv@example.com")["salesforce_id"] == contact
    assert harness.salesforce("Contact", "conv@example.com")[0]["Title"] == "Head of Ops"
    harness.settle()
    harness.poll()
    org.reset_stats()
    harness.push()
    assert writes(org) == 0 and harness.contact("conv@example.com")["job_title"] == "Head of Ops"


# -- a push killed at a random moment ---------------------------------------------------------------


def test_a_push_killed_at_a_random_moment_creates_no_second_lead(
    harness: Harness, standin: StandinServer, store_url: str, tmp_path: Path
) -> None:
    """`conversion-sync salesforce push` in a child process, killed (SIGKILL) at a random moment, three times:
    through a Bulk API 2.0 job that takes a few seconds, and through collections; each time a second push
    finishes the work and every email has exactly one Lead."""
    org = harness.org
    org.configure(bulk_polls_before_complete=2)
    rng = random.Random()
    env = {
        **os.environ,
        "CONVERSION_SYNC_ENV": "local",
        STORE_URL_ENV: store_url,
        "SALESFORCE_USERNAME": standin.username,
        "SALESFORCE_PASSWORD": standin.password,
        "SALESFORCE_SECURITY_TOKEN": standin.security_token,
        "SALESFORCE_LOGIN_URL": standin.url,
        "SALESFORCE_CA_BUNDLE": str(standin.ca_path),
    }
    total = 0
    for round_, threshold in enumerate((100, 100, 100_000, 100_000)):
        (tmp_path / str(round_)).mkdir()
        (tmp_path / str(round_) / "salesforce.yaml").write_text(
            yaml.safe_dump({"api_reserve": 0, "push": {"bulk_threshold": threshold}})
        )
        harness.config = config(push={"bulk_threshold": threshold})
        harness.add_contacts(
            [{"email": f"k{round_}-{i}@example.com", "last_name": f"K{i}"} for i in range(600)]
        )
        total += 600
        child = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "conversion_sync.cli",
                "--config",
                str(tmp_path / str(round_)),
                "salesforce",
                "push",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        assert child.stdout is not None
        assert child.stdout.readline().startswith(b"pushing")  # imported, configured: about to log in
        time.sleep(rng.uniform(0.5, 3.0) if threshold < 600 else rng.uniform(0.05, 0.6))
        child.send_signal(signal.SIGKILL)
        output = child.communicate(timeout=30)[0].decode()
        assert "Traceback" not in output and "Error" not in output, output
        before = len(org.query("SELECT Id FROM Lead"))
        finished = harness.push()
        print(
            f"round {round_}: killed with {before - total + 600} of 600 Leads created; the re-run linked "
            f"{finished.counts.recovered} from a remembered job and {finished.counts.linked} found by email, "
            f"created {finished.counts.created}"
        )
        leads = org.query("SELECT Email FROM Lead")
        emails = [r["Email"] for r in leads]
        assert len(emails) == len(set(emails)) == total, f"round {round_}: duplicate or missing Leads"
        unlinked = harness.rows(
            "SELECT email FROM contacts WHERE salesforce_id IS NULL AND email LIKE :p", p=f"k{round_}-%"
        )
        assert unlinked == []


# -- Dagster ----------------------------------------------------------------------------------------


def test_dagster_push_asset_with_launchpad_emails_and_the_after_poll_sensor(harness: Harness) -> None:
    harness.config = config(push={"create": "later"})
    harness.add_contacts([{"email": "one@example.com", "last_name": "One"}, {"email": "two@example.com"}])
    defs = build_salesforce_definitions(harness.config, harness.resource)
    assert PUSH_JOB in {job.name for job in defs.jobs or []}
    [sensor] = [s for s in defs.sensors or [] if s.name == PUSH_SENSOR]
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    push_asset = salesforce_push_asset(harness.config, harness.resource)
    result = dg.materialize(
        [push_asset],
        resources={"contact_store": harness.store, "salesforce": harness.resource},
        run_config={"ops": {PUSH_ASSET: {"config": {"emails": ["one@example.com"]}}}},
    )
    assert result.success
    [materialization] = result.asset_materializations_for_node(PUSH_ASSET)
    metadata = materialization.metadata
    assert (
        metadata["contacts_created"].value == 1 and metadata["api_calls_used"].value == 4
    )  # two searches, one create, one read of the new Lead's LastModifiedDate
    assert harness.contact("one@example.com")["salesforce_type"] == "Lead"
    assert harness.contact("two@example.com")["salesforce_id"] is None
    [run] = harness.rows("SELECT run_id, status FROM sync_runs WHERE sync_name = :n", n=PUSH_RUN_NAME)
    assert run == {"run_id": result.run_id, "status": "success"}


def test_an_empty_salesforce_yaml_maps_the_standard_fields_both_ways(tmp_path: Path) -> None:
    empty = SalesforceConfig.model_validate(yaml.safe_load("") or {})
    lead = {store: (m.salesforce, m.preference) for store, m in empty.field_mappings["Lead"].items()}
    assert lead == {
        "first_name": ("FirstName", "most_recent"),
        "last_name": ("LastName", "most_recent"),
        "job_title": ("Title", "most_recent"),
        "phone": ("Phone", "most_recent"),
        "city": ("City", "most_recent"),
        "company_name": ("Company", "most_recent"),
    }
    assert empty.field_mappings["Contact"]["city"].salesforce == "MailingCity"
    assert empty.field_mappings["Account"]["name"].salesforce == "Name"
    assert (empty.push.create, empty.push.as_) == ("immediately", "Lead")
    assert SalesforceConfig.model_validate({"field_mappings": {}}).field_mappings == {}  # explicitly nothing
    with pytest.raises(ValueError, match="create"):
        SalesforceConfig.model_validate({"push": {"create": "sometimes"}})
