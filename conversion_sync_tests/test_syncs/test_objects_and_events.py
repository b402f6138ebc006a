"""Custom objects with relationships, and events with message_id deduplication and derived ids."""

from __future__ import annotations

from .conftest import SyncWorld

OBJECTS = {"destination": {"type": "custom_objects", "object_type": "product"}}
EVENTS = {"destination": {"type": "events"}}


def test_one_object_many_relationships_and_implicit_contacts(world: SyncWorld) -> None:
    world.warehouse(
        """CREATE TABLE up AS SELECT * FROM (VALUES
            ('p1', 'Widget', 'ann@example.com', '{"role": "owner"}', TIMESTAMP '2026-01-01'),
            ('p1', 'Widget v2', 'bob@example.com', '{"role": "viewer"}', TIMESTAMP '2026-02-01'),
            ('p2', 'Gadget', NULL, NULL, TIMESTAMP '2026-01-01'),
            ('p3', 'Gizmo', '  ', NULL, TIMESTAMP '2026-01-01'),
            ('p4', 'Broken', 'not-an-email', NULL, TIMESTAMP '2026-01-01'),
            ('p5', 'BadRel', 'cy@example.com', '[1, 2]', TIMESTAMP '2026-01-01')
        ) v(id, name, email, "relationshipFields", updated_at)"""
    )
    world.add_sync("products", "SELECT * FROM up", **OBJECTS)
    outcome = world.run("products")
    assert (outcome.counts["added"], outcome.counts["rejected"], outcome.counts["contacts_created"]) == (
        4,
        2,
        2,
    )
    objects = dict(world.sql("SELECT object_id, fields->>'name' FROM custom_objects"))
    assert objects == {"p1": "Widget v2", "p2": "Gadget", "p3": "Gizmo"}, "latest updated_at gives the fields"
    rels = world.sql(
        """SELECT r.object_id, c.email, r.fields->>'role' FROM object_relationships r
        JOIN contacts c ON c.id = r.contact_id ORDER BY 2"""
    )
    assert rels == [("p1", "ann@example.com", "owner"), ("p1", "bob@example.com", "viewer")]
    codes = dict(world.sql("SELECT row_key, message FROM sync_rejections"))
    assert codes == {
        "p4 / not-an-email": "email: 'not-an-email' is not a valid email address",
        "p5 / cy@example.com": "relationshipFields: must be a JSON object, got '[1, 2]'",
    }


def test_relationship_fields_as_a_struct_and_query_without_email(world: SyncWorld) -> None:
    world.warehouse(
        """CREATE TABLE up AS SELECT 'p1' AS id, 'ann@example.com' AS email,
               {'role': 'owner', 'seats': 3} AS "relationshipFields";
           CREATE TABLE catalogue AS SELECT 'p9' AS id, 'Solo' AS name"""
    )
    world.add_sync("owners", "SELECT * FROM up", **OBJECTS)
    world.add_sync("catalogue", "SELECT * FROM catalogue", **OBJECTS)
    world.run("owners")
    world.run("catalogue")
    assert world.scalar("SELECT fields FROM object_relationships") == {"role": "owner", "seats": 3}
    assert world.scalar("SELECT count(*) FROM object_relationships WHERE object_id = 'p9'") == 0
    assert world.scalar("SELECT fields->>'name' FROM custom_objects WHERE object_id = 'p9'") == "Solo"


def test_rows_sharing_id_and_email_are_duplicates(world: SyncWorld) -> None:
    world.warehouse(
        """CREATE TABLE up AS SELECT * FROM (VALUES
            ('p1', 'Old', 'ann@example.com', TIMESTAMP '2026-01-01'),
            ('p1', 'New', 'ann@example.com', TIMESTAMP '2026-02-01')) v(id, name, email, updated_at)"""
    )
    world.add_sync("products", "SELECT * FROM up", **OBJECTS)
    outcome = world.run("products")
    assert (outcome.counts["added"], outcome.counts["rejected"]) == (1, 1)
    assert world.scalar("SELECT code FROM sync_rejections") == "duplicate_key_in_batch"


ORDERS = """
CREATE OR REPLACE TABLE orders AS SELECT * FROM (VALUES
    ('m1', 'ann@example.com', 'order_placed', TIMESTAMP '2026-01-01 10:00:00', 10.5),
    ('m2', 'new@example.com', 'order_placed', TIMESTAMP '2026-01-01 11:00:00', 20.0),
    (NULL, 'ann@example.com', 'page_viewed', TIMESTAMP '2026-01-01 12:00:00', NULL),
    (NULL, 'ann@example.com', 'page_viewed', TIMESTAMP '2026-01-01 12:00:00', NULL),
    ('m3', 'bob@example.com', NULL, TIMESTAMP '2026-01-01 13:00:00', 1.0),
    ('m4', 'bob@example.com', 'order_placed', NULL, 1.0)
) v(message_id, email, event_name, timestamp, amount)
"""


def test_events_dedup_across_runs_and_syncs_and_derive_ids(world: SyncWorld) -> None:
    world.warehouse(ORDERS)
    world.add_sync("orders", "SELECT * FROM orders", **EVENTS)
    first = world.run("orders")
    assert (first.counts["added"], first.counts["rejected"], first.counts["contacts_created"]) == (3, 2, 2)
    messages = {
        "event_name": "event_name is missing (null or empty)",
        "timestamp": "timestamp is missing (null or empty)",
    }
    assert dict(world.sql("SELECT column_name, message FROM sync_rejections")) == messages
    assert world.scalar("SELECT properties FROM events WHERE message_id = 'm1'") == {"amount": 10.5}

    # Re-reading the same rows (an overlap window) and a second sync sending the same ids add nothing.
    again = world.run("orders")
    assert (again.counts["added"], again.counts["events_deduplicated"]) == (0, 3)
    world.add_sync("orders_copy", "SELECT * FROM orders WHERE message_id IS NOT NULL", **EVENTS)
    copy = world.run("orders_copy")
    assert (copy.counts["added"], copy.counts["events_deduplicated"]) == (0, 2)
    assert world.scalar("SELECT count(*) FROM events") == 3
    derived = world.scalar("SELECT message_id FROM events WHERE event_name = 'page_viewed'")
    assert len(derived) == 32 and derived not in ("m1", "m2")


def test_events_properties_column_merges_with_extra_columns(world: SyncWorld) -> None:
    world.warehouse(
        """CREATE TABLE ev AS SELECT 'x1' AS message_id, 'a@example.com' AS email, 'signup' AS event_name,
               TIMESTAMP '2026-01-01' AS timestamp, '{"plan": "pro"}' AS properties, 'web' AS source"""
    )
    world.add_sync("ev", "SELECT * FROM ev", **EVENTS)
    world.run("ev")
    assert world.scalar("SELECT properties FROM events") == {"plan": "pro", "source": "web"}
