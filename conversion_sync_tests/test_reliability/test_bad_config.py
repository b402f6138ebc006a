"""Bad config files of every kind give their message (file, key, what is allowed), never a traceback."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from conversion_sync.cli import main
from conversion_sync.config import load_project_config
from conversion_sync.config.problems import ConfigProblem

from .conftest import Figures

VALID: dict[str, dict[str, Any]] = {
    "warehouses.yaml": {
        "warehouses": {
            "demo": {"type": "duckdb", "path": "warehouse.duckdb", "sync_logs": {"schema": "logs"}},
            "app": {"type": "postgres", "url": {"env": "APP_DB_URL"}},
            "snow": {"type": "snowflake", "account": "acct", "user": "u", "password": {"env": "SF_PW"}},
        }
    },
    "schema.yaml": {
        "contact_fields": {"plan": "string", "seats": "integer"},
        "object_types": {"product": {"fields": {"name": "string", "price": "number"}}},
    },
    "salesforce.yaml": {
        "poll_schedule": "every 5 minutes",
        "poll_overlap": "10 minutes",
        "api_reserve": 500,
        "field_mappings": {"Contact": {"first_name": "FirstName", "job_title": {"salesforce": "Title"}}},
    },
    "users.yaml": {
        "name": "users",
        "description": "Users → contacts",
        "warehouse": "demo",
        "destination": {"type": "contacts"},
        "mode": "upsert",
        "query": "SELECT email FROM users WHERE updated_at > '{{last_sync_time}}'",
        "schedule": "every 15 minutes",
        "enabled": True,
        "lookback": "5 minutes",
        "after": ["objects"],
        "max_rows": 1000,
        "owner": "data@example.com",
        "tags": {"team": "growth"},
        "rejected_rate_threshold": 0.1,
    },
    "objects.yaml": {
        "name": "objects",
        "warehouse": "demo",
        "destination": {"type": "custom_objects", "object_type": "product"},
        "query": "SELECT id, name FROM products",
        "delete_behavior": "delete",
    },
}
WRONG_VALUES: list[Any] = [
    None,
    0,
    -1,
    10**30,
    1.5,
    float("inf"),
    True,
    "",
    "text",
    "x" * 100_000,
    "{{nope}}",
    [],
    [1, "a", None],
    {},
    {"k": "v"},
    {"env": "NOT_SET_ANYWHERE"},
    "99999999999 days",
    'cron "*/0 * * * *"',
]
RAW_CONTENTS: dict[str, bytes] = {
    "empty": b"",
    "blank": b"   \n\n",
    "comment only": b"# nothing here\n",
    "unclosed flow": b"key: [unclosed, {also",
    "bad indentation": b"a:\n  b: 1\n c: 2\n",
    "tab indentation": b"a:\n\t- 1\n",
    "colons": b": : :\n- : -\n",
    "binary": bytes(range(256)) * 40,
    "invalid utf-8": b"name: \xc3\x28\xa0\xa1\n",
    "utf-16": "name: users\n".encode("utf-16"),
    "nul bytes": b"name: a\x00b\n",
    "python tag": b"!!python/object/apply:os.system ['echo hacked']\n",
    "deep block nesting": b"".join(b"  " * i + b"- \n" for i in range(3_000)),
    "alias bomb": b"a: &a [x, x, x, x, x, x, x, x, x, x]\n"
    + b"".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n".encode() for i in range(8)
    ),
    "scalar": b"just a string\n",
    "number": b"42\n",
    "list": b"[1, 2, 3]\n",
    "null": b"~\n",
    "duplicate keys": b"name: a\nname: b\n",
    "many unknown keys": "".join(f"key_{i}: {i}\n" for i in range(2_000)).encode(),
}
LARGE_CONTENTS: dict[str, bytes] = {
    "deep flow nesting (5,000)": b"[" * 5_000 + b"]" * 5_000,
    "deep flow nesting (200,000)": b"[" * 200_000 + b"]" * 200_000,
    "many unknown keys (50,000)": "".join(f"key_{i}: {i}\n" for i in range(50_000)).encode(),
    "long lines (900 KB)": b"query: " + b"SELECT 1 " * 100_000 + b"\n",
}
HUGE = {"huge (20 MB)": b"x: " + b"y" * 20_000_000 + b"\n"}


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every path into a nested structure (dict keys and list indexes), the root excluded."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*prefix, key)
            yield from paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield (*prefix, index)
            yield from paths(value, (*prefix, index))


def replaced(data: Any, path: tuple[Any, ...], value: Any) -> Any:
    out = copy.deepcopy(data)
    node = out
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return out


def write_config(directory: Path, broken_file: str, content: bytes) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.iterdir():
        old.unlink()
    for name, data in VALID.items():
        (directory / name).write_text(yaml.safe_dump(data, allow_unicode=True))
    (directory / broken_file).write_bytes(content)


def check_config(directory: Path, broken_file: str) -> list[ConfigProblem]:
    """load_project_config and `conversion-sync validate` report problems by file, never raise."""
    project = load_project_config(directory)  # must not raise
    files = set(VALID) | {str(directory)}
    for problem in project.problems:
        assert problem.file in files, problem
        assert str(problem).startswith(problem.file) and problem.message, problem
    result = CliRunner().invoke(main, ["--config", str(directory), "validate"])
    output = result.stdout + result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{broken_file}: validate crashed: {result.exception!r}"
    )
    assert "Traceback" not in output
    if project.problems:
        assert result.exit_code == 1, output[-2000:]
        lines = set(output.splitlines())
        assert all(f"error: {problem}" in lines for problem in project.problems), output[-2000:]
    else:
        assert result.exit_code == 0, output[-2000:]
    return project.problems


@pytest.mark.parametrize("file", sorted(VALID))
def test_raw_contents_in_each_file(tmp_path: Path, file: str, figures: Figures) -> None:
    problems = 0
    for label, content in RAW_CONTENTS.items():
        write_config(tmp_path / "config", file, content)
        try:
            problems += len(check_config(tmp_path / "config", file))
        except AssertionError as exc:
            raise AssertionError(f"{file} with {label} content: {exc}") from None
    figures.add("bad_config", files_tried=len(RAW_CONTENTS), problems_reported=problems)


def wrong_types(tmp_path: Path, file: str, values: list[Any], figures: Figures) -> None:
    tried = problems = 0
    for path in paths(VALID[file]):
        for value in values:
            write_config(
                tmp_path / "config", file, yaml.safe_dump(replaced(VALID[file], path, value)).encode()
            )
            try:
                problems += len(check_config(tmp_path / "config", file))
            except AssertionError as exc:
                raise AssertionError(f"{file} with {path} = {str(value)[:40]!r}: {exc}") from None
            tried += 1
    figures.add("bad_config", files_tried=tried, problems_reported=problems)


@pytest.mark.parametrize("file", sorted(VALID))
def test_wrong_types_at_every_level(tmp_path: Path, file: str, figures: Figures) -> None:
    wrong_types(tmp_path, file, WRONG_VALUES[::6], figures)


@pytest.mark.reliability
@pytest.mark.parametrize("file", sorted(VALID))
def test_wrong_types_of_every_kind_at_every_level(tmp_path: Path, file: str, figures: Figures) -> None:
    wrong_types(tmp_path, file, WRONG_VALUES, figures)


@pytest.mark.reliability
@pytest.mark.parametrize("file", sorted(VALID))
def test_large_contents_in_each_file(tmp_path: Path, file: str, figures: Figures) -> None:
    problems = 0
    for label, content in LARGE_CONTENTS.items():
        write_config(tmp_path / "config", file, content)
        try:
            problems += len(check_config(tmp_path / "config", file))
        except AssertionError as exc:
            raise AssertionError(f"{file} with {label} content: {exc}") from None
    figures.add("bad_config", files_tried=len(LARGE_CONTENTS), problems_reported=problems)


def test_a_huge_file_is_refused_quickly_with_its_size(tmp_path: Path, figures: Figures) -> None:
    for label, content in HUGE.items():
        write_config(tmp_path / "config", "users.yaml", content)
        started = time.monotonic()
        [problem] = [p for p in check_config(tmp_path / "config", "users.yaml") if p.file == "users.yaml"]
        assert problem.message == "is 20.0 MB; a config file may be at most 1 MB", label
        assert time.monotonic() - started < 10, "a huge file must be refused, not parsed"
    figures.add("bad_config", files_tried=len(HUGE), problems_reported=len(HUGE))


def test_deeply_nested_yaml_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    write_config(tmp_path / "config", "users.yaml", b"[" * 2_000 + b"]" * 2_000)
    [problem] = [p for p in check_config(tmp_path / "config", "users.yaml") if p.file == "users.yaml"]
    assert problem.message == "is not valid YAML: it is nested too deeply to read"
