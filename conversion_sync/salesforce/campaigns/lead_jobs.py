"""Leads for store contacts without a Salesforce record, so they can become campaign members.

A Bulk API 2.0 job that creates Leads is remembered (in sync_state) from the moment it exists until its Leads
are linked to their contacts; a run cut short in between (budget, error) leaves it there and the next run
links those Leads first, so a contact never gets a second Lead."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from functools import partial
from typing import Any

import sqlalchemy as sa

from conversion_sync.salesforce.campaigns.member_errors import MemberError, MemberErrorLog
from conversion_sync.salesforce.campaigns.outcomes import MemberCounts
from conversion_sync.salesforce.campaigns.salesforce_writes import RecordResult, SalesforceWriter
from conversion_sync.salesforce.campaigns.store_campaigns import Campaign
from conversion_sync.store.contact_store import ContactStore
from conversion_sync.store.contacts import lock_identities

LEAD_JOBS_STATE = "campaign_reconcile:{campaign_id}:lead_jobs"
"""sync_state row per campaign: Bulk API 2.0 Lead insert jobs whose results are not linked in the store yet."""

PLACEHOLDER = "[not provided]"
"""Lead.LastName and Lead.Company are required in Salesforce; a contact without them gets this text."""

LEAD_FIELDS = (
    ("LastName", "last_name", 80),
    ("FirstName", "first_name", 40),
    ("Company", "company", 255),
    ("Email", "email", 80),
    ("Title", "job_title", 128),
    ("Phone", "phone", 40),
    ("City", "city", 40),
)
"""Lead field, store column, Salesforce length: what a Lead created for a store contact carries."""

LINK_LEADS_SQL = """
    UPDATE contacts c SET salesforce_id = v.sf_id, salesforce_type = 'Lead', updated_at = now()
    FROM unnest(%(contacts)s::bigint[], %(leads)s::text[]) AS v(contact_id, sf_id)
    WHERE c.id = v.contact_id AND c.salesforce_id IS NULL
    RETURNING c.id, v.sf_id"""

REMEMBER_LEAD_JOB_SQL = """
    INSERT INTO sync_state (sync_name, cursor, last_run_id, updated_at)
    VALUES (%(name)s, jsonb_build_object('jobs', jsonb_build_array(%(job)s::text)), %(run)s, now())
    ON CONFLICT (sync_name) DO UPDATE SET cursor = jsonb_build_object('jobs',
        coalesce(sync_state.cursor -> 'jobs', '[]'::jsonb) || to_jsonb(%(job)s::text)),
        last_run_id = EXCLUDED.last_run_id, updated_at = now()"""

REMEMBERED_LEAD_JOBS_SQL = "SELECT cursor -> 'jobs' FROM sync_state WHERE sync_name = %s"

FORGET_LEAD_JOBS_SQL = "DELETE FROM sync_state WHERE sync_name = %s"


def _clip(value: Any, length: int) -> str | None:
    text = str(value).strip() if value is not None else ""
    return text[:length] if text else None


def lead_record(row: dict[str, Any]) -> dict[str, Any]:
    """The Lead for a store contact: its fields where it has them, PLACEHOLDER for LastName and Company."""
    record: dict[str, Any] = {}
    for sf_field, column, length in LEAD_FIELDS:
        record[sf_field] = _clip(row.get(column), length)
    record["LastName"] = record["LastName"] or PLACEHOLDER
    record["Company"] = record["Company"] or PLACEHOLDER
    if row.get("email"):
        record["Email"] = str(row["email"]).strip()  # never clipped: a clipped email would be another address
    return record


def link_leads(conn: sa.Connection, pairs: Sequence[tuple[int, str | None]]) -> dict[int, str]:
    """Link contacts to the Leads created for them, under the identity lock; a contact that got a
    Salesforce record meanwhile keeps it. Returns the links made (contact id → Lead id)."""
    lock_identities(conn)
    done = conn.exec_driver_sql(
        LINK_LEADS_SQL, {"contacts": [c for c, _ in pairs], "leads": [lead for _, lead in pairs]}
    ).all()
    return {contact_id: str(sf) for contact_id, sf in done}


def contacts_by_unique_email(pending: list[dict[str, Any]]) -> dict[str, int]:
    """Trimmed email → contact id, for the emails only one pending contact has (a Lead matches by Email)."""
    emails = Counter(str(row["email"]).strip() for row in pending if row.get("email"))
    return {
        str(row["email"]).strip(): row["contact_id"]
        for row in pending
        if row.get("email") and emails[str(row["email"]).strip()] == 1
    }


def lead_error(row: dict[str, Any], result: RecordResult) -> MemberError:
    return MemberError(
        "store_to_salesforce",
        result.code or "lead_not_created",
        f"Salesforce refused the Lead for this contact: {result.message}; member not pushed",
        contact_id=row["contact_id"],
        email=row["email"],
        status=row["status"],
    )


class LeadJobs:
    """Creates the Leads a campaign push needs and links them to their contacts, batch by batch."""

    def __init__(
        self,
        store: ContactStore,
        writer: SalesforceWriter,
        errors: MemberErrorLog,
        run_id: str,
        log: logging.Logger,
    ) -> None:
        self.store = store
        self.writer = writer
        self.errors = errors
        self.run_id = run_id
        self.log = log

    def create_leads(
        self, campaign: Campaign, pending: list[dict[str, Any]], counts: MemberCounts
    ) -> dict[int, str]:
        """Leads for contacts without a Salesforce record (after linking those an interrupted run created);
        each batch's links are committed at once. Returns contact id → Lead id of every contact linked."""
        linked = self.link_unread_jobs(campaign, pending)
        pending = [row for row in pending if row["contact_id"] not in linked]
        records = [lead_record(row) for row in pending]
        remember = partial(self.remembered_jobs, campaign)
        for indexes, results in self.writer.write("Lead", "insert", records, ("Email",), remember):
            outcomes = [(pending[i], r) for i, r in zip(indexes, results, strict=True)]
            created = [(row["contact_id"], r.id) for row, r in outcomes if r.ok]
            errors = [lead_error(row, r) for row, r in outcomes if not r.ok]
            with self.store.begin() as conn:
                if created:
                    linked.update(self._link_created(conn, campaign, created))
                tally = self.errors.insert(conn, campaign.id, errors)
            counts.leads_created += len(created)
            tally.count(counts)
        with self.store.begin() as conn:
            self._forget_jobs(conn, campaign)  # every job's Leads are linked now
        return linked

    def _link_created(
        self, conn: sa.Connection, campaign: Campaign, created: list[tuple[int, str | None]]
    ) -> dict[int, str]:
        done = link_leads(conn, created)
        if len(done) < len(created):
            self.log.warning(
                f"campaign '{campaign.name}': {len(created) - len(done)} contact(s) were linked to "
                "a Salesforce record by another process while their Lead was created; the new "
                "Lead(s) stay unlinked"
            )
        return done

    def remembered_jobs(self, campaign: Campaign, add: str | None = None) -> list[str]:
        """The campaign's Lead insert jobs whose results are not linked yet (`add`: one more, committed now)."""
        name = LEAD_JOBS_STATE.format(campaign_id=campaign.id)
        with self.store.begin() as conn:
            if add is not None:
                conn.exec_driver_sql(REMEMBER_LEAD_JOB_SQL, {"name": name, "job": add, "run": self.run_id})
            jobs = conn.exec_driver_sql(REMEMBERED_LEAD_JOBS_SQL, (name,)).scalar()
        return [str(j) for j in jobs or []]

    def _forget_jobs(self, conn: sa.Connection, campaign: Campaign) -> None:
        conn.exec_driver_sql(FORGET_LEAD_JOBS_SQL, (LEAD_JOBS_STATE.format(campaign_id=campaign.id),))

    def link_unread_jobs(self, campaign: Campaign, pending: list[dict[str, Any]]) -> dict[int, str]:
        """Link contacts to the Leads that jobs of an earlier, interrupted run created (matched by Email)."""
        jobs = self.remembered_jobs(campaign)
        if not jobs:
            return {}
        contact_by_email = contacts_by_unique_email(pending)
        leads: dict[str, str] = {}
        for job_id in jobs:
            leads.update(self.writer.job_created(job_id, "Lead", ("Email",)))
        pairs = [
            (contact_by_email[email], lead) for email, lead in leads.items() if email in contact_by_email
        ]
        with self.store.begin() as conn:
            done = link_leads(conn, pairs)
            self._forget_jobs(conn, campaign)
        if done:
            self.log.info(
                f"campaign '{campaign.name}': linked {len(done)} contact(s) to the Leads an interrupted run "
                "created (its Bulk API 2.0 results had not been read)"
            )
        return done
