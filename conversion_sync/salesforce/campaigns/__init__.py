"""Store campaigns and their two-way reconciliation with linked Salesforce campaigns.

`store_campaigns` holds the store side (campaign types, campaigns, their Salesforce link, members); the
reconciliation is `reconciler.CampaignReconciler`, built from `import_members` (Salesforce → store),
`push_members` (store → Salesforce), `lead_jobs` (Leads for contacts without a Salesforce record) and
`member_errors` (what could not be reconciled, kept per run).
"""

from conversion_sync.salesforce.campaigns.store_campaigns import (
    LINK_MODES,
    Campaign,
    CampaignError,
    CampaignType,
    LinkMode,
    MemberChange,
    add_member,
    campaign_errors,
    create_campaign,
    create_campaign_type,
    get_campaign,
    get_campaign_type,
    link_campaign,
    linked_campaigns,
    list_campaign_types,
    list_campaigns,
    mark_reconciled,
    salesforce_campaign_id,
    set_salesforce_campaign,
)

__all__ = [
    "LINK_MODES",
    "Campaign",
    "CampaignError",
    "CampaignType",
    "LinkMode",
    "MemberChange",
    "add_member",
    "campaign_errors",
    "create_campaign",
    "create_campaign_type",
    "get_campaign",
    "get_campaign_type",
    "link_campaign",
    "linked_campaigns",
    "list_campaign_types",
    "list_campaigns",
    "mark_reconciled",
    "salesforce_campaign_id",
    "set_salesforce_campaign",
]
