"""events and object_relationships without foreign keys: their per-row trigger checks dominated bulk inserts.

Writers keep the references valid set-based, under the identity lock: contacts are created or matched in
the same transaction before events and relationships point at them, and every place that deletes
contacts or objects deletes their events and relationships explicitly.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

DROPPED = {
    "events": ["events_contact_id_fkey"],
    "object_relationships": [
        "object_relationships_contact_id_fkey",
        "object_relationships_object_type_object_id_fkey",
    ],
}


def upgrade() -> None:
    for table, constraints in DROPPED.items():
        for name in constraints:
            op.drop_constraint(name, table, type_="foreignkey")


def downgrade() -> None:
    op.execute("DELETE FROM events e WHERE NOT EXISTS (SELECT 1 FROM contacts c WHERE c.id = e.contact_id)")
    op.create_foreign_key(
        "events_contact_id_fkey", "events", "contacts", ["contact_id"], ["id"], ondelete="CASCADE"
    )
    op.create_foreign_key(
        "object_relationships_contact_id_fkey",
        "object_relationships",
        "contacts",
        ["contact_id"],
        ["id"],
        ondelete="CASCADE",
    )
    op.create_foreign_key(
        "object_relationships_object_type_object_id_fkey",
        "object_relationships",
        "custom_objects",
        ["object_type", "object_id"],
        ["object_type", "object_id"],
        ondelete="CASCADE",
    )
