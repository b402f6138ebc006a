"""The contact push end to end: a real store, the stand-in over HTTPS with the unmodified simple-salesforce, the
real poll beside it; every Salesforce write counted from the stand-in's request stats."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest
import sqlalchemy as sa

from conversion_sync.config.salesforce import SalesforceConfig
from conversion_sync.salesforce.budget import ApiBudget
from conversion_sync.salesforce.client import SalesforceSettings
from conversion_sync.salesforce.poller import PollOutcome, SalesforcePoller
from conversion_sync.salesforce.push import (
    PUSH_RUN_NAME,
    PushOptions,
    PushOutcome,
    SalesforcePusher,
    mark_for_push,
    push_summary,
)
from conversion_sync.store.contact_store import ContactStore
from conversion_sync.store.identity import IdentityMatcher
from conversion_sync_dev.salesforce_standin import Org

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

    def execute(self, sql: str, **params: Any) -> Any:
        with self.store.begin() as conn:
            return conn.execute(sa.text(sql), params).scalar()

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
    # two emails searched (one query per object), one collection create
    assert org.stats()["requests"]["query"] == 2 and writes(org) == 1
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
