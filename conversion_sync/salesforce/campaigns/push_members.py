"""Store → Salesforce: deleted members of removed store members, Leads for contacts without a Salesforce record,
then new campaign members, then changed statuses; each batch's outcome is committed before the next."""

from __future__ import annotations

from typing import Any

from conversion_sync.salesforce.campaigns.lead_jobs import LeadJobs
from conversion_sync.salesforce.campaigns.member_errors import MemberError, MemberErrorLog, push_error
from conversion_sync.salesforce.campaigns.outcomes import MemberCounts
from conversion_sync.salesforce.campaigns.salesforce_campaign import StatusLabels
from conversion_sync.salesforce.campaigns.salesforce_writes import COLLECTION_SIZE, SalesforceWriter
from conversion_sync.salesforce.campaigns.store_campaigns import Campaign
from conversion_sync.store.contact_store import ContactStore

MEMBERS_TO_CREATE_SQL = """
    SELECT m.contact_id, m.status, c.email, c.salesforce_id,
           CASE left(c.salesforce_id, 3) WHEN '003' THEN 'Contact' WHEN '00Q' THEN 'Lead'
               ELSE c.salesforce_type END AS salesforce_type,
           c.first_name, c.last_name, c.job_title, c.phone, c.city,
           coalesce(NULLIF(btrim(c.company_name), ''), co.name) AS company
    FROM campaign_members m JOIN contacts c ON c.id = m.contact_id
    LEFT JOIN companies co ON co.id = c.company_id
    WHERE m.campaign_id = %(campaign)s AND m.salesforce_member_id IS NULL
    ORDER BY m.contact_id"""
"""Store members without a Salesforce member, with what a Lead for their contact would carry."""

SAVE_CREATED_MEMBERS_SQL = """
    UPDATE campaign_members m SET salesforce_member_id = v.member_id,
        synced_status = v.status, salesforce_synced_at = now()
    FROM unnest(%(contacts)s::bigint[], %(members)s::text[], %(statuses)s::text[])
        AS v(contact_id, member_id, status)
    WHERE m.campaign_id = %(campaign)s AND m.contact_id = v.contact_id"""

SAVE_DELETED_MEMBERS_SQL = """
    UPDATE campaign_member_tombstones t SET salesforce_member_id = v.member_id, salesforce_deleted_at = now()
    FROM unnest(%(contacts)s::bigint[], %(members)s::text[]) AS v(contact_id, member_id)
    WHERE t.campaign_id = %(campaign)s AND t.contact_id = v.contact_id"""
"""The tombstone of a removed member remembers that its Salesforce member is deleted."""

GONE_CODES = frozenset({"ENTITY_IS_DELETED", "INVALID_CROSS_REFERENCE_KEY", "NOT_FOUND"})
"""A delete refused because the record is gone already: as good as deleted."""

SAVE_UPDATED_STATUSES_SQL = """
    UPDATE campaign_members m SET synced_status = v.status, salesforce_synced_at = now()
    FROM unnest(%(contacts)s::bigint[], %(statuses)s::text[]) AS v(contact_id, status)
    WHERE m.campaign_id = %(campaign)s AND m.contact_id = v.contact_id"""

Labelled = list[tuple[dict[str, Any], str]]
"""Store members with the Salesforce label of their status."""


def with_labels(
    rows: list[dict[str, Any]], labels: StatusLabels, sf_id: str, person_key: str
) -> tuple[Labelled, list[MemberError]]:
    """(members whose status the Salesforce campaign has, with its label; an error for each other one)."""
    labelled: Labelled = []
    missing: list[MemberError] = []
    for row in rows:
        label = labels.get(str(row["status"]).lower())
        if label is not None:
            labelled.append((row, label))
            continue
        missing.append(
            MemberError(
                "store_to_salesforce",
                "status_not_in_salesforce_campaign",
                f"status '{row['status']}' is not a member status of Salesforce campaign {sf_id} "
                f"(it has: {', '.join(sorted(labels.values()))}); member not pushed",
                contact_id=row["contact_id"],
                email=row.get("email"),
                member_id=row.get("member_id"),
                person_id=row[person_key],
                status=row["status"],
            )
        )
    return labelled, missing


def member_record(sf_id: str, row: dict[str, Any], label: str) -> dict[str, Any]:
    """The CampaignMember for a store member whose contact has a Salesforce Lead or Contact."""
    is_lead = row["salesforce_type"] == "Lead"
    return {
        "CampaignId": sf_id,
        "LeadId": row["salesforce_id"] if is_lead else None,
        "ContactId": row["salesforce_id"] if not is_lead else None,
        "Status": label,
    }


