"""Campaign member reconciliation in Dagster: the `campaign_reconciliation` asset, its job and schedule."""

from __future__ import annotations

import dagster as dg

from conversion_sync.config.salesforce import SalesforceConfig
from conversion_sync.defs.campaigns.assets import RECONCILE_ASSET, campaign_reconciliation_asset
from conversion_sync.defs.salesforce.jobs import salesforce_job_and_schedule
from conversion_sync.salesforce.client import SalesforceSettings

__all__ = ["RECONCILE_ASSET", "RECONCILE_JOB", "RECONCILE_SCHEDULE", "build_defs"]

RECONCILE_JOB = "campaign_reconciliation_job"
RECONCILE_SCHEDULE = "campaign_reconciliation_schedule"


def build_defs(config: SalesforceConfig, salesforce: SalesforceSettings) -> dg.Definitions:
    """The reconciliation asset, job and schedule; without credentials the schedule is stopped."""
    job, schedule = salesforce_job_and_schedule(
        salesforce,
        asset=RECONCILE_ASSET,
        job_name=RECONCILE_JOB,
        schedule_name=RECONCILE_SCHEDULE,
        phrase=config.reconcile_schedule,
        description="Reconcile store campaign members with their linked Salesforce campaigns, both ways",
        tag="campaigns",
        what="campaign reconciliation",
        short="reconciliation",
    )
    return dg.Definitions(
        assets=[campaign_reconciliation_asset(config, salesforce)],
        jobs=[job],
        schedules=[schedule] if schedule else [],
    )
