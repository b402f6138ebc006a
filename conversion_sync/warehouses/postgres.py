"""Postgres warehouse: ADBC (binary COPY) streaming inside a READ ONLY transaction."""

from __future__ import annotations

import contextlib
import re
import urllib.parse
from collections.abc import Iterator
from typing import Any

import adbc_driver_postgresql.dbapi
import pyarrow as pa
import pyarrow.compute as pc
from psycopg.conninfo import conninfo_to_dict

from conversion_sync.config.warehouses import PostgresWarehouseConfig
from conversion_sync.warehouses.base import (
    DEFAULT_BATCH_ROWS,
    Warehouse,
    WarehouseError,
    bounded_batches,
    check_batch_rows,
    plain_arrow_types,
    utc_moment,
)

_TYPNAME = b"ADBC:postgresql:typname"
_TYPMOD = b"POSTGRESQL:typmod"
_URL_PASSWORD = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/?#@]*?:([^/?#@]*)@")
_PARAM_PASSWORD = re.compile(r"(?:[?&\s]|^)password\s*=\s*'?([^&\s']+)")
_ADBC_PREFIX = re.compile(
    r"^(?:[A-Z_]+: )?(?:\[libpq\] )?"
    r"(?:Failed to (?:connect|prepare query|execute query(?: '.*?')?)(?:: could not begin COPY)?: )?",
    re.DOTALL,
)
_SQLSTATE = re.compile(r"SQLSTATE: (\w{5})")
_CONTEXT_LINE = re.compile(r"^\s*(?:LINE \d+:.*|\^+)\s*$")


class PostgresWarehouse(Warehouse):
    """A Postgres database reached by a libpq URL (`postgresql://user:password@host:port/db?...`).

    Streaming uses ADBC, which runs the query as a binary `COPY (...) TO STDOUT` and decodes it in C
    straight into Arrow (about 4x faster than a psycopg named cursor building batches in Python,
    with the same flat memory). Batches are re-sliced to `batch_rows`.

    Read-only: the session default is `READ ONLY` and every query runs in a transaction started with
    `SET TRANSACTION READ ONLY` that is rolled back afterwards, so DELETE/UPDATE/INSERT/DDL (also in a
    data-modifying CTE) fail and change nothing. ADBC prepares each query, so a second statement
    after a `;` is rejected.

    Time zone: the session's TimeZone is UTC (set on connecting, and again for each query's transaction,
    which holds behind a transaction-pooling proxy too), whatever the database's or role's default.
    `query_started_at` is `clock_timestamp()` read in the query's transaction just before it runs.

    Types: `timestamptz` → timestamp[us, UTC]; `numeric(p,s)` with p ≤ 38 → decimal128(p, s);
    unconstrained `numeric` → string marked NUMERIC_TEXT (lossless); `json`/`jsonb` → string marked JSON_TEXT;
    `uuid` → string. Types ADBC cannot carry faithfully are converted in SQL (see `faithful_query`): the
    query's result columns are described first (one prepare, nothing runs), and only when one needs it is the
    query wrapped.
    """

    kind = "postgres"

    def __init__(self, name: str, config: PostgresWarehouseConfig) -> None:
        super().__init__(name)
        self._url_setting = config.url
        self._conn: adbc_driver_postgresql.dbapi.Connection | None = None

    def _connect(self) -> adbc_driver_postgresql.dbapi.Connection:
        if self._conn is None:
            url = self._resolve(self._url_setting) or ""
            self._add_secret(*_url_passwords(url))
            try:
                conn = adbc_driver_postgresql.dbapi.connect(url)
            except Exception as exc:
                raise self._connection_error(_driver_message(exc)) from None
            try:
                with conn.cursor() as cur:
                    cur.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
                    cur.execute("SET TIME ZONE 'UTC'")
                conn.commit()
            except Exception as exc:
                _close_quietly(conn)
                raise self._connection_error(_driver_message(exc)) from None
            self._conn = conn
        return self._conn

    def stream(self, sql: str, batch_rows: int = DEFAULT_BATCH_ROWS) -> Iterator[pa.RecordBatch]:
        return self._batches(sql, check_batch_rows(batch_rows))

    def _batches(self, sql: str, batch_rows: int) -> Iterator[pa.RecordBatch]:
        conn = self._connect()
        try:
            with conn.cursor() as cur:
                cur.execute("SET TRANSACTION READ ONLY")
                cur.execute("SELECT set_config('TimeZone', 'UTC', true), clock_timestamp()")
                self.query_started_at = utc_moment(cur.fetchone()[1])  # type: ignore[index]
                cur.execute(faithful_query(sql, cur.adbc_execute_schema(sql)))
                if not cur.description:
                    raise self._query_error(
                        "the statement returns no result set; a sync query must be a SELECT"
                    )
                with cur.fetch_record_batch() as reader:
                    convert = _converter(reader.schema)
                    for batch in bounded_batches(reader, batch_rows, reader.schema):
                        yield self._convert(convert, batch)
        except WarehouseError:
            raise
        except Exception as exc:
            raise self._query_error(_driver_message(exc)) from None
        finally:
            self._end_transaction()

    def _convert(self, convert: dict[int, pa.DataType], batch: pa.RecordBatch) -> pa.RecordBatch:
        if convert:
            columns = list(batch.columns)
            fields = list(batch.schema)
            for i, type_ in convert.items():
                try:
                    columns[i] = pc.cast(columns[i].storage, type_)
                except pa.ArrowException as exc:
                    raise self._query_error(
                        f"column {fields[i].name!r} (numeric) cannot be read as {type_}: {exc}"
                    ) from None
                fields[i] = pa.field(fields[i].name, type_, fields[i].nullable, fields[i].metadata)
            batch = pa.RecordBatch.from_arrays(columns, schema=pa.schema(fields, batch.schema.metadata))
        return plain_arrow_types(batch)

    def _end_transaction(self) -> None:
        """Roll back the read-only transaction; a connection that cannot do that is dropped."""
        if self._conn is None:
            return
        try:
            self._conn.rollback()
        except Exception:
            conn, self._conn = self._conn, None
            _close_quietly(conn)

    def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            _close_quietly(conn)


