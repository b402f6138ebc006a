"""Per-type value rules for staged text: when a value is missing or invalid, its typed SQL value, and the
JSON value of an event property by its column's source type."""

from __future__ import annotations

import re
from dataclasses import dataclass

from conversion_sync.store.contacts import email_invalid_sql, trimmed_email_sql
from conversion_sync.store.sql_text import quote_literal
from conversion_sync.warehouses.base import JSON_TEXT, NUMERIC_TEXT

UNIT_SEPARATOR = "chr(31)"
"""Joins the parts of a composite key (an object's id and its e-mail's key)."""


def blank_to_null(v: str) -> str:
    """SQL for a staged text trimmed, NULL when blank."""
    return f"NULLIF(btrim({v}), '')"


def shown(v: str) -> str:
    """SQL for a value as an error message quotes it (its first 80 characters)."""
    return f"quote_literal(left({v}, 80))"


_INTEGER_RE = r"^[+-]?[0-9]{1,18}(\.0*)?$"
_NUMBER_RE = r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]{1,3})?$"
_DATE_RE = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}([T ]00:00(:00(\.0+)?)?)?(Z|[+-]00(:?00)?)?$"
_DATETIME_RE = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]+)?)?)?\s*(Z|[+-][0-9]{2}(:?[0-9]{2})?|UTC)?$"
MAX_KEY_LENGTH = 255
"""Object ids and message ids longer than this are rejected: the store indexes them (a B-tree entry holds ~2.7 KB)."""
_TRUE = "('true', 't', 'yes', 'y', '1')"
_BOOLEAN = "('true', 't', 'yes', 'y', '1', 'false', 'f', 'no', 'n', '0')"


def _email_invalid(v: str) -> str:
    return email_invalid_sql(v)


def _datetime_invalid(v: str) -> str:
    return f"({blank_to_null(v)} !~ '{_DATETIME_RE}' OR NOT conversion_is_timestamptz({blank_to_null(v)}))"


def _json_object_invalid(v: str) -> str:
    return (
        f"(NOT conversion_is_jsonb({blank_to_null(v)}) OR "
        f"CASE WHEN conversion_is_jsonb({blank_to_null(v)}) THEN jsonb_typeof({blank_to_null(v)}::jsonb) <> 'object' END)"
    )


@dataclass(frozen=True)
class Rule:
    required: bool
    invalid: str | None
    """SQL that is true when a present value is invalid."""
    value: str
    """SQL for the typed value."""
    message: str
    """SQL text expression for the invalid_field_value message."""


def rule_for(field_type: str, v: str, label: str) -> Rule:
    """The validation rule for one staged column `v` of the given field type."""
    lit = quote_literal(label)
    n = blank_to_null(v)
    if field_type == "string":
        return Rule(False, None, v, "''")
    if field_type == "integer":
        return Rule(
            False,
            f"{n} !~ '{_INTEGER_RE}'",
            f"split_part({n}, '.', 1)::bigint",
            f"{lit} || ': ' || {shown(v)} || ' is not an integer'",
        )
    if field_type == "number":
        return Rule(
            False,
            f"{n} !~ '{_NUMBER_RE}'",
            f"{n}::numeric",
            f"{lit} || ': ' || {shown(v)} || ' is not a number'",
        )
    if field_type == "boolean":
        return Rule(
            False,
            f"lower({n}) NOT IN {_BOOLEAN}",
            f"lower({n}) IN {_TRUE}",
            f"{lit} || ': ' || {shown(v)} || ' is not a boolean (true/false)'",
        )
    if field_type == "date":
        return Rule(
            False,
            f"({n} !~ '{_DATE_RE}' OR NOT conversion_is_date(left({n}, 10)))",
            f"left({n}, 10)::date",
            f"{lit} || ': ' || {shown(v)} || ' is not a date (YYYY-MM-DD)'",
        )
    if field_type in ("datetime", "datetime_required"):
        return Rule(
            field_type == "datetime_required",
            _datetime_invalid(v),
            f"{n}::timestamptz",
            f"{lit} || ': ' || {shown(v)} || ' is not a timestamp (ISO 8601)'",
        )
    if field_type == "json":
        return Rule(
            False,
            f"NOT conversion_is_jsonb({n})",
            f"{n}::jsonb",
            f"{lit} || ': ' || {shown(v)} || ' is not valid JSON'",
        )
    if field_type == "json_object":
        return Rule(
            False,
            _json_object_invalid(v),
            f"{n}::jsonb",
            f"{lit} || ': must be a JSON object, got ' || {shown(v)}",
        )
    if field_type in ("email", "optional_email"):
        return Rule(
            field_type == "email",
            _email_invalid(v),
            trimmed_email_sql(v),
            f"{lit} || ': ' || {shown(v)} || ' is not a valid email address'",
        )
    if field_type in ("key", "key_optional"):
        return Rule(
            field_type == "key",
            f"length({n}) > {MAX_KEY_LENGTH}",
            f"btrim({v})" if field_type == "key" else n,
            f"{lit} || ': ' || {shown(v)} || '… is longer than {MAX_KEY_LENGTH} characters'",
        )
    if field_type == "string_required":
        return Rule(True, None, f"btrim({v})", "''")
    raise ValueError(f"unknown field type {field_type}")


