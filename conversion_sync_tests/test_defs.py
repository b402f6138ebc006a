"""The whole code location: it loads from the demo config under local and production settings, and what it
defines matches a snapshot; it still loads when a sync file is broken; `dg check defs` passes.

The snapshot (defs_snapshot.json beside this file) lists, per environment, every asset key with its group,
kinds, tags, owners, upstream keys, freshness policy, automation condition, the pools of its ops and whether
it is external (the warehouse tables the syncs read, the store's destination tables), the asset checks, the jobs, the schedules (cron, default status), the sensors, and
the resources by key and class (with the environment variables they read). A change to any of these fails
`test_code_location_matches_snapshot`. When the change is intended, regenerate the file and review its diff:

    UPDATE_DEFS_SNAPSHOT=1 .venv/bin/python -m pytest conversion_sync_tests/test_defs.py
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from conversion_sync.config import load_project_config
from conversion_sync.config.environment import ENV_VAR
from conversion_sync.definitions import build_definitions
from conversion_sync.salesforce.client import ENV_VARS
from conversion_sync.store.connection import STORE_URL_ENV, StoreNotConfigured

SNAPSHOT = Path(__file__).with_name("defs_snapshot.json")
UPDATE_ENV = "UPDATE_DEFS_SNAPSHOT"
REPO_ROOT = Path(__file__).resolve().parents[1]
PRODUCTION_STORE_URL = "postgresql://conversion:not-a-password@store.example.com:5432/conversion"


def asset_keys(defs: dg.Definitions) -> set[str]:
    return {spec.key.to_user_string() for spec in defs.resolve_all_asset_specs()}


def load_code_location(monkeypatch: pytest.MonkeyPatch, config_dir: Path, env: str) -> dg.Definitions:
    """Import conversion_sync.definitions afresh, as a code server does, with `env`'s settings and no
    Salesforce credentials."""
    monkeypatch.setenv("CONVERSION_SYNC_CONFIG", str(config_dir))
    monkeypatch.setenv(ENV_VAR, env)
    for var in ENV_VARS.values():
        monkeypatch.delenv(var, raising=False)
    if env == "production":
        monkeypatch.setenv(STORE_URL_ENV, PRODUCTION_STORE_URL)
    else:
        monkeypatch.delenv(STORE_URL_ENV, raising=False)
    import conversion_sync.definitions as module

    defs = importlib.reload(module).defs
    dg.Definitions.validate_loadable(defs)
    return defs


def _status(value: Any) -> str | None:
    return getattr(value, "value", None)


def _resource_snapshot(resource: Any) -> dict[str, Any]:
    """A resource's class, and which of its settings come from which environment variable."""
    cls = type(resource)
    env = {
        name: value.env_var_name
        for name in getattr(cls, "model_fields", {})
        if isinstance(value := getattr(resource, name), dg.EnvVar)
    }
    return {"class": f"{cls.__module__}.{cls.__qualname__}", "env": env}


def snapshot(defs: dg.Definitions) -> dict[str, Any]:
    """What the code location defines, as plain JSON."""
    graph = defs.resolve_asset_graph()
    assets = {}
    for spec in sorted(defs.resolve_all_asset_specs(), key=lambda s: s.key.to_user_string()):
        assets[spec.key.to_user_string()] = {
            "group": spec.group_name,
            "kinds": sorted(spec.kinds),
            "tags": {k: v for k, v in sorted(spec.tags.items()) if not k.startswith("dagster/kind/")},
            "owners": list(spec.owners),
            "deps": sorted(dep.asset_key.to_user_string() for dep in spec.deps),
            "checks": sorted(key.name for key in graph.get(spec.key).check_keys),
            "external": not graph.get(spec.key).is_materializable,
            "freshness": _freshness(spec.freshness_policy),
            "automation_condition": _label(spec.automation_condition),
            "pools": _pools(graph.get(spec.key).assets_def),
        }
    repo = defs.get_repository_def()
    jobs = {
        job.name: {"tags": dict(sorted(job.tags.items())), "assets": sorted(_job_assets(job))}
        for job in sorted(repo.get_all_jobs(), key=lambda j: j.name)
        if not job.name.startswith("__")
    }
    schedules = {
        s.name: {
            "cron": s.cron_schedule,
            "timezone": s.execution_timezone,
            "job": s.job_name,
            "default_status": _status(s.default_status),
        }
        for s in sorted(repo.schedule_defs, key=lambda s: s.name)
    }
    sensors = {
        s.name: {
            "type": _status(s.sensor_type),
            "default_status": _status(s.default_status),
            "minimum_interval_seconds": s.minimum_interval_seconds,
            "jobs": sorted(t.job_name for t in s.targets),
        }
        for s in sorted(repo.sensor_defs, key=lambda s: s.name)
    }
    resources = {key: _resource_snapshot(value) for key, value in sorted((defs.resources or {}).items())}
    return {
        "assets": assets,
        "asset_checks": sorted(f"{k.asset_key.to_user_string()}:{k.name}" for k in graph.asset_check_keys),
        "jobs": jobs,
        "schedules": schedules,
        "sensors": sensors,
        "resources": resources,
    }


