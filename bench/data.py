"""Benchmark data: a DuckDB warehouse with contacts-, events- and relationship-shaped tables of any size."""

from __future__ import annotations

from pathlib import Path

import duckdb


def build_warehouse(path: Path, contacts: int, events: int, relationships: int) -> Path:
    """Create (or reuse) a DuckDB file holding `users_<n>`, `events_<n>` and `owners_<n>` tables."""
    with duckdb.connect(str(path)) as conn:
        existing = {
            row[0] for row in conn.execute("SELECT table_name FROM information_schema.tables").fetchall()
        }
        if f"users_{contacts}" not in existing:
            conn.execute(
                f"""CREATE TABLE users_{contacts} AS
                SELECT 'user' || i || '@example.com' AS email,
                       'First' || (i % 1000) AS first_name, 'Last' || (i % 5000) AS last_name,
                       (['Engineer', 'Manager', 'Analyst', 'Director'])[1 + i % 4] AS job_title,
                       '+1-555-' || lpad(CAST(i % 10000 AS VARCHAR), 4, '0') AS phone,
                       (['Berlin', 'Paris', 'Austin', 'Lagos', 'Osaka'])[1 + i % 5] AS city,
                       (['free', 'team', 'enterprise'])[1 + i % 3] AS plan, i % 50 AS seats,
                       TIMESTAMP '2026-01-01' + to_seconds(i) AS updated_at
                FROM range({contacts}) t(i)"""
            )
        if f"events_{events}" not in existing:
            conn.execute(
                f"""CREATE TABLE events_{events} AS
                SELECT 'msg-' || i AS message_id, 'user' || (i % 200000) || '@example.com' AS email,
                       (['order_placed', 'page_viewed', 'signup'])[1 + i % 3] AS event_name,
                       TIMESTAMP '2026-01-01' + to_seconds(i) AS timestamp, round(i % 1000 * 1.5, 2) AS amount
                FROM range({events}) t(i)"""
            )
        if f"owners_{relationships}" not in existing:
            conn.execute(
                f"""CREATE TABLE owners_{relationships} AS
                SELECT 'prod-' || (i % 20000) AS id, 'Product ' || (i % 20000) AS name, 'SKU-' || (i % 20000) AS sku,
                       'user' || i || '@example.com' AS email,
                       '{{"role": "' || (['owner', 'admin', 'viewer'])[1 + i % 3] || '"}}' AS "relationshipFields",
                       TIMESTAMP '2026-01-01' AS updated_at
                FROM range({relationships}) t(i)"""
            )
    return path
