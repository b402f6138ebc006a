"""Row fingerprints computed in each warehouse's own SQL, so a rerun can read (key, fingerprint) instead of rows.

Every value is first written as canonical text, the same in every dialect for the common types:

- text: as it is; integers: their digits; booleans: `true` / `false`;
- exact decimals: their digits without trailing fractional zeros (`1.50` → `1.5`, `2.000` → `2`);
- timestamps with a time zone: UTC, `YYYY-MM-DD HH:MM:SS.ffffff`; timestamps without one: the same form as
  they are; dates: `YYYY-MM-DD`;
- NULL: its own marker, unlike any text (`N`); a value is `V<length>:<text>`, so no two rows run together.

Floating-point numbers, JSON, arrays, structs, bytes, times and intervals take the warehouse's own text form:
deterministic within one warehouse (which is all a rerun compares against), not across warehouses.
The fingerprint is the first 16 hex digits of the MD5 of the row's pieces joined in column order.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import pyarrow as pa

from conversion_sync.warehouses.base import JSON_TEXT, NUMERIC_TEXT, source_type

FINGERPRINT_VERSION = "wfp1"
"""Changes whenever the canonical text changes: stored fingerprints of another version are not compared."""
FINGERPRINT_COLUMN = "__conversion_sync_wfp"
"""The column a fingerprinted read adds to the query's columns."""
KINDS = ("duckdb", "postgres", "snowflake", "bigquery")

_TEXT, _INTEGER, _DECIMAL, _BOOLEAN, _TIMESTAMP_TZ, _TIMESTAMP, _DATE, _OTHER = (
    "text",
    "integer",
    "decimal",
    "boolean",
    "timestamptz",
    "timestamp",
    "date",
    "other",
)


def canonical_class(f: pa.Field) -> str:
    """Which canonical form a result column takes, from its Arrow type (as the adapter streams it)."""
    t = f.type
    marked = source_type(f)
    if marked in (JSON_TEXT, NUMERIC_TEXT):
        return _OTHER
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return _TEXT
    if pa.types.is_integer(t):
        return _INTEGER
    if pa.types.is_decimal(t):
        return _DECIMAL
    if pa.types.is_boolean(t):
        return _BOOLEAN
    if pa.types.is_timestamp(t):
        return _TIMESTAMP_TZ if t.tz else _TIMESTAMP
    if pa.types.is_date(t):
        return _DATE
    return _OTHER


@dataclass(frozen=True)
class Dialect:
    """How one warehouse type spells what a fingerprint needs."""

    kind: str

    def ident(self, name: str) -> str:
        if self.kind == "bigquery":
            return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"
        if self.kind == "snowflake" and name == name.lower() and name.isidentifier():
            # the adapter lower-cases Snowflake's upper-case (unquoted) names: refer to them unquoted
            return name
        return '"' + name.replace('"', '""') + '"'

    def literal(self, text: str) -> str:
        if self.kind == "bigquery":
            return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"
        if self.kind == "snowflake":
            return "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"
        return "'" + text.replace("'", "''") + "'"

    def _text(self, expr: str) -> str:
        return f"CAST({expr} AS STRING)" if self.kind == "bigquery" else f"CAST({expr} AS VARCHAR)"

    def _drop_zeros(self, text: str) -> str:
        """Decimal text without trailing fractional zeros (and without a dot left alone)."""
        return f"CASE WHEN {text} LIKE '%.%' THEN REGEXP_REPLACE({text}, '[.]?0+$', '') ELSE {text} END"

    def canonical(self, expr: str, cls: str) -> str:
        """SQL for a non-NULL value's canonical text."""
        k = self.kind
        if cls == _TEXT:
            return self._text(expr)
        if cls == _BOOLEAN:
            return f"LOWER({self._text(expr)})"
        if cls in (_INTEGER, _DECIMAL):
            # one form for both: a warehouse may hand a decimal column over as integers of its scale
            return self._drop_zeros(self._text(expr))
        if cls == _TIMESTAMP_TZ:
            return {
                "postgres": f"to_char({expr} AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')",
                "duckdb": f"strftime(timezone('UTC', {expr}), '%Y-%m-%d %H:%M:%S.%f')",
                "snowflake": f"TO_CHAR(CONVERT_TIMEZONE('UTC', {expr}), 'YYYY-MM-DD HH24:MI:SS.FF6')",
                "bigquery": f"FORMAT_TIMESTAMP('%Y-%m-%d %H:%M:%E6S', {expr}, 'UTC')",
            }[k]
        if cls == _TIMESTAMP:
            return {
                "postgres": f"to_char({expr}, 'YYYY-MM-DD HH24:MI:SS.US')",
                "duckdb": f"strftime({expr}, '%Y-%m-%d %H:%M:%S.%f')",
                "snowflake": f"TO_CHAR(CONVERT_TIMEZONE('UTC', {expr}), 'YYYY-MM-DD HH24:MI:SS.FF6')",
                "bigquery": f"FORMAT_DATETIME('%Y-%m-%d %H:%M:%E6S', {expr})",
            }[k]
        if cls == _DATE:
            return {
                "postgres": f"to_char({expr}, 'YYYY-MM-DD')",
                "duckdb": f"strftime({expr}, '%Y-%m-%d')",
                "snowflake": f"TO_CHAR(CAST({expr} AS DATE), 'YYYY-MM-DD')",
                "bigquery": f"FORMAT_DATE('%Y-%m-%d', {expr})",
            }[k]
        if k == "postgres":
            return f"{expr}::text"
        if k == "bigquery":
            return f"TO_JSON_STRING({expr})"
        if k == "snowflake":
            return f"TO_JSON({expr})"
        return self._text(expr)

    def piece(self, expr: str, cls: str) -> str:
        """A column's piece of the fingerprinted text: `N` for NULL, else `V<length>:<canonical text>`."""
        text = self.canonical(expr, cls)
        length = self._text(f"LENGTH({text})")
        return f"CASE WHEN {expr} IS NULL THEN 'N' ELSE CONCAT('V', {length}, ':', {text}) END"

    def hashed(self, text: str) -> str:
        if self.kind == "bigquery":
            return f"SUBSTR(TO_HEX(MD5({text})), 1, 16)"
        return f"LOWER(SUBSTR(MD5({text}), 1, 16))"

    def concat(self, pieces: list[str]) -> str:
        if not pieces:
            return "''"
        if len(pieces) == 1:
            return pieces[0]
        return f"CONCAT({', '.join(pieces)})"

    def select_from(self, sql: str, columns: str, where: str = "") -> str:
        body = sql.rstrip().rstrip(";").rstrip()
        # the newline ends a trailing `--` (or `#`, `//`) comment
        return f"SELECT {columns} FROM (\n{body}\n) q{where}"