def _freshness(policy: dg.FreshnessPolicy | None) -> dict[str, float | None] | None:
    """A time-window freshness policy as its windows in seconds."""
    if policy is None:
        return None
    fail, warn = getattr(policy, "fail_window", None), getattr(policy, "warn_window", None)
    return {
        "fail_after_s": fail.to_timedelta().total_seconds() if fail else None,
        "warn_after_s": warn.to_timedelta().total_seconds() if warn else None,
    }


def _label(condition: dg.AutomationCondition | None) -> str | None:
    return condition.get_label() if condition else None


def _pools(assets_def: dg.AssetsDefinition) -> list[str]:
    """The concurrency pools of the ops that materialize an asset (none for an external asset)."""
    if not assets_def.is_executable:
        return []
    return sorted({op.pool for op in assets_def.node_def.iterate_op_defs() if op.pool})


def _job_assets(job: dg.JobDefinition) -> list[str]:
    return [key.to_user_string() for key in job.asset_layer.selected_asset_keys]


@pytest.mark.parametrize("env", ["local", "production"])
def test_code_location_matches_snapshot(
    env: str, monkeypatch: pytest.MonkeyPatch, config_dir: Path, tmp_path: Path
) -> None:
    monkeypatch.setenv("CONVERSION_SYNC_DATA_DIR", str(tmp_path / "data"))
    current = snapshot(load_code_location(monkeypatch, config_dir, env))
    saved = json.loads(SNAPSHOT.read_text(encoding="utf-8")) if SNAPSHOT.exists() else {}
    if os.environ.get(UPDATE_ENV):
        saved[env] = current
        SNAPSHOT.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    assert env in saved, f"no snapshot for {env}: run with {UPDATE_ENV}=1 to write {SNAPSHOT.name}"
    assert current == saved[env], (
        f"the code location's definitions under {env} settings differ from {SNAPSHOT.name}; "
        f"if intended, regenerate it with {UPDATE_ENV}=1 and review the diff"
    )


def test_production_keeps_the_store_url_out_of_run_config(
    monkeypatch: pytest.MonkeyPatch, config_dir: Path
) -> None:
    """In production the store URL (with its password) is an environment variable reference, never a value."""
    defs = load_code_location(monkeypatch, config_dir, "production")
    store = (defs.resources or {})["contact_store"]
    assert isinstance(store.url, dg.EnvVar) and store.url.env_var_name == STORE_URL_ENV
    assert "not-a-password" not in repr(defs.resources)


def test_production_without_a_store_url_fails_at_load(
    monkeypatch: pytest.MonkeyPatch, config_dir: Path
) -> None:
    monkeypatch.setenv(ENV_VAR, "production")
    monkeypatch.delenv(STORE_URL_ENV, raising=False)
    with pytest.raises(StoreNotConfigured, match=STORE_URL_ENV):
        build_definitions(load_project_config(config_dir))


def test_demo_code_location_loads(monkeypatch: pytest.MonkeyPatch, config_dir: Path) -> None:
    monkeypatch.setenv("CONVERSION_SYNC_CONFIG", str(config_dir))

    import conversion_sync.definitions as module

    defs = importlib.reload(module).defs
    dg.Definitions.validate_loadable(defs)
    repo = defs.get_repository_def()
    assert {"contact_store", "identity"} <= set(repo.get_top_level_resources())
    assert not any(key.startswith("config_problems") for key in asset_keys(defs))


def test_broken_sync_is_shown_not_hidden(config_dir: Path) -> None:
    (config_dir / "typo.yaml").write_text(
        "name: typo\nwarehouse: demo\ndestination: {type: contact}\nquery: SELECT 1\n"
    )
    defs = build_definitions(load_project_config(config_dir))
    dg.Definitions.validate_loadable(defs)
    assert "sync_typo" in asset_keys(defs)
    spec = next(s for s in defs.resolve_all_asset_specs() if s.key.to_user_string() == "sync_typo")
    assert "BROKEN CONFIG in typo.yaml" in (spec.description or "")
    assert "destination.type" in (spec.description or "")
    result = dg.materialize([defs.get_assets_def("sync_typo")], raise_on_error=False)
    assert not result.success
    failure = result.get_step_failure_events()[0]
    assert "must be one of: contacts, custom_objects, events" in str(failure.step_failure_data.error)


def test_shared_file_problems_are_visible(config_dir: Path) -> None:
    (config_dir / "schema.yaml").write_text("contact_fields: {plan: strin}\n")
    defs = build_definitions(load_project_config(config_dir))
    dg.Definitions.validate_loadable(defs)
    assert "config_problems" in asset_keys(defs)


def test_dg_check_defs_passes(config_dir: Path, tmp_path: Path) -> None:
    """`dg check defs` from the repository root, as a developer or CI runs it ([tool.dg] in pyproject.toml)."""
    dg_cli = Path(sys.executable).with_name("dg")
    if not dg_cli.exists():
        pytest.fail(f"{dg_cli} is missing: the dev extra installs dagster-dg-cli")
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n", encoding="utf-8")
    env = {
        **os.environ,
        "CONVERSION_SYNC_CONFIG": str(config_dir),
        "CONVERSION_SYNC_DATA_DIR": str(tmp_path / "data"),
        "DAGSTER_HOME": str(home),
        ENV_VAR: "local",
    }
    result = subprocess.run(
        [str(dg_cli), "check", "defs"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "All definitions loaded successfully" in result.stdout + result.stderr
