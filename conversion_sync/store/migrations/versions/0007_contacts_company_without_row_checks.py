"""contacts.company_id without a foreign key, and indexed only where set.

The foreign key queued a trigger event for every inserted contact, company or not (a second per million
contacts); the poller sets company_id only to companies it has just found or created in the same transaction,
and nothing deletes companies (a deleted Account only unlinks its company), as 0005 did for events. The
index skips the contacts without a company, most of them: a new contact no longer adds an index entry for it,
and lookups of one company's contacts use the partial index alike.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_constraint("contacts_company_id_fkey", "contacts", type_="foreignkey")
    op.drop_index("ix_contacts_company_id", "contacts")
    op.create_index(
        "ix_contacts_company_id", "contacts", ["company_id"], postgresql_where="company_id IS NOT NULL"
    )


def downgrade() -> None:
    op.drop_index("ix_contacts_company_id", "contacts")
    op.create_index("ix_contacts_company_id", "contacts", ["company_id"])
    op.execute(
        "UPDATE contacts c SET company_id = NULL WHERE company_id IS NOT NULL "
        "AND NOT EXISTS (SELECT 1 FROM companies p WHERE p.id = c.company_id)"
    )
    op.create_foreign_key(
        "contacts_company_id_fkey", "contacts", "companies", ["company_id"], ["id"], ondelete="SET NULL"
    )
