"""A run's traced values as a JSON array, their field names once per run: `sync_runs.trace_fields`.

Each traced row held its values as a JSON object, its field names repeated in every row; building that object was
half the cost of tracing a million-row load. A run now records the names once (in field order), and its trace
rows hold the values in the same order (`sync_key_trace.fields` as an array). Rows traced before keep their
objects, and removals keep theirs (`{"delete_behavior": …}`); `conversion-sync trace` reads both.

Revision ID: 0017
Revises: 0016
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("sync_runs", sa.Column("trace_fields", ARRAY(sa.Text)))


def downgrade() -> None:
    op.drop_column("sync_runs", "trace_fields")
