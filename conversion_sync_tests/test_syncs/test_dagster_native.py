"""Syncs the Dagster way, with real runs on a real store: `after:` waits for all its upstream syncs, `run_on:
upstream` starts a sync when a dependency updates, materializations carry Dagster's standard metadata,
destination tables are observed with their row counts, and freshness policies follow the schedules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.definitions.sensor_definition import SensorExecutionData
from dagster._core.remote_origin import InProcessCodeLocationOrigin
from dagster._core.test_utils import create_test_daemon_workspace_context, freeze_time
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
from dagster._daemon.asset_daemon import AssetDaemon

from conversion_sync.config import load_project_config
from conversion_sync.definitions import build_definitions
from conversion_sync.defs.freshness import (
    longest_gap,
    policy_for_interval,
    schedule_freshness,
    sync_intervals,
)
from conversion_sync.defs.warehouse_syncs import UPSTREAM_SENSOR_INTERVAL_SECONDS, asset_key
from conversion_sync.defs.warehouse_syncs.jobs import SYNC_TAG

from .conftest import SyncWorld

USERS = """CREATE TABLE users AS SELECT * FROM (VALUES
    ('ann@example.com', 'Ann', '2026-01-01 00:00:00'::TIMESTAMP),
    ('bob@example.com', 'Bob', '2026-01-02 00:00:00'::TIMESTAMP)) v(email, first_name, updated_at)"""
PRODUCTS = """CREATE TABLE products AS SELECT * FROM (VALUES
    ('p1', 'Widget'), ('p2', 'Gadget'), ('p3', 'Gizmo')) v(id, name)"""
CONTACTS_KEY = dg.AssetKey(["contact_store", "contacts"])
PRODUCTS_KEY = dg.AssetKey(["contact_store", "custom_objects", "product"])


@pytest.fixture
def defs(world: SyncWorld) -> dg.Definitions:
    """users → contacts, products → custom objects, and `owners` after both (manual otherwise)."""
    world.warehouse(USERS)
    world.warehouse(PRODUCTS)
    world.add_sync("users", "SELECT * FROM users WHERE updated_at > '{{last_sync_time}}'", schedule="hourly")
    world.add_sync(
        "products",
        "SELECT id, name FROM products",
        destination={"type": "custom_objects", "object_type": "product"},
        schedule="every 15 minutes",
    )
    world.add_sync(
        "owners",
        "SELECT u.email, u.first_name FROM users u WHERE EXISTS (SELECT 1 FROM products)",
        after="[users, products]",
    )
    return build_definitions(world.project())


def run(defs: dg.Definitions, instance: dg.DagsterInstance, sync: str) -> dg.ExecuteInProcessResult:
    return defs.resolve_job_def(f"sync_{sync}").execute_in_process(instance=instance, raise_on_error=False)


def evaluate(defs: dg.Definitions, instance: dg.DagsterInstance) -> SensorExecutionData:
    sensor = defs.resolve_sensor_def("sync_owners_after_upstream")
    with dg.build_sensor_context(instance=instance, sensor_name=sensor.name) as context:
        return sensor.evaluate_tick(context)


def latest_storage_id(instance: dg.DagsterInstance, sync: str) -> int:
    return instance.fetch_materializations(asset_key(sync), limit=1).records[0].storage_id


def test_after_runs_once_both_upstream_syncs_succeeded_since_its_last_run(
    defs: dg.Definitions, world: SyncWorld
) -> None:
    with dg.instance_for_test() as instance:
        tick = evaluate(defs, instance)
        assert not tick.run_requests
        assert tick.skip_message == "sync 'owners' waits for users, products to succeed yet"

        assert run(defs, instance, "users").success
        assert run(defs, instance, "users").success  # twice before products: still one run of owners later
        tick = evaluate(defs, instance)
        assert (
            not tick.run_requests and tick.skip_message == "sync 'owners' waits for products to succeed yet"
        )

        # a failed upstream run does not count
        world.warehouse("ALTER TABLE products RENAME TO products_gone")
        assert not run(defs, instance, "products").success
        assert evaluate(defs, instance).skip_message == "sync 'owners' waits for products to succeed yet"

        world.warehouse("ALTER TABLE products_gone RENAME TO products")
        assert run(defs, instance, "products").success
        (request,) = evaluate(defs, instance).run_requests
        users_id, products_id = latest_storage_id(instance, "users"), latest_storage_id(instance, "products")
        assert request.run_key == f"after-users:{users_id},products:{products_id}"
        # the same successes give the same run key: Dagster starts one run for them, however many ticks
        (again,) = evaluate(defs, instance).run_requests
        assert again.run_key == request.run_key

        # the sync runs; afterwards it waits for both again
        owners = defs.resolve_job_def("sync_owners").execute_in_process(instance=instance, tags=request.tags)
        assert owners.success
        tick = evaluate(defs, instance)
        assert not tick.run_requests
        assert tick.skip_message.startswith(
            "sync 'owners' waits for users, products to succeed since its latest"
        )

        assert run(defs, instance, "products").success
        assert evaluate(defs, instance).skip_message.startswith("sync 'owners' waits for users to succeed")


def test_after_skips_while_the_sync_runs_and_runs_once_it_finished(defs: dg.Definitions) -> None:
    """Upstream syncs that succeed while the sync runs count for its next run, started once it finished."""
    with dg.instance_for_test() as instance:
        running = instance.create_run_for_job(
            job_def=defs.resolve_job_def("sync_owners"), status=dg.DagsterRunStatus.STARTED
        )
        assert run(defs, instance, "users").success and run(defs, instance, "products").success
        tick = evaluate(defs, instance)
        assert not tick.run_requests
        assert tick.skip_message.endswith(f"but sync 'owners' is running (run {running.run_id})")
        instance.report_run_failed(running)
        assert len(evaluate(defs, instance).run_requests) == 1


def test_materialization_carries_standard_metadata_and_destinations_their_row_counts(
    defs: dg.Definitions,
) -> None:
    with dg.instance_for_test() as instance:
        assert run(defs, instance, "users").success
        event = instance.get_latest_materialization_event(asset_key("users"))
        assert event is not None and event.asset_materialization is not None
        metadata = event.asset_materialization.metadata
        assert metadata["dagster/row_count"].value == 2 == metadata["queried"].value
        assert metadata["dagster/table_name"].value == "contacts"
        schema = metadata["dagster/column_schema"].value
        assert [(c.name, c.type) for c in schema.columns] == [
            ("email", "string"),
            ("first_name", "string"),
            ("updated_at", "timestamp[us]"),
        ]
        observed = instance.fetch_observations(CONTACTS_KEY, limit=1).records[0].asset_observation
        assert observed is not None
        assert observed.metadata["dagster/row_count"].value == 2
        assert observed.metadata["row_count_estimated"].value is False

        assert run(defs, instance, "products").success
        observed = instance.fetch_observations(PRODUCTS_KEY, limit=1).records[0].asset_observation
        assert observed is not None and observed.metadata["dagster/row_count"].value == 3
        assert observed.metadata["object_type"].value == "product"


def test_lineage_shows_tables_read_and_destinations_written(defs: dg.Definitions) -> None:
    graph = defs.resolve_asset_graph()
    owners = graph.get(asset_key("owners"))
    assert owners.parent_keys == {
        asset_key("users"),
        asset_key("products"),
        dg.AssetKey("users"),
        dg.AssetKey("products"),
    }
    table = graph.get(dg.AssetKey("users"))
    assert not table.is_materializable and table.group_name == "warehouse_tables"
    assert "duckdb" in table.kinds
    assert graph.get(CONTACTS_KEY).parent_keys == {
        asset_key("users"),
        asset_key("owners"),
        dg.AssetKey("salesforce_poll"),
    }
    assert graph.get(PRODUCTS_KEY).parent_keys == {asset_key("products")}
    assert not graph.get(CONTACTS_KEY).is_materializable


def test_run_on_upstream_starts_the_sync_when_a_dependency_updates(world: SyncWorld) -> None:
    """A dbt model's materialization (here reported as Dagster would record one from another code location)
    starts the sync; the tables it reads were never materialized here, and do not hold it back."""
    world.warehouse(USERS)
    world.add_sync("users", "SELECT * FROM users", schedule="hourly")
    world.add_sync(
        "scores",
        "SELECT email FROM analytics.scores",
        deps="[analytics/scores_model, sync_users]",
        run_on="upstream",
        after="[users]",
    )
    defs = build_definitions(world.project())
    scores = asset_key("scores")
    graph = defs.resolve_asset_graph()
    assert graph.get(scores).parent_keys == {
        asset_key("users"),
        dg.AssetKey(["analytics", "scores"]),
        dg.AssetKey(["analytics", "scores_model"]),
    }
    sensor = defs.resolve_sensor_def("sync_scores_on_upstream_update")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert sensor.run_tags == {SYNC_TAG: "scores"}
    assert sensor.asset_selection.resolve(graph) == {scores}
    with dg.instance_for_test() as instance:
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance)
        assert result.total_requested == 0, "nothing updated yet"

        # the after: sync's success is left to the sequence sensor
        instance.report_runless_asset_event(dg.AssetMaterialization(asset_key("users")))
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=result.cursor)
        assert result.total_requested == 0

        instance.report_runless_asset_event(dg.AssetMaterialization(["analytics", "scores_model"]))
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=result.cursor)
        assert result.get_num_requested(scores) == 1
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=result.cursor)
        assert result.total_requested == 0, "once per update"

        instance.report_runless_asset_event(dg.AssetMaterialization(["analytics", "scores"]))
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=result.cursor)
        assert result.get_num_requested(scores) == 1, "an update of a table it reads starts it too"


def test_run_on_upstream_with_a_schedule_is_a_config_problem(world: SyncWorld) -> None:
    world.add_sync("scores", "SELECT email FROM scores", run_on="upstream", schedule="hourly")
    (world.dir / "warehouses.yaml").write_text(f"warehouses:\n  wh: {world.warehouses['wh']}\n")
    project = load_project_config(world.dir)
    assert "scores" in project.broken_syncs
    assert any("schedule must be manual" in p.message for p in project.problems)


def test_freshness_follows_the_schedule_and_the_upstream_syncs(
    defs: dg.Definitions, world: SyncWorld
) -> None:
    assert longest_gap("*/15 * * * *") == timedelta(minutes=15)
    assert longest_gap("0 9 * * 1-5") == timedelta(days=3), "Friday 9:00 to Monday 9:00"
    policy = schedule_freshness("every 15 minutes")
    assert policy is not None
    assert policy.fail_window.to_timedelta() == timedelta(minutes=30)
    assert policy.warn_window is not None and policy.warn_window.to_timedelta() == timedelta(minutes=22.5)
    assert schedule_freshness("manual") is None

    graph = defs.resolve_asset_graph()

    def fail_after(sync: str) -> timedelta:
        freshness = graph.get(asset_key(sync)).freshness_policy
        assert freshness is not None
        return freshness.fail_window.to_timedelta()

    assert fail_after("users") == timedelta(hours=2)
    assert fail_after("products") == timedelta(minutes=30)
    # manual, after hourly users and 15-minute products: as often as the slower of the two
    assert fail_after("owners") == timedelta(hours=2)
    # the Salesforce poll's policy comes from its schedule phrase
    poll = graph.get(dg.AssetKey("salesforce_poll")).freshness_policy
    assert poll is not None and poll.fail_window.to_timedelta() == 2 * longest_gap("*/5 * * * *")
    # the push runs after each poll: as often as the poll
    assert graph.get(dg.AssetKey("salesforce_push")).freshness_policy == poll

    project = world.project()
    intervals = sync_intervals(project, lambda sync: ["products"] if sync.name == "owners" else [])
    assert intervals["owners"] == timedelta(minutes=15), "started by products' updates: as often as those"
    assert policy_for_interval(None) is None

    # a disabled sync is expected nowhere, and neither is a (disabled) sync that runs only after it
    world.add_sync("paused", "SELECT email FROM users", schedule="hourly", enabled="false")
    world.add_sync("after_paused", "SELECT email FROM users", after="[paused]", enabled="false")
    paused_graph = build_definitions(world.project()).resolve_asset_graph()
    assert paused_graph.get(asset_key("paused")).freshness_policy is None
    assert paused_graph.get(asset_key("after_paused")).freshness_policy is None
    assert paused_graph.get(asset_key("users")).freshness_policy is not None

    # a sync's own late_after replaces the derived fail window, even for a manual sync; under a minute is refused
    world.add_sync("own_window", "SELECT email FROM users", schedule="hourly", late_after="'90 minutes'")
    world.add_sync("manual_window", "SELECT email FROM users", late_after="'1 day'")
    own_graph = build_definitions(world.project()).resolve_asset_graph()
    own = own_graph.get(asset_key("own_window")).freshness_policy
    assert own is not None and own.fail_window.to_timedelta() == timedelta(minutes=90)
    assert own.warn_window is None, "the derived warning (1.5 h) would not come first"
    manual = own_graph.get(asset_key("manual_window")).freshness_policy
    assert manual is not None and manual.fail_window.to_timedelta() == timedelta(days=1)
    world.add_sync("too_short", "SELECT email FROM users", late_after="'30 seconds'")
    problems = load_project_config(world.dir).problems
    assert [(p.file, p.key) for p in problems] == [("too_short.yaml", "late_after")]
    assert "at least a minute" in problems[0].message


def test_sync_steps_run_in_the_contact_store_pool(defs: dg.Definitions) -> None:
    node = defs.resolve_asset_graph().get(asset_key("users")).assets_def.node_def
    assert {op.name: op.pool for op in node.iterate_op_defs()} == {
        "users_query": "contact_store",
        "users_validate": "contact_store",
        "users_write": "contact_store",
    }


def test_a_query_the_parser_cannot_read_still_loads_and_says_why(world: SyncWorld) -> None:
    world.add_sync("odd", "SELECT email FROM users WHERE (", schedule="hourly")
    defs = build_definitions(world.project())
    dg.Definitions.validate_loadable(defs)
    node = defs.resolve_asset_graph().get(asset_key("odd"))
    assert node.parent_keys == set()
    assert str(node.metadata["lineage_problem"]).startswith("the query could not be parsed as duckdb")


LOCATION_FILE = """from conversion_sync.config import load_project_config
from conversion_sync.definitions import build_definitions

