"""Events remember the run that wrote them: `events.run_id`.

An event is written once (by message_id) and never changed by a sync, so the event row itself is its history:
`conversion-sync trace` reads it instead of a copy in `sync_key_trace` (which cost more than the insert of the
events). A column without a default is added without rewriting the table; events written before have none.

Revision ID: 0015
Revises: 0014
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("events", sa.Column("run_id", sa.Text))


def downgrade() -> None:
    op.drop_column("events", "run_id")
