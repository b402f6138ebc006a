"""The schedule every job of this code location uses: a tick while a run of the job is in progress is skipped.

Written once, for the warehouse syncs, the Salesforce poll and the campaign reconciliation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import dagster as dg

if TYPE_CHECKING:
    # what dg.define_asset_job returns; Dagster does not export the class
    from dagster._core.definitions.unresolved_asset_job_definition import (
        UnresolvedAssetJobDefinition as AssetJob,
    )

IN_PROGRESS = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]
"""Run statuses that count as "still running" for the schedules and the `after:` sensors."""


def in_progress_run(
    context: dg.ScheduleEvaluationContext | dg.SensorEvaluationContext | dg.RunStatusSensorContext,
    job_name: str,
) -> str | None:
    """The id of a run of `job_name` that has not finished yet, or None."""
    runs = context.instance.get_runs(filters=dg.RunsFilter(job_name=job_name, statuses=IN_PROGRESS), limit=1)
    return runs[0].run_id if runs else None


def skip_while_running_schedule(
    *,
    name: str,
    cron: str,
    job: AssetJob,
    running: bool,
    description: str,
    busy_message: Callable[[str], str],
    blocked: str | None = None,
) -> dg.ScheduleDefinition:
    """A UTC schedule for `job` that requests a run on each tick, unless a run of the job is in progress
    (skipped with `busy_message(run_id)`) or `blocked` says why it cannot run at all (skipped with that).

    `running` is its default status: a schedule the config disables, or that cannot run, starts stopped.
    """
    job_name = job.name

    @dg.schedule(
        name=name,
        cron_schedule=cron,
        job=job,
        default_status=dg.DefaultScheduleStatus.RUNNING if running else dg.DefaultScheduleStatus.STOPPED,
        description=description,
        execution_timezone="UTC",
    )
    def _schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        if blocked:
            return dg.SkipReason(blocked)
        run_id = in_progress_run(context, job_name)
        if run_id:
            return dg.SkipReason(busy_message(run_id))
        return dg.RunRequest()

    return _schedule


STORE_POOL = "contact_store"
"""Dagster pool of the ops that write the contact store (warehouse syncs, campaign reconciliation)."""
SALESFORCE_POOL = "salesforce_api"
"""Dagster pool of the ops that call Salesforce (poll, push); they write the store too."""
