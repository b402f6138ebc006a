"""Alembic environment: migrates the contact store under an advisory lock so concurrent starts are safe."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from conversion_sync.store.connection import resolve_store_url, sqlalchemy_url
from conversion_sync.store.tables import metadata

MIGRATION_LOCK_KEY = 7_310_001


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _migrate(connection)
        return
    url = context.config.get_main_option("sqlalchemy.url") or resolve_store_url()
    engine = sa.create_engine(sqlalchemy_url(url), poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        _migrate(conn)
    engine.dispose()


def _migrate(connection: sa.Connection) -> None:
    context.configure(connection=connection, target_metadata=metadata, transaction_per_migration=False)
    with context.begin_transaction():
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        context.run_migrations()


run_migrations_online()
