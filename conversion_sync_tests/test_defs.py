"""The whole code location loads from the demo config, and still loads when a sync file is broken."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from conversion_sync.config import load_project_config
from conversion_sync.definitions import build_definitions


def asset_keys(defs: dg.Definitions) -> set[str]:
    return {spec.key.to_user_string() for spec in defs.resolve_all_asset_specs()}


def test_demo_code_location_loads(monkeypatch: pytest.MonkeyPatch, config_dir: Path) -> None:
    monkeypatch.setenv("CONVERSION_SYNC_CONFIG", str(config_dir))
    import importlib

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
    assert "must be one of: contacts, custom_objects, events" in str(failure.event_specific_data.error)


def test_shared_file_problems_are_visible(config_dir: Path) -> None:
    (config_dir / "schema.yaml").write_text("contact_fields: {plan: strin}\n")
    defs = build_definitions(load_project_config(config_dir))
    dg.Definitions.validate_loadable(defs)
    assert "config_problems" in asset_keys(defs)
