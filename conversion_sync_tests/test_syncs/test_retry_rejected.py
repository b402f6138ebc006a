"""Rejected rows get a second chance: `conversion-sync retry-rejected` and the `retry_rejected: true` option."""

from __future__ import annotations

from typing import Any

import dagster as dg
import pytest
from click.testing import CliRunner

from conversion_sync.cli import main
from conversion_sync.definitions import build_definitions
from conversion_sync.defs.warehouse_syncs import asset_key
from conversion_sync.store.contact_store import ContactStore
from conversion_sync.syncs.retry_rejected import filtered_query
from conversion_sync.syncs.runner import SyncRunner

from .conftest import SCHEMA_YAML, SyncWorld

INCREMENTAL = "SELECT * FROM users WHERE updated_at > '{{last_sync_time}}'"


def _users(world: SyncWorld) -> None:
    world.warehouse(
        """CREATE TABLE users (email VARCHAR, first_name VARCHAR, seats VARCHAR, updated_at TIMESTAMP);
        INSERT INTO users VALUES
            ('Ann@Example.com', 'Ann', '2.5', TIMESTAMP '2024-01-01 10:00:00'),
            ('bob@example.com', 'Bob', '3', TIMESTAMP '2024-01-01 10:00:00'),
            ('cy@example.com', 'Cy', 'ten', TIMESTAMP '2024-01-01 10:00:00'),
            (NULL, 'Nobody', '1', TIMESTAMP '2024-01-01 10:00:00')"""
    )


def _cli(world: SyncWorld, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["--config", str(world.dir), *args])
    return result.exit_code, result.output


def _contact(world: SyncWorld, email: str) -> tuple:
    return world.sql(
        "SELECT first_name, custom_fields -> 'seats' FROM contacts WHERE email_normalized = %(e)s",
        {"e": email},
    )[0]


@pytest.fixture
def users(world: SyncWorld, monkeypatch: pytest.MonkeyPatch) -> SyncWorld:
    monkeypatch.setenv("CONVERSION_STORE_URL", world.store_url)
    _users(world)
    world.add_sync("users", INCREMENTAL, lookback="0")
    return world


def test_retry_recovers_a_row_after_a_type_fix_once_the_watermark_passed_it(users: SyncWorld) -> None:
    world = users
    first = world.run("users")
    assert first.counts["added"] == 1 and first.counts["rejected"] == 3
    # a second run: the watermark moves on, the rejected rows are not read again
    world.warehouse("INSERT INTO users VALUES ('dan@example.com', 'Dan', '1', now()::TIMESTAMP)")
    second = world.run("users")
    assert second.counts["queried"] == 1 and second.counts["added"] == 1
    watermark = world.scalar("SELECT watermark FROM sync_state WHERE sync_name = 'users'")
    assert watermark > first.next_watermark

    # the field's type is fixed: seats holds fractions. 'ten' still fails.
    (world.dir / "schema.yaml").write_text(SCHEMA_YAML.replace("seats: integer", "seats: number"))
    code, out = _cli(world, "retry-rejected", "users")
    assert code == 0, out
    assert "re-read 2 rejected key(s)" in out
    counts = dict(line.split() for line in out.splitlines() if line.startswith("  "))
    assert counts["retried"] == "2" and counts["recovered"] == "1" and counts["still_rejected"] == "1"
    assert counts["rejected_without_key"] == "1"  # the row without an e-mail cannot be re-read
    assert counts["queried"] == "2" and counts["changed"] == "0" and counts["added"] == "1"
    assert "still rejected: conversion-sync rejections users --run cli-" in out

    assert _contact(world, "ann@example.com") == ("Ann", 2.5)
    # the watermark did not move (neither back to the epoch nor forward)
    assert world.scalar("SELECT watermark FROM sync_state WHERE sync_name = 'users'") == watermark
    # cy stays rejected with its reason, from the retry run
    open_keys = world.sql(
        "SELECT key_value, code, message, attempts, run_id FROM sync_rejected_keys "
        "WHERE sync_name = 'users' AND resolved_at IS NULL"
    )
    assert [k[:4] for k in open_keys] == [
        ("cy@example.com", "invalid_field_value", "seats: 'ten' is not a number", 1)
    ]
    retry_run = open_keys[0][4]
    assert retry_run != first.run_id
    assert (
        world.scalar(
            "SELECT resolution FROM sync_rejected_keys WHERE key_value = 'Ann@Example.com' AND resolved_run_id = %(r)s",
            {"r": retry_run},
        )
        == "accepted"
    )

    # the next normal run rewrites the sync's values with the new type (a retry leaves that to it), then runs
    # read only rows past the watermark again
    third = world.run("users")
    assert third.counts["retyped_fields"] == 1 and third.counts["queried"] == 5
    assert world.run("users").counts["queried"] == 0
    assert _contact(world, "ann@example.com") == ("Ann", 2.5)


