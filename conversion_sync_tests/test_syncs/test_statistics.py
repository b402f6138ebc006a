"""A run that grows a store table past autovacuum's analyze threshold analyses it itself, so the next run's plans
do not depend on the daemon: contacts, the sync's fingerprint partition and the trace, events, objects."""

from __future__ import annotations

from conversion_sync.store.connection import store_engine
from conversion_sync.store.fingerprints import partition_name

from .conftest import SyncWorld

ROWS = 2000


def _people(first: int, last: int) -> str:
    return f"""CREATE OR REPLACE TABLE people AS
        SELECT 'person' || i || '@example.com' AS email, 'First' || i AS first_name,
               TIMESTAMP '2026-01-01 00:00:00' + INTERVAL (i) MINUTE AS updated_at
        FROM range({first}, {last}) t(i)"""


def _analysed(world: SyncWorld, table: str) -> tuple[float, bool]:
    """(the planner's row estimate, whether the table's key columns have statistics)."""
    rows = world.sql(
        "SELECT c.reltuples, EXISTS (SELECT 1 FROM pg_statistic s WHERE s.starelid = c.oid) FROM pg_class c "
        "WHERE c.oid = to_regclass(%(t)s)",
        {"t": table},
    )
    return rows[0][0], rows[0][1]


def test_a_large_write_analyses_what_it_grew_and_a_small_one_leaves_it(world: SyncWorld) -> None:
    world.warehouse(_people(0, ROWS))
    world.add_sync("people", "SELECT * FROM people")
    assert world.run("people").counts["added"] == ROWS

    partition = partition_name("people")
    for table in ("contacts", partition, "sync_key_trace"):
        assert _analysed(world, table) == (ROWS, True), table
        # from here only the runs may analyse them (not autovacuum, which would also see the rows added)
        with store_engine(world.store_url).begin() as conn:
            conn.exec_driver_sql(f'ALTER TABLE "{table}" SET (autovacuum_enabled = false)')

    # 100 more rows: under 50 + 10 % of 2000, so nothing is analysed again (autovacuum adds those up)
    world.warehouse(_people(0, ROWS + 100))
    assert world.run("people").counts["added"] == 100
    for table in ("contacts", partition, "sync_key_trace"):
        assert _analysed(world, table) == (ROWS, True), table

    # 300 more: over 50 + 10 %, analysed again
    world.warehouse(_people(0, ROWS + 400))
    assert world.run("people").counts["added"] == 300
    for table in ("contacts", partition, "sync_key_trace"):
        assert _analysed(world, table) == (ROWS + 400, True), table


def test_events_and_objects_analyse_their_tables(world: SyncWorld) -> None:
    world.warehouse(
        f"""CREATE TABLE ev AS SELECT 'm' || i AS message_id, 'e' || (i % 50) || '@example.com' AS email,
                   'signup' AS event_name, TIMESTAMP '2026-01-01' AS timestamp FROM range(0, {ROWS}) t(i);
            CREATE TABLE products AS SELECT 'p' || i AS id, 'o' || i || '@example.com' AS email, 'Widget' AS name
                   FROM range(0, {ROWS}) t(i)"""
    )
    world.add_sync("ev", "SELECT * FROM ev", destination={"type": "events"})
    world.add_sync(
        "products", "SELECT * FROM products", destination={"type": "custom_objects", "object_type": "product"}
    )
    assert world.run("ev").counts["added"] == ROWS
    assert world.run("products").counts["added"] == ROWS
    for table in ("events", "custom_objects", "object_relationships"):
        assert _analysed(world, table) == (ROWS, True), table
