"""Salesforce polling end to end: the real simple-salesforce over HTTPS against the stand-in, a real store."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa
from dagster._core.storage.dagster_run import DagsterRun

from conversion_sync.config.salesforce import SalesforceConfig
from conversion_sync.defs.salesforce import POLL_ASSET, POLL_JOB, POLL_SCHEDULE
from conversion_sync.defs.salesforce import build_defs as build_salesforce_definitions
from conversion_sync.salesforce.budget import ApiBudget
from conversion_sync.salesforce.client import ENV_VARS, SalesforceApiError, SalesforceSettings
from conversion_sync.salesforce.poller import (
    PollOutcome,
    SalesforceMappingError,
    SalesforcePoller,
    read_cursor,
)
from conversion_sync.store.contact_store import ContactStore
from conversion_sync.store.identity import IdentityMatcher
from conversion_sync_dev.salesforce_standin import Org, StandinServer

MAPPINGS: dict[str, Any] = {
    "Contact": {
        "first_name": "FirstName",
        "last_name": "LastName",
        "job_title": {"salesforce": "Title", "preference": "salesforce_wins"},
        "phone": {"salesforce": "Phone", "preference": "do_not_sync"},
        "city": "MailingCity",
        "opted_out": "HasOptedOutOfEmail",
    },
    "Lead": {
        "first_name": "FirstName",
        "last_name": "LastName",
        "company_name": {"salesforce": "Company", "preference": "conversion_wins"},
    },
    "Account": {"name": "Name", "employees": "NumberOfEmployees"},
}


def config(**overrides: Any) -> SalesforceConfig:
    return SalesforceConfig(
        **{"poll_overlap": "10 minutes", "api_reserve": 0, "field_mappings": MAPPINGS, **overrides}
    )


@dataclass
class Harness:
    """A store, the stand-in org and a resource pointed at it; `poll()` runs one poll with the org's clock."""

    org: Org
    store: ContactStore
    resource: SalesforceSettings
    config: SalesforceConfig

    def settle(self) -> None:
        """Move the org clock past the upper-bound lag, so everything changed so far is polled."""
        self.org.advance_clock(90)

    def poll(self, **overrides: Any) -> PollOutcome:
        poll_config = self.config.model_copy(update=overrides) if overrides else self.config
        client = self.resource.connect(ApiBudget(reserve=poll_config.api_reserve))
        try:
            return SalesforcePoller(
                poll_config, self.store, IdentityMatcher(), client, now=self.org.now
            ).run()
        finally:
            client.close()

    def rows(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        with self.store.begin() as conn:
            return [dict(r) for r in conn.execute(sa.text(sql), params).mappings()]

    def contact(self, salesforce_id: str) -> dict[str, Any]:
        [row] = self.rows("SELECT * FROM contacts WHERE salesforce_id = :id", id=salesforce_id)
        return row

    def execute(self, sql: str, **params: Any) -> Any:
        with self.store.begin() as conn:
            return conn.execute(sa.text(sql), params).scalar()


@pytest.fixture
def harness(store_url: str, standin_org: Org, salesforce_resource: SalesforceSettings) -> Harness:
    return Harness(standin_org, ContactStore(url=store_url), salesforce_resource, config())


def seed_contacts(org: Org, n: int, prefix: str = "p", **extra: Any) -> list[str]:
    return org.seed(
        "Contact",
        [{"LastName": f"Person {i}", "Email": f"{prefix}{i}@example.com", **extra} for i in range(n)],
    )


# -- paging, idempotence, cursors -------------------------------------------------------------


def test_4500_changed_contacts_in_three_pages_then_a_repeat_poll_writes_nothing(harness: Harness) -> None:
    org = harness.org
    seed_contacts(org, 4500, FirstName="Ada")
    harness.settle()
    org.reset_stats()
    first = harness.poll()
    requests = org.stats()["requests"]
    # Account and Lead: one (empty) query each; Contact: one query + 2 query_more = 3 pages of ≤ 2000
    assert requests["queryAll"] == 3 and requests["query_more"] == 2
    assert requests["api_requests"] == 5 == first.budget.calls_made
    contact = first.objects["Contact"]
    assert (contact.counts.read, contact.counts.created, contact.batches) == (4500, 4500, 3)
    assert first.complete and first.stopped_early is None
    assert harness.execute("SELECT count(DISTINCT salesforce_id) FROM contacts") == 4500
    before = harness.rows("SELECT id, updated_at, field_updated_at FROM contacts ORDER BY id")

    harness.settle()
    org.reset_stats()
    second = harness.poll()
    assert org.stats()["requests"]["api_requests"] == 5  # the overlap window re-reads the same pages
    counts = second.objects["Contact"].counts
    assert (counts.read, counts.created, counts.updated, counts.unchanged) == (4500, 0, 0, 4500)
    assert harness.rows("SELECT id, updated_at, field_updated_at FROM contacts ORDER BY id") == before


def test_cursor_moves_to_the_upper_bound_and_records_inside_the_lag_wait(harness: Harness) -> None:
    org = harness.org
    [early] = seed_contacts(org, 1, prefix="early")
    harness.settle()
    before = (org.now() - timedelta(minutes=1)).replace(microsecond=0)
    first = harness.poll()
    after = (org.now() - timedelta(minutes=1)).replace(microsecond=0)
    assert before <= first.upper_bound <= after  # the org clock may tick a second during the poll
    with harness.store.begin() as conn:
        assert read_cursor(conn, "Contact") == first.upper_bound
    [late] = seed_contacts(org, 1, prefix="late")  # modified now: newer than now - 1 minute
    second = harness.poll()
    assert second.objects["Contact"].counts.created == 0
    harness.settle()
    third = harness.poll()
    assert third.objects["Contact"].counts.created == 1
    assert harness.contact(late)["email"] == "late0@example.com"
    assert harness.contact(early)


def test_late_commit_inside_the_overlap_is_not_lost(harness: Harness) -> None:
    org = harness.org
    seed_contacts(org, 2)
    harness.settle()
    first = harness.poll()
    [late] = seed_contacts(org, 1, prefix="late")
    # a transaction that committed after the last poll, stamped before that poll's cursor
    org.backdate([late], first.upper_bound - timedelta(minutes=3))
    harness.settle()
    second = harness.poll()
    assert second.objects["Contact"].counts.created == 1
    assert harness.contact(late)["email"] == "late0@example.com"


# -- identity rules -------------------------------------------------------------------------------


def test_identity_rules(harness: Harness) -> None:
    org = harness.org
    linked_id, by_email_id, new_id, twin_a, twin_b, other_id = org.seed(
        "Contact",
        [
            {"LastName": "Linked", "Email": "changed@example.com"},
            {"LastName": "ByEmail", "Email": "Match@Example.com"},
            {"LastName": "New", "Email": "new@example.com"},
            {"LastName": "TwinA", "Email": "twin@example.com"},
            {"LastName": "TwinB", "Email": "twin@example.com"},
            {"LastName": "Other", "Email": "taken@example.com"},
        ],
    )
    with harness.store.begin() as conn:
        conn.execute(
            sa.text(
                """INSERT INTO contacts (email, email_normalized, salesforce_id, salesforce_type, updated_at) VALUES
                ('old@example.com', 'old@example.com', :linked, 'Contact', now()),
                ('match@example.com', 'match@example.com', NULL, NULL, now() - interval '2 days'),
                ('match@example.com', 'match@example.com', NULL, NULL, now() - interval '1 day'),
                ('taken@example.com', 'taken@example.com', '003Kc00000000zzzzz', 'Contact', now())"""
            ),
            {"linked": linked_id},
        )
    ids = {r["email"]: r["id"] for r in harness.rows("SELECT id, email FROM contacts ORDER BY updated_at")}
    harness.settle()
    outcome = harness.poll()
    counts = outcome.objects["Contact"].counts
    # rule 1: the contact linked to the Salesforce id is the one updated, whatever its email
    assert harness.contact(linked_id)["id"] == ids["old@example.com"]
    # rule 2: the most recently updated unlinked contact with the email gets linked
    newest_match = harness.rows(
        "SELECT id FROM contacts WHERE email = 'match@example.com' ORDER BY updated_at DESC"
    )[0]["id"]
    assert harness.contact(by_email_id)["id"] == newest_match
    # rule 3: a new contact; two Salesforce contacts with one email give two contacts
    assert harness.contact(new_id)["email"] == "new@example.com"
    assert harness.contact(twin_a)["id"] != harness.contact(twin_b)["id"]
    # an email whose contact is linked to another Salesforce id gives a new contact
    assert harness.contact(other_id)["id"] != ids["taken@example.com"]
    assert (counts.created, counts.linked, counts.updated) == (4, 1, 1)


# -- lifecycle: conversion, account move, merge, delete, no email ------------------------------


def test_converted_lead_keeps_its_store_contact(harness: Harness) -> None:
    org = harness.org
    [lead] = org.seed(
        "Lead", [{"LastName": "Lovelace", "Company": "Analytical Engines", "Email": "ada@ex.com"}]
    )
    harness.settle()
    harness.poll()
    store_contact = harness.contact(lead)
    assert store_contact["salesforce_type"] == "Lead"
    assert store_contact["company_name"] == "Analytical Engines"
    converted = org.convert_lead(lead)
    harness.settle()
    outcome = harness.poll()
    now_contact = harness.contact(converted["contactId"])
    assert now_contact["id"] == store_contact["id"]
    assert now_contact["salesforce_type"] == "Contact"
    company = harness.rows(
        "SELECT id, name FROM companies WHERE salesforce_account_id = :a", a=converted["accountId"]
    )[0]
    assert now_contact["company_id"] == company["id"] and company["name"] == "Analytical Engines"
    assert harness.execute("SELECT count(*) FROM contacts") == 1
    assert outcome.objects["Lead"].counts.relinked == 1
    assert outcome.objects["Contact"].counts.created == 0


def test_lead_converted_into_a_contact_that_has_its_own_store_contact_is_reported(harness: Harness) -> None:
    org = harness.org
    [lead] = org.seed("Lead", [{"LastName": "Hopper", "Company": "Navy", "Email": "grace@ex.com"}])
    [existing] = org.seed("Contact", [{"LastName": "Hopper", "Email": "grace.hopper@ex.com"}])
    harness.settle()
    harness.poll()
    lead_contact, kept = harness.contact(lead)["id"], harness.contact(existing)["id"]
    org.convert_lead(lead, contact_id=existing)
    harness.settle()
    outcome = harness.poll()
    assert harness.contact(existing)["id"] == kept
    assert (
        harness.rows("SELECT salesforce_id FROM contacts WHERE id = :i", i=lead_contact)[0]["salesforce_id"]
        is None
    )
    assert outcome.objects["Lead"].counts.conflicts == 1
    assert outcome.conflicts == [
        {
            "kind": "converted",
            "salesforce_id": lead,
            "now_salesforce_id": existing,
            "unlinked_contact_id": lead_contact,
            "kept_contact_id": kept,
        }
    ]


def test_moving_account_moves_company_and_accounts_sync_fields(harness: Harness) -> None:
    org = harness.org
    first, second = org.seed("Account", [{"Name": "Acme", "NumberOfEmployees": 10}, {"Name": "Globex"}])
    [person] = seed_contacts(org, 1, AccountId=first)
    harness.settle()
    outcome = harness.poll()
    companies = {r["salesforce_account_id"]: r for r in harness.rows("SELECT * FROM companies")}
    assert companies[first]["name"] == "Acme" and companies[first]["fields"] == {"employees": 10}
    assert set(companies[first]["field_updated_at"]) == {"name", "employees"}
    assert outcome.objects["Account"].counts.created == 2
    assert harness.contact(person)["company_id"] == companies[first]["id"]
    org.update("Contact", person, {"AccountId": second})
    org.update("Account", second, {"Name": "Globex Corp"})
    harness.settle()
    outcome = harness.poll()
    assert harness.contact(person)["company_id"] == companies[second]["id"]
    assert harness.rows("SELECT name FROM companies WHERE id = :i", i=companies[second]["id"])[0]["name"] == (
        "Globex Corp"
    )
    assert outcome.objects["Contact"].counts.updated == 1
    assert (outcome.objects["Account"].counts.updated, outcome.objects["Account"].counts.unchanged) == (1, 1)


def test_merged_contact_relinks_to_master_or_reports(harness: Harness) -> None:
    org = harness.org
    [duplicate, other_dup, other_master] = seed_contacts(org, 3, prefix="dup")
    harness.settle()
    harness.poll()
    moving = harness.contact(duplicate)["id"]
    [master] = org.seed("Contact", [{"LastName": "Master", "Email": "master@example.com"}])
    org.merge(master, [duplicate])  # the master is new to the store: the duplicate's contact moves to it
    org.merge(other_master, [other_dup])  # both known: the master's contact stays, the other is unlinked
    harness.settle()
    outcome = harness.poll()
    counts = outcome.objects["Contact"].counts
    assert harness.contact(master)["id"] == moving
    assert (counts.relinked, counts.conflicts, counts.created) == (1, 1, 0)
    assert harness.execute("SELECT count(*) FROM contacts") == 3
    assert harness.execute("SELECT count(*) FROM contacts WHERE salesforce_id IS NULL") == 1
    assert [c["kind"] for c in outcome.conflicts] == ["merged"]


def test_deleted_record_unlinks_and_contact_stays(harness: Harness) -> None:
    org = harness.org
    [gone, kept] = seed_contacts(org, 2)
    harness.settle()
    harness.poll()
    store_id = harness.contact(gone)["id"]
    org.delete("Contact", gone)
    harness.settle()
    outcome = harness.poll()
    [row] = harness.rows(
        "SELECT salesforce_id, salesforce_type, email FROM contacts WHERE id = :i", i=store_id
    )
    assert row == {"salesforce_id": None, "salesforce_type": None, "email": "p0@example.com"}
    assert outcome.objects["Contact"].counts.unlinked == 1
    assert harness.contact(kept)


def test_records_without_email_are_skipped_and_counted(harness: Harness) -> None:
    org = harness.org
    org.seed("Contact", [{"LastName": "No Email"}, {"LastName": "Blank", "Email": None}])
    org.seed(
        "Lead",
        [{"LastName": "No Email", "Company": "X"}, {"LastName": "Has", "Company": "Y", "Email": "y@y.com"}],
    )
    harness.settle()
    outcome = harness.poll()
    assert outcome.objects["Contact"].counts.skipped_no_email == 2
    assert outcome.objects["Lead"].counts.skipped_no_email == 1
    assert harness.execute("SELECT count(*) FROM contacts") == 1


# -- field sync --------------------------------------------------------------------------------


def test_field_preferences(harness: Harness) -> None:
    org = harness.org
    future = datetime.now(UTC) + timedelta(days=1)
    past = datetime.now(UTC) - timedelta(days=1)
    newer, older = org.seed(
        "Contact",
        [
            {"FirstName": "Sf", "LastName": "Newer", "Title": "SF Title", "Phone": "999", "Email": "a@x.com"},
            {
                "FirstName": "Sf",
                "LastName": "Older",
                "Title": "SF Title",
                "Email": "b@x.com",
                "MailingCity": None,
            },
        ],
    )
    lead_empty, lead_filled = org.seed(
        "Lead",
        [
            {"LastName": "L1", "Company": "Lead Co", "Email": "c@x.com"},
            {"LastName": "L2", "Company": "Lead Co", "Email": "d@x.com"},
        ],
    )
    with harness.store.begin() as conn:
        conn.execute(
            sa.text(
                """INSERT INTO contacts (email, email_normalized, first_name, job_title, phone, city, company_name,
                                         field_updated_at) VALUES
                ('a@x.com', 'a@x.com', 'Store', 'Store Title', '111', 'Berlin', NULL,
                 jsonb_build_object('first_name', CAST(:past AS text), 'job_title', CAST(:future AS text), 'city', CAST(:past AS text))),
                ('b@x.com', 'b@x.com', 'Store', 'Store Title', NULL, 'Paris', NULL,
                 jsonb_build_object('first_name', CAST(:future AS text), 'job_title', CAST(:future AS text), 'city', CAST(:past AS text))),
                ('c@x.com', 'c@x.com', NULL, NULL, NULL, NULL, NULL, '{}'),
                ('d@x.com', 'd@x.com', NULL, NULL, NULL, NULL, 'Store Co', jsonb_build_object('company_name', CAST(:past AS text)))"""
            ),
            {"past": past.isoformat(), "future": future.isoformat()},
        )
    harness.settle()
    harness.poll()
    a, b = harness.contact(newer), harness.contact(older)
    # most_recent: Salesforce's LastModifiedDate is newer than a's first_name, older than b's
    assert (a["first_name"], b["first_name"]) == ("Sf", "Store")
    # salesforce_wins: applies whatever the store's timestamp
    assert a["job_title"] == b["job_title"] == "SF Title"
    # do_not_sync: never read
    assert a["phone"] == "111"
    # a Salesforce null never clears a store value under most_recent
    assert b["city"] == "Paris"
    # custom field (not a column) into custom_fields, typed like the REST API
    assert a["custom_fields"] == {"opted_out": False}
    assert set(a["field_updated_at"]) == {"first_name", "last_name", "job_title", "city", "opted_out"}
    assert a["field_updated_at"]["job_title"] != future.isoformat()
    # conversion_wins: only into an empty store value
    assert harness.contact(lead_empty)["company_name"] == "Lead Co"
    assert harness.contact(lead_filled)["company_name"] == "Store Co"

    org.update("Contact", newer, {"FirstName": "Renamed", "Phone": "000"})
    harness.settle()
    outcome = harness.poll()
    assert harness.contact(newer)["first_name"] == "Renamed"
    assert harness.contact(newer)["phone"] == "111"
    assert outcome.objects["Contact"].counts.updated == 1


def test_unknown_salesforce_field_fails_clearly_and_bad_store_field_is_shown(harness: Harness) -> None:
    seed_contacts(harness.org, 3)
    harness.settle()
    broken = {**MAPPINGS, "Contact": {**MAPPINGS["Contact"], "plan": "Plan__c"}}
    with pytest.raises(SalesforceApiError, match=r"(?s)INVALID_FIELD.*No such column .Plan__c."):
        harness.poll(field_mappings=config(field_mappings=broken).field_mappings)
    assert harness.execute("SELECT count(*) FROM contacts") == 0
    reserved = config(field_mappings={"Contact": {"salesforce_id": "Id"}})
    with pytest.raises(SalesforceMappingError, match=r"field_mappings\.Contact\.salesforce_id"):
        harness.poll(field_mappings=reserved.field_mappings)
    defs = build_salesforce_definitions(reserved, harness.resource)
    [asset] = [a for a in defs.assets if dg.AssetKey(POLL_ASSET) in a.keys]  # type: ignore[union-attr]
    assert "BROKEN FIELD MAPPING" in (asset.specs_by_key[dg.AssetKey(POLL_ASSET)].description or "")


# -- faults and the API budget -------------------------------------------------------------------


def test_expired_session_mid_poll_relogs_in_and_succeeds(harness: Harness) -> None:
    org = harness.org
    seed_contacts(org, 600)
    harness.settle()
    harness.resource = harness.resource.model_copy(update={"query_batch_size": 200})
    org.add_fault("invalid_session", after=3, path_contains="/query")  # the second Contact page
    outcome = harness.poll()
    assert org.stats()["requests"]["login"] == 2
    assert outcome.complete and outcome.objects["Contact"].counts.created == 600


def test_503_twice_is_retried(harness: Harness) -> None:
    org = harness.org
    seed_contacts(org, 5)
    harness.settle()
    org.add_fault("unavailable_503", count=2, after=2)
    outcome = harness.poll()
    assert org.stats()["requests"]["fault:unavailable_503"] == 2
    assert outcome.complete and outcome.objects["Contact"].counts.created == 5
    assert outcome.budget.calls_made == 5


def test_request_limit_stops_cleanly_and_the_next_poll_finishes(harness: Harness) -> None:
    org = harness.org
    seed_contacts(org, 700)
    harness.settle()
    harness.resource = harness.resource.model_copy(update={"query_batch_size": 200})
    org.add_fault("request_limit", after=4)  # Account, Lead, Contact pages 1-2 pass; page 3 is refused
    stopped = harness.poll()
    contact = stopped.objects["Contact"]
    assert stopped.stopped_early and "REQUEST_LIMIT_EXCEEDED" in stopped.stopped_early
    assert not stopped.complete and not contact.complete
    assert contact.counts.read == contact.counts.created == 400
    with harness.store.begin() as conn:
        cursor = read_cursor(conn, "Contact")
    assert cursor is not None and cursor < stopped.upper_bound  # the last committed record, not the bound
    harness.settle()
    finished = harness.poll()
    assert finished.complete
    assert harness.execute("SELECT count(*) FROM contacts") == 700
    assert harness.execute("SELECT count(DISTINCT salesforce_id) FROM contacts") == 700


def test_reserve_stops_before_the_next_call(harness: Harness) -> None:
    org = harness.org
    seed_contacts(org, 500)
    harness.settle()
    harness.resource = harness.resource.model_copy(update={"query_batch_size": 200})
    org.set_limits(max=1000, used=497)
    stopped = harness.poll(api_reserve=500)  # Contact page 1 leaves 500 = the reserve
    assert stopped.stopped_early and "reserve of 500" in stopped.stopped_early
    assert stopped.budget.calls_made == 3 and stopped.budget.remaining == 500
    assert stopped.objects["Contact"].counts.created == 200
    org.set_limits(used=0)
    harness.settle()
    assert harness.poll(api_reserve=500).complete
    assert harness.execute("SELECT count(*) FROM contacts") == 500


def test_bulk_first_load_above_threshold(harness: Harness) -> None:
    org = harness.org
    ids = seed_contacts(org, 300, HasOptedOutOfEmail=True)
    org.delete("Contact", ids[0])
    harness.settle()
    org.reset_stats()
    first = harness.poll(bulk_threshold=100)
    requests = org.stats()["requests"]
    assert first.objects["Contact"].mode == "bulk"
    assert requests["bulk2_query_create"] == 1 and requests["bulk2_query_results"] == 1
    assert first.objects["Contact"].counts.created == 299
    assert harness.contact(ids[1])["custom_fields"] == {"opted_out": True}
    harness.settle()
    second = harness.poll(bulk_threshold=100)  # the overlap re-reads 300 records, above the threshold: Bulk
    assert second.objects["Contact"].mode == "bulk"
    assert second.objects["Contact"].counts.unchanged == 299  # and nothing changes
    org.advance_clock(11 * 60)
    harness.poll(bulk_threshold=100)  # the cursor moves past the seeded records' overlap
    org.update("Contact", ids[1], {"FirstName": "Small"})
    harness.settle()
    third = harness.poll(bulk_threshold=100)  # a small delta from the cursor: REST
    assert third.objects["Contact"].mode == "rest"
    assert (third.objects["Contact"].counts.read, third.objects["Contact"].counts.updated) == (1, 1)


# -- Dagster -----------------------------------------------------------------------------------


PLANTED_PASSWORD = "Pl4nted-Passw0rd-XYZZY"


@pytest.fixture
def planted_env(
    standin: StandinServer, standin_org: Org, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    """SALESFORCE_* pointing at the stand-in, whose password is a distinctive planted secret."""
    monkeypatch.setattr(standin_org, "password", PLANTED_PASSWORD)
    env = {
        "SALESFORCE_LOGIN_URL": standin.url,
        "SALESFORCE_USERNAME": standin.username,
        "SALESFORCE_PASSWORD": PLANTED_PASSWORD,
        "SALESFORCE_SECURITY_TOKEN": standin.security_token,
        "SALESFORCE_CA_BUNDLE": str(standin.ca_path),
    }
    for var in ENV_VARS.values():
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    yield env


def test_dagster_asset_materializes_and_never_shows_secrets(
    store_url: str, standin_org: Org, planted_env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    seed_contacts(standin_org, 30)
    resource = SalesforceSettings.from_env(backoff_seconds=0.01)
    defs = build_salesforce_definitions(config(poll_upper_bound_lag=timedelta(0)), resource)
    [schedule] = [s for s in defs.schedules or [] if s.name == POLL_SCHEDULE]
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    standin_org.add_fault("invalid_session", after=2)
    standin_org.add_fault("unavailable_503", after=3)
    instance = dg.DagsterInstance.ephemeral()
    with caplog.at_level(logging.DEBUG):
        result = dg.materialize(
            defs.assets,
            instance=instance,
            resources={
                "contact_store": ContactStore(),
                "identity": IdentityMatcher(),
                "salesforce": resource,
            },
        )
    assert result.success
    [materialization] = result.asset_materializations_for_node(POLL_ASSET)
    metadata = {k: v.value for k, v in materialization.metadata.items()}
    assert metadata["read_Contact"] == 30 and metadata["contacts_created"] == 30
    assert metadata["complete"] is True and metadata["stopped_early"] == ""
    assert metadata["api_calls_used"] >= 4 and metadata["api_remaining"] > 0
    [check] = result.get_asset_check_evaluations()
    assert check.passed
    sessions = list(standin_org._sessions)
    everything = "\n".join(
        [
            caplog.text,
            str(metadata),
            *(str(e) for e in result.all_events),
            *(str(r) for r in instance.all_logs(result.run_id)),
            str(instance.get_run_by_id(result.run_id)),
        ]
    )
    assert "retrying" in everything and "logging in again" in everything
    for secret in [PLANTED_PASSWORD, planted_env["SALESFORCE_SECURITY_TOKEN"], *sessions]:
        assert secret not in everything


def test_dagster_failure_is_clear_and_keeps_secrets_out(
    store_url: str, standin_org: Org, planted_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SALESFORCE_PASSWORD", "Wr0ng-" + PLANTED_PASSWORD)
    resource = SalesforceSettings.from_env(backoff_seconds=0.01)
    defs = build_salesforce_definitions(config(), resource)
    result = dg.materialize(
        defs.assets,
        resources={"contact_store": ContactStore(), "identity": IdentityMatcher(), "salesforce": resource},
        raise_on_error=False,
    )
    assert not result.success
    error = str(result.get_step_failure_events()[0].event_specific_data.error)
    assert "INVALID_LOGIN" in error and PLANTED_PASSWORD not in error


def test_without_credentials_the_code_location_loads_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ENV_VARS.values():
        monkeypatch.delenv(var, raising=False)
    resource = SalesforceSettings.from_env()
    defs = build_salesforce_definitions(config(), resource)
    [asset] = [a for a in defs.assets if dg.AssetKey(POLL_ASSET) in a.keys]  # type: ignore[union-attr]
    [schedule] = [s for s in defs.schedules or [] if s.name == POLL_SCHEDULE]
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    assert "NOT CONFIGURED" in (asset.specs_by_key[dg.AssetKey(POLL_ASSET)].description or "")
    definitions = dg.Definitions(
        assets=defs.assets,
        jobs=defs.jobs,
        schedules=defs.schedules,
        resources={"contact_store": ContactStore(), "identity": IdentityMatcher(), "salesforce": resource},
    )
    dg.Definitions.validate_loadable(definitions)
    result = dg.materialize(
        defs.assets,
        resources={
            "contact_store": ContactStore(url="postgresql://unused/none"),
            "identity": IdentityMatcher(),
            "salesforce": resource,
        },
        raise_on_error=False,
    )
    assert not result.success
    assert "Salesforce is not configured" in str(
        result.get_step_failure_events()[0].event_specific_data.error
    )


def test_schedule_skips_while_the_previous_poll_runs(planted_env: dict[str, str]) -> None:
    defs = build_salesforce_definitions(config(), SalesforceSettings.from_env())
    [schedule] = [s for s in defs.schedules or [] if s.name == POLL_SCHEDULE]
    assert schedule.name == POLL_SCHEDULE
    with dg.instance_for_test() as instance:
        context = dg.build_schedule_context(instance=instance)
        assert isinstance(schedule.evaluate_tick(context).run_requests, list)
        assert len(schedule.evaluate_tick(context).run_requests or []) == 1
        run_id = str(uuid.uuid4())
        instance.add_run(DagsterRun(job_name=POLL_JOB, run_id=run_id, status=dg.DagsterRunStatus.STARTED))
        data = schedule.evaluate_tick(dg.build_schedule_context(instance=instance))
        assert not data.run_requests
        assert data.skip_message and run_id in data.skip_message
