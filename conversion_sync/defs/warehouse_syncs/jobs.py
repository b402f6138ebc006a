"""A sync's job, its schedule (skipping a tick while the job runs) and its `after:` sensor."""

from __future__ import annotations

from typing import TYPE_CHECKING

import dagster as dg

from conversion_sync.config.syncs import SyncConfig
from conversion_sync.defs.automation import in_progress_run, skip_while_running_schedule
from conversion_sync.defs.warehouse_syncs.assets import asset_key

if TYPE_CHECKING:
    from conversion_sync.defs.automation import AssetJob

SYNC_TAG = "conversion_sync/sync"
AFTER_RUN_TAG = "conversion_sync/after_run"


def job_name(sync_name: str) -> str:
    return f"sync_{sync_name}"


def sync_job(sync: SyncConfig) -> AssetJob:
    return dg.define_asset_job(
        job_name(sync.name),
        selection=dg.AssetSelection.assets(asset_key(sync.name)),
        description=sync.description or None,
        tags={SYNC_TAG: sync.name},
        # the three steps run one after the other on one store; a process per step only adds seconds
        executor_def=dg.in_process_executor,
    )


def sync_schedule(sync: SyncConfig, job: AssetJob) -> dg.ScheduleDefinition | None:
    """The sync's schedule, None for `manual`; stopped when the sync is disabled."""
    cron = sync.cron_schedule
    if cron is None:
        return None
    return skip_while_running_schedule(
        name=f"{job_name(sync.name)}_schedule",
        cron=cron,
        job=job,
        running=sync.enabled,
        description=f"{sync.schedule} ({cron}); a tick while the previous run is in progress is skipped",
        busy_message=lambda run_id: (
            f"sync '{sync.name}' is still running (run {run_id}); this tick is skipped"
        ),
    )


def after_sensor(sync: SyncConfig, job: AssetJob, upstream_jobs: list[AssetJob]) -> dg.SensorDefinition:
    """Runs the sync when a run of one of its `after:` syncs succeeds, unless it is already running."""
    name = job_name(sync.name)

    @dg.run_status_sensor(
        name=f"{name}_after_upstream",
        run_status=dg.DagsterRunStatus.SUCCESS,
        monitored_jobs=upstream_jobs,
        request_job=job,
        default_status=dg.DefaultSensorStatus.RUNNING if sync.enabled else dg.DefaultSensorStatus.STOPPED,
        description=f"Runs {sync.name} when {', '.join(sync.after)} succeeds",
    )
    def _after(context: dg.RunStatusSensorContext) -> dg.RunRequest | dg.SkipReason:
        running = in_progress_run(context, name)
        if running:
            return dg.SkipReason(f"sync '{sync.name}' is already running (run {running})")
        upstream = context.dagster_run
        return dg.RunRequest(run_key=f"after-{upstream.run_id}", tags={AFTER_RUN_TAG: upstream.run_id})

    return _after
