"""Every kind of config problem is reported with file, key and what is allowed; valid syncs still load."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from conversion_sync.cli import main
from conversion_sync.config import load_project_config

GOOD_SYNC = """
name: {name}
warehouse: demo
destination: {{type: contacts}}
query: SELECT email FROM users WHERE updated_at > '{{{{last_sync_time}}}}'
"""


def write(directory: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


def problems_of(config_dir: Path) -> list[tuple[str, str, str]]:
    return [(p.file, p.key, p.message) for p in load_project_config(config_dir).problems]


def test_demo_config_is_valid() -> None:
    project = load_project_config(Path(__file__).resolve().parents[2] / "syncs")
    assert project.problems == []
    assert set(project.syncs) == {
        "contacts_from_users",
        "products",
        "product_owners",
        "subscriptions",
        "order_events",
    }
    assert project.syncs["contacts_from_users"].incremental
    assert not project.syncs["products"].incremental
    assert project.syncs["contacts_from_users"].cron_schedule == "*/15 * * * *"


CASES = {
    "invalid yaml": ("bad.yaml", "name: [unclosed\n", "bad.yaml", "line 2, column 1", "is not valid YAML"),
    "not a mapping": (
        "bad.yaml",
        "- a\n- b\n",
        "bad.yaml",
        "",
        "must be a mapping of keys to values, got list",
    ),
    "unknown key": (
        "bad.yaml",
        GOOD_SYNC.format(name="bad") + "schedul: hourly\n",
        "bad.yaml",
        "schedul",
        "unknown key 'schedul'; allowed keys: name, description, warehouse, destination, mode, query, schedule",
    ),
    "missing required": (
        "bad.yaml",
        "name: bad\nwarehouse: demo\nquery: SELECT 1\n",
        "bad.yaml",
        "destination",
        "is required but missing",
    ),
    "bad destination type": (
        "bad.yaml",
        GOOD_SYNC.format(name="bad").replace("type: contacts", "type: contact"),
        "bad.yaml",
        "destination.type",
        "must be one of: contacts, custom_objects, events (got 'contact')",
    ),
    "bad mode": (
        "bad.yaml",
        GOOD_SYNC.format(name="bad") + "mode: merge\n",
        "bad.yaml",
        "mode",
        "must be one of: upsert, update, insert (got 'merge')",
    ),
    "unknown template name": (
        "bad.yaml",
        GOOD_SYNC.format(name="bad").replace("last_sync_time", "last_sync"),
        "bad.yaml",
        "query",
        "unknown template name {{last_sync}}; allowed: last_sync_time, last_sync_time_unix",
    ),
    "bad schedule": (
        "bad.yaml",
        GOOD_SYNC.format(name="bad") + "schedule: fortnightly\n",
        "bad.yaml",
        "schedule",
        "'fortnightly' is not a schedule; allowed: every N minutes | hourly | every N hours | daily",
    ),
    "bad cron": (
        "bad.yaml",
        GOOD_SYNC.format(name="bad") + 'schedule: cron "61 * * * *"\n',
        "bad.yaml",
        "schedule",
        "'61 * * * *' is not a valid cron expression",
    ),
    "bad lookback": (
        "bad.yaml",
        GOOD_SYNC.format(name="bad") + "lookback: a while\n",
        "bad.yaml",
        "lookback",
        "'a while' is not a duration; allowed: N seconds | N minutes | N hours | N days",
    ),
    "bad sync name": (
        "bad.yaml",
        GOOD_SYNC.format(name="Bad-Name"),
        "bad.yaml",
        "name",
        "must be lower-case letters, digits and underscores",
    ),
    "unknown warehouse": (
        "bad.yaml",
        GOOD_SYNC.format(name="bad").replace("warehouse: demo", "warehouse: nope"),
        "bad.yaml",
        "warehouse",
        "unknown warehouse 'nope'; defined in warehouses.yaml: demo",
    ),
    "custom objects without object type": (
        "bad.yaml",
        GOOD_SYNC.format(name="bad").replace("type: contacts", "type: custom_objects"),
        "bad.yaml",
        "destination",
        "object_type is required when destination type is custom_objects",
    ),
    "unknown object type": (
        "bad.yaml",
        GOOD_SYNC.format(name="bad").replace("type: contacts", "type: custom_objects, object_type: widget"),
        "bad.yaml",
        "destination.object_type",
        "unknown object type 'widget'; defined in schema.yaml: product, subscription",
    ),
    "delete behavior on incremental": (
        "bad.yaml",
        GOOD_SYNC.format(name="bad") + "delete_behavior: delete\n",
        "bad.yaml",
        "delete_behavior",
        "applies to full-query syncs only",
    ),
    "after unknown sync": (
        "bad.yaml",
        GOOD_SYNC.format(name="bad") + "after: [nobody]\n",
        "bad.yaml",
        "after",
        "unknown sync 'nobody'",
    ),
    "after itself": (
        "bad.yaml",
        GOOD_SYNC.format(name="bad") + "after: [bad]\n",
        "bad.yaml",
        "after",
        "a sync cannot run after itself",
    ),
    "duplicate name": (
        "zz_duplicate.yaml",
        GOOD_SYNC.format(name="products"),
        "zz_duplicate.yaml",
        "name",
        "sync name 'products' is already used by products.yaml",
    ),
    "max_rows not positive": (
        "bad.yaml",
        GOOD_SYNC.format(name="bad") + "max_rows: 0\n",
        "bad.yaml",
        "max_rows",
        "Input should be greater than 0",
    ),
    "inline secret": (
        "warehouses.yaml",
        "warehouses:\n  demo: {type: duckdb, path: x.duckdb}\n  app: {type: postgres, url: 'postgresql://u:hunter2@h/db'}\n",
        "warehouses.yaml",
        "warehouses.app.url",
        "secrets must not be written inline; use {env: VARIABLE_NAME}",
    ),
    "unknown warehouse type": (
        "warehouses.yaml",
        "warehouses:\n  demo: {type: duckdb, path: x.duckdb}\n  ora: {type: oracle}\n",
        "warehouses.yaml",
        "warehouses.ora.type",
        "must be one of duckdb, postgres, snowflake, bigquery (got 'oracle')",
    ),
    "warehouse missing field": (
        "warehouses.yaml",
        "warehouses:\n  demo: {type: duckdb}\n",
        "warehouses.yaml",
        "warehouses.demo.path",
        "is required but missing",
    ),
    "bad field type": (
        "schema.yaml",
        "contact_fields: {plan: strin}\n",
        "schema.yaml",
        "contact_fields.plan",
        "must be one of: string, number, integer, boolean, date, datetime, json (got 'strin')",
    ),
    "reserved contact field": (
        "schema.yaml",
        "contact_fields: {email: string}\n",
        "schema.yaml",
        "contact_fields",
        "contact field 'email' clashes with a built-in contact field",
    ),
    "bad salesforce preference": (
        "salesforce.yaml",
        "field_mappings:\n  Contact:\n    first_name: {salesforce: FirstName, preference: always}\n",
        "salesforce.yaml",
        "field_mappings.Contact.first_name.preference",
        "must be one of: most_recent, salesforce_wins, conversion_wins, do_not_sync (got 'always')",
    ),
    "bad salesforce object": (
        "salesforce.yaml",
        "field_mappings:\n  Opportunity: {name: Name}\n",
        "salesforce.yaml",
        "field_mappings.Opportunity",
        "must be one of: Contact, Lead, Account",
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=list(CASES))
def test_each_problem_names_file_key_and_what_is_allowed(config_dir: Path, case: tuple[str, ...]) -> None:
    filename, text, file, key, message = case
    write(config_dir, {filename: text})
    found = problems_of(config_dir)
    assert any(f == file and k == key and message in m for f, k, m in found), found


def test_all_problems_reported_at_once_and_valid_syncs_still_load(config_dir: Path) -> None:
    write(
        config_dir,
        {
            "typo.yaml": GOOD_SYNC.format(name="typo") + "mode: merge\nschedul: hourly\n",
            "broken.yaml": "name: [unclosed\n",
        },
    )
    project = load_project_config(config_dir)
    assert set(project.syncs) == {
        "contacts_from_users",
        "products",
        "product_owners",
        "subscriptions",
        "order_events",
    }
    assert set(project.broken_syncs) == {"typo", "broken"}
    assert {p.key for p in project.broken_syncs["typo"].problems} == {"mode", "schedul"}


def test_a_sync_after_a_broken_sync_is_broken_too(config_dir: Path) -> None:
    write(
        config_dir,
        {"contacts_from_users.yaml": GOOD_SYNC.format(name="contacts_from_users") + "mode: merge\n"},
    )
    project = load_project_config(config_dir)
    assert "product_owners" in project.broken_syncs
    assert (
        "sync 'contacts_from_users' is broken" in project.broken_syncs["product_owners"].problems[0].message
    )
    assert "products" in project.syncs


def test_after_cycle_is_reported(config_dir: Path) -> None:
    write(
        config_dir,
        {
            "a.yaml": GOOD_SYNC.format(name="a") + "after: [b]\n",
            "b.yaml": GOOD_SYNC.format(name="b") + "after: [a]\n",
        },
    )
    project = load_project_config(config_dir)
    assert {"a", "b"} <= set(project.broken_syncs)
    assert "forms a cycle" in project.broken_syncs["a"].problems[0].message


def test_broken_warehouse_breaks_only_its_syncs(config_dir: Path) -> None:
    write(
        config_dir,
        {
            "warehouses.yaml": "warehouses:\n  demo: {type: duckdb, path: x.duckdb}\n  app: {type: postgres, url: inline}\n",
            "app_sync.yaml": GOOD_SYNC.format(name="app_sync").replace("warehouse: demo", "warehouse: app"),
        },
    )
    project = load_project_config(config_dir)
    assert "contacts_from_users" in project.syncs
    assert project.broken_syncs["app_sync"].problems[0].message == (
        "warehouse 'app' is defined but invalid (see warehouses.yaml)"
    )


def test_missing_config_directory(tmp_path: Path) -> None:
    project = load_project_config(tmp_path / "nope")
    assert "config directory does not exist" in project.problems[0].message


def test_env_references_are_resolved_at_run_time(config_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(
        config_dir,
        {
            "warehouses.yaml": "warehouses:\n  demo: {type: duckdb, path: x.duckdb}\n  app: {type: postgres, url: {env: APP_DB_URL}}\n"
        },
    )
    project = load_project_config(config_dir)
    url = project.warehouses["app"].url
    monkeypatch.delenv("APP_DB_URL", raising=False)
    with pytest.raises(Exception, match="environment variable APP_DB_URL is not set"):
        url.resolve("warehouse 'app'")
    monkeypatch.setenv("APP_DB_URL", "postgresql://x")
    assert url.resolve("warehouse 'app'") == "postgresql://x"


def test_cli_validate_prints_every_problem_and_exits_non_zero(config_dir: Path) -> None:
    write(
        config_dir,
        {
            "typo.yaml": GOOD_SYNC.format(name="typo") + "mode: merge\n",
            "schema.yaml": "contact_fields: {plan: strin}\n",
        },
    )
    result = CliRunner().invoke(main, ["--config", str(config_dir), "validate"])
    assert result.exit_code == 1
    assert "error: typo.yaml: mode: must be one of: upsert, update, insert (got 'merge')" in result.output
    assert "error: schema.yaml: contact_fields.plan: must be one of" in result.output
    assert "ok: contacts_from_users (contacts_from_users.yaml)" in result.output
    assert "broken: typo (typo.yaml): 1 problem(s)" in result.output
    assert "Traceback" not in result.output


def test_cli_validate_passes_on_the_demo_config(config_dir: Path) -> None:
    result = CliRunner().invoke(main, ["--config", str(config_dir), "validate"])
    assert result.exit_code == 0, result.output
    assert "is valid: 5 sync(s)" in result.output
