"""Per-key trace of writes, removals and declines; rejected keys kept for a second chance.

- `sync_key_trace`: one row per key a run wrote (added, changed), declined (the store held newer values) or
  removed, with the values the run brought. Written set-based from the run's staged rows, in the transaction
  of the merge; rows older than the retention are pruned set-based (BRIN index on `recorded_at`, nearly free
  to maintain on an append-only table). Rejections are not copied here: `sync_rejections` holds them per run.
- `sync_rejected_keys`: per sync, each key value (the raw text of the key column: email, id or message_id)
  whose row was rejected and that no later run has accepted yet; `retry-rejected` re-reads these keys.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sync_key_trace",
        sa.Column("run_id", sa.Text, nullable=False),
        sa.Column("sync_name", sa.Text, nullable=False),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("email_norm", sa.Text),
        sa.Column("object_id", sa.Text),
        sa.Column("fields", JSONB),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
    )
    op.create_index(
        "sync_key_trace_email",
        "sync_key_trace",
        ["email_norm"],
        postgresql_where=sa.text("email_norm IS NOT NULL"),
    )
    op.create_index(
        "sync_key_trace_object",
        "sync_key_trace",
        ["object_id"],
        postgresql_where=sa.text("object_id IS NOT NULL"),
    )
    op.create_index("sync_key_trace_recorded", "sync_key_trace", ["recorded_at"], postgresql_using="brin")
    op.create_table(
        "sync_rejected_keys",
        sa.Column("sync_name", sa.Text, primary_key=True),
        sa.Column("key_value", sa.Text, primary_key=True),
        sa.Column("key_column", sa.Text, nullable=False),
        sa.Column("run_id", sa.Text, nullable=False),
        sa.Column("column_name", sa.Text),
        sa.Column("code", sa.Text, nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("rejected_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
        sa.Column("retry_run_id", sa.Text),
        sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("resolved_run_id", sa.Text),
        sa.Column("resolved_at", sa.DateTime(timezone=True)),
        sa.Column("resolution", sa.Text),
    )
    op.create_index(
        "sync_rejected_keys_open",
        "sync_rejected_keys",
        ["sync_name"],
        postgresql_where=sa.text("resolved_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_table("sync_rejected_keys")
    op.drop_table("sync_key_trace")
