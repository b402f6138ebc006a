"""What a green run promises about the store, under messy conditions: guarded removals, change detection that
checks the store, declined writes, resets in flight, type changes, e-mail keys, honest counts, NULLs."""

from __future__ import annotations

import pytest

from conversion_sync.salesforce import poller
from conversion_sync.store import contacts as contacts_module
from conversion_sync.store.connection import store_engine
from conversion_sync.store.sync_state import reset_sync
from conversion_sync.syncs.destinations import contacts as contacts_destination
from conversion_sync.syncs.runner import SyncFailed
from conversion_sync.syncs.template import EPOCH

from .conftest import SCHEMA_YAML, SyncWorld

PEOPLE = """
CREATE OR REPLACE TABLE people AS
SELECT 'person' || i || '@example.com' AS email, 'First' || i AS first_name, CAST(i AS VARCHAR) AS seats,
       TIMESTAMP '2026-01-01 00:00:00' AS updated_at
FROM range(1, 21) t(i);
"""


def _execute(world: SyncWorld, statement: str) -> None:
    with store_engine(world.store_url).begin() as conn:
        conn.exec_driver_sql(statement)


def _contacts(world: SyncWorld) -> int:
    return world.scalar("SELECT count(*) FROM contacts")


# --- removals ------------------------------------------------------------------------------------------------


def test_a_column_gone_null_cannot_delete_every_contact(world: SyncWorld) -> None:
    """Before: every e-mail NULL → every row rejected → every contact deleted, run green."""
    world.warehouse(PEOPLE)
    world.add_sync("people", "SELECT * FROM people", delete_behavior="delete")
    world.run("people")
    world.warehouse("UPDATE people SET email = NULL")
    with pytest.raises(
        SyncFailed, match=r"would delete 20 of the sync's 20 keys and 20 rows were rejected.*max_removed"
    ):
        world.run("people")
    assert _contacts(world) == 20
    assert world.scalar("SELECT count(*) FROM sync_fingerprints WHERE sync_name = 'people'") == 20


def test_an_empty_result_removes_nothing_unless_allowed(world: SyncWorld) -> None:
    world.warehouse(PEOPLE)
    world.add_sync("people", "SELECT * FROM people", delete_behavior="delete")
    world.run("people")
    world.warehouse("DELETE FROM people")
    with pytest.raises(SyncFailed, match=r"returned no rows.*allow_empty_result: true"):
        world.run("people")
    assert _contacts(world) == 20
    world.add_sync(
        "people",
        "SELECT * FROM people",
        delete_behavior="delete",
        allow_empty_result="true",
        max_removed="100%",
    )
    outcome = world.run("people")
    assert (outcome.counts["removed"], outcome.counts["contacts_deleted"]) == (20, 20)
    assert _contacts(world) == 0


def test_max_removed_as_a_count_and_as_a_percentage(world: SyncWorld) -> None:
    world.warehouse(PEOPLE)
    world.add_sync("people", "SELECT * FROM people", delete_behavior="clear_fields", max_removed=3)
    world.run("people")
    world.warehouse("DELETE FROM people WHERE seats IN ('1', '2', '3', '4')")
    with pytest.raises(SyncFailed, match="would clear the fields of 4 of the sync's 20 keys"):
        world.run("people")
    world.add_sync("people", "SELECT * FROM people", delete_behavior="clear_fields", max_removed="20%")
    assert world.run("people").counts["removed"] == 4
    assert world.scalar("SELECT count(*) FROM contacts WHERE first_name IS NULL") == 4


