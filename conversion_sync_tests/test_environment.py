"""Local or production: only `local` starts the embedded store; production without a store URL says what to set.

The development stand-ins live in conversion_sync_dev, outside the product wheel, and the product imports them
only lazily, in local mode.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner
from setuptools import find_packages

from conversion_sync.cli import main as cli
from conversion_sync.config.environment import ENV_VAR, UnknownEnvironment, environment, is_local
from conversion_sync.store import connection
from conversion_sync.store.connection import STORE_URL_ENV, StoreNotConfigured, resolve_store_url

from .conftest import DEMO_CONFIG, REPO_ROOT

DEV_ONLY_DISTRIBUTIONS = ("pgserver", "trustme", "uvicorn", "starlette")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "production"),
        ("", "production"),
        ("production", "production"),
        ("local", "local"),
        (" Local ", "local"),
    ],
)
def test_environment_defaults_to_production(
    value: str | None, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if value is None:
        monkeypatch.delenv(ENV_VAR, raising=False)
    else:
        monkeypatch.setenv(ENV_VAR, value)
    assert environment() == expected
    assert is_local() is (expected == "local")


def test_an_unknown_environment_names_the_allowed_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "staging")
    with pytest.raises(UnknownEnvironment) as err:
        environment()
    message = str(err.value)
    assert ENV_VAR in message and "'staging'" in message and "local, production" in message


@pytest.fixture
def embedded_starts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every start of the embedded store instead of starting it."""
    from conversion_sync_dev import embedded_postgres

    starts: list[str] = []

    def start(data_dir: Path | None = None) -> str:
        starts.append("started")
        return "postgresql://embedded@/conversion"

    monkeypatch.setattr(embedded_postgres, "start_embedded_postgres", start)
    monkeypatch.delenv(STORE_URL_ENV, raising=False)
    return starts


@pytest.mark.parametrize("value", [None, "production"])
def test_production_without_a_store_url_is_an_error_and_starts_nothing(
    value: str | None, embedded_starts: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    if value is None:
        monkeypatch.delenv(ENV_VAR, raising=False)
    else:
        monkeypatch.setenv(ENV_VAR, value)
    with pytest.raises(StoreNotConfigured) as err:
        resolve_store_url()
    message = str(err.value)
    assert f"{STORE_URL_ENV} is not set" in message
    assert f"{ENV_VAR}=local" in message and "make dev" in message
    assert embedded_starts == []


def test_production_uses_the_configured_store(
    embedded_starts: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_VAR, "production")
    monkeypatch.setenv(STORE_URL_ENV, "postgresql://app@db.internal/contacts")
    assert resolve_store_url() == "postgresql://app@db.internal/contacts"
    assert embedded_starts == []


def test_local_without_a_store_url_starts_the_embedded_store(
    embedded_starts: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_VAR, "local")
    assert resolve_store_url() == "postgresql://embedded@/conversion"
    assert embedded_starts == ["started"]


def test_local_without_the_dev_extra_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "local")
    monkeypatch.delenv(STORE_URL_ENV, raising=False)
    monkeypatch.setitem(sys.modules, "conversion_sync_dev.embedded_postgres", None)  # as if not installed
    with pytest.raises(StoreNotConfigured) as err:
        connection.resolve_store_url()
    assert "pip install 'conversion_sync[dev]'" in str(err.value) and STORE_URL_ENV in str(err.value)


@pytest.mark.parametrize("value", [None, "production"])
def test_the_cli_in_production_without_a_store_url_fails_naming_the_variable(
    value: str | None, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if k not in (STORE_URL_ENV, ENV_VAR)}
    env.update({"CONVERSION_SYNC_CONFIG": str(DEMO_CONFIG), "CONVERSION_SYNC_DATA_DIR": str(tmp_path)})
    if value is not None:
        env[ENV_VAR] = value
    result = subprocess.run(
        [sys.executable, "-m", "conversion_sync.cli", "status"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    assert f"Error: {STORE_URL_ENV} is not set" in result.stderr, result.stderr
    assert f"{ENV_VAR}=local" in result.stderr
    assert not (tmp_path / "postgres").exists(), "an embedded store was started in production"


def test_the_embedded_store_commands_are_local_only(
    embedded_starts: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_VAR, "production")
    for command in (["store", "start"], ["store", "url"], ["store", "stop"]):
        result = CliRunner().invoke(cli, command)
        assert result.exit_code != 0, (command, result.output)
        assert "local only" in result.output and f"{ENV_VAR}=local" in result.output, result.output
    assert embedded_starts == []
    monkeypatch.setenv(ENV_VAR, "local")
    result = CliRunner().invoke(cli, ["store", "start"])
    assert result.exit_code == 0 and result.output.strip() == "postgresql://embedded@/conversion"


def test_an_unknown_environment_is_a_cli_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "staging")
    monkeypatch.delenv(STORE_URL_ENV, raising=False)
    result = CliRunner().invoke(cli, ["--config", str(DEMO_CONFIG), "status"])
    assert result.exit_code == 1 and "local, production" in result.output, result.output
    assert not isinstance(result.exception, UnknownEnvironment), "a traceback instead of a message"


def _module_level_imports(tree: ast.Module) -> list[str]:
    """Modules imported when the file is imported (not inside a function)."""
    found: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            return
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def test_the_product_imports_no_dev_stand_ins_at_module_level() -> None:
    offenders = []
    for path in sorted((REPO_ROOT / "conversion_sync").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for module in _module_level_imports(tree):
            top = module.split(".")[0]
            if top == "conversion_sync_dev" or top in DEV_ONLY_DISTRIBUTIONS:
                offenders.append(f"{path.relative_to(REPO_ROOT)}: {module}")
    assert offenders == []


def test_the_wheel_ships_the_product_only_and_its_dependencies_leave_out_the_stand_ins() -> None:
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    find = pyproject["tool"]["setuptools"]["packages"]["find"]
    packages = find_packages(
        where=str(REPO_ROOT), include=find.get("include", ("*",)), exclude=find.get("exclude", ())
    )
    assert packages and {p.split(".")[0] for p in packages} == {"conversion_sync"}, packages

    def names(requirements: list[str]) -> set[str]:
        return {
            r.split(";")[0].split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip()
            for r in requirements
        }

    runtime, dev = (
        names(pyproject["project"]["dependencies"]),
        names(pyproject["project"]["optional-dependencies"]["dev"]),
    )
    assert runtime.isdisjoint(DEV_ONLY_DISTRIBUTIONS), runtime
    assert set(DEV_ONLY_DISTRIBUTIONS) <= dev, dev
    assert "dagster-dg-cli" in dev  # make dev runs `dg dev`
