"""Benchmark data: a DuckDB warehouse with contacts-, events- and relationship-shaped tables of any size."""

from __future__ import annotations

from pathlib import Path

import duckdb

FUTURE = "TIMESTAMP '2100-01-01'"
"""Rows added for incremental runs are stamped after any watermark a run can have taken (the clock of now)."""


def users_sql(name: str, start: int, stop: int, stamp: str = "TIMESTAMP '2026-01-01'") -> str:
    """Contacts `user<i>@example.com` for i in [start, stop): e-mail, names, title, phone, city, plan, seats."""
    return f"""CREATE TABLE {name} AS
        SELECT 'user' || i || '@example.com' AS email,
               'First' || (i % 1000) AS first_name, 'Last' || (i % 5000) AS last_name,
               (['Engineer', 'Manager', 'Analyst', 'Director'])[1 + i % 4] AS job_title,
               '+1-555-' || lpad(CAST(i % 10000 AS VARCHAR), 4, '0') AS phone,
               (['Berlin', 'Paris', 'Austin', 'Lagos', 'Osaka'])[1 + i % 5] AS city,
               (['free', 'team', 'enterprise'])[1 + i % 3] AS plan, i % 50 AS seats,
               {stamp} + to_seconds(i) AS updated_at
        FROM range({start}, {stop}) t(i)"""


def events_sql(name: str, start: int, stop: int, stamp: str = "TIMESTAMP '2026-01-01'") -> str:
    """Events `msg-<i>` for i in [start, stop), of 200,000 contacts' e-mails."""
    return f"""CREATE TABLE {name} AS
        SELECT 'msg-' || i AS message_id, 'user' || (i % 200000) || '@example.com' AS email,
               (['order_placed', 'page_viewed', 'signup'])[1 + i % 3] AS event_name,
               {stamp} + to_seconds(i) AS timestamp, round(i % 1000 * 1.5, 2) AS amount
        FROM range({start}, {stop}) t(i)"""


def owners_sql(name: str, start: int, stop: int, objects: int, stamp: str = "TIMESTAMP '2026-01-01'") -> str:
    """(product, e-mail) rows for i in [start, stop): `objects` products shared by the rows, one e-mail each."""
    return f"""CREATE TABLE {name} AS
        SELECT 'prod-' || (i % {objects}) AS id, 'Product ' || (i % {objects}) AS name,
               'SKU-' || (i % {objects}) AS sku, 'user' || i || '@example.com' AS email,
               '{{"role": "' || (['owner', 'admin', 'viewer'])[1 + i % 3] || '"}}' AS "relationshipFields",
               {stamp} + to_seconds(i % 1000) AS updated_at
        FROM range({start}, {stop}) t(i)"""


def _ensure(conn: duckdb.DuckDBPyConnection, existing: set[str], name: str, statement: str) -> None:
    if name not in existing:
        conn.execute(statement)
        existing.add(name)


def build_warehouse(path: Path, contacts: int, events: int, relationships: int) -> Path:
    """Create (or reuse) a DuckDB file holding `users_<n>`, `events_<n>` and `owners_<n>` tables."""
    with duckdb.connect(str(path)) as conn:
        existing = {
            row[0] for row in conn.execute("SELECT table_name FROM information_schema.tables").fetchall()
        }
        _ensure(conn, existing, f"users_{contacts}", users_sql(f"users_{contacts}", 0, contacts))
        _ensure(conn, existing, f"events_{events}", events_sql(f"events_{events}", 0, events))
        objects = max(1, min(20_000, relationships // 10))
        _ensure(
            conn,
            existing,
            f"owners_{relationships}",
            owners_sql(f"owners_{relationships}", 0, relationships, objects),
        )
    return path


def build_increments(path: Path, contacts: int, events: int, relationships: int, new: int) -> dict[str, str]:
    """Tables of `new` rows the first loads did not have, stamped in the future (so an incremental query on
    `updated_at`/`timestamp` after the first load reads exactly them): new contacts, new events of known and
    new e-mails, and new (product, e-mail) rows (a tenth of them new products). Returns their names by path."""
    names = {
        "contacts": f"users_new_{contacts}_{new}",
        "events": f"events_new_{events}_{new}",
        "objects": f"owners_new_{relationships}_{new}",
    }
    objects = max(1, min(20_000, relationships // 10))
    with duckdb.connect(str(path)) as conn:
        existing = {
            row[0] for row in conn.execute("SELECT table_name FROM information_schema.tables").fetchall()
        }
        _ensure(
            conn, existing, names["contacts"], users_sql(names["contacts"], contacts, contacts + new, FUTURE)
        )
        _ensure(conn, existing, names["events"], events_sql(names["events"], events, events + new, FUTURE))
        _ensure(
            conn,
            existing,
            names["objects"],
            owners_sql(
                names["objects"], relationships, relationships + new, objects + max(1, new // 10), FUTURE
            ),
        )
    return names


def build_quarters(path: Path, rows: int) -> list[str]:
    """Four tables of `rows` contacts each, with disjoint e-mails (for syncs that run side by side)."""
    names = [f"users_q{k}_{rows}" for k in range(4)]
    with duckdb.connect(str(path)) as conn:
        existing = {
            row[0] for row in conn.execute("SELECT table_name FROM information_schema.tables").fetchall()
        }
        for k, name in enumerate(names):
            _ensure(conn, existing, name, users_sql(name, 10_000_000 + k * rows, 10_000_000 + (k + 1) * rows))
    return names
