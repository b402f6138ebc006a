"""Campaign reconciliation: per-member sync state, a link consistency check, and the member error log.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The status both sides agreed on at the last reconciliation (NULL: never reconciled). A side whose
    # status still equals it did not change since; only members that changed cause writes.
    op.add_column("campaign_members", sa.Column("synced_status", sa.Text()))
    op.create_check_constraint(
        "campaigns_existing_link_has_id",
        "campaigns",
        "salesforce_link <> 'existing' OR salesforce_campaign_id IS NOT NULL",
    )
    op.create_table(
        "campaign_member_errors",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("campaign_id", sa.BigInteger(), nullable=False),
        sa.Column("contact_id", sa.BigInteger(), nullable=True),
        sa.Column("email", sa.Text(), nullable=True),
        sa.Column("salesforce_member_id", sa.Text(), nullable=True),
        sa.Column("salesforce_person_id", sa.Text(), nullable=True),
        sa.Column("direction", sa.Text(), nullable=False),
        sa.Column("code", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=True),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint(
            "direction IN ('salesforce_to_store', 'store_to_salesforce', 'link')",
            name="campaign_member_errors_direction",
        ),
        sa.ForeignKeyConstraint(["campaign_id"], ["campaigns.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["contact_id"], ["contacts.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "campaign_member_errors_run", "campaign_member_errors", ["campaign_id", "run_id"], unique=False
    )
    op.create_index("campaign_member_errors_created", "campaign_member_errors", ["created_at"], unique=False)


def downgrade() -> None:
    op.drop_index("campaign_member_errors_created", table_name="campaign_member_errors")
    op.drop_index("campaign_member_errors_run", table_name="campaign_member_errors")
    op.drop_table("campaign_member_errors")
    op.drop_constraint("campaigns_existing_link_has_id", "campaigns", type_="check")
    op.drop_column("campaign_members", "synced_status")
