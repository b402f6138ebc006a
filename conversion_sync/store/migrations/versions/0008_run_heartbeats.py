"""Run heartbeats: the host and process of a run's current step, and when it last said it was alive; preview runs.

A run whose process died (killed, out of memory, machine lost) stays 'running' in sync_runs until something
notices. A step refreshes `heartbeat_at` while it executes, from a thread on its own connection, and records
the host and pid it runs in: a reader sees a run whose heartbeat is stale, or whose process on the reader's
host is gone, as crashed without waiting for a later run. `preview` marks the record of a dry run: it is
never shown as the sync's latest run and is deleted when the preview ends.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("sync_runs", sa.Column("heartbeat_at", sa.DateTime(timezone=True)))
    op.add_column("sync_runs", sa.Column("host", sa.Text))
    op.add_column("sync_runs", sa.Column("pid", sa.Integer))
    op.add_column("sync_runs", sa.Column("preview", sa.Boolean, nullable=False, server_default=sa.false()))


def downgrade() -> None:
    for column in ("preview", "pid", "host", "heartbeat_at"):
        op.drop_column("sync_runs", column)
