"""A Salesforce asset's job and schedule: the schedule skips a tick while the job runs, and is stopped (and
skips every tick) while Salesforce has no credentials."""

from __future__ import annotations

from typing import TYPE_CHECKING

import dagster as dg

from conversion_sync.config.schedules import schedule_to_cron
from conversion_sync.defs.automation import skip_while_running_schedule
from conversion_sync.salesforce.client import SalesforceSettings

if TYPE_CHECKING:
    from conversion_sync.defs.automation import AssetJob

SALESFORCE_TAG = "conversion_sync/salesforce"


def salesforce_job_and_schedule(
    salesforce: SalesforceSettings,
    *,
    asset: str,
    job_name: str,
    schedule_name: str,
    phrase: str,
    description: str,
    tag: str,
    what: str,
    short: str,
) -> tuple[AssetJob, dg.ScheduleDefinition | None]:
    """The job that materializes `asset`, and its schedule for `phrase` (None for `manual`).

    `what` names a run in skip messages ("the previous {what} is still running"), `short` in the
    schedule's description ("a tick while the previous {short} runs is skipped").
    """
    job = dg.define_asset_job(
        job_name,
        selection=dg.AssetSelection.assets(asset),
        description=description,
        tags={SALESFORCE_TAG: tag},
    )
    cron = schedule_to_cron(phrase)
    if cron is None:
        return job, None
    not_configured = salesforce.not_configured_reason
    schedule = skip_while_running_schedule(
        name=schedule_name,
        cron=cron,
        job=job,
        running=not not_configured,
        description=(
            f"{phrase} ({cron}); a tick while the previous {short} runs is skipped"
            + (f". Stopped: {not_configured}" if not_configured else "")
        ),
        busy_message=lambda run_id: f"the previous {what} is still running (run {run_id}); tick skipped",
        blocked=f"Salesforce is not configured: {not_configured}" if not_configured else None,
    )
    return job, schedule
