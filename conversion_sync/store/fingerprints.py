"""Per-sync fingerprint partitions: a sync's first fingerprints are loaded in bulk into its own partition."""

from __future__ import annotations

import hashlib
from typing import Any

import sqlalchemy as sa

PARENT = "sync_fingerprints"
"""Partitioned by LIST (sync_name): (sync_name, row_key) → fingerprint, a 60-bit integer."""


def partition_name(sync_name: str) -> str:
    """The sync's partition: sync_fingerprints_<first 16 hex digits of md5(sync name)> (as migration 0006)."""
    return f"{PARENT}_{hashlib.md5(sync_name.encode()).hexdigest()[:16]}"


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def has_partition(conn: sa.Connection, sync_name: str) -> bool:
    """Whether the sync has stored fingerprints before (its partition exists, even if emptied by a reset)."""
    return conn.exec_driver_sql(
        "SELECT to_regclass(%s) IS NOT NULL", (f"public.{partition_name(sync_name)}",)
    ).scalar_one()


def create_partition(conn: sa.Connection, sync_name: str, rows_select: str, params: dict[str, Any]) -> int:
    """Create the sync's partition holding `rows_select`'s (row_key, fingerprint) rows; returns how many.

    The rows go into a plain table first and its primary key is built afterwards in one sort, several
    times cheaper than inserting a million keys one by one into a B-tree. A CHECK constraint equal to the
    partition bound lets ATTACH skip its validation scan; ATTACH locks the parent only against other
    ATTACH/DETACH (SHARE UPDATE EXCLUSIVE), so runs of other syncs read and write their own partitions
    meanwhile. Inside the caller's transaction: on rollback the partition is gone too.
    """
    name = partition_name(sync_name)
    value = _literal(sync_name)
    conn.exec_driver_sql(
        f"CREATE TABLE {name} (sync_name text NOT NULL, row_key text NOT NULL, fingerprint bigint NOT NULL, "
        f"CONSTRAINT {name}_sync CHECK (sync_name = {value}))"
    )
    rows = conn.exec_driver_sql(
        f"INSERT INTO {name} (sync_name, row_key, fingerprint) SELECT {value}, k.row_key, k.fingerprint "
        f"FROM ({rows_select}) k",
        params,
    ).rowcount
    conn.exec_driver_sql(f"ALTER TABLE {name} ADD CONSTRAINT {name}_pkey PRIMARY KEY (sync_name, row_key)")
    conn.exec_driver_sql(f"ALTER TABLE {PARENT} ATTACH PARTITION {name} FOR VALUES IN ({value})")
    return rows
