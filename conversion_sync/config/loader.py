"""Load a config directory: validate every file up front, keep valid syncs even when others are broken."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError

from conversion_sync.config.problems import ConfigError, ConfigProblem, problems_from_validation_error
from conversion_sync.config.salesforce import SalesforceConfig
from conversion_sync.config.store_schema import StoreSchemaConfig
from conversion_sync.config.sync_graph import find_cycles
from conversion_sync.config.syncs import SyncConfig
from conversion_sync.config.warehouses import WAREHOUSE_TYPES, WarehouseConfig
from conversion_sync.syncs.lineage import sync_name_of_key

WAREHOUSES_FILE = "warehouses.yaml"
SCHEMA_FILE = "schema.yaml"
SALESFORCE_FILE = "salesforce.yaml"
RESERVED_FILES = {WAREHOUSES_FILE, SCHEMA_FILE, SALESFORCE_FILE}
DEFAULT_CONFIG_DIR = "syncs"
MAX_FILE_BYTES = 1_000_000
"""Larger files are refused: parsing them would stall loading the code location (YAML reads ~0.3 MB/s)."""

_warehouse_adapter: TypeAdapter[Any] = TypeAdapter(WarehouseConfig)


@dataclass
class BrokenSync:
    """A sync file that could not be used, with everything wrong with it."""

    name: str
    file: str
    problems: list[ConfigProblem]
    description: str = ""


@dataclass
class ProjectConfig:
    """Everything loaded from a config directory, valid parts and problems side by side."""

    directory: Path
    warehouses: dict[str, Any] = field(default_factory=dict)
    store_schema: StoreSchemaConfig = field(default_factory=StoreSchemaConfig)
    salesforce: SalesforceConfig = field(default_factory=SalesforceConfig)
    syncs: dict[str, SyncConfig] = field(default_factory=dict)
    sync_files: dict[str, str] = field(default_factory=dict)
    broken_syncs: dict[str, BrokenSync] = field(default_factory=dict)
    problems: list[ConfigProblem] = field(default_factory=list)

    def raise_for_problems(self) -> None:
        if self.problems:
            raise ConfigError(self.problems)


def config_directory() -> Path:
    """The config directory: $CONVERSION_SYNC_CONFIG, else ./syncs."""
    return Path(os.environ.get("CONVERSION_SYNC_CONFIG", DEFAULT_CONFIG_DIR)).resolve()


_UNREADABLE = object()


def _read_yaml(path: Path, problems: list[ConfigProblem]) -> Any:
    """The parsed YAML, or _UNREADABLE after recording why it could not be parsed."""
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            problems.append(
                ConfigProblem(
                    path.name,
                    "",
                    f"is {size / 1_000_000:.1f} MB; a config file may be at most {MAX_FILE_BYTES // 1_000_000} MB",
                )
            )
            return _UNREADABLE
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except RecursionError:
        problems.append(ConfigProblem(path.name, "", "is not valid YAML: it is nested too deeply to read"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        reason = " ".join(str(getattr(exc, "problem", None) or exc).split())  # one line per problem
        problems.append(ConfigProblem(path.name, where, f"is not valid YAML: {reason}"))
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(ConfigProblem(path.name, "", f"cannot be read: {exc}"))
    return _UNREADABLE


def _expect_mapping(data: Any, file: str, problems: list[ConfigProblem]) -> dict[str, Any] | None:
    if data is _UNREADABLE:
        return None
    if data is None:
        return {}
    if not isinstance(data, dict):
        problems.append(
            ConfigProblem(file, "", f"must be a mapping of keys to values, got {type(data).__name__}")
        )
        return None
    return data


def _load_warehouses(directory: Path, problems: list[ConfigProblem]) -> tuple[dict[str, Any], set[str]]:
    path = directory / WAREHOUSES_FILE
    valid: dict[str, Any] = {}
    broken: set[str] = set()
    if not path.exists():
        return valid, broken
    data = _expect_mapping(_read_yaml(path, problems), WAREHOUSES_FILE, problems)
    if data is None:
        return valid, broken
    for key in data:
        if key != "warehouses":
            problems.append(ConfigProblem(WAREHOUSES_FILE, key, "unknown key; allowed keys: warehouses"))
    entries = data.get("warehouses") or {}
    if not isinstance(entries, dict):
        problems.append(
            ConfigProblem(WAREHOUSES_FILE, "warehouses", "must map warehouse names to connections")
        )
        return valid, broken
    for name, entry in entries.items():
        prefix = f"warehouses.{name}"
        if not isinstance(entry, dict) or entry.get("type") not in WAREHOUSE_TYPES:
            got = entry.get("type") if isinstance(entry, dict) else entry
            problems.append(
                ConfigProblem(
                    WAREHOUSES_FILE,
                    f"{prefix}.type",
                    f"must be one of {', '.join(WAREHOUSE_TYPES)} (got {got!r})",
                )
            )
            broken.add(name)
            continue
        try:
            valid[name] = _warehouse_adapter.validate_python(entry)
        except ValidationError as exc:
            kind = entry["type"]
            problems.extend(
                _strip_type_from_keys(problems_from_validation_error(exc, WAREHOUSES_FILE, prefix), kind)
            )
            broken.add(name)
    return valid, broken


def _strip_type_from_keys(found: list[ConfigProblem], kind: str) -> list[ConfigProblem]:
    return [
        ConfigProblem(p.file, p.key.replace(f".{kind}.", ".").removesuffix(f".{kind}"), p.message)
        for p in found
    ]


def _load_model(directory: Path, file: str, model: type[Any], problems: list[ConfigProblem]) -> Any:
    path = directory / file
    if not path.exists():
        return model()
    data = _expect_mapping(_read_yaml(path, problems), file, problems)
    if data is None:
        return model()
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        allowed = {"": list(model.model_fields)}
        problems.extend(problems_from_validation_error(exc, file, allowed_keys=allowed))
        return model()


def _sync_allowed_keys() -> dict[str, list[str]]:
    return {"": list(SyncConfig.model_fields), "destination": ["type", "object_type"]}


def _load_sync_file(path: Path) -> tuple[SyncConfig | None, str, list[ConfigProblem]]:
    problems: list[ConfigProblem] = []
    data = _expect_mapping(_read_yaml(path, problems), path.name, problems)
    name = path.stem
    if data is None:
        return None, name, problems
    if isinstance(data.get("name"), str):
        name = data["name"]
    try:
        return SyncConfig.model_validate(data), name, problems
    except ValidationError as exc:
        problems.extend(problems_from_validation_error(exc, path.name, allowed_keys=_sync_allowed_keys()))
        return None, name, problems


def _cross_check(
    sync: SyncConfig, file: str, project: ProjectConfig, broken_warehouses: set[str]
) -> list[ConfigProblem]:
    problems = []
    if sync.warehouse not in project.warehouses:
        if sync.warehouse in broken_warehouses:
            message = f"warehouse '{sync.warehouse}' is defined but invalid (see {WAREHOUSES_FILE})"
        else:
            known = ", ".join(sorted(project.warehouses)) or "none defined"
            message = f"unknown warehouse '{sync.warehouse}'; defined in {WAREHOUSES_FILE}: {known}"
        problems.append(ConfigProblem(file, "warehouse", message))
    else:
        sync.use_warehouse_kind(
            project.warehouses[sync.warehouse].type
        )  # its comment syntax, for `incremental`
    object_type = sync.destination.object_type
    if object_type and object_type not in project.store_schema.object_types:
        known = ", ".join(sorted(project.store_schema.object_types)) or "none defined"
        problems.append(
            ConfigProblem(
                file,
                "destination.object_type",
                f"unknown object type '{object_type}'; defined in {SCHEMA_FILE}: {known}",
            )
        )
    if sync.delete_behavior != "do_nothing" and sync.destination.type == "events":
        problems.append(
            ConfigProblem(file, "delete_behavior", "events are history and are never removed; use do_nothing")
        )
    elif sync.delete_behavior != "do_nothing" and sync.incremental:
        problems.append(
            ConfigProblem(
                file,
                "delete_behavior",
                "applies to full-query syncs only (this query uses {{last_sync_time}}); use do_nothing",
            )
        )
    if sync.name in sync.after:
        problems.append(ConfigProblem(file, "after", "a sync cannot run after itself"))
    return problems


def _check_sync_graph(project: ProjectConfig) -> None:
    """Syncs on a cycle of dependencies are broken, each told the cycle; then, until nothing changes, syncs
    whose `after:` or triggering `deps:` name a sync that is unknown, broken or disabled."""
    cycles = find_cycles(project.syncs, project.warehouses)
    for name, cycle in cycles.items():
        file = project.sync_files[name]
        _mark_broken(project, name, [ConfigProblem(file, cycle.config_key, cycle.message())])
    changed = True
    while changed:
        changed = False
        for name, sync in list(project.syncs.items()):
            found = _reference_problems(project, sync)
            if found:
                _mark_broken(project, name, found)
                changed = True


def _reference_problems(project: ProjectConfig, sync: SyncConfig) -> list[ConfigProblem]:
    """What is wrong with the syncs `sync` names in `after:` and (as sync_<name> keys) in `deps:`."""
    file = project.sync_files[sync.name]
    found = []
    for upstream in sync.after:
        problem = _upstream_problem(project, sync, upstream, f"sync '{sync.name}' cannot run after it")
        if problem:
            found.append(ConfigProblem(file, "after", problem))
    for key in sync.deps:
        problem = _deps_problem(project, sync, key)
        if problem:
            found.append(ConfigProblem(file, "deps", f"'{key}': {problem}"))
    return found


def _deps_problem(project: ProjectConfig, sync: SyncConfig, key: str) -> str | None:
    """A `deps:` key naming a sync: it must exist; when its updates start `sync` (run_on: upstream or both)
    it must also be valid and, for an enabled sync, enabled. Other keys are not checked."""
    upstream = sync_name_of_key(tuple(key.split("/")))
    if upstream is None or upstream == sync.name:
        return None  # not a sync's key; naming itself is a cycle, reported as one
    if upstream not in project.syncs and upstream not in project.broken_syncs:
        return _unknown_sync(project, sync, upstream)
    if sync.run_on == "schedule":
        return None  # lineage only: the schedule starts the sync
    consequence = f"its updates can never start sync '{sync.name}' (run_on: {sync.run_on})"
    return _upstream_problem(project, sync, upstream, consequence)


def _unknown_sync(project: ProjectConfig, sync: SyncConfig, upstream: str) -> str:
    known = ", ".join(sorted(n for n in project.syncs if n != sync.name)) or "none"
    return f"sync '{sync.name}' names unknown sync '{upstream}'; known syncs: {known}"


def _upstream_problem(
    project: ProjectConfig, sync: SyncConfig, upstream: str, consequence: str
) -> str | None:
    """Why sync `upstream` cannot be waited for by `sync` (`consequence` says what it breaks), naming both,
    or None when it can."""
    if upstream in project.broken_syncs:
        return f"sync '{upstream}' is broken (see {project.broken_syncs[upstream].file}), so {consequence}"
    if upstream not in project.syncs:
        return _unknown_sync(project, sync, upstream)
    if sync.enabled and not project.syncs[upstream].enabled:
        return (
            f"sync '{upstream}' is disabled (enabled: false), so {consequence}; disable '{sync.name}' too, "
            f"or enable '{upstream}'"
        )
    return None


def _mark_broken(project: ProjectConfig, name: str, problems: list[ConfigProblem]) -> None:
    sync = project.syncs.pop(name)
    file = project.sync_files.pop(name)
    project.broken_syncs[name] = BrokenSync(name, file, problems, sync.description)
    project.problems.extend(problems)


def load_project_config(directory: Path | str | None = None) -> ProjectConfig:
    """Load and validate everything; problems are collected, never raised."""
    directory = Path(directory).resolve() if directory else config_directory()
    project = ProjectConfig(directory=directory)
    if not directory.is_dir():
        project.problems.append(
            ConfigProblem(str(directory), "", "config directory does not exist (set CONVERSION_SYNC_CONFIG)")
        )
        return project
    project.warehouses, broken_warehouses = _load_warehouses(directory, project.problems)
    project.store_schema = _load_model(directory, SCHEMA_FILE, StoreSchemaConfig, project.problems)
    project.salesforce = _load_model(directory, SALESFORCE_FILE, SalesforceConfig, project.problems)

    sync_paths = sorted(
        p for p in directory.iterdir() if p.suffix in (".yaml", ".yml") and p.name not in RESERVED_FILES
    )
    seen_files: dict[str, str] = {}
    for path in sync_paths:
        sync, name, problems = _load_sync_file(path)
        if sync is not None:
            problems.extend(_cross_check(sync, path.name, project, broken_warehouses))
            if name in seen_files:
                problems.append(
                    ConfigProblem(
                        path.name, "name", f"sync name '{name}' is already used by {seen_files[name]}"
                    )
                )
        seen_files.setdefault(name, path.name)
        if problems or sync is None:
            key = name if name not in project.broken_syncs and name not in project.syncs else path.stem
            description = sync.description if sync else ""
            project.broken_syncs[key] = BrokenSync(key, path.name, problems, description)
            project.problems.extend(problems)
        else:
            project.syncs[name] = sync
            project.sync_files[name] = path.name
    _check_sync_graph(project)
    return project
