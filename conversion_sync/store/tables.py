"""The contact store's tables (SQLAlchemy Core): the logical schema other services read."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

metadata = sa.MetaData()

_now = sa.text("now()")


def _timestamps() -> list[sa.Column]:
    return [
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
    ]


companies = sa.Table(
    "companies",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("salesforce_account_id", sa.Text, unique=True),
    sa.Column("name", sa.Text),
    sa.Column("fields", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    sa.Column("field_updated_at", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    *_timestamps(),
)

contacts = sa.Table(
    "contacts",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("email", sa.Text),
    sa.Column("email_normalized", sa.Text, index=True),
    sa.Column("salesforce_id", sa.Text),
    sa.Column("salesforce_type", sa.Text),
    sa.Column("company_id", sa.BigInteger),  # companies.id; no foreign key (migration 0007)
    sa.Column("first_name", sa.Text),
    sa.Column("last_name", sa.Text),
    sa.Column("job_title", sa.Text),
    sa.Column("phone", sa.Text),
    sa.Column("city", sa.Text),
    sa.Column("company_name", sa.Text),
    sa.Column("custom_fields", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    sa.Column("field_updated_at", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    *_timestamps(),
    sa.CheckConstraint("salesforce_type IN ('Lead', 'Contact')", name="contacts_salesforce_type"),
    sa.Index(
        "contacts_salesforce_id",
        "salesforce_id",
        unique=True,
        postgresql_where=sa.text("salesforce_id IS NOT NULL"),
    ),
    sa.Index("ix_contacts_company_id", "company_id", postgresql_where=sa.text("company_id IS NOT NULL")),
)

custom_objects = sa.Table(
    "custom_objects",
    metadata,
    sa.Column("object_type", sa.Text, primary_key=True),
    sa.Column("object_id", sa.Text, primary_key=True),
    sa.Column("fields", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    *_timestamps(),
)

object_relationships = sa.Table(
    "object_relationships",
    metadata,
    sa.Column("object_type", sa.Text, primary_key=True),
    sa.Column("object_id", sa.Text, primary_key=True),
    # contacts.id and (object_type, object_id): no foreign keys, see migration 0005
    sa.Column("contact_id", sa.BigInteger, primary_key=True),
    sa.Column("fields", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    *_timestamps(),
    sa.Index("object_relationships_contact", "contact_id"),
)

events = sa.Table(
    "events",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("message_id", sa.Text, nullable=False, unique=True),
    sa.Column("contact_id", sa.BigInteger, nullable=False),  # no foreign key: see migration 0005
    sa.Column("event_name", sa.Text, nullable=False),
    sa.Column("timestamp", sa.DateTime(timezone=True), nullable=False),
    sa.Column("properties", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    sa.Column("sync_name", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
    sa.Column("run_id", sa.Text),  # the run that wrote it: the event's history (store/trace.py)
    sa.Index("events_contact_time", "contact_id", "timestamp"),
)

campaign_types = sa.Table(
    "campaign_types",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("name", sa.Text, nullable=False, unique=True),
    sa.Column("statuses", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
    sa.Column("default_status", sa.Text),
    *_timestamps(),
)

campaigns = sa.Table(
    "campaigns",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("name", sa.Text, nullable=False, unique=True),
    sa.Column("campaign_type_id", sa.BigInteger, sa.ForeignKey("campaign_types.id"), nullable=False),
    sa.Column("salesforce_link", sa.Text, nullable=False, server_default="none"),
    sa.Column("salesforce_campaign_id", sa.Text, unique=True),
    sa.Column("linked_at", sa.DateTime(timezone=True)),
    sa.Column("last_reconciled_at", sa.DateTime(timezone=True)),
    *_timestamps(),
    # the latest reconciliation of this campaign (migration 0011)
    sa.Column("last_run_id", sa.Text),
    sa.Column("last_run_at", sa.DateTime(timezone=True)),
    sa.Column("last_run_status", sa.Text),
    sa.Column("last_run_counts", JSONB),
    sa.Column("last_run_error", sa.Text),
    sa.Column("salesforce_missing_since", sa.DateTime(timezone=True)),
    sa.CheckConstraint("salesforce_link IN ('none', 'existing', 'create')", name="campaigns_salesforce_link"),
    sa.CheckConstraint(
        "salesforce_link <> 'existing' OR salesforce_campaign_id IS NOT NULL",
        name="campaigns_existing_link_has_id",
    ),
)

campaign_members = sa.Table(
    "campaign_members",
    metadata,
    sa.Column(
        "campaign_id", sa.BigInteger, sa.ForeignKey("campaigns.id", ondelete="CASCADE"), primary_key=True
    ),
    sa.Column(
        "contact_id", sa.BigInteger, sa.ForeignKey("contacts.id", ondelete="CASCADE"), primary_key=True
    ),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
    sa.Column("salesforce_member_id", sa.Text, unique=True),
    sa.Column("salesforce_synced_at", sa.DateTime(timezone=True)),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
    # the status both sides agreed on at the last reconciliation; NULL: never reconciled
    sa.Column("synced_status", sa.Text),
)

campaign_member_errors = sa.Table(
    "campaign_member_errors",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("run_id", sa.Text, nullable=False),
    sa.Column(
        "campaign_id", sa.BigInteger, sa.ForeignKey("campaigns.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("contact_id", sa.BigInteger, sa.ForeignKey("contacts.id", ondelete="SET NULL")),
    sa.Column("email", sa.Text),
    sa.Column("salesforce_member_id", sa.Text),
    sa.Column("salesforce_person_id", sa.Text),
    sa.Column("direction", sa.Text, nullable=False),
    sa.Column("code", sa.Text, nullable=False),
    sa.Column("status", sa.Text),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
    sa.CheckConstraint(
        "direction IN ('salesforce_to_store', 'store_to_salesforce', 'link')",
        name="campaign_member_errors_direction",
    ),
    sa.Index("campaign_member_errors_run", "campaign_id", "run_id"),
    sa.Index("campaign_member_errors_created", "created_at"),
    # a standing error: seen again by later runs, not written anew (migration 0011)
    sa.Column("error_key", sa.Text),
    sa.Column("last_run_id", sa.Text),
    sa.Column("last_seen_at", sa.DateTime(timezone=True)),
    sa.Column("times_seen", sa.Integer, nullable=False, server_default=sa.text("1")),
    sa.Index("campaign_member_errors_key", "campaign_id", "error_key"),
)

campaign_member_tombstones = sa.Table(
    "campaign_member_tombstones",
    metadata,
    sa.Column(
        "campaign_id", sa.BigInteger, sa.ForeignKey("campaigns.id", ondelete="CASCADE"), primary_key=True
    ),
    sa.Column(
        "contact_id", sa.BigInteger, sa.ForeignKey("contacts.id", ondelete="CASCADE"), primary_key=True
    ),
    sa.Column("email", sa.Text),
    sa.Column("status", sa.Text),
    sa.Column("salesforce_member_id", sa.Text),
    sa.Column("removed_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
    sa.Column("salesforce_deleted_at", sa.DateTime(timezone=True)),
)
"""Members removed from a store campaign: not imported back from Salesforce unless re-added there later."""

sync_state = sa.Table(
    "sync_state",
    metadata,
    sa.Column("sync_name", sa.Text, primary_key=True),
    sa.Column("watermark", sa.DateTime(timezone=True)),
    sa.Column("cursor", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    sa.Column("last_run_id", sa.Text),
    sa.Column("last_success_at", sa.DateTime(timezone=True)),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
    sa.Column("reset_at", sa.DateTime(timezone=True)),
    sa.Column("field_types", JSONB),
)

sync_runs = sa.Table(
    "sync_runs",
    metadata,
    sa.Column("run_id", sa.Text, primary_key=True),
    sa.Column("sync_name", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("phase", sa.Text),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("counts", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    sa.Column("error", sa.Text),
    sa.Column("watermark_used", sa.DateTime(timezone=True)),
    sa.Column("next_watermark", sa.DateTime(timezone=True)),
    sa.Column("staging_table", sa.Text),
    sa.Column("full_sync", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("source_columns", sa.JSON),
    sa.Column("heartbeat_at", sa.DateTime(timezone=True)),
    sa.Column("host", sa.Text),
    sa.Column("pid", sa.Integer),
    sa.Column("preview", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("trace_fields", ARRAY(sa.Text)),  # the names of the values its trace rows hold as arrays
    sa.Index("sync_runs_by_sync", "sync_name", "started_at"),
    sa.Index("sync_runs_staging_table", "staging_table"),
)

sync_fingerprints = sa.Table(
    "sync_fingerprints",
    metadata,
    sa.Column("sync_name", sa.Text, primary_key=True),
    sa.Column("row_key", sa.Text, primary_key=True),
    sa.Column("fingerprint", sa.BigInteger, nullable=False),
    # xmin of the record (contact or custom object) and of the relationship as this sync last wrote or checked it
    sa.Column("record_version", sa.BigInteger),
    sa.Column("link_version", sa.BigInteger),
    postgresql_partition_by="LIST (sync_name)",
)
"""One partition per sync (store/fingerprints.py creates it with the sync's first fingerprints)."""

sync_rejections = sa.Table(
    "sync_rejections",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("run_id", sa.Text, nullable=False),
    sa.Column("sync_name", sa.Text, nullable=False),
    sa.Column("row_key", sa.Text),
    sa.Column("column_name", sa.Text),
    sa.Column("code", sa.Text, nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("row", JSONB),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
    sa.Index("sync_rejections_run", "sync_name", "run_id"),
)

sync_key_trace = sa.Table(
    "sync_key_trace",
    metadata,
    sa.Column("run_id", sa.Text, nullable=False),
    sa.Column("sync_name", sa.Text, nullable=False),
    sa.Column("action", sa.Text, nullable=False),  # added | changed | declined | removed
    sa.Column("email_norm", sa.Text),
    sa.Column("object_id", sa.Text),
    sa.Column("fields", JSONB),  # an array of values named by sync_runs.trace_fields (or an object)
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
    sa.Index("sync_key_trace_email", "email_norm", postgresql_where=sa.text("email_norm IS NOT NULL")),
    sa.Index("sync_key_trace_object", "object_id", postgresql_where=sa.text("object_id IS NOT NULL")),
    sa.Index("sync_key_trace_recorded", "recorded_at", postgresql_using="brin"),
)
"""Per key, every run that wrote, declined or removed it (store/trace.py); pruned after the retention."""

sync_rejected_keys = sa.Table(
    "sync_rejected_keys",
    metadata,
    sa.Column("sync_name", sa.Text, primary_key=True),
    sa.Column("key_value", sa.Text, primary_key=True),
    sa.Column("key_column", sa.Text, nullable=False),
    sa.Column("run_id", sa.Text, nullable=False),
    sa.Column("column_name", sa.Text),
    sa.Column("code", sa.Text, nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("rejected_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
    sa.Column("retry_run_id", sa.Text),
    sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
    sa.Column("resolved_run_id", sa.Text),
    sa.Column("resolved_at", sa.DateTime(timezone=True)),
    sa.Column("resolution", sa.Text),
    sa.Index("sync_rejected_keys_open", "sync_name", postgresql_where=sa.text("resolved_at IS NULL")),
)
"""Rejected key values per sync, until a later run accepts them (syncs/retry_rejected.py)."""

sync_warehouse_fingerprints = sa.Table(
    "sync_warehouse_fingerprints",
    metadata,
    sa.Column("sync_name", sa.Text, primary_key=True),
    sa.Column("source_key", sa.Text, primary_key=True),
    sa.Column("row_key", sa.Text, nullable=False),
    sa.Column("fingerprint", sa.Text, nullable=False),
)
"""Per sync and source key: the fingerprint the warehouse computed over the row the store last received
(migration 0014; syncs/warehouse_diff.py)."""

sync_warehouse_diff = sa.Table(
    "sync_warehouse_diff",
    metadata,
    sa.Column("sync_name", sa.Text, primary_key=True),
    sa.Column("spec", sa.Text, nullable=False),
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
)
"""Per sync: what its warehouse fingerprints were computed from; another spec means a full read (migration 0014)."""

salesforce_push_state = sa.Table(
    "salesforce_push_state",
    metadata,
    sa.Column("contact_id", sa.BigInteger, primary_key=True),  # contacts.id; no foreign key (migration 0010)
    sa.Column("salesforce_id", sa.Text),
    sa.Column("salesforce_type", sa.Text),
    # store field → the value Salesforce held after the push last read or wrote the record
    sa.Column("synced", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    sa.Column("synced_at", sa.DateTime(timezone=True)),
    sa.Column("salesforce_modified", sa.DateTime(timezone=True)),
    sa.Column("requested_at", sa.DateTime(timezone=True)),
    sa.Column("error_code", sa.Text),
    sa.Column("error_message", sa.Text),
    sa.Column("error_at", sa.DateTime(timezone=True)),
    sa.Column("error_contact_updated_at", sa.DateTime(timezone=True)),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
    sa.Index(
        "salesforce_push_state_requested", "contact_id", postgresql_where=sa.text("requested_at IS NOT NULL")
    ),
    sa.Index(
        "salesforce_push_state_errors", "contact_id", postgresql_where=sa.text("error_code IS NOT NULL")
    ),
)
"""Per-contact state of the Salesforce contact push (conversion_sync.salesforce.push)."""
