"""Fingerprints partitioned by sync (LIST), as 60-bit integers.

A sync's first load then builds its own partition in bulk (rows first, index in one sort, then attached)
instead of a million B-tree inserts, and every lookup reads only that sync's partition. A fingerprint is
the first 15 hex digits of the md5 the uuid held, so existing fingerprints keep matching their rows.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

PARTITION_PREFIX = "sync_fingerprints_"
"""A sync's partition is sync_fingerprints_<first 16 hex digits of md5(sync name)> (store/fingerprints.py)."""


def upgrade() -> None:
    op.execute("ALTER TABLE sync_fingerprints RENAME TO sync_fingerprints_unpartitioned")
    op.execute("ALTER INDEX sync_fingerprints_pkey RENAME TO sync_fingerprints_unpartitioned_pkey")
    op.execute(
        """CREATE TABLE sync_fingerprints (
            sync_name text NOT NULL, row_key text NOT NULL, fingerprint bigint NOT NULL,
            CONSTRAINT sync_fingerprints_pkey PRIMARY KEY (sync_name, row_key)
        ) PARTITION BY LIST (sync_name)"""
    )
    op.execute(
        f"""DO $$
        DECLARE name text;
        BEGIN
            FOR name IN SELECT DISTINCT sync_name FROM sync_fingerprints_unpartitioned LOOP
                EXECUTE format('CREATE TABLE %I PARTITION OF sync_fingerprints FOR VALUES IN (%L)',
                               '{PARTITION_PREFIX}' || left(md5(name), 16), name);
            END LOOP;
        END $$"""
    )
    op.execute(
        """INSERT INTO sync_fingerprints (sync_name, row_key, fingerprint)
        SELECT sync_name, row_key,
               ('x' || lpad(left(replace(fingerprint::text, '-', ''), 15), 16, '0'))::bit(64)::bigint
        FROM sync_fingerprints_unpartitioned"""
    )
    op.execute("DROP TABLE sync_fingerprints_unpartitioned")


def downgrade() -> None:
    # A 60-bit fingerprint cannot give back its uuid: after a downgrade every key's next row counts as changed
    # once (and rewrites the same values).
    op.execute("ALTER TABLE sync_fingerprints RENAME TO sync_fingerprints_partitioned")
    op.execute("ALTER INDEX sync_fingerprints_pkey RENAME TO sync_fingerprints_partitioned_pkey")
    op.execute(
        """CREATE TABLE sync_fingerprints (
            sync_name text NOT NULL, row_key text NOT NULL, fingerprint uuid NOT NULL,
            CONSTRAINT sync_fingerprints_pkey PRIMARY KEY (sync_name, row_key))"""
    )
    op.execute(
        """INSERT INTO sync_fingerprints SELECT sync_name, row_key, md5(fingerprint::text)::uuid
        FROM sync_fingerprints_partitioned"""
    )
    op.execute("DROP TABLE sync_fingerprints_partitioned")
