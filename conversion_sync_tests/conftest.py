"""Shared fixtures: one embedded Postgres per test session, a fresh migrated store database per test."""

from __future__ import annotations

import itertools
import os
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from conversion_sync.config.environment import ENV_VAR
from conversion_sync.store.connection import STORE_URL_ENV, store_engine
from conversion_sync.store.migrate import migrate_store

# The tests run locally (also under a plain `pytest`): the embedded store and the stand-ins may start.
os.environ.setdefault(ENV_VAR, "local")

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO_ROOT / "syncs"
TEMPLATE_DB = "store_template"
_db_numbers = itertools.count()


def database_url(base_uri: str, database: str) -> str:
    prefix, _, query = base_uri.partition("?")
    return f"{prefix.rsplit('/', 1)[0]}/{database}?{query}"


@pytest.fixture(scope="session")
def pg_base_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real PostgreSQL (pgserver) for the whole session; URI of its `postgres` database."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver

    # "stop" keeps the data directory (and its log) in pytest's temporary folder for post-mortems
    server = pgserver.get_server(tmp_path_factory.mktemp("pg"), cleanup_mode="stop")
    uri = server.get_uri("postgres")
    with psycopg.connect(uri, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TEMPLATE_DB)))
    migrate_store(database_url(uri, TEMPLATE_DB))
    yield uri
    server.cleanup()


def create_database(base_uri: str, name: str, template: str | None = TEMPLATE_DB) -> str:
    with psycopg.connect(base_uri, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        if template:
            statement = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template)
            )
        else:
            statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        conn.execute(statement)
    return database_url(base_uri, name)


def drop_database(base_uri: str, url: str, name: str) -> None:
    store_engine(url).dispose()
    with psycopg.connect(base_uri, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def store_url(pg_base_uri: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh, migrated contact store for one test; CONVERSION_STORE_URL points at it."""
    name = f"store_{next(_db_numbers)}"
    url = create_database(pg_base_uri, name)
    monkeypatch.setenv(STORE_URL_ENV, url)
    yield url
    drop_database(pg_base_uri, url, name)


@pytest.fixture
def empty_database_url(pg_base_uri: str) -> Iterator[str]:
    """A database with no tables at all, for migration tests."""
    name = f"empty_{next(_db_numbers)}"
    url = create_database(pg_base_uri, name, template=None)
    yield url
    drop_database(pg_base_uri, url, name)


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    """A writable copy of the demo config directory."""
    target = tmp_path / "config"
    shutil.copytree(DEMO_CONFIG, target)
    return target


@pytest.fixture(autouse=True)
def _forget_dagster_state_storage() -> Iterator[None]:
    """Dagster keeps the instance's defs-state storage in a context variable; an instance closed by one
    test must not be what the next test's Definitions load against."""
    yield
    from dagster._core.storage.defs_state.base import _current_storage

    _current_storage.set(None)
