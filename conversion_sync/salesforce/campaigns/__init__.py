"""Store campaigns and their two-way reconciliation with linked Salesforce campaigns.

- `store_campaigns`: the store side: campaign types, campaigns, their Salesforce link, members (what the CLI
  uses; its names are re-exported here); `members`: members added from a CSV file, removed (tombstones),
  listed with their Salesforce side; `salesforce_links`: links checked against Salesforce.
- `reconciler`: `CampaignReconciler`, the run: the lock, then one campaign at a time, built from
  - `salesforce_campaign`: the linked Salesforce campaign, its member statuses and members;
  - `import_members`: Salesforce → store, one set-based transaction per campaign;
  - `push_members`: store → Salesforce, new members and changed statuses;
  - `lead_jobs`: Leads for contacts without a Salesforce record, and the jobs that create them;
  - `member_errors`: what could not be reconciled, kept per run;
  - `salesforce_writes`: collections of 200 or one Bulk API 2.0 job; `outcomes`: what a run reports.
"""

from conversion_sync.salesforce.campaigns.store_campaigns import (
    LINK_MODES,
    Campaign,
    CampaignError,
    CampaignRun,
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
    reconcile_selection,
    record_campaign_run,
    salesforce_campaign_id,
    set_salesforce_campaign,
)

__all__ = [
    "LINK_MODES",
    "Campaign",
    "CampaignError",
    "CampaignRun",
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
    "reconcile_selection",
    "record_campaign_run",
    "salesforce_campaign_id",
    "set_salesforce_campaign",
]
