"""Staging tables after crashes and overlapping runs: nothing left behind, no run loses another's tables."""

from __future__ import annotations

from conversion_sync_tests.test_syncs.conftest import SyncWorld

USERS = "CREATE TABLE users AS SELECT 'u' || i || '@example.com' AS email, 'N' || i AS first_name FROM range(500) t(i)"
STAGED = "SELECT tablename FROM pg_tables WHERE schemaname = 'conversion_staging' ORDER BY 1"


def test_a_run_that_died_is_cleaned_up_by_the_next_successful_run(world: SyncWorld) -> None:
    world.warehouse(USERS)
    world.add_sync("users", "SELECT * FROM users")
    dead = world.runner("users")
    dead.validate(dead.query("died-while-writing"))  # the process dies here: no write, no failure recorded
    assert world.sql("SELECT status FROM sync_runs") == [("running",)]
    assert len(world.sql(STAGED)) == 2

    assert world.run("users").counts["added"] == 500
    assert world.sql(STAGED) == []
    [(status, error)] = world.sql("SELECT status, error FROM sync_runs WHERE run_id = 'died-while-writing'")
    assert status == "failed" and error.startswith("abandoned: the run never finished")


def test_a_sync_keeps_its_hands_off_a_sync_whose_name_starts_the_same(world: SyncWorld) -> None:
    world.warehouse(USERS)
    world.add_sync("users", "SELECT * FROM users")
    world.add_sync("users_v2", "SELECT email, first_name AS last_name FROM users")
    other = world.runner("users_v2")
    staged = other.query("v2-run")
    world.run("users")  # its query step clears leftovers of `users` runs only
    other.validate(staged)
    assert other.write(staged).counts["changed"] == 500  # the contacts exist: their last_name changed
    assert world.scalar("SELECT count(*) FROM contacts WHERE last_name IS NOT NULL") == 500


def test_a_running_run_keeps_its_validated_rows_while_another_run_starts(world: SyncWorld) -> None:
    world.warehouse(USERS)
    world.add_sync("users", "SELECT * FROM users")
    first = world.runner("users")
    staged = first.query("first-run")
    first.validate(staged)
    world.runner("users").query("second-run")  # clears leftovers, but not a running run's tables
    assert first.write(staged).counts["added"] == 500


def test_runs_of_a_sync_with_a_63_character_name_get_their_own_tables(world: SyncWorld) -> None:
    name = "contacts_from_the_customer_data_platform_nightly_export_" + "x" * 7
    assert len(name) == 63
    world.warehouse(USERS)
    world.add_sync(name, "SELECT * FROM users")
    one, two = world.runner(name), world.runner(name)
    first, second = one.query("run-one"), two.query("run-two")
    assert first != second
    one.validate(first)
    two.validate(second)
    assert all(len(table) <= 63 for (table,) in world.sql(STAGED))
    assert one.write(first).counts["added"] == 500
    assert two.write(second).counts["unchanged"] == 500
    assert world.sql(STAGED) == []
