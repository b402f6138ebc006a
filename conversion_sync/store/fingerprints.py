"""Per-sync fingerprint partitions: a sync's first fingerprints are loaded in bulk into its own partition."""

from __future__ import annotations

import contextlib
import hashlib
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import sqlalchemy as sa

from conversion_sync.store.connection import prepare_bulk_transaction

PARENT = "sync_fingerprints"
"""Partitioned by LIST (sync_name): (sync_name, row_key) → fingerprint, a 60-bit integer, and the versions
(xmin) of the store records the sync last wrote or checked for that key."""


def partition_name(sync_name: str) -> str:
    """The sync's partition: sync_fingerprints_<first 16 hex digits of md5(sync name)> (as migration 0006)."""
    return f"{PARENT}_{hashlib.md5(sync_name.encode()).hexdigest()[:16]}"


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def has_partition(conn: sa.Connection, sync_name: str) -> bool:
    """Whether the sync has stored fingerprints before: its partition is attached (even if emptied by a
    reset). A table of that name left unattached by a build whose run failed does not count."""
    return conn.exec_driver_sql(
        "SELECT EXISTS (SELECT 1 FROM pg_inherits WHERE inhparent = %s::regclass AND inhrelid = to_regclass(%s))",
        (PARENT, f"public.{partition_name(sync_name)}"),
    ).scalar_one()


def _fill_new_table(conn: sa.Connection, sync_name: str, rows_select: str, params: dict[str, Any]) -> int:
    """The partition-to-be as a plain table: rows first, then its primary key built in one sort (several times
    cheaper than inserting a million keys one by one into a B-tree), with a CHECK equal to the partition bound
    so that ATTACH need not scan it. A table of that name left by a failed run is replaced."""
    name, value = partition_name(sync_name), _literal(sync_name)
    if not has_partition(conn, sync_name):
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {name}")
    conn.exec_driver_sql(
        f"CREATE TABLE {name} (sync_name text NOT NULL, row_key text NOT NULL, fingerprint bigint NOT NULL, "
        f"record_version bigint, link_version bigint, CONSTRAINT {name}_sync CHECK (sync_name = {value}))"
    )
    rows = conn.exec_driver_sql(
        f"INSERT INTO {name} (sync_name, row_key, fingerprint, record_version, link_version) "
        f"SELECT {value}, k.row_key, k.fingerprint, k.record_version, k.link_version FROM ({rows_select}) k",
        params,
    ).rowcount
    conn.exec_driver_sql(f"ALTER TABLE {name} ADD CONSTRAINT {name}_pkey PRIMARY KEY (sync_name, row_key)")
    return rows


def _attach(conn: sa.Connection, sync_name: str) -> None:
    """ATTACH locks the parent only against other ATTACH/DETACH (SHARE UPDATE EXCLUSIVE): runs of other syncs
    read and write their own partitions meanwhile."""
    conn.exec_driver_sql(
        f"ALTER TABLE {PARENT} ATTACH PARTITION {partition_name(sync_name)} FOR VALUES IN ({_literal(sync_name)})"
    )


def create_partition(conn: sa.Connection, sync_name: str, rows_select: str, params: dict[str, Any]) -> int:
    """Create the sync's partition holding `rows_select`'s (row_key, fingerprint, record_version, link_version)
    rows, inside the caller's
    transaction (on rollback it is gone too); returns how many rows."""
    rows = _fill_new_table(conn, sync_name, rows_select, params)
    _attach(conn, sync_name)
    return rows


class PartitionBuild:
    """A sync's first partition, built and committed on a connection of its own while the writer's transaction
    goes on with its own statements (on a second core); the writer then attaches it, so it takes part in the
    sync only if the writer commits. `rows_select` must read committed tables (not the writer's temporary
    ones). A writer that fails discards the build; if even that fails (the store is gone), the unattached table
    is replaced by the sync's next build.
    """

    def __init__(self, engine: sa.Engine, sync_name: str, rows_select: str, params: dict[str, Any]) -> None:
        self.sync_name = sync_name
        self._engine = engine
        self._attached = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fingerprint-build")
        self._result: Future[int] = self._executor.submit(self._build, engine, rows_select, params)
        self._executor.shutdown(wait=False)

    def _build(self, engine: sa.Engine, rows_select: str, params: dict[str, Any]) -> int:
        with engine.begin() as conn:
            prepare_bulk_transaction(conn)
            return _fill_new_table(conn, self.sync_name, rows_select, params)

    def attach(self, conn: sa.Connection) -> int:
        """Wait for the build (raising its error) and attach the partition in `conn`'s transaction."""
        rows = self._result.result()
        _attach(conn, self.sync_name)
        self._attached = True
        return rows

    def discard(self) -> None:
        """Wait for the build and drop its table (best effort: the writer is failing already). Once attached,
        the writer's transaction holds the table until it rolls back, so it is left for the next build."""
        with contextlib.suppress(Exception):
            self._result.result()
        if self._attached:
            return
        with contextlib.suppress(Exception), self._engine.begin() as conn:
            conn.exec_driver_sql("SET LOCAL lock_timeout = '5s'")
            if not has_partition(conn, self.sync_name):
                conn.exec_driver_sql(f"DROP TABLE IF EXISTS {partition_name(self.sync_name)}")


def forget_moved_records(
    conn: sa.Connection, sync_name: str, kind: str, keys_select: str, params: dict[str, Any]
) -> int:
    """Forget the fingerprints, among the keys `keys_select` yields, whose store record is no longer as this
    sync last wrote or checked it: changed, cleared or deleted by another writer since (any UPDATE gives a row a
    new xmin). Their rows are then planned as new and compared with the store, so a value another writer changed
    or removed is restored. Fingerprints without a version (written before versions were kept) count as moved.
    `params` must hold `object_type` for custom objects."""
    if kind == "contacts":
        moved = """NOT EXISTS (SELECT 1 FROM contacts c
                               WHERE c.email_normalized = f.row_key AND c.xmin::text::bigint = f.record_version)"""
    elif kind == "custom_objects":
        object_id, email = "split_part(f.row_key, chr(31), 1)", "split_part(f.row_key, chr(31), 2)"
        moved = f"""(NOT EXISTS (SELECT 1 FROM custom_objects o
                                WHERE o.object_type = %(object_type)s AND o.object_id = {object_id}
                                  AND o.xmin::text::bigint = f.record_version)
                     OR ({email} <> '' AND NOT EXISTS (
                         SELECT 1 FROM object_relationships r JOIN contacts c ON c.id = r.contact_id
                         WHERE r.object_type = %(object_type)s AND r.object_id = {object_id}
                           AND c.email_normalized = {email} AND r.xmin::text::bigint = f.link_version)))"""
    else:
        return 0
    return conn.exec_driver_sql(
        f"""DELETE FROM {PARENT} f WHERE f.sync_name = %(sync)s AND f.row_key IN ({keys_select}) AND {moved}""",
        {**params, "sync": sync_name},
    ).rowcount
