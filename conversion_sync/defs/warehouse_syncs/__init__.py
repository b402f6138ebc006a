"""Warehouse syncs in Dagster: per valid sync an asset, its check, job, schedule and `after:` sensor; per broken
sync file a placeholder asset that explains what is wrong."""

from __future__ import annotations

import dagster as dg

from conversion_sync.config import ProjectConfig
from conversion_sync.defs.warehouse_syncs.assets import asset_key, rejected_rate_check, sync_asset
from conversion_sync.defs.warehouse_syncs.broken import SYNC_GROUP, broken_sync_asset
from conversion_sync.defs.warehouse_syncs.jobs import after_sensor, job_name, sync_job, sync_schedule

__all__ = ["SYNC_GROUP", "asset_key", "build_defs", "job_name"]


def build_defs(project: ProjectConfig) -> dg.Definitions:
    """Everything Dagster needs for the syncs of a loaded config."""
    syncs = list(project.syncs.values())
    jobs = {sync.name: sync_job(sync) for sync in syncs}
    schedules = [s for s in (sync_schedule(sync, jobs[sync.name]) for sync in syncs) if s is not None]
    sensors = [
        after_sensor(sync, jobs[sync.name], [jobs[name] for name in sync.after])
        for sync in syncs
        if sync.after
    ]
    return dg.Definitions(
        assets=[
            *(sync_asset(sync, project) for sync in syncs),
            *(broken_sync_asset(broken) for broken in project.broken_syncs.values()),
        ],
        asset_checks=[rejected_rate_check(sync) for sync in syncs],
        jobs=list(jobs.values()),
        schedules=schedules,
        sensors=sensors,
    )
