"""Campaign operations: removed-member tombstones, standing errors, each campaign's last reconciliation.

- `campaign_member_tombstones`: a member removed from a store campaign (`campaigns remove-member`). The
  reconciliation deletes its Salesforce CampaignMember and does not import it back; a Salesforce member
  modified after `removed_at` (re-added there later) wins and clears the tombstone, and so does adding the
  member again in the store.
- `campaign_member_errors.error_key` / `last_run_id` / `last_seen_at` / `times_seen`: an error found again by
  the campaign's next run (same campaign, member, code and message) is the same standing error: its row is
  seen again, not written (and reported) anew. Existing rows become their own first sighting.
- `campaigns.last_run_*`: the latest reconciliation of each campaign (run id, time, outcome, counts, error),
  and `salesforce_missing_since`: when the linked Salesforce campaign was last found missing (a broken link).

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

ERROR_KEY_SQL = (
    "md5(concat_ws('|', direction, code, coalesce(contact_id::text, ''), coalesce(salesforce_member_id, ''), "
    "coalesce(salesforce_person_id, ''), coalesce(status, ''), message))"
)
"""The identity of an error within a campaign (the same expression as the reconciliation's)."""


def upgrade() -> None:
    op.create_table(
        "campaign_member_tombstones",
        sa.Column("campaign_id", sa.BigInteger(), nullable=False),
        sa.Column("contact_id", sa.BigInteger(), nullable=False),
        sa.Column("email", sa.Text(), nullable=True),
        sa.Column("status", sa.Text(), nullable=True),
        sa.Column("salesforce_member_id", sa.Text(), nullable=True),
        sa.Column("removed_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("salesforce_deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["campaign_id"], ["campaigns.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["contact_id"], ["contacts.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("campaign_id", "contact_id"),
    )
    op.add_column("campaign_member_errors", sa.Column("error_key", sa.Text(), nullable=True))
    op.add_column("campaign_member_errors", sa.Column("last_run_id", sa.Text(), nullable=True))
    op.add_column(
        "campaign_member_errors", sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.add_column(
        "campaign_member_errors",
        sa.Column("times_seen", sa.Integer(), server_default=sa.text("1"), nullable=False),
    )
    op.execute(
        f"UPDATE campaign_member_errors SET error_key = {ERROR_KEY_SQL}, last_run_id = run_id, "
        "last_seen_at = created_at"
    )
    op.create_index(
        "campaign_member_errors_key", "campaign_member_errors", ["campaign_id", "error_key"], unique=False
    )
    op.add_column("campaigns", sa.Column("last_run_id", sa.Text(), nullable=True))
    op.add_column("campaigns", sa.Column("last_run_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("campaigns", sa.Column("last_run_status", sa.Text(), nullable=True))
    op.add_column("campaigns", sa.Column("last_run_counts", JSONB(), nullable=True))
    op.add_column("campaigns", sa.Column("last_run_error", sa.Text(), nullable=True))
    op.add_column(
        "campaigns", sa.Column("salesforce_missing_since", sa.DateTime(timezone=True), nullable=True)
    )


def downgrade() -> None:
    for column in (
        "salesforce_missing_since",
        "last_run_error",
        "last_run_counts",
        "last_run_status",
        "last_run_at",
        "last_run_id",
    ):
        op.drop_column("campaigns", column)
    op.drop_index("campaign_member_errors_key", table_name="campaign_member_errors")
    for column in ("times_seen", "last_seen_at", "last_run_id", "error_key"):
        op.drop_column("campaign_member_errors", column)
    op.drop_table("campaign_member_tombstones")
