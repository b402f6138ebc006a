"""Sync run tracking: watermarks used per run, staging schema, and text validity checks per type.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

VALIDITY_TYPES = ("jsonb", "timestamptz", "date")
"""Types validation checks text against: one function each, `conversion_is_<type>(text) -> boolean`.

One function per type, not one taking the type name: pg_input_is_valid caches the type's input
function per call site, so a single wrapper called with several types answers wrongly.
"""


def _validity_function(conn: sa.Connection, type_name: str) -> str:
    if conn.exec_driver_sql("SHOW server_version_num").scalar_one() >= "160000":
        # SQL functions inline into the calling query: as fast as calling pg_input_is_valid directly.
        return f"""CREATE OR REPLACE FUNCTION conversion_is_{type_name}(value text) RETURNS boolean
            LANGUAGE sql STABLE AS $$ SELECT pg_input_is_valid(value, '{type_name}') $$"""
    return f"""CREATE OR REPLACE FUNCTION conversion_is_{type_name}(value text) RETURNS boolean
        LANGUAGE plpgsql STABLE AS $$
        BEGIN
            PERFORM value::{type_name};
            RETURN true;
        EXCEPTION WHEN others THEN
            RETURN false;
        END $$"""


def upgrade() -> None:
    op.execute("CREATE SCHEMA IF NOT EXISTS conversion_staging")
    op.add_column("sync_runs", sa.Column("watermark_used", sa.DateTime(timezone=True)))
    op.add_column("sync_runs", sa.Column("next_watermark", sa.DateTime(timezone=True)))
    op.add_column("sync_runs", sa.Column("staging_table", sa.Text))
    op.add_column("sync_runs", sa.Column("full_sync", sa.Boolean, nullable=False, server_default=sa.false()))
    op.add_column("sync_runs", sa.Column("source_columns", sa.JSON))
    op.create_index("sync_runs_staging_table", "sync_runs", ["staging_table"])
    for type_name in VALIDITY_TYPES:
        op.execute(_validity_function(op.get_bind(), type_name))


def downgrade() -> None:
    for type_name in VALIDITY_TYPES:
        op.execute(f"DROP FUNCTION IF EXISTS conversion_is_{type_name}(text)")
    op.drop_index("sync_runs_staging_table", "sync_runs")
    for column in ("source_columns", "full_sync", "staging_table", "next_watermark", "watermark_used"):
        op.drop_column("sync_runs", column)