def implied_valid(field_type: str, arrow_type: str) -> bool:
    """Whether every value of a source column of this Arrow type is valid for the field type.

    Typed warehouse columns need no text checks: a TIMESTAMP column cannot hold 'tomorrow'.
    """
    integer = re.fullmatch(r"u?int(8|16|32)|int64", arrow_type) is not None
    if field_type == "integer":
        return integer
    if field_type == "number":
        return integer or arrow_type.startswith("decimal")
    if field_type == "boolean":
        return arrow_type == "bool"
    if field_type == "date":
        return arrow_type.startswith("date")
    if field_type in ("datetime", "datetime_required"):
        return arrow_type.startswith(("timestamp", "date"))
    if field_type in ("json", "json_object"):
        return field_type == "json" and arrow_type.startswith(("struct", "list", "large_list", "map"))
    return False


def typed_invalid(field_type: str, v: str) -> str | None:
    """For a typed source column that implies validity: SQL true when a value is still out of range."""
    if field_type in ("date", "datetime", "datetime_required"):
        # Typed dates are rendered 'YYYY-MM-DD…' in years 0001–9999 AD; DuckDB renders others '275760-09-13'
        # or '0044-03-15 (BC)', which the store's date/timestamptz casts cannot take. (No regex: a million
        # regex matches cost more than the rest of the row's checks.)
        return f"NOT (substr({v}, 5, 1) = '-' AND strpos({v}, '(') = 0)"
    if field_type == "json":
        # lists and structs can hold what JSON cannot: NaN, Infinity, text with a NUL (\u0000)
        return f"NOT conversion_is_jsonb({blank_to_null(v)})"
    return None


# --- event properties: each extra column keeps its source type's JSON type --------------------------------

_NON_FINITE = "('nan', 'inf', 'infinity')"


def property_kind(arrow_type: str) -> str:
    """The JSON kind of an event property from its column's source type (`source_type` of the warehouse's
    Arrow field): integer, decimal, float, numeric (exact decimal text), boolean, json, timestamp or string."""
    if re.fullmatch(r"u?int(8|16|32|64)", arrow_type):
        return "integer"
    if arrow_type.startswith("decimal"):
        return "decimal"
    if arrow_type in ("halffloat", "float", "double"):
        return "float"
    if arrow_type == NUMERIC_TEXT:
        return "numeric"
    if arrow_type == "bool":
        return "boolean"
    if arrow_type == JSON_TEXT or arrow_type.startswith(_NESTED):
        return "json"
    if arrow_type.startswith("timestamp"):
        return "timestamp"
    return "string"


_NESTED = ("struct", "list", "large_list", "fixed_size_list", "map", "sparse_union", "dense_union")


def property_rule(arrow_type: str, v: str, label: str) -> tuple[str, str | None, str]:
    """(SQL value for jsonb_build_object, SQL true when a present value cannot be stored faithfully or None,
    message SQL) for the staged text `v` of a property whose column has the source type `arrow_type`.

    Staged text is what the staging step rendered: integers and decimals exactly, floats in their shortest
    round-trip form ('0.1', '1e+300', 'nan', 'inf'), booleans 'true'/'false', nested values and JSON as JSON
    text, timestamps in UTC. Numbers become JSON numbers, written without trailing fractional zeros (2.0 from a
    float column and 2.00 from a DECIMAL(10, 2) both become 2; a column type's scale is no part of the value);
    NaN and Infinity, which JSON cannot hold, reject the row.
    """
    lit = quote_literal(label)
    json_kind = property_kind(arrow_type)
    if json_kind == "integer":
        return f"{v}::numeric", None, "''"
    if json_kind == "decimal":
        return f"trim_scale({v}::numeric)", None, "''"
    if json_kind in ("float", "numeric"):
        return (
            f"CASE WHEN lower(ltrim({v}, '+-')) NOT IN {_NON_FINITE} THEN trim_scale({v}::numeric) END",
            f"lower(ltrim({v}, '+-')) IN {_NON_FINITE}",
            f"{lit} || ': ' || {shown(v)} || ' is not a finite number (JSON has no NaN or Infinity)'",
        )
    if json_kind == "boolean":
        return f"{v}::boolean", None, "''"
    if json_kind == "json":
        return (
            f"CASE WHEN conversion_is_jsonb({v}) THEN {v}::jsonb END",
            f"NOT conversion_is_jsonb({v})",
            f"{lit} || ': ' || {shown(v)} || ' is not valid JSON (JSON has no NaN, Infinity or NUL character)'",
        )
    if json_kind == "timestamp":
        # 'YYYY-MM-DD HH:MM:SS[.f][+00]' (UTC) → 'YYYY-MM-DDTHH:MM:SS[.f]Z'; years outside 1–9999 (rendered
        # '275760-…' or '… (BC)') and 'infinity' stay as rendered
        iso = f"overlay(CASE WHEN right({v}, 3) = '+00' THEN left({v}, -3) ELSE {v} END placing 'T' from 11 for 1) || 'Z'"
        plain = f"substr({v}, 5, 1) = '-' AND substr({v}, 11, 1) = ' ' AND strpos({v}, '(') = 0"
        return f"CASE WHEN {plain} THEN {iso} ELSE {v} END", None, "''"
    return v, None, "''"
