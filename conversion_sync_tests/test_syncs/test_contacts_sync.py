"""Contacts syncs: change detection, watermarks and lookback, modes, full-sync removals, resync, preview."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from conversion_sync.store import fingerprints
from conversion_sync.store.connection import store_engine
from conversion_sync.store.staging import qualified, store_lowers_ascii_plainly
from conversion_sync.store.sync_state import reset_sync
from conversion_sync.syncs import runner as runner_module
from conversion_sync.syncs import writers
from conversion_sync.syncs.destinations import contacts as contacts_destination
from conversion_sync.syncs.runner import SyncFailed
from conversion_sync.syncs.template import EPOCH

from .conftest import SyncWorld

PEOPLE = """
CREATE OR REPLACE TABLE people AS
SELECT 'person' || i || '@example.com' AS email, 'First' || i AS first_name, 'Last' || i AS last_name,
       CAST(i AS VARCHAR) AS seats, TIMESTAMP '2026-01-01 00:00:00' + INTERVAL (i) MINUTE AS updated_at
FROM range(1, 201) t(i);
"""


def test_second_run_without_change_writes_nothing(world: SyncWorld) -> None:
    world.warehouse(PEOPLE)
    world.add_sync("people", "SELECT * FROM people")  # full sync: every run reads everything
    first = world.run("people")
    assert (first.counts["added"], first.counts["changed"], first.counts["unchanged"]) == (200, 0, 0)
    stamps = world.sql("SELECT id, updated_at FROM contacts ORDER BY id")
    fingerprints = world.sql("SELECT row_key, fingerprint FROM sync_fingerprints ORDER BY row_key")

    second = world.run("people")
    assert second.counts == {
        **second.counts,
        "queried": 200,
        "added": 0,
        "changed": 0,
        "unchanged": 200,
        "removed": 0,
    }
    assert world.sql("SELECT id, updated_at FROM contacts ORDER BY id") == stamps, "no contact was touched"
    assert world.sql("SELECT row_key, fingerprint FROM sync_fingerprints ORDER BY row_key") == fingerprints


def test_changed_rows_are_counted_and_written(world: SyncWorld) -> None:
    world.warehouse(PEOPLE)
    world.add_sync("people", "SELECT * FROM people")
    world.run("people")
    world.warehouse(
        "UPDATE people SET first_name = 'Renamed', updated_at = updated_at + INTERVAL 1 DAY WHERE seats IN ('1', '2')"
    )
    outcome = world.run("people")
    assert (outcome.counts["changed"], outcome.counts["unchanged"]) == (2, 198)
    assert world.scalar("SELECT count(*) FROM contacts WHERE first_name = 'Renamed'") == 2


def test_watermark_and_lookback(world: SyncWorld) -> None:
    world.warehouse(PEOPLE)
    world.add_sync(
        "people", "SELECT * FROM people WHERE updated_at > '{{last_sync_time}}'", lookback="'30 minutes'"
    )
    first = world.run("people")
    assert first.watermark_used == EPOCH and first.counts["queried"] == 200
    watermark = world.scalar("SELECT watermark FROM sync_state WHERE sync_name = 'people'")
    assert watermark == first.next_watermark
    second = world.run("people")
    assert second.watermark_used == watermark - timedelta(minutes=30)
    assert second.counts["queried"] == 0
    # A row modified "now" is read by the next run.
    world.warehouse("UPDATE people SET first_name = 'Late', updated_at = now() WHERE seats = '5'")
    third = world.run("people")
    assert (third.counts["queried"], third.counts["changed"]) == (1, 1)


@pytest.mark.parametrize(
    ("mode", "expected_names", "skipped"),
    [
        ("upsert", {"old@example.com": "New", "fresh@example.com": "Fresh"}, 0),
        ("update", {"old@example.com": "New"}, 1),
        ("insert", {"old@example.com": "Old", "fresh@example.com": "Fresh"}, 1),
    ],
)
def test_modes(world: SyncWorld, mode: str, expected_names: dict[str, str], skipped: int) -> None:
    world.warehouse(
        "CREATE TABLE seed AS SELECT 'old@example.com' AS email, 'Old' AS first_name;"
        "CREATE TABLE people AS SELECT * FROM (VALUES ('old@example.com', 'New'), ('fresh@example.com', 'Fresh')) "
        "v(email, first_name)"
    )
    world.add_sync("seed", "SELECT * FROM seed")
    world.run("seed")
    world.add_sync("people", "SELECT * FROM people", mode=mode)
    outcome = world.run("people")
    assert dict(world.sql("SELECT email_normalized, first_name FROM contacts")) == expected_names
    assert outcome.counts["skipped"] == skipped


@pytest.mark.parametrize("behavior", ["do_nothing", "clear_fields", "delete"])
def test_full_sync_removed_keys_follow_delete_behavior(world: SyncWorld, behavior: str) -> None:
    world.warehouse(PEOPLE)
    world.add_sync("people", "SELECT email, first_name, seats FROM people", delete_behavior=behavior)
    world.run("people")
    world.warehouse("DELETE FROM people WHERE seats IN ('1', '2', '3')")
    outcome = world.run("people")
    assert outcome.counts["removed"] == 3
    gone = world.sql(
        "SELECT first_name, custom_fields ? 'seats' FROM contacts WHERE email_normalized = 'person1@example.com'"
    )
    expected = {"do_nothing": [("First1", True)], "clear_fields": [(None, False)], "delete": []}[behavior]
    assert gone == expected
    assert world.scalar("SELECT count(*) FROM sync_fingerprints WHERE sync_name = 'people'") == 197
    again = world.run("people")
    assert again.counts["removed"] == 0


def test_rejected_rows_are_not_removed(world: SyncWorld) -> None:
    world.warehouse(PEOPLE)
    world.add_sync("people", "SELECT email, seats FROM people", delete_behavior="delete")
    world.run("people")
    world.warehouse("UPDATE people SET seats = 'many' WHERE email = 'person1@example.com'")
    outcome = world.run("people")
    assert (outcome.counts["rejected"], outcome.counts["removed"]) == (1, 0)
    assert world.scalar("SELECT count(*) FROM contacts WHERE email_normalized = 'person1@example.com'") == 1


def test_resync_resets_watermark_and_fingerprints(world: SyncWorld) -> None:
    world.warehouse(PEOPLE)
    world.add_sync("people", "SELECT * FROM people WHERE updated_at > '{{last_sync_time}}'")
    world.run("people")
    runner = world.runner("people")
    with runner.store.begin() as conn:
        assert reset_sync(conn, "people") == (True, 200)
    outcome = runner.run()
    assert outcome.watermark_used == EPOCH
    # the contacts are still as the sync wrote them: read again and compared, nothing is written
    assert (outcome.counts["queried"], outcome.counts["added"], outcome.counts["unchanged"]) == (200, 0, 200)
    assert world.scalar("SELECT count(*) FROM contacts") == 200


def test_older_source_rows_do_not_overwrite_newer_store_fields(world: SyncWorld) -> None:
    world.warehouse(
        "CREATE TABLE p AS SELECT 'a@example.com' AS email, 'FromWarehouse' AS first_name, "
        "TIMESTAMP '2026-01-01' AS updated_at"
    )
    world.add_sync("p", "SELECT * FROM p")
    world.run("p")
    later = datetime(2026, 6, 1, tzinfo=UTC).isoformat()
    world.sql(
        "UPDATE contacts SET first_name = 'FromSalesforce', "
        "field_updated_at = field_updated_at || jsonb_build_object('first_name', %(t)s::text) RETURNING id",
        {"t": later},
    )
    world.warehouse("UPDATE p SET first_name = 'Stale', updated_at = TIMESTAMP '2026-02-01'")
    world.run("p")
    assert world.scalar("SELECT first_name FROM contacts") == "FromSalesforce"


def test_preview_writes_nothing_and_shows_a_diff(world: SyncWorld) -> None:
    world.warehouse(PEOPLE)
    world.add_sync("people", "SELECT email, first_name, seats FROM people")
    world.run("people")
    world.warehouse(
        "UPDATE people SET first_name = 'Changed' WHERE seats = '1'; UPDATE people SET seats = 'x' WHERE seats = '2';"
        "INSERT INTO people VALUES ('new@example.com', 'New', 'Person', '9', now())"
    )
    before = (
        world.sql("SELECT * FROM contacts ORDER BY id"),
        world.sql("SELECT count(*) FROM sync_rejections"),
    )
    result = world.runner("people").preview(limit=5)
    assert (result.counts["added"], result.counts["changed"], result.counts["rejected"]) == (1, 1, 1)
    actions = {row["key"]: row for row in result.diff}
    assert actions["new@example.com"]["action"] == "add"
    assert actions["person1@example.com"]["fields"] == {"first_name": ["First1", "Changed"]}
    unchanged = [key for key, row in actions.items() if row["action"] == "unchanged"]
    assert len(unchanged) == 3 and all(str(key).endswith("@example.com") for key in unchanged), unchanged
    assert result.rejected[0]["code"] == "invalid_field_value"
    after = world.sql("SELECT * FROM contacts ORDER BY id"), world.sql("SELECT count(*) FROM sync_rejections")
    assert before == after
    assert world.sql("SELECT count(*) FROM sync_runs WHERE run_id LIKE 'preview-%%'") == [(0,)]
    assert world.sql("SELECT count(*) FROM pg_tables WHERE schemaname = 'conversion_staging'") == [(0,)]


@pytest.mark.parametrize("destination", ["contacts", "custom_objects"])
def test_a_run_whose_plan_went_stale_plans_again_before_writing(world: SyncWorld, destination: str) -> None:
    """Validation plans each row (added, changed, unchanged) against the stored fingerprints; the write comes
    later, in its own transaction. If another run of the sync wrote in between, or the sync was reset, the
    write plans again under the identity lock instead of writing from a stale plan."""
    world.warehouse(PEOPLE + "ALTER TABLE people ADD COLUMN id VARCHAR; UPDATE people SET id = 'o' || seats;")
    columns = "email, first_name, last_name, seats, updated_at"
    if destination == "custom_objects":
        world.add_sync(
            "people",
            "SELECT id, email, seats AS name, updated_at FROM people",
            destination={"type": "custom_objects", "object_type": "product"},
        )
    else:
        world.add_sync("people", f"SELECT {columns} FROM people")
    world.run("people")
    world.warehouse(
        f"INSERT INTO people ({columns}, id) SELECT 'late' || i || '@example.com', 'L', 'L', CAST(i AS VARCHAR), "
        "TIMESTAMP '2026-02-01', 'late' || i FROM range(5) t(i)"
    )

    # Two overlapping runs: the earlier one writes first (a run never abandons one that started after it)
    first, stale = world.runner("people"), world.runner("people")
    first_table = first.query("first-run")
    first.validate(first_table)
    table = stale.query("stale-run")
    stale.validate(table)  # planned: 5 added, 200 unchanged
    assert first.write(first_table).counts["added"] == 5
    outcome = stale.write(table)
    assert (outcome.counts["added"], outcome.counts["changed"], outcome.counts["unchanged"]) == (0, 0, 205)
    assert world.scalar("SELECT count(*) FROM sync_fingerprints WHERE sync_name = 'people'") == 205

    again = world.runner("people")
    table = again.query("after-reset")
    again.validate(table)  # planned: 205 unchanged
    with store_engine(world.store_url).begin() as conn:
        reset_sync(conn, "people")
    # a reset after the run started wins: the run writes nothing and the next one reads everything
    with pytest.raises(SyncFailed, match="was reset"):
        again.write(table)
    assert world.scalar("SELECT count(*) FROM sync_fingerprints WHERE sync_name = 'people'") == 0
    outcome = world.runner("people").run()
    assert outcome.watermark_used == EPOCH
    assert (outcome.counts["added"], outcome.counts["unchanged"]) == (0, 205)
    assert world.scalar("SELECT count(*) FROM sync_fingerprints WHERE sync_name = 'people'") == 205
    if destination == "contacts":
        assert world.scalar("SELECT count(*) FROM contacts") == 205


def test_a_first_large_load_builds_its_fingerprints_beside_the_write(
    world: SyncWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From CONCURRENT_BUILD_ROWS new rows on, the sync's fingerprint partition is built on a second connection
    and attached by the write; a write that fails discards it, and a table left over is replaced."""
    monkeypatch.setattr(writers, "CONCURRENT_BUILD_ROWS", 100)
    world.warehouse(PEOPLE)
    world.add_sync("people", "SELECT * FROM people")
    built = []
    monkeypatch.setattr(
        fingerprints.PartitionBuild, "attach", _recording(fingerprints.PartitionBuild.attach, built)
    )

    def fail_after_build(*args: object) -> None:
        raise RuntimeError("the write fails after the build started")

    with monkeypatch.context() as failing:
        failing.setattr(contacts_destination, "_insert_contacts", fail_after_build)
        with pytest.raises(RuntimeError):
            world.run("people")
    assert world.scalar("SELECT count(*) FROM sync_fingerprints") == 0
    assert world.scalar("SELECT count(*) FROM contacts") == 0
    name = fingerprints.partition_name("people")
    assert world.scalar("SELECT to_regclass(%(n)s)", {"n": name}) is None, (
        "the failed write discarded the build"
    )

    with store_engine(world.store_url).begin() as conn:  # as a killed run leaves it
        conn.exec_driver_sql(f"CREATE TABLE {name} (sync_name text, row_key text, fingerprint bigint)")
    outcome = world.run("people")
    assert outcome.counts["added"] == 200 and len(built) == 1
    assert world.scalar("SELECT count(*) FROM sync_fingerprints WHERE sync_name = 'people'") == 200
    assert world.run("people").counts["unchanged"] == 200  # the fingerprints match what the write stored


