"""Salesforce in Dagster: the `salesforce_poll` asset, its job and schedule, and the contact push beside it."""

from __future__ import annotations

import dagster as dg

from conversion_sync.config.salesforce import SalesforceConfig
from conversion_sync.defs.salesforce.assets import (
    POLL_ASSET,
    POLL_CHECK,
    SALESFORCE_GROUP,
    salesforce_poll_asset,
)
from conversion_sync.defs.salesforce.jobs import salesforce_job_and_schedule
from conversion_sync.defs.salesforce.push import (
    PUSH_ASSET,
    PUSH_JOB,
    PUSH_SCHEDULE,
    PUSH_SENSOR,
    build_push_defs,
)
from conversion_sync.salesforce.client import SalesforceSettings

__all__ = [
    "POLL_ASSET",
    "POLL_CHECK",
    "POLL_JOB",
    "POLL_SCHEDULE",
    "PUSH_ASSET",
    "PUSH_JOB",
    "PUSH_SCHEDULE",
    "PUSH_SENSOR",
    "SALESFORCE_GROUP",
    "build_defs",
]

POLL_JOB = "salesforce_poll_job"
POLL_SCHEDULE = "salesforce_poll_schedule"


def build_defs(config: SalesforceConfig, salesforce: SalesforceSettings) -> dg.Definitions:
    """The poll asset, job and schedule; without credentials they load, say why, and the schedule is stopped."""
    job, schedule = salesforce_job_and_schedule(
        salesforce,
        asset=POLL_ASSET,
        job_name=POLL_JOB,
        schedule_name=POLL_SCHEDULE,
        phrase=config.poll_schedule,
        description="Poll Salesforce for changed Accounts, Leads and Contacts",
        tag="poll",
        what="Salesforce poll",
        short="poll",
    )
    poll = dg.Definitions(
        assets=[salesforce_poll_asset(config, salesforce)],
        jobs=[job],
        schedules=[schedule] if schedule else [],
    )
    return dg.Definitions.merge(poll, build_push_defs(config, salesforce, job))