def test_delete_keeps_what_another_source_still_provides(world: SyncWorld) -> None:
    """Before: `delete` removed the contact with the events and relationships other syncs wrote for it."""
    world.warehouse(
        PEOPLE
        + """CREATE TABLE crm AS SELECT 'person1@example.com' AS email, 'Mgr' AS job_title;
        CREATE TABLE clicks AS SELECT 'person2@example.com' AS email, 'click' AS event_name,
               TIMESTAMP '2026-01-02' AS timestamp;
        CREATE TABLE owned AS SELECT 'p1' AS id, 'person3@example.com' AS email, 'Widget' AS name;"""
    )
    world.add_sync("people", "SELECT * FROM people", delete_behavior="delete", max_removed="100%")
    world.add_sync("crm", "SELECT * FROM crm")
    world.add_sync("clicks", "SELECT * FROM clicks", destination={"type": "events"})
    world.add_sync(
        "owned", "SELECT * FROM owned", destination={"type": "custom_objects", "object_type": "product"}
    )
    for name in ("people", "crm", "clicks", "owned"):
        world.run(name)
    _execute(
        world,
        "UPDATE contacts SET salesforce_id = '00Q000000000001', salesforce_type = 'Lead' WHERE email = 'person4@example.com'",
    )
    world.warehouse("DELETE FROM people WHERE seats IN ('1', '2', '3', '4', '5')")
    outcome = world.run("people")
    assert outcome.counts["removed"] == 5
    assert (outcome.counts["contacts_deleted"], outcome.counts["kept_provided_elsewhere"]) == (1, 4)
    kept = world.sql(
        "SELECT email, first_name, job_title FROM contacts WHERE email IN "
        "('person1@example.com', 'person2@example.com', 'person3@example.com', 'person4@example.com', "
        "'person5@example.com') ORDER BY email"
    )
    assert kept == [
        ("person1@example.com", None, "Mgr"),
        ("person2@example.com", None, None),
        ("person3@example.com", None, None),
        ("person4@example.com", None, None),
    ]
    assert world.scalar("SELECT count(*) FROM events") == 1
    assert world.scalar("SELECT count(*) FROM object_relationships") == 1


# --- change detection against the store ------------------------------------------------------------------------


def test_a_value_another_writer_changed_or_deleted_is_restored(world: SyncWorld) -> None:
    """Before: the fingerprint still matched, so the run said `unchanged` and the store kept the other value."""
    world.warehouse(PEOPLE)
    world.add_sync("people", "SELECT * FROM people WHERE updated_at > '{{last_sync_time}}'", lookback="0")
    world.add_sync("people_full", "SELECT * FROM people")
    world.run("people_full")
    # another writer, with an older stamp than the rows': a direct edit, and a deleted contact
    _execute(
        world,
        "UPDATE contacts SET first_name = 'Edited', field_updated_at = field_updated_at || "
        "'{\"first_name\": \"2025-01-01T00:00:00+00:00\"}' WHERE email = 'person1@example.com'",
    )
    _execute(world, "DELETE FROM contacts WHERE email = 'person2@example.com'")
    outcome = world.run("people_full")
    assert (outcome.counts["added"], outcome.counts["changed"], outcome.counts["unchanged"]) == (1, 1, 18)
    assert world.scalar("SELECT first_name FROM contacts WHERE email = 'person1@example.com'") == "First1"
    assert _contacts(world) == 20
    again = world.run("people_full")
    assert (again.counts["added"], again.counts["changed"], again.counts["unchanged"]) == (0, 0, 20)


def test_another_syncs_clear_fields_is_undone_by_the_sync_that_provides_the_value(world: SyncWorld) -> None:
    world.warehouse(
        PEOPLE
        + "CREATE TABLE vip AS SELECT email, first_name, updated_at FROM people WHERE seats IN ('1', '2');"
    )
    world.add_sync("people", "SELECT email, first_name, updated_at FROM people")
    world.add_sync("vip", "SELECT * FROM vip", delete_behavior="clear_fields", max_removed="100%")
    world.run("vip")
    world.run("people")
    world.warehouse("DELETE FROM vip WHERE first_name = 'First1'")
    assert world.run("vip").counts["removed"] == 1
    assert world.scalar("SELECT first_name FROM contacts WHERE email = 'person1@example.com'") is None
    outcome = world.run("people")
    assert (outcome.counts["changed"], outcome.counts["unchanged"]) == (1, 19)
    assert world.scalar("SELECT first_name FROM contacts WHERE email = 'person1@example.com'") == "First1"


