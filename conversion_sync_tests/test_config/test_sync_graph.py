"""The syncs' dependency graph is checked when the config loads: a cycle (through `after:`, `deps:`, the tables
a query reads or the store table a sync writes) breaks only the syncs on it and names the cycle, and the code
location still loads; `after:` and `deps:` naming an unknown, broken or disabled sync say so, naming both."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
from click.testing import CliRunner

from conversion_sync.cli import main
from conversion_sync.config import load_project_config
from conversion_sync.config.syncs import DestinationConfig
from conversion_sync.definitions import build_definitions
from conversion_sync.defs.destinations import destination_key
from conversion_sync.syncs.lineage import destination_key_path

DEMO_SYNCS = {"contacts_from_users", "products", "product_owners", "subscriptions", "order_events"}


def sync(
    name: str, extra: str = "", query: str = "SELECT email FROM users", destination: str = "contacts"
) -> str:
    return f"name: {name}\nwarehouse: demo\ndestination: {{type: {destination}}}\n{extra}\nquery: {query}\n"


def write(directory: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


def messages(config_dir: Path, name: str) -> list[tuple[str, str]]:
    project = load_project_config(config_dir)
    assert name in project.broken_syncs, (name, project.problems)
    return [(p.key, p.message) for p in project.broken_syncs[name].problems]


def test_deps_cycle_breaks_only_its_syncs_and_names_the_cycle(config_dir: Path) -> None:
    write(
        config_dir,
        {
            "a.yaml": sync("a", "deps: [sync_b]"),
            "b.yaml": sync("b", "deps: [sync_a]"),
            "bystander.yaml": sync("bystander", "deps: [sync_a]"),  # lineage only: a schedule starts it
        },
    )
    project = load_project_config(config_dir)
    assert set(project.broken_syncs) == {"a", "b"}
    assert set(project.syncs) == DEMO_SYNCS | {"bystander"}
    (problem,) = project.broken_syncs["a"].problems
    assert problem.file == "a.yaml" and problem.key == "deps"
    assert problem.message.startswith(
        "forms a cycle: a -> b -> a (a lists sync_b in deps; b lists sync_a in deps)"
    )
    assert project.broken_syncs["b"].problems[0].message.startswith("forms a cycle: b -> a -> b")


def test_cycle_mixing_after_and_deps_over_three_syncs(config_dir: Path) -> None:
    write(
        config_dir,
        {
            "a.yaml": sync("a", "after: [b]"),
            "b.yaml": sync("b", "deps: [sync_c]"),
            "c.yaml": sync("c", "deps: [sync_a]\nrun_on: upstream"),
            "d.yaml": sync("d", "after: [c]"),
        },
    )
    assert messages(config_dir, "a")[0] == (
        "after",
        "forms a cycle: a -> b -> c -> a (a runs after b; b lists sync_c in deps; c lists sync_a in deps); "
        "Dagster cannot order assets that depend on each other and would refuse the whole code location, "
        "so remove one of these links",
    )
    assert messages(config_dir, "c")[0][1].startswith("forms a cycle: c -> a -> b -> c")
    # d is not on the cycle; it runs after a sync that is now broken, and says so
    assert messages(config_dir, "d") == [
        ("after", "sync 'c' is broken (see c.yaml), so sync 'd' cannot run after it")
    ]


def test_cycles_through_the_store_tables_syncs_write(config_dir: Path) -> None:
    write(
        config_dir,
        {
            # waits for the table it writes itself
            "own.yaml": sync("own", "deps: [contact_store/contacts]"),
            # writes events after contacts update, while a contacts sync waits for events
            "to_events.yaml": sync("to_events", "deps: [contact_store/contacts]", destination="events"),
            "to_contacts.yaml": sync("to_contacts", "deps: [contact_store/events]"),
        },
    )
    assert messages(config_dir, "own")[0][1].startswith(
        "forms a cycle: own -> contact_store/contacts -> own "
        "(own lists contact_store/contacts in deps; contact_store/contacts is written by own)"
    )
    (problem,) = messages(config_dir, "to_events")
    assert problem[1].startswith("forms a cycle: to_events -> contact_store/contacts -> ")
    assert "contact_store/events is written by to_events" in problem[1]


def test_cycle_through_a_table_the_query_reads_with_a_key_prefix(config_dir: Path) -> None:
    write(
        config_dir,
        {
            "warehouses.yaml": "warehouses:\n  demo: {type: duckdb, path: x.duckdb, "
            "asset_key_prefix: [contact_store]}\n",
            "reads_itself.yaml": sync("reads_itself", query="SELECT email FROM contacts"),
        },
    )
    assert messages(config_dir, "reads_itself")[0] == (
        "query",
        "forms a cycle: reads_itself -> contact_store/contacts -> reads_itself (reads_itself's query reads "
        "contacts (asset contact_store/contacts); contact_store/contacts is written by reads_itself); Dagster "
        "cannot order assets that depend on each other and would refuse the whole code location, so remove "
        "one of these links",
    )


def test_a_sync_naming_itself_in_deps_is_a_cycle(config_dir: Path) -> None:
    write(config_dir, {"me.yaml": sync("me", "deps: [sync_me]")})
    assert messages(config_dir, "me")[0][1].startswith("forms a cycle: me -> me (me lists sync_me in deps)")


def test_the_code_location_loads_around_a_cycle_and_explains_it(config_dir: Path) -> None:
    """Without the check Dagster raises CircularDependencyError and no asset of the location loads."""
    write(
        config_dir,
        {"a.yaml": sync("a", "deps: [sync_b]"), "b.yaml": sync("b", "after: [a]")},
    )
    defs = build_definitions(load_project_config(config_dir))
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    placeholder = graph.get(dg.AssetKey("sync_a"))
    assert placeholder.parent_keys == set()
    assert "forms a cycle: a -> b -> a" in (placeholder.description or "")
    assert placeholder.tags["conversion_sync/config"] == "broken"
    assert graph.get(dg.AssetKey("sync_product_owners")).parent_keys >= {
        dg.AssetKey("sync_contacts_from_users"),
        dg.AssetKey("sync_products"),
    }, "the other syncs keep their lineage"


def test_cli_validate_names_the_cycle(config_dir: Path) -> None:
    write(config_dir, {"a.yaml": sync("a", "deps: [sync_b]"), "b.yaml": sync("b", "deps: [sync_a]")})
    result = CliRunner().invoke(main, ["--config", str(config_dir), "validate"])
    assert result.exit_code == 1
    assert "error: a.yaml: deps: forms a cycle: a -> b -> a" in result.output
    assert "ok: products (products.yaml)" in result.output
    assert "broken: a (a.yaml): 1 problem(s)" in result.output


REFERENCES = {
    "after a disabled sync": (
        {"up.yaml": sync("up", "enabled: false"), "down.yaml": sync("down", "after: [up]")},
        "down",
        (
            "after",
            "sync 'up' is disabled (enabled: false), so sync 'down' cannot run after it; disable 'down' too, "
            "or enable 'up'",
        ),
    ),
    "after an unknown sync": (
        {"down.yaml": sync("down", "after: [nobody]")},
        "down",
        (
            "after",
            "sync 'down' names unknown sync 'nobody'; known syncs: contacts_from_users, order_events, ",
        ),
    ),
    "deps on an unknown sync": (
        {"down.yaml": sync("down", "deps: [sync_nobody]")},
        "down",
        ("deps", "'sync_nobody': sync 'down' names unknown sync 'nobody'; known syncs: contacts_from_users"),
    ),
    "deps on a disabled sync that should start it": (
        {
            "up.yaml": sync("up", "enabled: false"),
            "down.yaml": sync("down", "deps: [sync_up]\nrun_on: upstream"),
        },
        "down",
        (
            "deps",
            "'sync_up': sync 'up' is disabled (enabled: false), so its updates can never start sync 'down' "
            "(run_on: upstream); disable 'down' too, or enable 'up'",
        ),
    ),
    "deps on a broken sync that should start it": (
        {
            "up.yaml": sync("up", "mode: merge"),
            "down.yaml": sync("down", "deps: [sync_up]\nrun_on: both\nschedule: hourly"),
        },
        "down",
        (
            "deps",
            "'sync_up': sync 'up' is broken (see up.yaml), so its updates can never start sync 'down' "
            "(run_on: both)",
        ),
    ),
}


@pytest.mark.parametrize("case", REFERENCES.values(), ids=list(REFERENCES))
def test_references_to_unknown_broken_or_disabled_syncs_name_both(
    config_dir: Path, case: tuple[dict[str, str], str, tuple[str, str]]
) -> None:
    files, name, (key, message) = case
    write(config_dir, files)
    found = messages(config_dir, name)
    assert any(k == key and m.startswith(message) for k, m in found), found


def test_references_that_are_fine(config_dir: Path) -> None:
    """A disabled sync after a disabled sync (a paused chain), and deps on a disabled sync that only draw
    lineage (the sync runs on its schedule), load."""
    write(
        config_dir,
        {
            "up.yaml": sync("up", "enabled: false"),
            "down.yaml": sync("down", "after: [up]\nenabled: false"),
            "lineage.yaml": sync("lineage", "deps: [sync_up, analytics/sync_like_name]\nschedule: hourly"),
        },
    )
    project = load_project_config(config_dir)
    assert project.problems == []
    assert {"up", "down", "lineage"} <= set(project.syncs)


PREFIX_CASES = {
    "a string": ("asset_key_prefix: dbt", "must be a list of key parts"),
    "an empty part": ("asset_key_prefix: [dbt, '']", "'' is not an asset key part"),
    "a slash": ("asset_key_prefix: [dbt/raw]", "'dbt/raw' is not an asset key part"),
}


@pytest.mark.parametrize("case", PREFIX_CASES.values(), ids=list(PREFIX_CASES))
def test_asset_key_prefix_must_be_key_parts(config_dir: Path, case: tuple[str, str]) -> None:
    setting, message = case
    write(
        config_dir, {"warehouses.yaml": f"warehouses:\n  demo: {{type: duckdb, path: x.duckdb, {setting}}}\n"}
    )
    project = load_project_config(config_dir)
    assert any(
        p.file == "warehouses.yaml"
        and p.key.startswith("warehouses.demo.asset_key_prefix")
        and message in p.message
        for p in project.problems
    ), project.problems
    assert "contacts_from_users" in project.broken_syncs, "its warehouse is invalid"


@pytest.mark.parametrize(
    "destination",
    [
        DestinationConfig(type="contacts"),
        DestinationConfig(type="events"),
        DestinationConfig(type="custom_objects", object_type="product"),
    ],
)
def test_the_config_check_keys_store_tables_as_the_code_location_does(destination: DestinationConfig) -> None:
    assert dg.AssetKey(list(destination_key_path(destination))) == destination_key(destination)


def test_overlapping_cycles_each_sync_told_its_shortest_cycle(config_dir: Path) -> None:
    """a <-> b and b <-> c share b; d depends on c for lineage only and stays loaded."""
    write(
        config_dir,
        {
            "a.yaml": sync("a", "deps: [sync_b]"),
            "b.yaml": sync("b", "deps: [sync_a, sync_c]"),
            "c.yaml": sync("c", "deps: [sync_b]"),
            "d.yaml": sync("d", "deps: [sync_c]"),
        },
    )
    project = load_project_config(config_dir)
    assert {"a", "b", "c"} <= set(project.broken_syncs) and "d" in project.syncs
    paths = {name: project.broken_syncs[name].problems[0].message.split(" (")[0] for name in ("a", "b", "c")}
    assert paths == {
        "a": "forms a cycle: a -> b -> a",
        "b": "forms a cycle: b -> a -> b",
        "c": "forms a cycle: c -> b -> c",
    }