_PG_TYPE = b"POSTGRESQL:type"
_PLAIN_ELEMENT = (
    pa.types.is_integer,
    pa.types.is_floating,
    pa.types.is_boolean,
    pa.types.is_string,
    pa.types.is_large_string,
    pa.types.is_date,
    pa.types.is_timestamp,
    pa.types.is_time,
)


def faithful_query(sql: str, schema: pa.Schema) -> str:
    """The query, wrapped so that every result column ADBC cannot carry faithfully is converted in SQL.

    `schema` is the query's described result (`adbc_execute_schema`). ADBC reads `money` as an integer of
    cents, and inet, cidr, macaddr(8), the geometric types, timetz, bit, ranges, tsvector and other types it
    does not know as their binary wire form; an anonymous record fails the read. So: money → numeric (exact,
    without currency symbol or lc_monetary's separators); composite and record values, and arrays of anything
    but plain scalars → `to_jsonb` (JSON objects and arrays); interval and the types ADBC sees as bytes →
    their canonical text. Without such a column the query runs as it is.
    """
    exprs = []
    for i, f in enumerate(schema):
        exprs.append(_faithful_expr(f, f"q.c{i}"))
    if not any(expr is not None for expr in exprs):
        return sql
    select = ", ".join(
        f"{expr or f'q.c{i}'} AS {_quote_ident(f.name)}"
        for i, (f, expr) in enumerate(zip(schema, exprs, strict=True))
    )
    aliases = ", ".join(f"c{i}" for i in range(len(exprs)))
    body = sql.rstrip().rstrip(";").rstrip()
    # the newline ends a trailing `--` comment
    return f"SELECT {select} FROM (\n{body}\n) AS q({aliases})"


def _faithful_expr(f: pa.Field, column: str) -> str | None:
    pg_type = (f.metadata or {}).get(_PG_TYPE, b"")
    type_ = f.type
    if pg_type == b"money":
        return f"{column}::numeric"
    if pg_type == b"_money":
        return f"to_jsonb({column}::numeric[])"
    if pa.types.is_struct(type_):
        return f"to_jsonb({column})"
    if pa.types.is_list(type_) or pa.types.is_large_list(type_) or pa.types.is_fixed_size_list(type_):
        element = type_.value_type
        if isinstance(element, pa.BaseExtensionType) or not any(is_(element) for is_ in _PLAIN_ELEMENT):
            return f"to_jsonb({column})"
        return None
    if pa.types.is_interval(type_):
        return f"{column}::text"
    if getattr(type_, "extension_name", "") == "arrow.opaque" and not pa.types.is_string(type_.storage_type):
        return f"{column}::text"
    return None


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _converter(schema: pa.Schema) -> dict[int, pa.DataType]:
    """Column index → decimal type for `numeric(p,s)` columns ADBC hands over as opaque text."""
    convert: dict[int, pa.DataType] = {}
    for i, f in enumerate(schema):
        metadata = f.metadata or {}
        if metadata.get(_TYPNAME) != b"numeric" or not isinstance(f.type, pa.BaseExtensionType):
            continue
        decimal = _numeric_decimal(int(metadata.get(_TYPMOD, b"-1")))
        if decimal is not None:
            convert[i] = decimal
    return convert


def _numeric_decimal(typmod: int) -> pa.DataType | None:
    """Postgres numeric typmod → decimal128(p, s), or None (unconstrained or too wide: keep text)."""
    if typmod < 4:
        return None
    precision = ((typmod - 4) >> 16) & 0xFFFF
    scale = (typmod - 4) & 0xFFFF
    if not 1 <= precision <= 38 or scale > precision:
        return None
    return pa.decimal128(precision, scale)


def _url_passwords(url: str) -> list[str]:
    """Every form of the password in a libpq URL or key=value string, to scrub from messages."""
    found: list[str] = []
    try:
        password = conninfo_to_dict(url).get("password")
        if password:
            found.append(str(password))
    except Exception:
        pass
    for pattern in (_URL_PASSWORD, _PARAM_PASSWORD):
        found.extend(m.group(1) for m in pattern.finditer(url) if m.group(1))
    forms = []
    for value in found:
        forms += [value, urllib.parse.unquote(value), urllib.parse.quote(value, safe="")]
    return [f for f in dict.fromkeys(forms) if f]


def _driver_message(exc: BaseException) -> str:
    """ADBC/libpq's message without the driver prefix, the internal COPY wrapper and caret lines."""
    text = str(exc).strip()
    sqlstate = _SQLSTATE.search(text)
    text = _ADBC_PREFIX.sub("", text.split("Query was:")[0].split(". SQLSTATE:")[0], count=1)
    lines = [line.strip() for line in text.splitlines() if line.strip() and not _CONTEXT_LINE.match(line)]
    message = " ".join(line if line[-1] in ".:;!?" else f"{line}." for line in lines[:-1])
    message = f"{message} {lines[-1]}".strip().rstrip(". ") if lines else type(exc).__name__
    message = re.sub(r"^ERROR:\s+", "", message)
    message = re.sub(r"\s+", " ", message)
    return f"{message} (SQLSTATE {sqlstate.group(1)})" if sqlstate else message


def _close_quietly(conn: Any) -> None:
    with contextlib.suppress(Exception):
        conn.close()