class MemberPush:
    """Writes a campaign's store members to its Salesforce campaign."""

    def __init__(
        self, store: ContactStore, writer: SalesforceWriter, errors: MemberErrorLog, leads: LeadJobs
    ) -> None:
        self.store = store
        self.writer = writer
        self.errors = errors
        self.leads = leads

    def run(
        self,
        campaign: Campaign,
        sf_id: str,
        labels: StatusLabels,
        updates: list[dict[str, Any]],
        counts: MemberCounts,
        deletes: list[dict[str, Any]] | None = None,
    ) -> None:
        """Deleted members of removed store members (`deletes`), Leads for contacts without a Salesforce
        record, then new members, then changed statuses (`updates`: the members whose store status won the
        import's pairing)."""
        if deletes:
            self._delete_members(campaign, deletes, counts)
        with self.store.begin() as conn:
            creates = [
                dict(r)
                for r in conn.exec_driver_sql(MEMBERS_TO_CREATE_SQL, {"campaign": campaign.id}).mappings()
            ]
        to_create, missing = with_labels(creates, labels, sf_id, "salesforce_id")
        to_update, missing_too = with_labels(updates, labels, sf_id, "person_id")
        missing += missing_too
        if missing:
            self.errors.record(campaign.id, missing).count(counts)
        need_lead = [row for row, _ in to_create if not row["salesforce_id"]]
        if need_lead:
            leads = self.leads.create_leads(campaign, need_lead, counts)
            for row, _ in to_create:
                if not row["salesforce_id"] and row["contact_id"] in leads:
                    row["salesforce_id"], row["salesforce_type"] = leads[row["contact_id"]], "Lead"
        ready = [(row, label) for row, label in to_create if row["salesforce_id"]]
        if ready:
            self._create_members(campaign, sf_id, ready, counts)
        if to_update:
            self._update_members(campaign, to_update, counts)

    def _create_members(self, campaign: Campaign, sf_id: str, ready: Labelled, counts: MemberCounts) -> None:
        records = [member_record(sf_id, row, label) for row, label in ready]
        batches = self.writer.write("CampaignMember", "insert", records, ("LeadId", "ContactId"))
        for indexes, results in batches:
            outcomes = [(ready[i][0], r) for i, r in zip(indexes, results, strict=True)]
            done = [(row, r.id) for row, r in outcomes if r.ok]
            errors = [
                push_error(row, r, "Salesforce refused the new member") for row, r in outcomes if not r.ok
            ]
            with self.store.begin() as conn:
                if done:
                    conn.exec_driver_sql(
                        SAVE_CREATED_MEMBERS_SQL,
                        {
                            "campaign": campaign.id,
                            "contacts": [row["contact_id"] for row, _ in done],
                            "members": [member for _, member in done],
                            "statuses": [row["status"] for row, _ in done],
                        },
                    )
                tally = self.errors.insert(conn, campaign.id, errors)
            counts.pushed += len(done)
            tally.count(counts)

    def _delete_members(
        self, campaign: Campaign, deletes: list[dict[str, Any]], counts: MemberCounts
    ) -> None:
        """Delete the Salesforce members of removed store members, 200 per call; each batch committed."""
        for start in range(0, len(deletes), COLLECTION_SIZE):
            chunk = deletes[start : start + COLLECTION_SIZE]
            results = self.writer.delete([str(row["member_id"]) for row in chunk])
            outcomes = list(zip(chunk, results, strict=True))
            done = [row for row, r in outcomes if r.ok or r.code in GONE_CODES]
            errors = [
                push_error(row, r, "Salesforce refused to delete the removed member")
                for row, r in outcomes
                if not (r.ok or r.code in GONE_CODES)
            ]
            with self.store.begin() as conn:
                if done:
                    conn.exec_driver_sql(
                        SAVE_DELETED_MEMBERS_SQL,
                        {
                            "campaign": campaign.id,
                            "contacts": [row["contact_id"] for row in done],
                            "members": [row["member_id"] for row in done],
                        },
                    )
                tally = self.errors.insert(conn, campaign.id, errors)
            counts.removed_in_salesforce += len(done)
            tally.count(counts)

    def _update_members(self, campaign: Campaign, to_update: Labelled, counts: MemberCounts) -> None:
        records = [{"Id": row["member_id"], "Status": label} for row, label in to_update]
        for indexes, results in self.writer.write("CampaignMember", "update", records, ("Id",)):
            outcomes = [(to_update[i][0], r) for i, r in zip(indexes, results, strict=True)]
            done = [row for row, r in outcomes if r.ok]
            errors = [
                push_error(row, r, "Salesforce refused the status change") for row, r in outcomes if not r.ok
            ]
            with self.store.begin() as conn:
                if done:
                    conn.exec_driver_sql(
                        SAVE_UPDATED_STATUSES_SQL,
                        {
                            "campaign": campaign.id,
                            "contacts": [row["contact_id"] for row in done],
                            "statuses": [row["status"] for row in done],
                        },
                    )
                tally = self.errors.insert(conn, campaign.id, errors)
            counts.updated_in_salesforce += len(done)
            tally.count(counts)