def test_a_retried_row_older_than_the_store_is_declined(users: SyncWorld) -> None:
    world = users
    world.run("users")
    # another source writes ann's first name with a newer time: the retried (older) row must not undo it
    world.warehouse(
        "CREATE TABLE crm AS SELECT 'ann@example.com' AS email, 'Annette' AS first_name, "
        "TIMESTAMP '2024-06-01 00:00:00' AS updated_at"
    )
    world.add_sync("crm", "SELECT * FROM crm")
    assert world.run("crm").counts["added"] == 1
    (world.dir / "schema.yaml").write_text(SCHEMA_YAML.replace("seats: integer", "seats: number"))
    project = world.project()
    outcome = SyncRunner(
        project.syncs["users"], project, ContactStore(url=world.store_url), mode="retry_rejected"
    ).run()
    assert outcome.counts["recovered"] == 1
    # seats had no stored value: it lands; first_name keeps the newer value
    assert _contact(world, "ann@example.com") == ("Annette", 2.5)


def test_keys_are_resolved_by_a_later_run_that_accepts_them(users: SyncWorld) -> None:
    world = users
    world.run("users")
    world.warehouse(
        "UPDATE users SET seats = '7', updated_at = now()::TIMESTAMP WHERE email = 'cy@example.com'"
    )
    world.run("users")
    rows = world.sql(
        "SELECT key_value, resolution FROM sync_rejected_keys WHERE sync_name = 'users' ORDER BY key_value"
    )
    assert rows == [("Ann@Example.com", None), ("cy@example.com", "accepted")]
    # nothing left to recover for cy: a retry re-reads only ann (still invalid as an integer)
    code, out = _cli(world, "retry-rejected", "users")
    assert code == 0, out
    assert "re-read 1 rejected key(s)" in out and "still_rejected        1" in out


def test_a_key_the_query_no_longer_returns_is_closed_as_not_found(users: SyncWorld) -> None:
    world = users
    world.run("users")
    world.warehouse("DELETE FROM users WHERE email = 'cy@example.com'")
    code, out = _cli(world, "retry-rejected", "users")
    assert code == 0, out
    counts = dict(line.split() for line in out.splitlines() if line.startswith("  "))
    assert counts["retried"] == "2" and counts["not_found"] == "1" and counts["still_rejected"] == "1"
    # a retry with nothing open reads nothing and succeeds
    world.sql("UPDATE sync_rejected_keys SET resolved_at = now() RETURNING 1")
    code, out = _cli(world, "retry-rejected", "users")
    assert code == 0 and "re-read 0 rejected key(s)" in out, out


