"""The Salesforce side of a linked campaign: the campaign itself (created for link `create`), its member
statuses (a link `create` campaign gets its type's), and its members."""

from __future__ import annotations

import logging
from typing import Any

from conversion_sync.salesforce.campaigns.member_errors import MemberError, MemberErrorLog
from conversion_sync.salesforce.campaigns.outcomes import CampaignLinkError, CampaignOutcome
from conversion_sync.salesforce.campaigns.salesforce_writes import SalesforceWriter
from conversion_sync.salesforce.campaigns.store_campaigns import Campaign, set_salesforce_campaign
from conversion_sync.salesforce.client import SalesforceClient
from conversion_sync.store.contact_store import ContactStore

MEMBER_SOQL = (
    "SELECT Id, LeadId, ContactId, Status, LastModifiedDate, Lead.Email, Contact.Email "
    "FROM CampaignMember WHERE CampaignId = '{campaign}' ORDER BY Id"
)
STATUS_SOQL = (
    "SELECT Id, Label, IsDefault, SortOrder FROM CampaignMemberStatus WHERE CampaignId = '{campaign}' "
    "ORDER BY SortOrder, Id"
)

StatusLabels = dict[str, str]
"""A Salesforce campaign's member statuses: lower-cased label → label."""


def soql_id(value: str) -> str:
    """`value` when it can stand in a SOQL literal as a record id; CampaignLinkError otherwise."""
    if not value.isalnum():
        raise CampaignLinkError(f"'{value}' is not a Salesforce id")
    return value


class LinkedSalesforceCampaign:
    """Reads and prepares the Salesforce campaign a store campaign is linked to."""

    def __init__(
        self,
        store: ContactStore,
        client: SalesforceClient,
        writer: SalesforceWriter,
        errors: MemberErrorLog,
        log: logging.Logger,
    ) -> None:
        self.store = store
        self.client = client
        self.writer = writer
        self.errors = errors
        self.log = log

    def open(self, campaign: Campaign, outcome: CampaignOutcome) -> tuple[str, StatusLabels]:
        """(Salesforce campaign id, its status labels); creates the campaign of a link `create` that has none
        yet, gives a link `create` campaign its type's missing statuses."""
        sf_id = campaign.salesforce_campaign_id
        if sf_id is None:
            sf_id, statuses = self._create(campaign, outcome)
        else:
            statuses = self._statuses(sf_id)
            if not statuses:
                raise CampaignLinkError(
                    f"Salesforce campaign {sf_id} was not found (deleted, or not visible to the integration "
                    f"user): link campaign '{campaign.name}' anew (conversion-sync campaigns link)",
                    code="salesforce_campaign_not_found",
                )
            if campaign.salesforce_link == "create":
                statuses = self._add_missing_statuses(campaign, sf_id, statuses, outcome, fresh=False)
        return sf_id, {str(row["Label"]).lower(): str(row["Label"]) for row in statuses}

    def members(self, sf_id: str) -> list[dict[str, Any]]:
        """Every CampaignMember of the Salesforce campaign (pages of 2000)."""
        return self._query_all(MEMBER_SOQL.format(campaign=soql_id(sf_id)))

    def _query_all(self, soql: str) -> list[dict[str, Any]]:
        page = self.client.query(soql)
        records = list(page.records)
        while page.next_records_url:
            page = self.client.query_more(page.next_records_url)
            records.extend(page.records)
        return records

    def _statuses(self, sf_id: str) -> list[dict[str, Any]]:
        return self._query_all(STATUS_SOQL.format(campaign=soql_id(sf_id)))

    def _create(self, campaign: Campaign, outcome: CampaignOutcome) -> tuple[str, list[dict[str, Any]]]:
        """Link `create`: a new Salesforce Campaign with exactly the type's statuses; its id is committed at once."""
        fields = {"Name": campaign.name[:80], "IsActive": True}
        # simple-salesforce types sf.<SObject> as a union that includes its bulk handlers
        created = self.client.call("create Campaign", lambda sf: sf.Campaign.create(fields))  # type: ignore[operator]
        sf_id = str(created["id"])
        with self.store.begin() as conn:
            set_salesforce_campaign(conn, campaign.id, sf_id)
        outcome.salesforce_campaign_id = sf_id
        outcome.created_salesforce_campaign = True
        self.log.info(f"campaign '{campaign.name}': created Salesforce Campaign {sf_id}")
        statuses = self._statuses(sf_id)
        return sf_id, self._add_missing_statuses(campaign, sf_id, statuses, outcome, fresh=True)

    def _add_missing_statuses(
        self,
        campaign: Campaign,
        sf_id: str,
        existing: list[dict[str, Any]],
        outcome: CampaignOutcome,
        *,
        fresh: bool,
    ) -> list[dict[str, Any]]:
        """Give a link `create` campaign the type's statuses it lacks; a `fresh` one also takes the type's
        default and loses Salesforce's own defaults (Sent, Responded) that the type does not list."""
        have = {str(r["Label"]).lower() for r in existing}
        missing = [s for s in campaign.type.statuses if s.lower() not in have]
        statuses = list(existing)
        problems: list[MemberError] = []
        if missing:
            added, problems = self._create_statuses(campaign, sf_id, existing, missing, fresh=fresh)
            statuses += added
        if fresh:
            removed = self._settle_fresh_statuses(campaign, existing)
            statuses = [s for s in statuses if str(s.get("Id")) not in removed]
        if problems:
            self.errors.record(campaign.id, problems).count(outcome.counts)
        return statuses

    def _create_statuses(
        self,
        campaign: Campaign,
        sf_id: str,
        existing: list[dict[str, Any]],
        missing: list[str],
        *,
        fresh: bool,
    ) -> tuple[list[dict[str, Any]], list[MemberError]]:
        """(the statuses created, errors for those Salesforce refused); they sort after the existing ones."""
        order = max((int(r.get("SortOrder") or 0) for r in existing), default=0)
        records = [
            {
                "CampaignId": sf_id,
                "Label": label,
                "SortOrder": order + i + 1,
                "IsDefault": fresh and label == campaign.type.default_status,
                "HasResponded": False,
            }
            for i, label in enumerate(missing)
        ]
        added: list[dict[str, Any]] = []
        problems: list[MemberError] = []
        results = self.writer.collection("POST", "CampaignMemberStatus", records)
        for record, result in zip(records, results, strict=True):
            if result.ok:
                added.append({"Id": result.id, **record})
                continue
            problems.append(
                MemberError(
                    "link",
                    result.code or "status_not_created",
                    f"could not add member status '{record['Label']}' to Salesforce campaign "
                    f"{sf_id}: {result.message}",
                    status=str(record["Label"]),
                )
            )
        return added, problems

    def _settle_fresh_statuses(self, campaign: Campaign, existing: list[dict[str, Any]]) -> set[str]:
        """A new Salesforce campaign: the type's default becomes its default, the statuses Salesforce gave it
        that the type does not list are deleted. Returns the ids deleted."""
        ctype = campaign.type
        have = {str(r["Label"]).lower(): r for r in existing}
        default = have.get(ctype.default_status.lower())
        if default is not None and not default.get("IsDefault"):
            self.writer.collection(
                "PATCH", "CampaignMemberStatus", [{"Id": default["Id"], "IsDefault": True}]
            )
        wanted = {s.lower() for s in ctype.statuses}
        extras = [r for r in existing if str(r["Label"]).lower() not in wanted]
        if not extras:
            return set()
        results = self.writer.delete([str(r["Id"]) for r in extras])
        return {str(r["Id"]) for r, res in zip(extras, results, strict=True) if res.ok}