def dialect(kind: str) -> Dialect:
    if kind not in KINDS:
        raise ValueError(f"no fingerprint dialect for warehouse type {kind!r}")
    return Dialect(kind)


@dataclass(frozen=True)
class RowFingerprint:
    """The fingerprint of a query's rows in one warehouse's SQL, from the query's result schema."""

    kind: str
    schema: pa.Schema
    key: str
    """The result column whose text identifies a row (the key the store matches on)."""

    @property
    def dialect(self) -> Dialect:
        return dialect(self.kind)

    def expression(self) -> str:
        d = self.dialect
        pieces = [d.piece(f"q.{d.ident(f.name)}", canonical_class(f)) for f in self.schema]
        return d.hashed(d.concat(pieces))

    def key_text(self) -> str:
        """The key's text; a text key is the column itself (an index on it still serves the fetch)."""
        d = self.dialect
        cls = canonical_class(self.schema.field(self.key))
        if cls == _TEXT:
            return f"q.{d.ident(self.key)}"
        return d.canonical(f"q.{d.ident(self.key)}", canonical_class(self.schema.field(self.key)))

    def spec(self) -> str:
        """What the fingerprints depend on: stored with them; another spec means they cannot be compared."""
        columns = [[f.name, str(f.type), canonical_class(f)] for f in self.schema]
        text = json.dumps([FINGERPRINT_VERSION, self.kind, self.key, columns], separators=(",", ":"))
        return f"{FINGERPRINT_VERSION}:{hashlib.sha256(text.encode()).hexdigest()}"

    def probe_query(self, sql: str) -> str:
        return probe_query(self.kind, sql)

    def with_fingerprint(self, sql: str) -> str:
        """The query's rows, each with its fingerprint as one more (last) column."""
        return self.dialect.select_from(sql, f"q.*, {self.expression()} AS {FINGERPRINT_COLUMN}")

    def keys_query(self, sql: str) -> str:
        """Only (key text, fingerprint) of every row: what a rerun reads instead of the rows."""
        return self.dialect.select_from(sql, f"{self.key_text()} AS k, {self.expression()} AS h")

    def fetch_query(self, sql: str, keys: list[str]) -> str:
        """The rows (with fingerprints) whose key text is one of `keys` (literals; no table in the warehouse)."""
        d = self.dialect
        if not keys:
            return d.select_from(sql, f"q.*, {self.expression()} AS {FINGERPRINT_COLUMN}", " WHERE 1 = 0")
        listed = ", ".join(d.literal(k) for k in keys)
        return d.select_from(
            sql,
            f"q.*, {self.expression()} AS {FINGERPRINT_COLUMN}",
            f" WHERE {self.key_text()} IN ({listed})",
        )

    def null_key_query(self, sql: str) -> str:
        """The rows (with fingerprints) whose key is NULL: no literal list can name them."""
        d = self.dialect
        return d.select_from(
            sql, f"q.*, {self.expression()} AS {FINGERPRINT_COLUMN}", f" WHERE q.{d.ident(self.key)} IS NULL"
        )


def probe_query(kind: str, sql: str) -> str:
    """The query with no rows: its result's columns and types, without reading its rows."""
    return dialect(kind).select_from(sql, "q.*", " WHERE 1 = 0")
