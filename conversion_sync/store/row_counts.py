"""Row counts of the store's destination tables, cheap enough to take after every sync run.

Contacts and events: Postgres' planner estimate (pg_class.reltuples) for a large table, an exact count while
the estimate says it is small (or the table was never analyzed). Custom objects: an exact count of one type,
which reads the primary key index (object_type, object_id).
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

EXACT_BELOW = 1_000_000
"""Tables estimated below this many rows are counted exactly."""

ESTIMATE = "SELECT reltuples::bigint FROM pg_class WHERE oid = to_regclass(%s)"
COUNT_CONTACTS = "SELECT count(*) FROM contacts"
COUNT_EVENTS = "SELECT count(*) FROM events"
COUNT_OBJECTS = "SELECT count(*) FROM custom_objects WHERE object_type = %s"
_EXACT = {"contacts": COUNT_CONTACTS, "events": COUNT_EVENTS}


@dataclass(frozen=True)
class RowCount:
    table: str
    rows: int
    estimated: bool


def destination_row_count(conn: sa.Connection, destination: str, object_type: str | None = None) -> RowCount:
    """Rows in a destination: `contacts`, `events`, or `custom_objects` of `object_type`."""
    if destination == "custom_objects":
        if not object_type:
            raise ValueError("custom_objects are counted per object type")
        return RowCount(
            "custom_objects", int(conn.exec_driver_sql(COUNT_OBJECTS, (object_type,)).scalar_one()), False
        )
    if destination not in _EXACT:
        raise ValueError(f"unknown destination {destination!r}")
    estimate = conn.exec_driver_sql(ESTIMATE, (destination,)).scalar()
    if estimate is not None and estimate >= EXACT_BELOW:
        return RowCount(destination, int(estimate), True)
    return RowCount(destination, int(conn.exec_driver_sql(_EXACT[destination]).scalar_one()), False)
