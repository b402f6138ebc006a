"""Syncs in Dagster: materialization metadata, the schedule that skips while a run is in progress, after: sensors."""

from __future__ import annotations

import dagster as dg
import pytest

from conversion_sync.definitions import build_definitions
from conversion_sync.defs.warehouse_syncs import asset_key

from .conftest import SyncWorld

USERS = """CREATE TABLE users AS SELECT * FROM (VALUES
    ('ann@example.com', 'Ann', '2026-01-01 00:00:00'::TIMESTAMP),
    ('bob@example.com', 'Bob', '2026-01-02 00:00:00'::TIMESTAMP),
    ('not-an-email', 'Bad', '2026-01-02 00:00:00'::TIMESTAMP)) v(email, first_name, updated_at)"""


@pytest.fixture
def defs(world: SyncWorld) -> dg.Definitions:
    world.warehouse(USERS)
    world.add_sync(
        "users",
        "SELECT * FROM users WHERE updated_at > '{{last_sync_time}}'",
        schedule="every 15 minutes",
        description="'Users into contacts'",
        owner="data@example.com",
    )
    world.add_sync(
        "owners",
        "SELECT 'p1' AS id, 'Widget' AS name, email FROM users WHERE email LIKE '%@%'",
        destination={"type": "custom_objects", "object_type": "product"},
        after="[users]",
        schedule="manual",
    )
    world.add_sync("paused", "SELECT email FROM users", schedule="daily", enabled="false")
    return build_definitions(world.project())


def test_job_materializes_with_counts_watermarks_and_rejections(defs: dg.Definitions) -> None:
    with dg.instance_for_test() as instance:
        result = defs.resolve_job_def("sync_users").execute_in_process(instance=instance)
        assert result.success
        event = instance.get_latest_materialization_event(asset_key("users"))
        metadata = {k: getattr(v, "value", v) for k, v in event.asset_materialization.metadata.items()}
        assert {
            k: metadata[k] for k in ("queried", "added", "changed", "unchanged", "removed", "rejected")
        } == {
            "queried": 3,
            "added": 2,
            "changed": 0,
            "unchanged": 0,
            "removed": 0,
            "rejected": 1,
        }
        assert metadata["watermark_used"] == "1970-01-01 00:00:00.000000"
        assert metadata["next_watermark"] > "2026"
        assert {"duration_query_s", "duration_validate_s", "duration_write_s"} <= set(metadata)
        preview = metadata["rejected_preview"]
        assert preview.records[0].data["code"] == "invalid_field_value"
        assert "conversion-sync rejections users --run" in metadata["rejected_download"]
        steps = {e.step_key for e in result.all_events if e.event_type_value == "STEP_SUCCESS"}
        assert steps == {
            "users_steps.users_query",
            "users_steps.users_validate",
            "users_steps.users_write",
            "sync_users_rejected_row_rate",
        }
        checks = [
            e.event_specific_data for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"
        ]
        assert checks and not checks[0].passed, "1 of 3 rejected is above the default 10% threshold"


def test_asset_shows_description_tags_owner_and_graph_order(defs: dg.Definitions) -> None:
    graph = defs.resolve_asset_graph()
    users = graph.get(asset_key("users"))
    assert users.description.startswith("Users into contacts")
    assert users.group_name == "warehouse_syncs"
    assert users.tags["destination"] == "contacts" and users.tags["warehouse_kind"] == "duckdb"
    assert "duckdb" in users.kinds
    assert users.owners == ["data@example.com"]
    # its after: sync, and the warehouse table its query reads
    assert graph.get(asset_key("owners")).parent_keys == {asset_key("users"), dg.AssetKey("users")}


def test_schedule_skips_while_a_run_is_in_progress(defs: dg.Definitions) -> None:
    schedule = defs.resolve_schedule_def("sync_users_schedule")
    assert schedule.cron_schedule == "*/15 * * * *"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    job = defs.resolve_job_def("sync_users")
    with dg.instance_for_test() as instance:
        running = instance.create_run_for_job(job_def=job, status=dg.DagsterRunStatus.STARTED)
        with dg.build_schedule_context(instance=instance) as context:
            tick = schedule.evaluate_tick(context)
        assert not tick.run_requests
        assert (
            tick.skip_message == f"sync 'users' is still running (run {running.run_id}); this tick is skipped"
        )

        instance.report_run_failed(running)
        with dg.build_schedule_context(instance=instance) as context:
            tick = schedule.evaluate_tick(context)
        assert len(tick.run_requests) == 1


def test_disabled_sync_schedule_is_stopped_and_manual_has_none(defs: dg.Definitions) -> None:
    assert (
        defs.resolve_schedule_def("sync_paused_schedule").default_status == dg.DefaultScheduleStatus.STOPPED
    )
    repo = defs.get_repository_def()
    assert "sync_owners_schedule" not in {s.name for s in repo.schedule_defs}


def test_after_sensor_requests_the_downstream_sync(defs: dg.Definitions) -> None:
    sensor = defs.resolve_sensor_def("sync_owners_after_upstream")
    upstream_job = defs.resolve_job_def("sync_users")
    with dg.instance_for_test() as instance:
        upstream_job.execute_in_process(instance=instance)
        (record,) = instance.fetch_materializations(asset_key("users"), limit=1).records
        with dg.build_sensor_context(instance=instance, sensor_name=sensor.name) as context:
            tick = sensor.evaluate_tick(context)
        (request,) = tick.run_requests
        assert request.run_key == f"after-users:{record.storage_id}"
