"""Migrations create every table of the store's logical schema on an empty store, and re-running them is a no-op."""

from __future__ import annotations

import importlib

import duckdb
import pyarrow as pa
import pytest
import sqlalchemy as sa
from alembic import command
from click.testing import CliRunner

from conversion_sync.cli import main
from conversion_sync.store.connection import sqlalchemy_url, store_engine
from conversion_sync.store.fingerprints import create_partition, has_partition, partition_name
from conversion_sync.store.migrate import alembic_config, current_revision, head_revision, migrate_store
from conversion_sync.store.staging import FINGERPRINT, BatchTextifier

STORE_TABLES = {
    "contacts",
    "companies",
    "custom_objects",
    "object_relationships",
    "events",
    "campaign_types",
    "campaigns",
    "campaign_members",
    "sync_state",
    "sync_rejections",
}


def table_names(url: str) -> set[str]:
    return set(sa.inspect(store_engine(url)).get_table_names())


def test_empty_store_migrates_to_head(empty_database_url: str) -> None:
    assert current_revision(empty_database_url) is None
    before, after = migrate_store(empty_database_url)
    assert (before, after) == (None, head_revision())
    assert table_names(empty_database_url) >= STORE_TABLES | {"alembic_version"}


def test_contacts_table_has_the_logical_columns(store_url: str) -> None:
    columns = {c["name"] for c in sa.inspect(store_engine(store_url)).get_columns("contacts")}
    assert columns >= {
        "id",
        "email",
        "salesforce_id",
        "salesforce_type",
        "company_id",
        "first_name",
        "last_name",
        "job_title",
        "phone",
        "city",
        "company_name",
        "custom_fields",
        "field_updated_at",
        "created_at",
        "updated_at",
    }


def test_migrating_an_up_to_date_store_is_a_no_op(store_url: str) -> None:
    with store_engine(store_url).connect() as conn:
        ddl_before = conn.exec_driver_sql(
            "SELECT count(*) FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public'"
        ).scalar_one()
    assert migrate_store(store_url) == (head_revision(), head_revision())
    with store_engine(store_url).connect() as conn:
        assert (
            conn.exec_driver_sql(
                "SELECT count(*) FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
                "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public'"
            ).scalar_one()
            == ddl_before
        )


def test_cli_migrate_reports_what_it_did(empty_database_url: str, monkeypatch) -> None:
    monkeypatch.setenv("CONVERSION_STORE_URL", empty_database_url)
    first = CliRunner().invoke(main, ["migrate"])
    assert first.exit_code == 0, first.output
    assert f"migrated from empty to {head_revision()}" in first.output
    second = CliRunner().invoke(main, ["migrate"])
    assert f"is up to date at revision {head_revision()}" in second.output


def test_fingerprints_move_to_one_partition_per_sync_and_keep_matching(empty_database_url: str) -> None:
    """0006: a uuid fingerprint (md5 of the row's JSON text) becomes the 60-bit number the staging step
    computes for the same text, so an unchanged row stays unchanged across the upgrade."""
    config = alembic_config(empty_database_url)
    command.upgrade(config, "0005")
    # what the staging step fingerprinted before 0006 (the md5 of this text, as a uuid) and computes now
    [(row_text,)] = duckdb.sql(
        "SELECT CAST(to_json(CAST(['Ada', 'Lovelace', NULL] AS VARCHAR[])) AS VARCHAR)"
    ).fetchall()
    batch = pa.RecordBatch.from_pydict(
        {"first": ["Ada"], "last": ["Lovelace"], "city": pa.array([None], pa.string())}
    )
    textifier = BatchTextifier([0, 1, 2])
    [staged] = textifier.to_text(batch).column(FINGERPRINT).to_pylist()
    textifier.close()
    engine = sa.create_engine(sqlalchemy_url(empty_database_url), poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            """INSERT INTO sync_fingerprints (sync_name, row_key, fingerprint)
            VALUES ('people', 'ada@example.com', md5(%(t)s)::uuid), ('people', 'bob@example.com', md5('x')::uuid),
                   ('it''s', 'k1', md5('y')::uuid)""",
            {"t": row_text},
        )
    command.upgrade(config, "head")
    with engine.begin() as conn:
        assert (
            conn.exec_driver_sql(
                "SELECT fingerprint FROM sync_fingerprints WHERE row_key = 'ada@example.com'"
            ).scalar_one()
            == staged
        )
        partitions = dict(
            conn.exec_driver_sql(
                "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
                "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'sync_fingerprints'::regclass"
            ).all()
        )
        assert partitions == {
            partition_name("people"): "FOR VALUES IN ('people')",
            partition_name("it's"): "FOR VALUES IN ('it''s')",
        }
        assert has_partition(conn, "people") and not has_partition(conn, "other")
        assert conn.exec_driver_sql(f"SELECT count(*) FROM {partition_name('people')}").scalar_one() == 2
    command.downgrade(config, "0005")
    with engine.begin() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM sync_fingerprints").scalar_one() == 3
    engine.dispose()