def test_a_declined_older_row_does_not_block_a_later_newer_one(world: SyncWorld) -> None:
    """Before: the declined row's fingerprint was saved, so the same values with a newer updated_at were
    `unchanged` for ever."""
    world.warehouse(
        """CREATE TABLE a AS SELECT 'x@example.com' AS email, 'Old' AS first_name, TIMESTAMP '2026-01-01' AS updated_at;
        CREATE TABLE b AS SELECT 'x@example.com' AS email, 'New' AS first_name, TIMESTAMP '2026-03-01' AS updated_at;"""
    )
    world.add_sync("a", "SELECT * FROM a")
    world.add_sync("b", "SELECT * FROM b")
    world.run("b")
    declined = world.run("a")
    assert (
        declined.counts["changed"],
        declined.counts["unchanged"],
        declined.counts["older_than_store"],
    ) == (0, 1, 1)
    assert world.scalar("SELECT first_name FROM contacts") == "New"
    world.warehouse("UPDATE a SET updated_at = TIMESTAMP '2026-06-01'")
    applied = world.run("a")
    assert (applied.counts["changed"], applied.counts["older_than_store"]) == (1, 0)
    assert world.scalar("SELECT first_name FROM contacts") == "Old"


def test_a_tie_goes_to_the_incoming_value_in_every_writer(
    world: SyncWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One rule, one module: the warehouse writer and the Salesforce poll both build it from store.contacts
    (before: `>=` in one, `>` in the other)."""
    assert "<RULE>" not in poller.field_sync_sql([], bag="custom_fields").sets
    monkeypatch.setattr(poller, "incoming_wins_sql", lambda *a, **k: "<RULE>")
    monkeypatch.setattr(contacts_destination, "incoming_wins_sql", lambda *a, **k: "<RULE>")
    field = poller.MappedField(
        store_field="first_name", salesforce_field="FirstName", preference="most_recent", is_column=True
    )
    assert "<RULE>" in " ".join(poller.field_sync_sql([field], bag="custom_fields").decisions)
    assert (
        "<RULE>" in contacts_destination._ContactField("first_name", "v", "c.first_name", True, False).applies
    )
    assert ">=" in contacts_module.incoming_wins_sql("first_name", "w.ts")
    world.warehouse(
        """CREATE TABLE a AS SELECT 'x@example.com' AS email, 'A' AS first_name, TIMESTAMP '2026-01-01' AS updated_at;
        CREATE TABLE b AS SELECT 'x@example.com' AS email, 'B' AS first_name, TIMESTAMP '2026-01-01' AS updated_at;"""
    )
    monkeypatch.undo()
    world.add_sync("a", "SELECT * FROM a")
    world.add_sync("b", "SELECT * FROM b")
    world.run("a")
    world.run("b")
    assert world.scalar("SELECT first_name FROM contacts") == "B"


# --- resets and schema changes ---------------------------------------------------------------------------------


def test_a_reset_during_a_run_survives_it(world: SyncWorld) -> None:
    """Before: the run in flight wrote its watermark over the reset, and the next run read nothing."""
    world.warehouse(PEOPLE)
    world.add_sync("people", "SELECT * FROM people WHERE updated_at > '{{last_sync_time}}'", lookback="0")
    world.run("people")
    runner = world.runner("people")
    table = runner.query("in-flight")
    runner.validate(table)
    with store_engine(world.store_url).begin() as conn:
        reset_sync(conn, "people")
    with pytest.raises(SyncFailed, match="was reset"):
        runner.write(table)
    outcome = world.run("people")
    assert (outcome.watermark_used, outcome.counts["queried"]) == (EPOCH, 20)


def test_a_type_change_in_the_schema_retypes_what_is_stored(world: SyncWorld) -> None:
    """Before: stored values kept the old type (unchanged rows were never typed again)."""
    world.warehouse(PEOPLE)
    (world.dir / "schema.yaml").write_text(SCHEMA_YAML.replace("seats: integer", "seats: string"))
    world.add_sync(
        "people", "SELECT email, seats, updated_at FROM people WHERE updated_at > '{{last_sync_time}}'"
    )
    world.run("people")
    assert (
        world.scalar("SELECT custom_fields -> 'seats' FROM contacts WHERE email = 'person12@example.com'")
        == "12"
    )
    (world.dir / "schema.yaml").write_text(SCHEMA_YAML)  # seats: integer
    outcome = world.run("people")
    assert outcome.watermark_used == EPOCH  # it read everything again, and says why
    assert (outcome.counts["retyped_fields"], outcome.counts["changed"]) == (1, 20)
    assert (
        world.scalar("SELECT custom_fields -> 'seats' FROM contacts WHERE email = 'person12@example.com'")
        == 12
    )
    assert world.run("people").counts["queried"] == 0


# --- keys, counts, NULLs ---------------------------------------------------------------------------------------


def test_invisible_characters_make_no_second_contact_and_bad_addresses_are_rejected(world: SyncWorld) -> None:
    world.warehouse(
        """CREATE TABLE people (email VARCHAR, first_name VARCHAR);
        INSERT INTO people VALUES ('ada@example.com', 'a'), ('ada@example.com' || chr(160), 'b'),
            ('ADA@example.com' || chr(8203), 'c'), (chr(9) || 'bob@example.com', 'd'),
            ('<carl@example.com>', 'e'), ('x,y@example.com', 'f'), ('a..b@example.com', 'g'),
            ('Émile@Exämple.fr', 'h');"""
    )
    world.add_sync("people", "SELECT * FROM people")
    outcome = world.run("people")
    assert world.sql("SELECT email_normalized FROM contacts ORDER BY 1") == [
        ("ada@example.com",),
        ("bob@example.com",),
        ("émile@exämple.fr",),
    ]
    rejected = world.sql("SELECT row_key, code FROM sync_rejections ORDER BY row_key")
    assert ("<carl@example.com>", "invalid_field_value") in rejected
    assert ("x,y@example.com", "invalid_field_value") in rejected
    assert ("a..b@example.com", "invalid_field_value") in rejected
    assert outcome.counts["added"] == 3


def test_added_means_created_and_changed_means_a_value_changed(world: SyncWorld) -> None:
    """Before: a contact new to this sync counted as added, even in mode update with nothing written."""
    world.warehouse(
        PEOPLE + "CREATE TABLE same AS SELECT email, first_name FROM people WHERE seats IN ('1', '2');"
    )
    world.add_sync("people", "SELECT email, first_name FROM people")
    world.run("people")
    world.add_sync("same", "SELECT * FROM same", mode="update")
    outcome = world.run("same")
    assert (outcome.counts["added"], outcome.counts["changed"], outcome.counts["unchanged"]) == (0, 0, 2)
    world.warehouse("UPDATE same SET first_name = 'Other' WHERE email = 'person1@example.com'")
    preview = world.runner("same").preview()
    assert [(row["key"], row["action"], row.get("fields")) for row in preview.diff] == [
        ("person1@example.com", "change", {"first_name": ["First1", "Other"]}),
        ("person2@example.com", "unchanged", None),
    ]
    outcome = world.run("same")
    assert (outcome.counts["added"], outcome.counts["changed"], outcome.counts["unchanged"]) == (0, 1, 1)
    assert {k: preview.counts[k] for k in ("added", "changed", "unchanged")} == {
        "added": 0,
        "changed": 1,
        "unchanged": 1,
    }


@pytest.mark.parametrize("nulls, expected", [("clear", None), ("keep", "First1")])
def test_nulls_clear_or_keep_a_stored_value(world: SyncWorld, nulls: str, expected: str | None) -> None:
    world.warehouse(PEOPLE)
    world.add_sync("people", "SELECT * FROM people", nulls=nulls)
    world.run("people")
    world.warehouse(
        "UPDATE people SET first_name = NULL, seats = NULL, updated_at = TIMESTAMP '2026-02-01' WHERE seats = '1'"
    )
    world.run("people")
    row = world.sql(
        "SELECT first_name, custom_fields -> 'seats' FROM contacts WHERE email = 'person1@example.com'"
    )
    assert row == [(expected, None if expected is None else 1)]


def test_events_cannot_be_removed_by_a_full_sync(world: SyncWorld) -> None:
    world.add_sync("clicks", "SELECT * FROM clicks", destination={"type": "events"}, delete_behavior="delete")
    with pytest.raises(AssertionError, match="events are history"):
        world.project()
