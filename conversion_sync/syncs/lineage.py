"""Which warehouse tables a sync's query reads: parsed with sqlglot in its warehouse's dialect.

A table is named as the query names it, without its database (catalog): `schema.table` → ("schema", "table"),
`table` → ("table",). Unquoted names are lower-cased on the warehouses that ignore their case (Postgres,
DuckDB, Snowflake); quoted names, and every name on BigQuery, keep their case. Names defined by the query
itself (WITH … AS, recursive CTEs), table functions (`read_parquet(…)`, `UNNEST`, `FLATTEN`) and subqueries
are not tables. The `{{last_sync_time}}` template is rendered (with the epoch) before parsing.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError
from sqlglot.optimizer.scope import traverse_scope

from conversion_sync.syncs.template import EPOCH, render_query

if TYPE_CHECKING:
    from conversion_sync.config.syncs import DestinationConfig

DIALECTS = {"postgres": "postgres", "duckdb": "duckdb", "snowflake": "snowflake", "bigquery": "bigquery"}
CASE_SENSITIVE_KINDS = frozenset({"bigquery"})
"""Warehouse types whose unquoted table names keep their case (BigQuery datasets and tables)."""

TableName = tuple[str, ...]
"""A table as (schema, table) or (table,)."""
KeyPath = tuple[str, ...]
"""An asset key's parts: what the code location names each asset of the sync graph."""
SYNC_KEY_PREFIX = "sync_"
STORE_KEY_PART = "contact_store"


def sync_key_path(sync_name: str) -> KeyPath:
    """A sync's asset: sync_<name>."""
    return (f"{SYNC_KEY_PREFIX}{sync_name}",)


def sync_name_of_key(path: KeyPath) -> str | None:
    """The sync whose asset key `path` is (a single part sync_<name>), else None."""
    if len(path) == 1 and path[0].startswith(SYNC_KEY_PREFIX) and len(path[0]) > len(SYNC_KEY_PREFIX):
        return path[0][len(SYNC_KEY_PREFIX) :]
    return None


def table_key_path(table: TableName, prefix: Sequence[str] = ()) -> KeyPath:
    """A table's asset key: the warehouse's `asset_key_prefix`, then the table as the query names it."""
    return (*prefix, *table)


def destination_key_path(destination: DestinationConfig) -> KeyPath:
    """contact_store/contacts, contact_store/events, contact_store/custom_objects/<object type>."""
    if destination.type == "custom_objects":
        return (STORE_KEY_PART, "custom_objects", str(destination.object_type))
    return (STORE_KEY_PART, destination.type)


@dataclass(frozen=True)
class QueryTables:
    """The tables a query reads, each once (in the order sqlglot walks its scopes), or why they could not be
    read."""

    tables: list[TableName]
    problem: str | None = None


def _part(identifier: exp.Expression, kind: str | None) -> str:
    name = identifier.name
    quoted = isinstance(identifier, exp.Identifier) and identifier.quoted
    return name if quoted or kind in CASE_SENSITIVE_KINDS else name.lower()


def _table_name(table: exp.Table, kind: str | None) -> TableName | None:
    if not isinstance(table.this, exp.Identifier) or not table.name:
        return None  # a table function: read_parquet(…), TABLE(FLATTEN(…)), generate_series(…)
    schema = table.args.get("db")
    name = _part(table.this, kind)
    return (_part(schema, kind), name) if schema is not None and schema.name else (name,)


def _cte_names(tree: exp.Expression) -> set[str]:
    return {cte.alias_or_name.lower() for cte in tree.find_all(exp.CTE)}


def _tables_in(tree: exp.Expression, kind: str | None) -> list[TableName]:
    """Tables by scope (CTE references are scopes, not tables); a tree sqlglot cannot scope falls back to
    every table node whose unqualified name is no CTE's."""
    try:
        nodes = [
            source
            for scope in traverse_scope(tree)
            for source in scope.sources.values()
            if isinstance(source, exp.Table)
        ]
    except SqlglotError:
        ctes = _cte_names(tree)
        nodes = [t for t in tree.find_all(exp.Table) if t.args.get("db") or t.name.lower() not in ctes]
    return [name for name in (_table_name(node, kind) for node in nodes) if name is not None]


def _reason(exc: Exception) -> str:
    """A parse error's description and position (sqlglot's message also quotes tokens)."""
    errors = getattr(exc, "errors", None)
    if errors:
        first = errors[0]
        return f"{first.get('description')} (line {first.get('line')}, column {first.get('col')})"
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@functools.lru_cache(maxsize=4096)
def query_tables(query: str, kind: str | None = None) -> QueryTables:
    """The tables `query` (a sync query, template and all) reads, for a warehouse type `kind`; each query is
    parsed once per process (the config check and the code location both ask)."""
    try:
        sql = render_query(query, EPOCH, kind)
        trees = sqlglot.parse(sql, read=DIALECTS.get(kind or ""))
    except (SqlglotError, ValueError) as exc:
        return QueryTables([], f"the query could not be parsed as {kind or 'SQL'}: {_reason(exc)}")
    found: dict[TableName, None] = {}
    for tree in trees:
        if isinstance(tree, exp.Expression):
            found.update(dict.fromkeys(_tables_in(tree, kind)))
    return QueryTables(list(found))
