"""Warehouse syncs in Dagster: per valid sync an asset (downstream of the tables its query reads and its
`deps:`, with a freshness policy from its schedule), its check, job, schedule, `after:` sensor and, for
`run_on: upstream` or `both`, its automation sensor; per broken sync file a placeholder asset that explains
what is wrong."""

from __future__ import annotations

from collections.abc import Iterable

import dagster as dg

from conversion_sync.config import ProjectConfig
from conversion_sync.config.syncs import SyncConfig
from conversion_sync.defs.freshness import policy_for_interval, sync_intervals
from conversion_sync.defs.lineage import SyncLineage, deps_keys
from conversion_sync.defs.warehouse_syncs.assets import asset_key, rejected_rate_check, sync_asset
from conversion_sync.defs.warehouse_syncs.broken import SYNC_GROUP, broken_sync_asset
from conversion_sync.defs.warehouse_syncs.jobs import (
    SYNC_TAG,
    after_sensor,
    job_name,
    sync_job,
    sync_schedule,
)

__all__ = ["SYNC_GROUP", "asset_key", "build_defs", "job_name", "upstream_condition", "upstream_sensor"]

UPSTREAM_SENSOR_INTERVAL_SECONDS = 30


def upstream_condition(sync: SyncConfig) -> dg.AutomationCondition:
    """`run_on: upstream`: run when an upstream asset (a table the query reads, a `deps:` key) has updated
    since the condition last started the sync, unless an upstream asset or the sync itself is in progress.

    Unlike Dagster's eager(), upstream assets never materialized here (tables, a dbt project's models in
    another code location) do not hold it back, and `after:` syncs are left to the sequence sensor.
    """
    updated = dg.AutomationCondition.any_deps_updated()
    if sync.after:
        updated = updated.ignore(dg.AssetSelection.assets(*(asset_key(n) for n in sync.after)))
    return (
        updated.since_last_handled()
        & ~dg.AutomationCondition.any_deps_in_progress()
        & ~dg.AutomationCondition.in_progress()
    ).with_label("upstream_updated")


def upstream_sensor(sync: SyncConfig) -> dg.AutomationConditionSensorDefinition:
    """The sensor that evaluates the `run_on: upstream` condition of one sync and tags the runs it starts as
    the sync's schedule and `after:` runs are tagged (conversion_sync/sync), so the run history filters by
    sync for all of them; it starts stopped when the sync is disabled."""
    return dg.AutomationConditionSensorDefinition(
        f"{job_name(sync.name)}_on_upstream_update",
        target=dg.AssetSelection.assets(asset_key(sync.name)),
        run_tags={SYNC_TAG: sync.name},
        default_status=dg.DefaultSensorStatus.RUNNING if sync.enabled else dg.DefaultSensorStatus.STOPPED,
        minimum_interval_seconds=UPSTREAM_SENSOR_INTERVAL_SECONDS,
        description=f"Runs {sync.name} when an upstream asset (a table its query reads, a deps: key) updates",
    )


def _triggering_syncs(sync: SyncConfig) -> Iterable[str]:
    """The syncs named in `deps:` (by asset key) that start this one when it runs on upstream updates."""
    if sync.run_on == "schedule":
        return []
    return [key.path[0].removeprefix("sync_") for key in deps_keys(sync) if len(key.path) == 1]


def _with_freshness(asset: dg.AssetsDefinition, policy: dg.FreshnessPolicy | None) -> dg.AssetsDefinition:
    if policy is None:
        return asset

    def apply(spec: dg.AssetSpec) -> dg.AssetSpec:
        return dg.apply_freshness_policy(spec, policy)

    return asset.map_asset_specs(apply)


def build_defs(project: ProjectConfig) -> dg.Definitions:
    """Everything Dagster needs for the syncs of a loaded config."""
    syncs = list(project.syncs.values())
    lineage = SyncLineage.of(project)
    intervals = sync_intervals(project, _triggering_syncs)
    jobs = {sync.name: sync_job(sync) for sync in syncs}
    schedules = [s for s in (sync_schedule(sync, jobs[sync.name]) for sync in syncs) if s is not None]
    sensors: list[dg.SensorDefinition] = [after_sensor(sync, jobs[sync.name]) for sync in syncs if sync.after]
    sensors.extend(upstream_sensor(sync) for sync in syncs if sync.run_on != "schedule")
    assets = []
    for sync in syncs:
        problem = lineage.tables[sync.name].problem
        asset = sync_asset(
            sync,
            project,
            upstream=lineage.upstream_keys(sync),
            automation_condition=upstream_condition(sync) if sync.run_on != "schedule" else None,
            extra_metadata={"lineage_problem": problem} if problem else None,
        )
        assets.append(
            _with_freshness(
                asset,
                policy_for_interval(intervals.get(sync.name), sync.late_after if sync.enabled else None),
            )
        )
    return dg.Definitions(
        assets=[*assets, *(broken_sync_asset(broken) for broken in project.broken_syncs.values())],
        asset_checks=[rejected_rate_check(sync) for sync in syncs],
        jobs=list(jobs.values()),
        schedules=schedules,
        sensors=sensors,
    )