def test_the_sync_option_retries_rejected_keys_on_every_run(world: SyncWorld) -> None:
    _users(world)
    world.add_sync("users", INCREMENTAL, lookback="0", retry_rejected="true")
    first = world.run("users")
    assert first.counts["retried"] == 0 and first.counts["rejected"] == 3
    (world.dir / "schema.yaml").write_text(SCHEMA_YAML.replace("seats: integer", "seats: number"))
    # the type change makes this run read everything from the epoch: the retried keys are among its rows, read
    # once (not once more by a retry query, which would reject cy twice)
    second = world.run("users")
    assert second.counts["retried"] == 2 and second.counts["recovered"] == 1
    assert second.counts["still_rejected"] == 1 and second.counts["queried"] == 4
    assert second.counts["rejected"] == 2 and second.counts["rejected_without_key"] == 1
    world.warehouse("UPDATE users SET seats = '4' WHERE email = 'cy@example.com'")  # updated_at not moved
    third = world.run("users")
    # the watermark passed cy's row: only the retry reads it again
    assert third.counts["retried"] == 1 and third.counts["recovered"] == 1 and third.counts["queried"] == 1
    assert _contact(world, "cy@example.com") == ("Cy", 4)


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("postgres", """CAST(conversion_retry."email" AS TEXT) IN ('a@x.io', 'o''b@x.io')"""),
        ("duckdb", """CAST(conversion_retry."email" AS TEXT) IN ('a@x.io', 'o''b@x.io')"""),
        ("snowflake", """CAST(conversion_retry."email" AS VARCHAR) IN ('a@x.io', 'o\\'b@x.io')"""),
        ("bigquery", """CAST(conversion_retry.`email` AS STRING) IN ('a@x.io', 'o\\'b@x.io')"""),
    ],
)
def test_retry_queries_quote_per_dialect(kind: str, expected: str) -> None:
    sql = filtered_query("SELECT email FROM t", "email", ["a@x.io", "o'b@x.io"], kind)
    assert sql == f"SELECT * FROM (\nSELECT email FROM t\n) AS conversion_retry WHERE {expected}"
    assert filtered_query("SELECT 1", None, [], kind).endswith("WHERE 1 = 0")


def _mode(mode: str) -> dict[str, Any]:
    return {"ops": {"users_steps": {"ops": {"users_query": {"config": {"mode": mode}}}}}}


def test_the_dagster_job_takes_the_cli_choices_as_run_config(users: SyncWorld) -> None:
    world = users
    with dg.instance_for_test() as instance:

        def run(mode: str | None) -> dict[str, Any]:
            defs = build_definitions(world.project())
            job = defs.resolve_job_def("sync_users")
            result = job.execute_in_process(instance=instance, run_config=_mode(mode) if mode else None)
            assert result.success
            event = instance.get_latest_materialization_event(asset_key("users"))
            assert event is not None and event.asset_materialization is not None
            return {k: getattr(v, "value", v) for k, v in event.asset_materialization.metadata.items()}

        first = run(None)  # no run config: a normal run
        assert first["added"] == 1 and first["rejected"] == 3 and "retried" not in first
        watermark = world.scalar("SELECT watermark FROM sync_state WHERE sync_name = 'users'")
        (world.dir / "schema.yaml").write_text(SCHEMA_YAML.replace("seats: integer", "seats: number"))
        retried = run("retry_rejected")
        assert (retried["retried"], retried["recovered"], retried["still_rejected"]) == (2, 1, 1)
        assert retried["watermark_used"] == "1970-01-01 00:00:00.000000"
        assert world.scalar("SELECT watermark FROM sync_state WHERE sync_name = 'users'") == watermark
        assert _contact(world, "ann@example.com") == ("Ann", 2.5)
        resynced = run("full_resync")
        assert resynced["watermark_used"] == "1970-01-01 00:00:00.000000" and resynced["queried"] == 4
        assert world.scalar("SELECT reset_at FROM sync_state WHERE sync_name = 'users'") is not None

        job = build_definitions(world.project()).resolve_job_def("sync_users")
        with pytest.raises(dg.DagsterInvalidConfigError, match="not in enum type"):
            job.execute_in_process(instance=instance, run_config=_mode("everything"))
