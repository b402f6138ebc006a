"""Compact fingerprints (uuid instead of md5 text, no run id) and parallel-safe validity functions.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

VALIDITY_TYPES = ("jsonb", "timestamptz", "date")


def upgrade() -> None:
    op.alter_column(
        "sync_fingerprints",
        "fingerprint",
        type_=sa.Uuid(),
        postgresql_using="fingerprint::uuid",
        existing_nullable=False,
    )
    op.drop_column("sync_fingerprints", "run_id")
    for type_name in VALIDITY_TYPES:
        # parallel-safe lets Postgres spread validation of a large staged run over several workers
        op.execute(f"ALTER FUNCTION conversion_is_{type_name}(text) PARALLEL SAFE")


def downgrade() -> None:
    for type_name in VALIDITY_TYPES:
        op.execute(f"ALTER FUNCTION conversion_is_{type_name}(text) PARALLEL UNSAFE")
    op.add_column("sync_fingerprints", sa.Column("run_id", sa.Text))
    op.alter_column("sync_fingerprints", "fingerprint", type_=sa.Text(), postgresql_using="fingerprint::text")
