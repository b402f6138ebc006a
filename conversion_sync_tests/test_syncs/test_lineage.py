"""Which tables a sync query reads, per warehouse dialect: joins, CTEs, subqueries, quoting, qualification."""

from __future__ import annotations

import pytest

from conversion_sync.syncs.lineage import query_tables


@pytest.mark.parametrize(
    ("kind", "query", "tables"),
    [
        # the template is rendered first: quoted or bare, it parses
        (
            "duckdb",
            "SELECT email FROM users WHERE updated_at > '{{last_sync_time}}'",
            [("users",)],
        ),
        (
            "bigquery",
            "SELECT email FROM ds.users WHERE ts > {{last_sync_time_unix}} # {{last_sync_time}}",
            [("ds", "users")],
        ),
        # joins, each table once
        (
            "duckdb",
            """SELECT p.id, up.email FROM user_products up JOIN products p ON p.id = up.product_id
               LEFT JOIN products p2 ON p2.id = p.parent_id""",
            [("user_products",), ("products",)],
        ),
        # CTE names are not tables, the tables inside them are; a CTE may shadow a table's name
        (
            "postgres",
            """WITH recent AS (SELECT * FROM public.orders WHERE ts > now() - interval '1 day'),
                    users AS (SELECT * FROM crm.users)
               SELECT * FROM recent JOIN users USING (email)""",
            [("public", "orders"), ("crm", "users")],
        ),
        (
            "postgres",
            "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) SELECT * FROM r, s.q",
            [("s", "q")],
        ),
        # subqueries in FROM, in the select list, in EXISTS / IN, and UNION branches
        (
            "duckdb",
            """SELECT (SELECT max(amount) FROM payments pay WHERE pay.email = u.email) AS top
               FROM (SELECT * FROM users) u
               WHERE EXISTS (SELECT 1 FROM logins l WHERE l.email = u.email)
                 AND u.email IN (SELECT email FROM vip)
               UNION ALL SELECT 1 FROM extra""",
            [("payments",), ("users",), ("logins",), ("vip",), ("extra",)],
        ),
        # Snowflake: unquoted names fold (lower-cased here, as dbt names models), quoted keep their case,
        # the database is dropped, `//` comments are comments
        (
            "snowflake",
            'SELECT * FROM ANALYTICS.PUBLIC."Users" u JOIN RAW.EVENTS e ON e.ID = u.ID // FROM ignored',
            [("public", "Users"), ("raw", "events")],
        ),
        # BigQuery: names keep their case; a backquoted project.dataset.table is split; UNNEST is no table
        (
            "bigquery",
            "SELECT * FROM `my-project.Sales.Orders` o, UNNEST(o.items) item JOIN Sales.Refunds r USING (id)",
            [("Sales", "Orders"), ("Sales", "Refunds")],
        ),
        # DuckDB table functions are not tables
        (
            "duckdb",
            "SELECT * FROM read_parquet('x.parquet') p JOIN generate_series(1, 3) g ON true JOIN main.t ON true",
            [("main", "t")],
        ),
        # Postgres: quoted mixed case is kept, unquoted folds; a trailing ; and comment are dropped
        (
            "postgres",
            'SELECT * FROM "Sales"."Orders" JOIN Sales.Items USING (id); -- done',
            [("Sales", "Orders"), ("sales", "items")],
        ),
    ],
)
def test_tables_a_query_reads(kind: str, query: str, tables: list[tuple[str, ...]]) -> None:
    result = query_tables(query, kind)
    assert result.problem is None
    assert sorted(result.tables) == sorted(tables)
    assert len(result.tables) == len(set(result.tables)), "each table once"


def test_unparseable_query_says_why_and_reads_nothing() -> None:
    result = query_tables("SELECT FROM WHERE ((", "postgres")
    assert result.tables == []
    assert result.problem is not None and result.problem.startswith(
        "the query could not be parsed as postgres"
    )


def test_query_without_tables_reads_nothing() -> None:
    assert query_tables("SELECT 'a@example.com' AS email", "duckdb").tables == []
