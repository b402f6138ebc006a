"""The conversion-sync CLI: run, preview, status, rejections (CSV) and resync, on a real store."""

from __future__ import annotations

import csv
import io

import pytest
from click.testing import CliRunner

from conversion_sync.cli import main

from .conftest import SyncWorld


@pytest.fixture
def cli(world: SyncWorld, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("CONVERSION_STORE_URL", world.store_url)
    world.warehouse(
        "CREATE TABLE users AS SELECT * FROM (VALUES ('ann@example.com', 'Ann', '1'), ('bad', 'Bad', '2'), "
        "('cy@example.com', 'Cy', 'ten')) v(email, first_name, seats)"
    )
    world.add_sync("users", "SELECT * FROM users")
    world.add_sync("later", "SELECT email FROM users", enabled="false", schedule="daily")
    world.project()
    (world.dir / "typo.yaml").write_text(
        "name: typo\nwarehouse: wh\ndestination: {type: contact}\nquery: SELECT 1\n"
    )

    def invoke(*args: str) -> tuple[int, str, str]:
        result = CliRunner().invoke(main, ["--config", str(world.dir), *args])
        return result.exit_code, result.stdout, result.stderr

    return invoke


def test_run_prints_counts_and_the_rejections_command(cli) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = cli("run", "users")
    assert code == 0, out
    assert "sync users: run cli-" in out
    assert "  added                1" in out and "  rejected             2" in out
    assert "rejected rows: conversion-sync rejections users --run cli-" in out


def test_run_refuses_broken_and_unknown_syncs(cli) -> None:  # type: ignore[no-untyped-def]
    code, _, err = cli("run", "typo")
    assert code == 1 and "sync 'typo' is broken:" in err and "destination.type: must be one of" in err
    code, _, err = cli("run", "nope")
    assert code == 1 and "unknown sync 'nope'; known syncs: later, users" in err


def test_status_shows_state_and_counts(cli) -> None:  # type: ignore[no-untyped-def]
    cli("run", "users")
    code, out, _ = cli("status")
    assert code == 0
    lines = {line.split()[0]: line.split() for line in out.splitlines()[1:] if line.strip()}
    assert lines["users"][1] == "healthy" and lines["users"][4:] == ["3", "1", "0", "0", "0", "2"]
    assert lines["later"][1] == "disabled"
    assert lines["typo"][1] == "broken"


def test_rejections_download_as_csv(cli) -> None:  # type: ignore[no-untyped-def]
    cli("run", "users")
    code, out, err = cli("rejections", "users")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert {r["row_key"]: r["code"] for r in rows} == {
        "bad": "invalid_field_value",
        "cy@example.com": "invalid_field_value",
    }
    assert rows[0]["row"].startswith("{")
    assert "2 rejected row(s) of run cli-" in err


def test_preview_then_resync(cli) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = cli("preview", "users")
    assert code == 0 and "(dry run, nothing written)" in out
    assert "      add  ann@example.com" in out and "first_name: 'Ann'" in out
    assert "   reject  cy@example.com  [invalid_field_value] seats: 'ten' is not an integer" in out
    cli("run", "users")
    code, out, _ = cli("resync", "users")
    assert code == 0
    assert (
        out.strip() == "sync users: watermark reset, 1 fingerprint(s) cleared; the next run is a full resync"
    )