defs = build_definitions(load_project_config({config_dir!r}))
"""


def test_runs_started_by_upstream_updates_carry_the_sync_tag(world: SyncWorld, tmp_path: Path) -> None:
    """Dagster's asset daemon, as `dagster-daemon` runs it, evaluates the syncs' `run_on: upstream` sensors:
    each run it starts is tagged with its sync, as schedule and `after:` runs are, so the run history filters
    by sync; a disabled sync's sensor starts stopped and starts nothing."""
    world.add_sync("scores", "SELECT email FROM analytics.scores", run_on="upstream")
    world.add_sync("plans", "SELECT email FROM analytics.plans", run_on="both", schedule="hourly")
    world.add_sync("paused", "SELECT email FROM analytics.scores", run_on="upstream", enabled="false")
    world.project()  # writes warehouses.yaml; the config is valid
    location = tmp_path / "location.py"
    location.write_text(LOCATION_FILE.format(config_dir=str(world.dir)))
    origin = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(python_file=str(location), attribute="defs"), location_name="conversion_sync"
    )
    overrides = {"run_launcher": {"module": "dagster._core.test_utils", "class": "MockedRunLauncher"}}
    with (
        dg.instance_for_test(overrides=overrides) as instance,
        create_test_daemon_workspace_context(InProcessWorkspaceLoadTarget(origin), instance) as workspace,
    ):
        daemon = AssetDaemon(settings={}, pre_sensor_interval_seconds=0)

        def tick(at: datetime) -> list[dg.DagsterRun]:
            with freeze_time(at):
                daemon._run_iteration_impl(  # one pass of the daemon's loop
                    workspace, threadpool_executor=None, amp_tick_futures={}, debug_crash_flags={}
                )
            return list(instance.get_runs())

        start = datetime.now(UTC)
        assert tick(start) == [], "nothing updated yet"
        instance.report_runless_asset_event(dg.AssetMaterialization(["analytics", "scores"]))
        instance.report_runless_asset_event(dg.AssetMaterialization(["analytics", "plans"]))
        runs = tick(start + timedelta(seconds=UPSTREAM_SENSOR_INTERVAL_SECONDS + 5))
        by_sync = {run.tags.get(SYNC_TAG): run for run in runs}
        assert set(by_sync) == {"scores", "plans"}, [run.tags for run in runs]
        assert by_sync["scores"].asset_selection == {asset_key("scores")}
        assert by_sync["scores"].tags["dagster/sensor_name"] == "sync_scores_on_upstream_update"
        assert by_sync["plans"].asset_selection == {asset_key("plans")}
        scores_runs = instance.get_runs(filters=dg.RunsFilter(tags={SYNC_TAG: "scores"}))
        assert [run.run_id for run in scores_runs] == [by_sync["scores"].run_id]


