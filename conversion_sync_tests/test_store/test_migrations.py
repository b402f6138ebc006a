"""Migrations create every SPEC §8 table on an empty store, and re-running them is a no-op."""

from __future__ import annotations

import sqlalchemy as sa
from click.testing import CliRunner

from conversion_sync.cli import main
from conversion_sync.store.connection import store_engine
from conversion_sync.store.migrate import current_revision, head_revision, migrate_store

SPEC_TABLES = {
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
    assert table_names(empty_database_url) >= SPEC_TABLES | {"alembic_version"}


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