def _recording(method, calls: list):  # type: ignore[no-untyped-def]
    def wrapper(self, conn):  # type: ignore[no-untyped-def]
        calls.append(self.sync_name)
        return method(self, conn)

    return wrapper


EMAILS = """
CREATE OR REPLACE TABLE people AS SELECT * FROM (VALUES
    ('  Ada@Example.COM ', 'ascii, trimmed of spaces'),
    ('ÉMILE@EXAMPLE.COM', 'not ascii'),
    ('Straße@Example.com', 'not ascii, already lower case'),
    ('İPEK@EXAMPLE.COM', 'a capital I with a dot'),
    ('ZOË@example.com', 'not ascii'),
    ('bob@example.com', 'ascii, lower case')
) t(email, first_name)
"""


def test_email_keys_staged_by_duckdb_are_the_stores_own(
    world: SyncWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Staging computes the key of each ASCII e-mail in DuckDB (the store's lower() is a per-character call);
    the store computes the others. Either way a key is the store's conversion_email_key(email), and a store
    whose lower() maps ASCII differently (a Turkish locale) gets every key from itself."""
    world.warehouse(EMAILS)
    world.add_sync("people", "SELECT * FROM people")
    with store_engine(world.store_url).begin() as conn:
        assert store_lowers_ascii_plainly(conn), "the embedded store's C.UTF-8 lower() maps ASCII plainly"
    runner = world.runner("people")
    table = runner.query("staged-keys")
    staged = dict(world.sql(f"SELECT c0, _email_key FROM {qualified(table)}"))
    assert staged == {
        "  Ada@Example.COM ": "ada@example.com",
        "bob@example.com": "bob@example.com",
        "ÉMILE@EXAMPLE.COM": None,
        "Straße@Example.com": None,
        "İPEK@EXAMPLE.COM": None,
        "ZOË@example.com": None,
    }
    runner.validate(table)
    runner.write(table)
    assert world.scalar("SELECT count(*) FROM contacts") == 6
    assert (
        world.sql(
            "SELECT email FROM contacts WHERE email_normalized IS DISTINCT FROM conversion_email_key(email)"
        )
        == []
    )

    monkeypatch.setattr(runner_module, "store_lowers_ascii_plainly", lambda conn: False)
    world.add_sync("people_again", "SELECT * FROM people")
    runner = world.runner("people_again")
    table = runner.query("store-keys")
    assert world.sql(f"SELECT count(*) FROM {qualified(table)} WHERE _email_key IS NOT NULL") == [(0,)]
    runner.validate(table)
    counts = runner.write(table).counts  # the same values on the same contacts: nothing written
    assert (counts["added"], counts["changed"], counts["unchanged"]) == (0, 0, 6)
    keys = "SELECT row_key FROM sync_fingerprints WHERE sync_name = %(sync)s ORDER BY row_key"
    assert world.sql(keys, {"sync": "people_again"}) == world.sql(keys, {"sync": "people"})
    assert world.scalar("SELECT count(*) FROM contacts") == 6, "the same six keys matched the same contacts"


def test_a_key_shared_with_an_unchanged_row_is_won_by_the_later_updated_at(world: SyncWorld) -> None:
    """An unchanged contact row keeps only its key and fingerprint in the rows table; when another row of the
    run shares its key, its updated_at is read from the staged text, and the later row still wins."""
    world.warehouse(PEOPLE)
    world.add_sync("people", "SELECT * FROM people")
    world.run("people")
    world.warehouse(
        "INSERT INTO people SELECT email, 'Older', last_name, seats, updated_at - INTERVAL 1 DAY FROM people "
        "WHERE seats = '1'"
    )
    outcome = world.run("people")
    assert (outcome.counts["rejected"], outcome.counts["changed"], outcome.counts["unchanged"]) == (1, 0, 200)
    assert world.sql("SELECT code, row ->> 'first_name' FROM sync_rejections") == [
        ("duplicate_key_in_batch", "Older")
    ]
    assert world.scalar("SELECT first_name FROM contacts WHERE email = 'person1@example.com'") == "First1"

    world.warehouse(
        "UPDATE people SET first_name = 'Newer', updated_at = updated_at + INTERVAL 2 DAY "
        "WHERE first_name = 'Older'"
    )
    outcome = world.run("people")
    assert (outcome.counts["rejected"], outcome.counts["changed"], outcome.counts["unchanged"]) == (1, 1, 199)
    assert world.scalar("SELECT first_name FROM contacts WHERE email = 'person1@example.com'") == "Newer"
