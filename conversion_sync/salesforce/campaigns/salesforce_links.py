"""Checking campaign links against Salesforce: a link to a Campaign id that does not exist is refused, and a
linked Campaign deleted since shows as a broken link."""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from conversion_sync.salesforce.budget import ApiBudget
from conversion_sync.salesforce.campaigns.salesforce_campaign import soql_id
from conversion_sync.salesforce.campaigns.store_campaigns import CampaignError
from conversion_sync.salesforce.client import SalesforceApiError, SalesforceClient, SalesforceSettings

CAMPAIGNS_BY_ID_SOQL = "SELECT Id, Name FROM Campaign WHERE Id IN ({ids})"
CHECK_ATTEMPTS = 2
"""Attempts per call when checking interactively: an unreachable Salesforce is said at once, not after minutes."""

RECORD_LINK_CHECK_SQL = """
    UPDATE campaigns SET salesforce_missing_since = CASE
        WHEN salesforce_campaign_id = ANY(:found) THEN NULL
        ELSE coalesce(salesforce_missing_since, now()) END
    WHERE salesforce_campaign_id = ANY(:checked)"""


class SalesforceCheckFailed(CampaignError):
    """Salesforce could not be asked (not configured, unreachable, refused the login)."""


def existing_campaigns(client: SalesforceClient, ids: Sequence[str]) -> dict[str, str]:
    """Id → Name of the Salesforce Campaigns among `ids` that exist (one query per 200 ids)."""
    found: dict[str, str] = {}
    unique = sorted(set(ids))
    for start in range(0, len(unique), 200):
        chunk = ", ".join(f"'{soql_id(i)}'" for i in unique[start : start + 200])
        page = client.query(CAMPAIGNS_BY_ID_SOQL.format(ids=chunk))
        records = list(page.records)
        while page.next_records_url:
            page = client.query_more(page.next_records_url)
            records.extend(page.records)
        found.update({str(r["Id"]): str(r.get("Name") or "") for r in records})
    return found


def connect_for_check(settings: SalesforceSettings, what: str) -> SalesforceClient:
    """A client for an interactive check (few retries); SalesforceCheckFailed saying why there is none."""
    reason = settings.not_configured_reason
    if reason:
        raise SalesforceCheckFailed(f"cannot check {what}: Salesforce is not configured ({reason})")
    quick = settings.model_copy(update={"max_attempts": min(settings.max_attempts, CHECK_ATTEMPTS)})
    try:
        return quick.connect(ApiBudget())
    except SalesforceApiError as exc:
        raise SalesforceCheckFailed(f"cannot check {what}: Salesforce could not be reached: {exc}") from None


def check_campaign_exists(settings: SalesforceSettings, sf_id: str) -> str:
    """The Name of Salesforce Campaign `sf_id`; CampaignError when it does not exist, SalesforceCheckFailed
    when Salesforce cannot be asked."""
    what = f"Salesforce Campaign {sf_id}"
    client = connect_for_check(settings, what)
    try:
        found = existing_campaigns(client, [sf_id])
    except SalesforceApiError as exc:
        raise SalesforceCheckFailed(f"cannot check {what}: Salesforce could not be reached: {exc}") from None
    finally:
        client.close()
    if sf_id not in found:
        raise CampaignError(
            f"Salesforce Campaign {sf_id} does not exist (or the integration user cannot see it); nothing was "
            "linked. Check the id in Salesforce (the Campaign's page address holds it)."
        )
    return found[sf_id]


def record_link_check(conn: sa.Connection, checked: Sequence[str], found: Sequence[str]) -> None:
    """Remember which linked Salesforce campaigns were found and which are missing (a broken link)."""
    conn.execute(sa.text(RECORD_LINK_CHECK_SQL), {"checked": list(checked), "found": list(found)})
