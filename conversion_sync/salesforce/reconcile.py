"""The campaign reconciliation's former home: its names now live in conversion_sync.salesforce.campaigns
(reconciler, outcomes, salesforce_writes, member_errors, lead_jobs); imported here for existing callers."""

from conversion_sync.salesforce.campaigns.lead_jobs import LEAD_JOBS_STATE, PLACEHOLDER
from conversion_sync.salesforce.campaigns.member_errors import (
    ERROR_PREVIEW_LIMIT,
    ERROR_RETENTION_DAYS,
    Direction,
    ErrorTally,
    MemberError,
)
from conversion_sync.salesforce.campaigns.outcomes import (
    CampaignLinkError,
    CampaignOutcome,
    MemberCounts,
    ReconcileOutcome,
)
from conversion_sync.salesforce.campaigns.reconciler import (
    RECONCILE_LOCK_KEY,
    CampaignReconciler,
    ReconcileInProgress,
)
from conversion_sync.salesforce.campaigns.salesforce_writes import (
    BULK_PUSH_THRESHOLD,
    COLLECTION_SIZE,
    RecordResult,
)

__all__ = [
    "BULK_PUSH_THRESHOLD",
    "COLLECTION_SIZE",
    "ERROR_PREVIEW_LIMIT",
    "ERROR_RETENTION_DAYS",
    "LEAD_JOBS_STATE",
    "PLACEHOLDER",
    "RECONCILE_LOCK_KEY",
    "CampaignLinkError",
    "CampaignOutcome",
    "CampaignReconciler",
    "Direction",
    "ErrorTally",
    "MemberCounts",
    "MemberError",
    "ReconcileInProgress",
    "ReconcileOutcome",
    "RecordResult",
]
