"""Query text: a trailing `;` or comment runs on every warehouse, and `{{last_sync_time}}` inside a comment
(read with the warehouse's own comment and quoting rules) neither makes a sync incremental nor breaks it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from conversion_sync.syncs.template import is_incremental, prepare_query, render_query
from conversion_sync_tests.conftest import create_database, drop_database
from conversion_sync_tests.fakesnow_server import serve_fakesnow

from .conftest import SyncWorld

KINDS = [None, "postgres", "duckdb", "snowflake", "bigquery"]
MOMENT = datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=UTC)


# --- the template, per dialect ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "query",
    [
        "SELECT * FROM users -- WHERE updated_at > '{{last_sync_time}}'",
        "SELECT * FROM users\n-- {{ last_sync_time_unix }}\nWHERE TRUE",
        "SELECT * FROM users /* WHERE updated_at > '{{last_sync_time}}' */",
        "/* incremental later:\n   WHERE updated_at > '{{last_sync_time}}'\n*/\nSELECT * FROM users;",
    ],
)
def test_the_watermark_only_in_a_comment_is_a_full_sync(query: str, kind: str | None) -> None:
    assert not is_incremental(query, kind)
    rendered = render_query(query, MOMENT, kind)
    assert "{{" not in rendered


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "query",
    [
        "SELECT * FROM users WHERE updated_at > '{{last_sync_time}}' -- {{last_sync_time}}",
        "SELECT '--' AS a FROM users WHERE updated_at > '{{last_sync_time}}'",
        "SELECT '/*' AS a FROM users WHERE updated_at > '{{last_sync_time}}' -- */",
        "SELECT * FROM users WHERE epoch > {{last_sync_time_unix}}",
    ],
)
def test_the_watermark_in_code_or_in_a_string_is_incremental(query: str, kind: str | None) -> None:
    assert is_incremental(query, kind)


def test_each_warehouse_reads_its_own_comments_and_quotes() -> None:
    assert not is_incremental("SELECT * FROM t # '{{last_sync_time}}'", "bigquery")
    assert is_incremental("SELECT * FROM t # '{{last_sync_time}}'", "postgres")
    assert not is_incremental("SELECT * FROM t // '{{last_sync_time}}'", "snowflake")
    assert is_incremental("SELECT * FROM t // '{{last_sync_time}}'", "duckdb")
    dollar = "SELECT $$ -- not a comment $$ AS a FROM t WHERE u > '{{last_sync_time}}'"
    for kind in ("postgres", "duckdb", "snowflake"):
        assert is_incremental(dollar, kind), kind
    # a backslash is no escape in Postgres: the string ends at the second quote, and the rest is a comment
    assert not is_incremental(r"SELECT 'a\' -- '{{last_sync_time}}'", "postgres")
    assert is_incremental(r"SELECT 'a\' -- ' AS x FROM t WHERE u > '{{last_sync_time}}'", "bigquery")


@pytest.mark.parametrize("kind", KINDS)
def test_trailing_semicolons_and_comments_are_dropped(kind: str | None) -> None:
    assert prepare_query("SELECT 'a;b' AS x;\n", kind) == "SELECT 'a;b' AS x"
    assert prepare_query("SELECT 1 AS x ;; -- done\n", kind) == "SELECT 1 AS x"
    assert prepare_query("SELECT 1 AS x\n-- last line\n", kind) == "SELECT 1 AS x"
    assert prepare_query("SELECT 1 AS x /* c */\n", kind) == "SELECT 1 AS x"
    assert prepare_query("SELECT 1 AS x -- c\nFROM t", kind) == "SELECT 1 AS x -- c\nFROM t"
    query = "SELECT * FROM t WHERE u > '{{last_sync_time}}'; -- {{last_sync_time}}\n"
    assert render_query(query, MOMENT, kind).endswith(
        "05:06:07.890123+00:00'" if kind in ("postgres", "duckdb", "snowflake") else "05:06:07.890123'"
    )


def test_a_query_the_tokenizer_cannot_read_is_left_to_the_warehouse() -> None:
    assert prepare_query("SELECT 'unterminated", "postgres") == "SELECT 'unterminated"
    assert is_incremental("SELECT 'x -- {{last_sync_time}}", "postgres")


# --- whole syncs on Postgres, DuckDB and Snowflake (fakesnow) ----------------------------------------------

USERS = [
    "CREATE TABLE users (email VARCHAR, first_name VARCHAR, updated_at TIMESTAMP)",
    "INSERT INTO users VALUES ('ann@example.com', 'Ann', '2026-01-01 10:00:00'), "
    "('bob@example.com', 'Bob', '2026-01-02 10:00:00')",
]

TRAILING = {
    "semicolon": "SELECT email, first_name, updated_at FROM users;",
    "semicolon_and_comment": (
        "SELECT email, first_name, updated_at FROM users WHERE updated_at > '{{last_sync_time}}'; -- done"
    ),
    "comment_line": "SELECT email, first_name, updated_at FROM users\n-- the last line is a comment",
}
COMMENTED_WATERMARK = {
    "line_comment": (
        "SELECT email, first_name, updated_at FROM users\n-- later: WHERE updated_at > '{{last_sync_time}}'"
    ),
    "block_comment": (
        "SELECT email, first_name, updated_at FROM users /* WHERE updated_at > '{{last_sync_time}}' */"
    ),
}


@pytest.fixture(scope="module")
def fakesnow_kwargs() -> Iterator[dict[str, Any]]:
    import snowflake.connector

    with serve_fakesnow() as kwargs:
        with snowflake.connector.connect(**kwargs, database="QUERY_TEXT", schema="PUBLIC") as conn:
            cursor = conn.cursor()
            cursor.execute("CREATE DATABASE IF NOT EXISTS QUERY_TEXT")
            cursor.execute("CREATE SCHEMA IF NOT EXISTS QUERY_TEXT.PUBLIC")
            for statement in USERS:
                cursor.execute(statement)
        yield kwargs


@pytest.fixture
def warehouse_spec(
    request: pytest.FixtureRequest, tmp_path: Path, pg_base_uri: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    kind = request.param
    if kind == "duckdb":
        import duckdb

        path = tmp_path / "query_text.duckdb"
        with duckdb.connect(str(path)) as conn:
            for statement in USERS:
                conn.execute(statement)
        yield f"{{type: duckdb, path: '{path}'}}"
    elif kind == "postgres":
        url = create_database(pg_base_uri, "query_text_wh", template=None)
        with psycopg.connect(url, autocommit=True) as conn:
            for statement in USERS:
                conn.execute(statement)  # type: ignore[arg-type]
        monkeypatch.setenv("QUERY_TEXT_PG_URL", url)
        yield "{type: postgres, url: {env: QUERY_TEXT_PG_URL}}"
        drop_database(pg_base_uri, url, "query_text_wh")
    else:
        kwargs = request.getfixturevalue("fakesnow_kwargs")
        monkeypatch.setenv("QUERY_TEXT_SF_PASSWORD", kwargs["password"])
        yield (
            f"{{type: snowflake, account: {kwargs['account']}, user: {kwargs['user']}, "
            f"password: {{env: QUERY_TEXT_SF_PASSWORD}}, database: QUERY_TEXT, schema: PUBLIC, "
            f"host: '{kwargs['host']}', port: {kwargs['port']}, protocol: {kwargs['protocol']}}}"
        )


@pytest.mark.parametrize("warehouse_spec", ["postgres", "duckdb", "snowflake"], indirect=True)
def test_a_trailing_semicolon_or_comment_runs(tmp_path: Path, store_url: str, warehouse_spec: str) -> None:
    world = SyncWorld(tmp_path, store_url)
    world.warehouses["wh"] = warehouse_spec
    for name, query in TRAILING.items():
        world.add_sync(name, query)
    for name in TRAILING:
        outcome = world.run(name)
        assert (outcome.counts["queried"], outcome.counts["rejected"]) == (2, 0), name
    assert world.scalar("SELECT count(*) FROM contacts") == 2


@pytest.mark.parametrize("warehouse_spec", ["postgres", "duckdb", "snowflake"], indirect=True)
def test_the_watermark_only_in_comments_is_a_full_sync(
    tmp_path: Path, store_url: str, warehouse_spec: str
) -> None:
    world = SyncWorld(tmp_path, store_url)
    world.warehouses["wh"] = warehouse_spec
    for name, query in COMMENTED_WATERMARK.items():
        world.add_sync(name, query)
    assert not any(sync.incremental for sync in world.project().syncs.values())
    for name in COMMENTED_WATERMARK:
        assert world.run(name).full_sync, name
        second = world.run(name)  # a full sync reads everything every time
        assert second.full_sync, name
        assert (second.counts["queried"], second.counts["unchanged"]) == (2, 2), name


def test_a_commented_watermark_allows_delete_behavior(tmp_path: Path, store_url: str) -> None:
    world = SyncWorld(tmp_path, store_url)
    world.add_sync("users", COMMENTED_WATERMARK["line_comment"], delete_behavior="delete")
    world.warehouse(";".join(USERS))
    project = world.project()
    assert not project.syncs["users"].incremental
    assert world.run("users").full_sync
