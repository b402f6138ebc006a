"""Salesforce contact push: per-contact push state (what both sides held after the last push, the Salesforce
record, a request to push, the last per-record error and the contact version it applied to).

One row per store contact the push has dealt with. `synced` maps store field → the value Salesforce held for it
after the push last read or wrote the record; a field whose store value still equals it is not a change to
push. `requested_at` marks a contact for the next push ("sync later"). `error_*` keep Salesforce's refusal of
the contact's last attempt and `error_contact_updated_at` the contact's `updated_at` then: the push tries again
only once the contact has changed. No foreign key to contacts (bulk writers delete contacts set-based, as in
migration 0005); rows of deleted contacts are never read.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "salesforce_push_state",
        sa.Column("contact_id", sa.BigInteger, primary_key=True),
        sa.Column("salesforce_id", sa.Text),
        sa.Column("salesforce_type", sa.Text),
        sa.Column("synced", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("synced_at", sa.DateTime(timezone=True)),
        sa.Column("salesforce_modified", sa.DateTime(timezone=True)),
        sa.Column("requested_at", sa.DateTime(timezone=True)),
        sa.Column("error_code", sa.Text),
        sa.Column("error_message", sa.Text),
        sa.Column("error_at", sa.DateTime(timezone=True)),
        sa.Column("error_contact_updated_at", sa.DateTime(timezone=True)),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
    )
    op.create_index(
        "salesforce_push_state_requested",
        "salesforce_push_state",
        ["contact_id"],
        postgresql_where=sa.text("requested_at IS NOT NULL"),
    )
    op.create_index(
        "salesforce_push_state_errors",
        "salesforce_push_state",
        ["contact_id"],
        postgresql_where=sa.text("error_code IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_table("salesforce_push_state")
