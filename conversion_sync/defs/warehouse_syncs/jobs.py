"""A sync's job, its schedule (skipping a tick while the job runs) and its `after:` sensor."""

from __future__ import annotations

from dataclasses import dataclass
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


AFTER_SENSOR_INTERVAL_SECONDS = 30


@dataclass(frozen=True)
class AfterState:
    """Where a sync's `after:` sequence stands: which upstream syncs have succeeded since its latest run."""

    ready: bool
    waiting_for: list[str]
    run_key: str | None
    reason: str


def after_state(instance: dg.DagsterInstance, sync: SyncConfig) -> AfterState:
    """Whether every `after:` sync has succeeded (materialized its asset) since the sync's latest run was
    planned, whatever started that run (its schedule, this sequence, the UI) and however it ended.

    Event storage ids order the two: an upstream success counts when it is newer than the sync's latest
    planned run. A failed upstream run materializes nothing, so it does not count; an upstream that
    succeeds twice before another succeeds once counts once; a sync that never ran waits for one success of
    each. The run key is the set of upstream successes used, so the same set never starts two runs.
    """
    planned = instance.get_latest_planned_materialization_info(asset_key(sync.name))
    since = planned.storage_id if planned else -1
    used: list[str] = []
    waiting: list[str] = []
    for name in sync.after:
        records = instance.fetch_materializations(asset_key(name), limit=1).records
        if records and records[0].storage_id > since:
            used.append(f"{name}:{records[0].storage_id}")
        else:
            waiting.append(name)
    since_text = f"since its latest run ({planned.run_id})" if planned else "yet"
    if waiting:
        return AfterState(
            False,
            waiting,
            None,
            f"sync '{sync.name}' waits for {', '.join(waiting)} to succeed {since_text}",
        )
    return AfterState(
        True, [], "after-" + ",".join(used), f"{', '.join(sync.after)} all succeeded {since_text}"
    )


def after_sensor(sync: SyncConfig, job: AssetJob) -> dg.SensorDefinition:
    """Runs the sync once every one of its `after:` syncs has succeeded since its latest run (see
    after_state), unless it is running now."""
    name = job_name(sync.name)

    @dg.sensor(
        name=f"{name}_after_upstream",
        job=job,
        minimum_interval_seconds=AFTER_SENSOR_INTERVAL_SECONDS,
        default_status=dg.DefaultSensorStatus.RUNNING if sync.enabled else dg.DefaultSensorStatus.STOPPED,
        description=f"Runs {sync.name} once {' and '.join(sync.after)} have all succeeded since its latest run",
    )
    def _after(context: dg.SensorEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        state = after_state(context.instance, sync)
        if not state.ready:
            return dg.SkipReason(state.reason)
        running = in_progress_run(context, name)
        if running:
            return dg.SkipReason(f"{state.reason}, but sync '{sync.name}' is running (run {running})")
        return dg.RunRequest(run_key=state.run_key, tags={AFTER_RUN_TAG: state.run_key or ""})

    return _after
