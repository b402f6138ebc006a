"""What a campaign reconciliation reports: member counts, each campaign's outcome, the run's outcome."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from conversion_sync.salesforce.budget import ApiBudget


class CampaignLinkError(RuntimeError):
    """A linked campaign cannot be reconciled (its Salesforce campaign is gone, …); the others go on."""

    def __init__(self, message: str, code: str = "campaign_failed") -> None:
        super().__init__(message)
        self.code = code


@dataclass
class MemberCounts:
    """What happened to one campaign's members (or the whole run's)."""

    read_salesforce: int = 0
    imported: int = 0
    """Salesforce members new to the store campaign."""
    updated_in_store: int = 0
    """Store statuses taken from Salesforce (only Salesforce changed, or its LastModifiedDate is newer)."""
    removed_in_store: int = 0
    """Members deleted in Salesforce after a sync and unchanged in the store since: removed from the store."""
    pushed: int = 0
    """Store members created in Salesforce."""
    updated_in_salesforce: int = 0
    """Salesforce statuses taken from the store (only the store changed, or its updated_at is newer)."""
    leads_created: int = 0
    contacts_created: int = 0
    contacts_linked: int = 0
    conflicts: int = 0
    """Both sides changed the status since the last sync: decided by the more recent updated_at."""
    unchanged: int = 0
    skipped_status: int = 0
    """Salesforce members whose status is not in the store campaign type: not imported, reported."""
    skipped_no_email: int = 0
    errors: int = 0
    """New errors: store members not pushed (status missing in Salesforce, Salesforce refused the Lead or
    member, …), a Salesforce person in the campaign twice, the campaign itself failing. An error the
    previous run reported already is standing instead."""
    standing_errors: int = 0
    """Problems (errors and skipped members) the previous run reported already, found again: not reported
    again (their rows say when they were last seen)."""
    removed_in_salesforce: int = 0
    """Salesforce members of store members removed with `campaigns remove-member`: deleted in Salesforce."""

    def add(self, other: MemberCounts) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class CampaignOutcome:
    """One campaign's part of a run."""

    campaign_id: int
    name: str
    salesforce_campaign_id: str | None
    first_link: bool
    counts: MemberCounts = field(default_factory=MemberCounts)
    created_salesforce_campaign: bool = False
    bulk_jobs: int = 0
    api_calls: int = 0
    failed: str | None = None
    standing_failure: bool = False
    """`failed` is the same failure the campaign's previous run reported: not reported again."""
    duration_seconds: float = 0.0


@dataclass
class ReconcileOutcome:
    """Everything a reconciliation run reports (one Dagster materialization)."""

    run_id: str
    budget: ApiBudget
    campaigns: list[CampaignOutcome] = field(default_factory=list)
    stopped_early: str | None = None
    errors_preview: list[dict[str, Any]] = field(default_factory=list)
    duration_seconds: float = 0.0

    @property
    def totals(self) -> MemberCounts:
        total = MemberCounts()
        for campaign in self.campaigns:
            total.add(campaign.counts)
        return total

    @property
    def failed(self) -> list[CampaignOutcome]:
        return [c for c in self.campaigns if c.failed]

    @property
    def new_failures(self) -> list[CampaignOutcome]:
        """Failed campaigns whose failure was not already reported by their previous run."""
        return [c for c in self.campaigns if c.failed and not c.standing_failure]

    @property
    def complete(self) -> bool:
        return self.stopped_early is None and not self.failed
