"""Planner statistics after bulk writes: a run that alone grew a store table past autovacuum's analyze threshold
analyses it itself, in its own transaction, so the next run's plans do not wait for the daemon (or go without it).

Without statistics, a table a first load filled reads as small or as matching few rows, and an incremental run of
50,000 rows into it hashed a whole million-row table where an index probe per row was the plan (0.75 × the speed
of the same run on an analysed store). Only the columns plans filter and join on are analysed: the sample costs a
fraction of a second, taken once per large write.
"""

from __future__ import annotations

import sqlalchemy as sa

from conversion_sync.store.sql_text import quote_ident

ANALYZE_BASE = 50
ANALYZE_SCALE = 0.1
"""PostgreSQL's defaults for autovacuum_analyze_threshold and autovacuum_analyze_scale_factor: autovacuum analyses a
table once the rows changed since its last analysis exceed 50 + 10 % of its rows."""

PLANNED_COLUMNS = {
    "contacts": ("id", "email_normalized", "salesforce_id", "company_id", "updated_at"),
    "events": ("id", "message_id", "contact_id", "timestamp"),
    "custom_objects": ("object_type", "object_id"),
    "object_relationships": ("object_type", "object_id", "contact_id"),
    "sync_key_trace": ("sync_name", "run_id", "email_norm", "object_id", "recorded_at"),
}
"""Per store table, the columns the engine's statements filter and join on (all columns for a table not listed,
such as a sync's fingerprint partition)."""

ROW_ESTIMATE = "SELECT reltuples FROM pg_class WHERE oid = to_regclass(%s)"
"""-1 for a table never analysed or vacuumed."""


def analyze_if_grown(conn: sa.Connection, table: str, written: int) -> bool:
    """ANALYZE `table` when the `written` rows of this transaction alone pass autovacuum's threshold against the
    table's row estimate (or it has none). Smaller writes add up for autovacuum, as before. Returns whether it
    analysed."""
    if written <= 0:
        return False
    rows = conn.exec_driver_sql(ROW_ESTIMATE, (table,)).scalar()
    if rows is None or (rows >= 0 and written <= ANALYZE_BASE + ANALYZE_SCALE * rows):
        return False
    columns = PLANNED_COLUMNS.get(table)
    listed = f" ({', '.join(quote_ident(c) for c in columns)})" if columns else ""
    conn.exec_driver_sql(f"ANALYZE {quote_ident(table)}{listed}")
    return True