def test_a_syncs_first_fingerprints_become_its_partition_in_one_transaction(store_url: str) -> None:
    """Loaded, indexed and attached inside the caller's transaction: a rollback leaves no partition behind."""
    engine = store_engine(store_url)
    select = (
        "SELECT 'k' || i AS row_key, i::bigint AS fingerprint, NULL::bigint AS record_version, "
        "NULL::bigint AS link_version FROM generate_series(1, 1000) i"
    )
    with engine.connect() as conn, conn.begin() as transaction:
        assert create_partition(conn, "rolled back", select, {}) == 1000
        assert has_partition(conn, "rolled back")
        transaction.rollback()
    with engine.begin() as conn:
        assert not has_partition(conn, "rolled back")
        create_partition(conn, "kept", select, {})
    with engine.begin() as conn:
        assert (
            conn.exec_driver_sql(
                "SELECT fingerprint FROM sync_fingerprints WHERE sync_name = 'kept' AND row_key = 'k7'"
            ).scalar_one()
            == 7
        )
        with pytest.raises(sa.exc.IntegrityError):  # the primary key holds in the partition
            conn.exec_driver_sql("INSERT INTO sync_fingerprints VALUES ('kept', 'k7', 0)")


EMAIL_EDGES = [
    "a@b.c",
    " A@b.co ",
    "a@b",
    "a@-b.c",
    "a@b-.c",
    "a@b.c-",
    "a@b..c",
    "a@.b.c",
    "@b.c",
    "a@@b.c",
    "a b@c.d",
    "a..b@c.d",
    ".a@b.c",
    "a.@b.c",
    "é@ü.de",
    "a@b.c\u200b",
    "",
    None,
    "x@" + "a" * 63 + ".com",
    "x@" + "a" * 64 + ".com",
    "x@b." + "a" * 63,
    "x@b." + "a" * 64,
    "x@" + "a" * 62 + "-b.com",
    "x@a-" + "b" * 70 + ".com",
    "a" * 64 + "@b.c",
    "a" * 65 + "@b.c",
    "x@" + ("a" * 63 + ".") * 3 + "com",
    "x@" + ("a" * 40 + ".") * 6 + "com",
    "x@" + ("a" * 63 + ".") * 4 + "com",
]


def test_the_fast_email_check_accepts_exactly_what_the_first_one_did(store_url: str) -> None:
    """0016's pattern (labels of any length, their length tested apart) against 0009's ({0,61} per label)."""
    first = importlib.import_module(
        "conversion_sync.store.migrations.versions.0009_store_versions_and_resets"
    )
    original = first.email_functions()[2].replace("conversion_email_is_valid", "pg_temp.original_email_check")
    with store_engine(store_url).begin() as conn:
        conn.execute(sa.text(original))
        for email in EMAIL_EDGES:
            now, before = conn.exec_driver_sql(
                "SELECT conversion_email_is_valid(%(e)s), pg_temp.original_email_check(%(e)s)", {"e": email}
            ).one()
            assert now is before, email