def test_a_warehouse_key_prefix_puts_its_tables_under_the_keys_a_dbt_project_gives_them(
    world: SyncWorld, tmp_path: Path
) -> None:
    """`asset_key_prefix: [dbt]` keys the tables of that warehouse dbt/<schema>/<table>; the same table read
    through another warehouse keeps its own key, and `deps:` keys are taken as written. A dbt model keyed
    dbt/marts/scores (a translator that prefixes 'dbt', a model with schema 'marts') starts the sync."""
    world.warehouses["dbt_wh"] = (
        f"{{type: duckdb, path: '{tmp_path / 'other.duckdb'}', asset_key_prefix: [dbt]}}"
    )
    world.add_sync("plain", "SELECT email FROM marts.scores", schedule="hourly")
    world.add_sync(
        "prefixed",
        "SELECT s.email FROM marts.scores s JOIN users USING (email)",
        warehouse="dbt_wh",
        deps="[raw/events]",
        run_on="upstream",
    )
    defs = build_definitions(world.project())
    graph = defs.resolve_asset_graph()
    assert graph.get(asset_key("prefixed")).parent_keys == {
        dg.AssetKey(["dbt", "marts", "scores"]),
        dg.AssetKey(["dbt", "users"]),
        dg.AssetKey(["raw", "events"]),
    }
    assert graph.get(asset_key("plain")).parent_keys == {dg.AssetKey(["marts", "scores"])}
    prefixed_table = graph.get(dg.AssetKey(["dbt", "marts", "scores"]))
    assert not prefixed_table.is_materializable
    assert prefixed_table.metadata["dagster/table_name"] == "marts.scores"
    assert "read by the syncs `prefixed`" in (prefixed_table.description or "")
    with dg.instance_for_test() as instance:
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance)
        instance.report_runless_asset_event(dg.AssetMaterialization(["marts", "scores"]))
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=result.cursor)
        assert result.total_requested == 0, "the unprefixed key is another asset"
        instance.report_runless_asset_event(dg.AssetMaterialization(["dbt", "marts", "scores"]))
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=result.cursor)
        assert result.get_num_requested(asset_key("prefixed")) == 1
