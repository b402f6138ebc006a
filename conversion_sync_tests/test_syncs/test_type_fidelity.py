"""Event properties keep their JSON types, and a derived event id depends on the event, not on who read it."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from .conftest import SyncWorld

EVENTS = {"destination": {"type": "events"}}


def exact_json(text: str) -> Any:
    return json.loads(text, parse_float=Decimal)


def events(world: SyncWorld) -> list[tuple[str, str, Any]]:
    return [
        (message_id, name, exact_json(properties))
        for message_id, name, properties in world.sql(
            "SELECT message_id, event_name, properties::text FROM events ORDER BY event_name, message_id"
        )
    ]


def test_event_properties_keep_their_json_types(world: SyncWorld) -> None:
    world.warehouse(
        """CREATE TABLE orders AS SELECT 'ann@example.com' AS email, 'paid' AS event_name,
               TIMESTAMP '2024-01-01 10:00:00' AS ts, 9.99::DOUBLE AS amount, true AS paid, 3 AS items,
               12.50::DECIMAL(10, 2) AS total, '9.99' AS code, ['a', 'b'] AS tags, {'sku': 'X1', 'qty': 2} AS line,
               TIMESTAMPTZ '2024-01-01 12:00:00+02:00' AS shipped_at, NULL::VARCHAR AS coupon"""
    )
    world.add_sync(
        "orders",
        "SELECT email, event_name, ts AS timestamp, * EXCLUDE (email, event_name, ts) FROM orders",
        **EVENTS,
    )
    world.run("orders")
    ((_, _, properties),) = events(world)
    assert properties == {
        "amount": Decimal("9.99"),
        "paid": True,
        "items": 3,
        "total": Decimal("12.5"),
        "code": "9.99",
        "tags": ["a", "b"],
        "line": {"sku": "X1", "qty": 2},
        "shipped_at": "2024-01-01T10:00:00Z",
        "coupon": None,
    }


def test_a_property_json_cannot_hold_rejects_only_its_row(world: SyncWorld) -> None:
    world.warehouse(
        """CREATE TABLE pings AS SELECT * FROM (VALUES
               ('a@example.com', 'ping', TIMESTAMP '2024-01-01 10:00:00', 1.5::DOUBLE, [1.0::DOUBLE]),
               ('b@example.com', 'ping', TIMESTAMP '2024-01-01 10:00:00', 'inf'::DOUBLE, [2.0]),
               ('c@example.com', 'ping', TIMESTAMP '2024-01-01 10:00:00', 2.5, ['nan'::DOUBLE])
           ) t(email, event_name, ts, score, scores)"""
    )
    world.add_sync("pings", "SELECT email, event_name, ts AS timestamp, score, scores FROM pings", **EVENTS)
    outcome = world.run("pings")
    assert outcome.counts["rejected"] == 2
    assert [p for _, _, p in events(world)] == [{"score": Decimal("1.5"), "scores": [Decimal("1.0")]}]
    rejected = world.sql("SELECT row_key, column_name, code, message FROM sync_rejections ORDER BY row_key")
    assert rejected == [
        (
            "b@example.com",
            "score",
            "invalid_field_value",
            "score: 'inf' is not a finite number (JSON has no NaN or Infinity)",
        ),
        (
            "c@example.com",
            "scores",
            "invalid_field_value",
            "scores: '[NaN]' is not valid JSON (JSON has no NaN, Infinity or NUL character)",
        ),
    ]


def test_a_renamed_sync_or_a_second_sync_derives_the_same_event_ids(world: SyncWorld) -> None:
    world.warehouse(
        """CREATE TABLE views AS SELECT * FROM (VALUES
               ('ann@example.com', 'viewed', TIMESTAMP '2024-01-01 10:00:00', '/a'),
               ('bob@example.com', 'viewed', TIMESTAMP '2024-01-01 11:00:00', '/b')
           ) t(email, event_name, ts, page)"""
    )
    query = "SELECT email, event_name, ts AS timestamp, page FROM views"
    world.add_sync("views", query, **EVENTS)
    world.run("views")
    first = events(world)
    assert len(first) == 2
    (world.dir / "views.yaml").unlink()
    world.add_sync("views_renamed", query, **EVENTS)
    renamed = world.run("views_renamed")
    world.add_sync("views_elsewhere", query, **EVENTS)
    elsewhere = world.run("views_elsewhere")
    assert events(world) == first
    assert renamed.counts["added"] == 0 and elsewhere.counts["added"] == 0


def test_the_same_event_written_differently_gets_one_id(world: SyncWorld) -> None:
    """Timestamp text with Z or +00, properties JSON with other key order and spacing, a number as an integer,
    a float or a decimal: one event."""
    world.warehouse(
        """CREATE TABLE a AS SELECT 'Ann@Example.com ' AS email, 'bought' AS event_name,
               '2024-01-01T00:00:00Z' AS ts, '{"sku": "X1", "tags": ["x", "y"]}' AS properties, 2 AS qty;
           CREATE TABLE b AS SELECT 'ann@example.com' AS email, 'bought' AS event_name,
               '2024-01-01 00:00:00+00' AS ts, '{ "tags":["x","y"],   "sku":"X1" }' AS properties, 2.0::DOUBLE AS qty;
           CREATE TABLE c AS SELECT 'ann@example.com' AS email, 'bought' AS event_name,
               TIMESTAMPTZ '2024-01-01 02:00:00+02:00' AS ts, '{"sku":"X1","tags":["x","y"]}' AS properties,
               2.00::DECIMAL(10, 2) AS qty"""
    )
    for table in ("a", "b", "c"):
        world.add_sync(
            f"bought_{table}",
            f"SELECT email, event_name, ts AS timestamp, properties, qty FROM {table}",
            **EVENTS,
        )
        world.run(f"bought_{table}")
    stored = events(world)
    assert len(stored) == 1, stored
    assert stored[0][2] == {"sku": "X1", "tags": ["x", "y"], "qty": 2}


def test_a_given_message_id_is_kept(world: SyncWorld) -> None:
    world.warehouse(
        """CREATE TABLE sent AS SELECT 'm-1' AS message_id, 'ann@example.com' AS email, 'sent' AS event_name,
               TIMESTAMP '2024-01-01 00:00:00' AS ts"""
    )
    world.add_sync("sent", "SELECT message_id, email, event_name, ts AS timestamp FROM sent", **EVENTS)
    world.run("sent")
    assert [m for m, _, _ in events(world)] == ["m-1"]


def test_contact_fields_keep_numbers_booleans_and_json(world: SyncWorld) -> None:
    world.warehouse(
        """CREATE TABLE users AS SELECT 'ann@example.com' AS email, 3::BIGINT AS seats, 0.1::DOUBLE AS score,
               true AS vip, {'a': 0.1, 'b': [1, 2]} AS prefs, 'pro' AS plan;
           CREATE TABLE text_users AS SELECT 'bob@example.com' AS email, '4' AS seats, '0.30' AS score,
               'false' AS vip, '{"x": null}' AS prefs, 'free' AS plan"""
    )
    for table in ("users", "text_users"):
        world.add_sync(table, f"SELECT email, seats, score, vip, prefs, plan FROM {table}")
        world.run(table)
    fields = {
        email: exact_json(custom)
        for email, custom in world.sql(
            "SELECT email_normalized, custom_fields::text FROM contacts ORDER BY 1"
        )
    }
    assert fields == {
        "ann@example.com": {
            "seats": 3,
            "score": Decimal("0.1"),
            "vip": True,
            "prefs": {"a": Decimal("0.1"), "b": [1, 2]},
            "plan": "pro",
        },
        "bob@example.com": {
            "seats": 4,
            "score": Decimal("0.30"),
            "vip": False,
            "prefs": {"x": None},
            "plan": "free",
        },
    }
