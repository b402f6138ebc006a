"""`make dev`: a demo store campaign linked to the stand-in's "Summer Conference", with members on both sides."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from conversion_sync.salesforce.campaigns import (
    CampaignError,
    add_member,
    create_campaign,
    create_campaign_type,
    get_campaign_type,
    list_campaigns,
)
from conversion_sync.salesforce.client import ENV_VARS, SalesforceApiError, SalesforceSettings
from conversion_sync.store.contact_store import ContactStore

DEMO_CAMPAIGN = "Summer Conference"
"""A campaign of the stand-in's demo org (seed_demo): 20 Lead members, statuses Sent/Responded/Registered/Attended."""
DEMO_TYPE = "Conference"
DEMO_STATUSES = ("Sent", "Registered", "Attended", "No Show")
"""The store type: "No Show" is missing from the Salesforce campaign, so one member shows a push error."""
STORE_ONLY_MEMBERS = (
    ("maya.patel@conference.example.com", "Registered"),
    ("jonas.berg@conference.example.com", "Attended"),
    ("lena.ortiz@conference.example.com", "No Show"),
)


def seed_demo_campaign(store_url: str, salesforce_env: Mapping[str, str]) -> str | None:
    """Create the demo campaign unless the store has it; returns the linked Salesforce Campaign id, else None.

    Store members: three of the Salesforce campaign's people (matched by email on the first reconciliation),
    the first with a different, more recent status (the store wins), and three store-only people who get
    Leads (one with "No Show", which the Salesforce campaign lacks: an error for that member only).
    """
    store = ContactStore(url=store_url)
    with store.begin() as conn:
        if any(c.name == DEMO_CAMPAIGN for c in list_campaigns(conn)):
            return None
    settings: dict[str, Any] = {
        field: salesforce_env[var] for field, var in ENV_VARS.items() if salesforce_env.get(var)
    }
    client = SalesforceSettings(**settings).connect()
    try:
        found = client.query(f"SELECT Id FROM Campaign WHERE Name = '{DEMO_CAMPAIGN}' LIMIT 1").records
        if not found:
            return None
        sf_id = str(found[0]["Id"])
        members = client.query(
            "SELECT Id, Status, Lead.Email, Contact.Email FROM CampaignMember "
            f"WHERE CampaignId = '{sf_id}' ORDER BY Id LIMIT 3"
        ).records
    finally:
        client.close()
    with store.begin() as conn:
        try:
            get_campaign_type(conn, DEMO_TYPE)
        except CampaignError:
            create_campaign_type(conn, DEMO_TYPE, DEMO_STATUSES, "Registered")
        create_campaign(conn, DEMO_CAMPAIGN, DEMO_TYPE, "existing", sf_id)
        for i, member in enumerate(members):
            person = member.get("Contact") or member.get("Lead") or {}
            if not person.get("Email"):
                continue
            status = str(member["Status"])
            if i == 0:  # the status mismatch: changed in the store after Salesforce, so the store wins
                status = "Attended" if status != "Attended" else "Registered"
            if status.lower() in {s.lower() for s in DEMO_STATUSES}:
                add_member(conn, DEMO_CAMPAIGN, person["Email"], status)
        for email, status in STORE_ONLY_MEMBERS:
            add_member(conn, DEMO_CAMPAIGN, email, status)
    return sf_id


def seed_demo_campaign_for_launcher(store_url: str, salesforce_env: Mapping[str, str]) -> None:
    """`make dev`: seed the demo campaign, print what happened; a problem is a warning, never fatal."""
    try:
        sf_id = seed_demo_campaign(store_url, salesforce_env)
    except (SalesforceApiError, CampaignError, OSError) as exc:
        print(f"demo campaign not seeded: {exc}", flush=True)
        return
    if sf_id:
        print(
            f"demo campaign '{DEMO_CAMPAIGN}' linked to Salesforce Campaign {sf_id} "
            "(reconciled by campaign_reconciliation_job)",
            flush=True,
        )
