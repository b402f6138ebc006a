"""The engine packages import no Dagster: all Dagster wiring lives in conversion_sync.defs.

Each package is imported module by module in a fresh interpreter, which reports the first module whose import
brought in `dagster` (or a dagster_* library).
"""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import conversion_sync
from conversion_sync.config.schedules import is_valid_cron

ENGINE_PACKAGES = ("config", "store", "warehouses", "syncs", "salesforce", "alerts")
PACKAGE_DIR = Path(conversion_sync.__file__).parent
SKIPPED = ("conversion_sync.store.migrations",)
"""Alembic's migration scripts run against a migration context when imported; they are not library modules."""

PROBE = """
import importlib, json, sys
def dagster_loaded():
    return sorted(m for m in sys.modules if m == "dagster" or m.startswith(("dagster.", "dagster_")))
for name in json.loads(sys.argv[1]):
    importlib.import_module(name)
    loaded = dagster_loaded()
    if loaded:
        print(json.dumps({"module": name, "dagster": loaded[:5]}))
        sys.exit(1)
print(json.dumps({"module": None}))
"""


def engine_modules(package: str) -> list[str]:
    root = PACKAGE_DIR / package
    names = [f"conversion_sync.{package}"]
    for info in pkgutil.walk_packages([str(root)], prefix=f"conversion_sync.{package}."):
        if not info.name.startswith(SKIPPED):
            names.append(info.name)
    return sorted(names)


@pytest.mark.parametrize("package", ENGINE_PACKAGES)
def test_engine_package_imports_no_dagster(package: str) -> None:
    modules = engine_modules(package)
    assert len(modules) > 1 or package == "alerts", modules
    result = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(modules)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=PACKAGE_DIR.parent,
    )
    assert result.returncode in (0, 1), result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["module"] is None, f"importing {report['module']} loaded {report['dagster']}"


def test_cron_check_accepts_only_what_dagster_schedules_accept() -> None:
    """The engine's cron check (no Dagster) never accepts an expression Dagster's schedules reject, and accepts
    the usual ones."""
    from dagster._utils.schedules import is_valid_cron_string

    usual = [
        "* * * * *",
        "*/15 * * * *",
        "0 */2 * * *",
        "30 6 * * mon-fri",
        "0 9 * * 1-5",
        "0 9 * * 0,6",
        "0 0 1 */3 *",
        "0 0 * jan-mar *",
        "5,35 * * * *",
        "10/5 * * * *",
        "0 0 29 2 *",
        "0 0 ? * *",
        "0 9 * * SUN",
        "@daily",
        "@hourly",
        "0 9 * * fri-mon",
    ]
    rejected = [
        "61 * * * *",
        "*/0 * * * *",
        "* 24 * * *",
        "0 0 0 * *",
        "0 0 * 13 *",
        "0 0 * * 8",
        "0 0 30 2 *",
        "0 0 31 feb *",
        "0 0 30 2,2 *",
        "? * * * *",
        "* * * *",
        "* * * * * *",
        ",1 * * * *",
        "1-60 * * * *",
        "a * * * *",
        "MON * * * *",
        "",
    ]
    for cron in usual:
        assert is_valid_cron(cron) and is_valid_cron_string(cron), cron
    for cron in rejected:
        assert not is_valid_cron(cron) and not is_valid_cron_string(cron), cron
    for cron in ("0 0 L * *", "0 0 * * 5#2"):  # Dagster's extensions the config does not offer
        assert not is_valid_cron(cron) and is_valid_cron_string(cron), cron
