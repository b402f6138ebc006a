"""In-warehouse diffing: the warehouse-side fingerprint of each key a sync last received, and how it was made.

- `sync_warehouse_fingerprints`: per sync and source key (the key column's text as the warehouse returned it),
  the fingerprint the warehouse computed in its own SQL over the row the store last received for that key, and
  the key as the store matches it (`row_key`, as in `sync_fingerprints`). A rerun reads only (key, fingerprint)
  from the warehouse and fetches full rows for the keys whose fingerprint differs or whose store record moved.
- `sync_warehouse_diff`: per sync, the spec the fingerprints were computed with (warehouse type, columns and
  their types, fingerprint version). A sync whose spec changed, or that has none, reads everything again.

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sync_warehouse_fingerprints",
        sa.Column("sync_name", sa.Text, primary_key=True),
        sa.Column("source_key", sa.Text, primary_key=True),
        sa.Column("row_key", sa.Text, nullable=False),
        sa.Column("fingerprint", sa.Text, nullable=False),
    )
    op.create_table(
        "sync_warehouse_diff",
        sa.Column("sync_name", sa.Text, primary_key=True),
        sa.Column("spec", sa.Text, nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
    )


def downgrade() -> None:
    op.drop_table("sync_warehouse_diff")
    op.drop_table("sync_warehouse_fingerprints")
