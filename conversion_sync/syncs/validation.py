"""Set-based validation of a staged run: whole-run column checks, row rejections, typed rows, duplicates."""

from __future__ import annotations

import re
from dataclasses import dataclass

import sqlalchemy as sa

from conversion_sync.store import fingerprints, sync_state
from conversion_sync.store.contacts import email_invalid_sql, email_key_sql, trimmed_email_sql
from conversion_sync.store.staging import BAD_TEXT, EMAIL_KEY, FINGERPRINT, ROW_NUMBER, qualified
from conversion_sync.syncs.destinations import RELATIONSHIP_FIELDS, DestinationFields
from conversion_sync.warehouses.base import JSON_TEXT, NUMERIC_TEXT

_UNIT_SEPARATOR = "chr(31)"
_JSON_PAIRS_PER_CALL = 40  # jsonb_build_object takes at most 100 arguments


class WholeRunError(Exception):
    """The run cannot proceed at all; nothing is written. The message names what and where."""


@dataclass(frozen=True)
class ColumnMap:
    """Source columns matched to destination fields (case-insensitively), with their staged names."""

    fields: dict[str, str]
    """destination field name → staged column (c0, c1, …)."""
    source_names: dict[str, str]
    """destination field name → the column name as the query spelled it."""
    properties: dict[str, str]
    """events only: extra columns → staged column, merged into the event's properties."""

    def staged(self, name: str) -> str | None:
        column = self.fields.get(name)
        return f"s.{column}" if column else None


def map_columns(source_names: list[str], destination: DestinationFields, sync_name: str) -> ColumnMap:
    """Match the query's columns to the destination; raise WholeRunError for missing or unknown columns."""
    lowered: dict[str, str] = {}
    for name in source_names:
        key = name.lower()
        if key in lowered:
            raise WholeRunError(
                f"sync '{sync_name}': the query returns column '{name}' twice ('{lowered[key]}')"
            )
        lowered[key] = name
    missing = [r for r in destination.required if r not in lowered]
    if missing:
        raise WholeRunError(
            f"sync '{sync_name}': required column {', '.join(repr(m) for m in missing)} missing from the query "
            f"result (columns: {', '.join(source_names) or 'none'})"
        )
    known = {k.lower(): k for k in destination.known()}
    fields, spelled, properties = {}, {}, {}
    unknown = []
    for index, name in enumerate(source_names):
        key = name.lower()
        if key in known:
            field = known[key]
            fields[field] = f"c{index}"
            spelled[field] = name
        elif destination.extra_columns_are_properties:
            properties[name] = f"c{index}"
        else:
            unknown.append(name)
    if unknown:
        display = [
            RELATIONSHIP_FIELDS if k == RELATIONSHIP_FIELDS.lower() else k for k in destination.known()
        ]
        raise WholeRunError(
            f"sync '{sync_name}': column {', '.join(repr(u) for u in unknown)} is not a field of {destination.kind}"
            f"; known fields: {', '.join(display)}"
        )
    return ColumnMap(fields=fields, source_names=spelled, properties=properties)


def fingerprinted_columns(columns: ColumnMap, destination: DestinationFields) -> list[int]:
    """Positions of the source columns whose raw text makes a row's fingerprint: every written field
    (relationshipFields included) and every event property, not the key, email or timestamps."""
    special = {f for f in destination.special if f != RELATIONSHIP_FIELDS}
    staged = [col for field, col in columns.fields.items() if field not in special]
    staged += list(columns.properties.values())
    return sorted(int(col.removeprefix("c")) for col in staged)


def email_column(columns: ColumnMap) -> int | None:
    """Position of the source column mapped to the destination's email, if any (its key is staged)."""
    staged = columns.fields.get("email")
    return int(staged.removeprefix("c")) if staged else None


# --- per-type rules: when a value is missing / invalid, and its typed SQL value ---------------------------


def _nv(v: str) -> str:
    return f"NULLIF(btrim({v}), '')"


def _shown(v: str) -> str:
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
    return f"({_nv(v)} !~ '{_DATETIME_RE}' OR NOT conversion_is_timestamptz({_nv(v)}))"


def _json_object_invalid(v: str) -> str:
    return (
        f"(NOT conversion_is_jsonb({_nv(v)}) OR "
        f"CASE WHEN conversion_is_jsonb({_nv(v)}) THEN jsonb_typeof({_nv(v)}::jsonb) <> 'object' END)"
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
    lit = "'" + label.replace("'", "''") + "'"
    n = _nv(v)
    if field_type == "string":
        return Rule(False, None, v, "''")
    if field_type == "integer":
        return Rule(
            False,
            f"{n} !~ '{_INTEGER_RE}'",
            f"split_part({n}, '.', 1)::bigint",
            f"{lit} || ': ' || {_shown(v)} || ' is not an integer'",
        )
    if field_type == "number":
        return Rule(
            False,
            f"{n} !~ '{_NUMBER_RE}'",
            f"{n}::numeric",
            f"{lit} || ': ' || {_shown(v)} || ' is not a number'",
        )
    if field_type == "boolean":
        return Rule(
            False,
            f"lower({n}) NOT IN {_BOOLEAN}",
            f"lower({n}) IN {_TRUE}",
            f"{lit} || ': ' || {_shown(v)} || ' is not a boolean (true/false)'",
        )
    if field_type == "date":
        return Rule(
            False,
            f"({n} !~ '{_DATE_RE}' OR NOT conversion_is_date(left({n}, 10)))",
            f"left({n}, 10)::date",
            f"{lit} || ': ' || {_shown(v)} || ' is not a date (YYYY-MM-DD)'",
        )
    if field_type in ("datetime", "datetime_required"):
        return Rule(
            field_type == "datetime_required",
            _datetime_invalid(v),
            f"{n}::timestamptz",
            f"{lit} || ': ' || {_shown(v)} || ' is not a timestamp (ISO 8601)'",
        )
    if field_type == "json":
        return Rule(
            False,
            f"NOT conversion_is_jsonb({n})",
            f"{n}::jsonb",
            f"{lit} || ': ' || {_shown(v)} || ' is not valid JSON'",
        )
    if field_type == "json_object":
        return Rule(
            False,
            _json_object_invalid(v),
            f"{n}::jsonb",
            f"{lit} || ': must be a JSON object, got ' || {_shown(v)}",
        )
    if field_type in ("email", "optional_email"):
        return Rule(
            field_type == "email",
            _email_invalid(v),
            trimmed_email_sql(v),
            f"{lit} || ': ' || {_shown(v)} || ' is not a valid email address'",
        )
    if field_type in ("key", "key_optional"):
        return Rule(
            field_type == "key",
            f"length({n}) > {MAX_KEY_LENGTH}",
            f"btrim({v})" if field_type == "key" else n,
            f"{lit} || ': ' || {_shown(v)} || '… is longer than {MAX_KEY_LENGTH} characters'",
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
        return f"NOT conversion_is_jsonb({_nv(v)})"
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
    lit = "'" + label.replace("'", "''") + "'"
    kind = property_kind(arrow_type)
    if kind == "integer":
        return f"{v}::numeric", None, "''"
    if kind == "decimal":
        return f"trim_scale({v}::numeric)", None, "''"
    if kind in ("float", "numeric"):
        return (
            f"CASE WHEN lower(ltrim({v}, '+-')) NOT IN {_NON_FINITE} THEN trim_scale({v}::numeric) END",
            f"lower(ltrim({v}, '+-')) IN {_NON_FINITE}",
            f"{lit} || ': ' || {_shown(v)} || ' is not a finite number (JSON has no NaN or Infinity)'",
        )
    if kind == "boolean":
        return f"{v}::boolean", None, "''"
    if kind == "json":
        return (
            f"CASE WHEN conversion_is_jsonb({v}) THEN {v}::jsonb END",
            f"NOT conversion_is_jsonb({v})",
            f"{lit} || ': ' || {_shown(v)} || ' is not valid JSON (JSON has no NaN, Infinity or NUL character)'",
        )
    if kind == "timestamp":
        # 'YYYY-MM-DD HH:MM:SS[.f][+00]' (UTC) → 'YYYY-MM-DDTHH:MM:SS[.f]Z'; years outside 1–9999 (rendered
        # '275760-…' or '… (BC)') and 'infinity' stay as rendered
        iso = f"overlay(CASE WHEN right({v}, 3) = '+00' THEN left({v}, -3) ELSE {v} END placing 'T' from 11 for 1) || 'Z'"
        plain = f"substr({v}, 5, 1) = '-' AND substr({v}, 11, 1) = ' ' AND strpos({v}, '(') = 0"
        return f"CASE WHEN {plain} THEN {iso} ELSE {v} END", None, "''"
    return v, None, "''"


def derived_message_id_sql(email_key: str, event_name: str, event_ts: str, properties: str) -> str:
    """The id of an event without `message_id`: md5 of its typed content, not of the sync that read it.

    The e-mail's key (trimmed, lower-cased), the event name, the timestamp as UTC microseconds since the epoch
    (so '2024-01-01T00:00:00Z' and '2024-01-01 00:00:00+00' agree) and the properties as jsonb text (canonical:
    keys sorted, no insignificant white space). Numbers of typed columns are written without trailing zeros
    (see property_rule), so 2, 2.0 and 2.00 agree; inside a JSON value (a `properties` column, a JSON column)
    numbers keep the digits the JSON was written with, and 1.0 there differs from 1.
    """
    micros = f"(extract(epoch FROM ({event_ts})::timestamptz) * 1000000)::bigint"
    return f"md5(concat_ws({_UNIT_SEPARATOR}, {email_key}, {event_name}, {micros}, ({properties})::text))"


# --- the validation pass -----------------------------------------------------------------------------------


@dataclass
class ValidationResult:
    queried: int
    accepted: int
    rejected: int
    duplicates: int
    merged: int = 0
    """Rows identical to another row with the same key: written once, not rejected."""
    planned_after_run: str | None = None
    """The sync's last successful run when the rows' actions were planned (see plan_is_current)."""


def rows_table(staging_table: str) -> str:
    return f"{staging_table}_rows"


def json_object_sql(pairs: list[tuple[str, str]]) -> str:
    """jsonb_build_object over any number of (key, SQL value) pairs (it takes at most 100 arguments per call)."""
    if not pairs:
        return "'{}'::jsonb"
    chunks = [pairs[i : i + _JSON_PAIRS_PER_CALL] for i in range(0, len(pairs), _JSON_PAIRS_PER_CALL)]
    parts = [
        "jsonb_build_object(" + ", ".join(f"'{k.replace(chr(39), chr(39) * 2)}', {v}" for k, v in chunk) + ")"
        for chunk in chunks
    ]
    return " || ".join(parts)


class Validator:
    """Builds and runs the validation SQL for one staged run."""

    def __init__(
        self,
        *,
        sync_name: str,
        run_id: str,
        staging_table: str,
        destination: DestinationFields,
        columns: ColumnMap,
        source_names: list[str],
        source_types: dict[str, str] | None = None,
        object_type: str | None = None,
    ) -> None:
        self.sync_name = sync_name
        self.run_id = run_id
        self.stage = qualified(staging_table)
        self.rows = qualified(rows_table(staging_table))
        self.destination = destination
        self.columns = columns
        self.source_names = source_names
        self.source_types = source_types or {}
        self.object_type = object_type

    def _rules(self) -> list[tuple[str, str, Rule]]:
        """(field, staged column, rule) in the query's column order."""
        out = []
        for field, column in self.columns.fields.items():
            label = self.columns.source_names[field]
            out.append((field, column, rule_for(self.destination.type_of(field), f"s.{column}", label)))
        return out

    def row_key_sql(self) -> str:
        """The key as users read it in rejections."""
        c = self.columns.staged
        email = trimmed_email_sql(c("email")) if c("email") else None
        if self.destination.kind == "contacts":
            return str(email)
        if self.destination.kind == "custom_objects":
            return f"btrim({c('id')})" + (f" || coalesce(' / ' || {email}, '')" if email else "")
        message_id = c("message_id")
        return f"coalesce({_nv(message_id)}, {email})" if message_id else str(email)

    def all_keys_select(self) -> str:
        """Every staged row's key, accepted or rejected: a rejected row is not a removed one."""
        return f"SELECT row_key FROM {self.rows}"

    def written_fields(self) -> list[str]:
        """Destination fields (not keys or timestamps) the query provides."""
        special = set(self.destination.special)
        return [f for f in self.columns.fields if f not in special and f != RELATIONSHIP_FIELDS]

    def _raw_row_json(self) -> str:
        names = ", ".join("'" + n.replace("'", "''") + "'" for n in self.source_names)
        values = ", ".join(f"s.c{i}" for i in range(len(self.source_names)))
        return f"jsonb_object(ARRAY[{names}]::text[], ARRAY[{values}]::text[])"

    def _checks(self) -> list[tuple[str, str, str, str]]:
        """(column label, condition, code, message SQL) in evaluation order."""
        checked = self._checked_fields()
        checks = [
            (
                "s." + BAD_TEXT,
                f"s.{BAD_TEXT} IS NOT NULL",
                "invalid_field_value",
                f"s.{BAD_TEXT} || ': text contains a NUL character'",
            )
        ]
        for field, column, rule in self._rules():
            label = self.columns.source_names[field]
            lit = "'" + label.replace("'", "''") + "'"
            if rule.required:
                checks.append(
                    (
                        lit,
                        f"{_nv('s.' + column)} IS NULL",
                        "missing_required_field",
                        f"{lit} || ' is missing (null or empty)'",
                    )
                )
            if field in checked:
                checks.append(
                    (
                        lit,
                        f"{_nv('s.' + column)} IS NOT NULL AND {checked[field]}",
                        "invalid_field_value",
                        rule.message,
                    )
                )
        for name, (_, invalid, message) in self._property_rules().items():
            if invalid is not None:
                lit = "'" + name.replace("'", "''") + "'"
                column = self.columns.properties[name]
                checks.append((lit, f"s.{column} IS NOT NULL AND {invalid}", "invalid_field_value", message))
        return checks

    def _property_rules(self) -> dict[str, tuple[str, str | None, str]]:
        """Event properties (the extra columns): name → property_rule by the column's source type."""
        return {
            name: property_rule(self.source_types.get(name, "string"), f"s.{column}", name)
            for name, column in self.columns.properties.items()
        }

    def _checked_fields(self) -> dict[str, str]:
        """Fields whose values are checked (their text may be invalid for the field type), with the SQL
        that is true for an invalid value: the full rule, or for a typed source only its range check."""
        checked = {}
        for field, column, rule in self._rules():
            field_type = self.destination.type_of(field)
            source_type = self.source_types.get(self.columns.source_names[field], "string")
            if not rule.invalid:
                continue
            if not implied_valid(field_type, source_type):
                checked[field] = rule.invalid
            elif (out_of_range := typed_invalid(field_type, f"s.{column}")) is not None:
                checked[field] = out_of_range
        return checked

    def _problem_case(self) -> str:
        """SQL numbering the first failing check of a staged row (NULL when the row is good)."""
        whens = " ".join(f"WHEN {cond} THEN {i}" for i, (_, cond, _, _) in enumerate(self._checks()))
        return f"CASE {whens} END"

    def reject_rows(self, conn: sa.Connection) -> int:
        """Record the first problem of every bad row in sync_rejections; returns how many.

        Rejected rows stay in the rows table, flagged by `problem`, so their keys still count as
        present in a full sync (a rejected row is not a removed one); writers take `problem IS NULL`.
        """
        checks = self._checks()

        def by_problem(values: list[str]) -> str:
            return "CASE r.problem " + " ".join(f"WHEN {i} THEN {v}" for i, v in enumerate(values)) + " END"

        column = by_problem([col for col, _, _, _ in checks])
        code = by_problem([f"'{code}'" for _, _, code, _ in checks])
        message = by_problem([msg for _, _, _, msg in checks])
        rejected = conn.exec_driver_sql(
            f"""INSERT INTO sync_rejections (run_id, sync_name, row_key, column_name, code, message, row)
            SELECT %(run_id)s, %(sync)s, {self.row_key_sql()}, {column}, {code}, {message},
                   {self._raw_row_json()} || jsonb_build_object('_row_number', s.{ROW_NUMBER})
            FROM {self.rows} r JOIN {self.stage} s ON s.{ROW_NUMBER} = r.row_number
            WHERE r.problem IS NOT NULL""",
            {"run_id": self.run_id, "sync": self.sync_name},
        ).rowcount
        return rejected

    def field_columns(self) -> dict[str, str]:
        """Written field → its typed column in the rows table (v0, v1, …)."""
        return {f: f"v{i}" for i, f in enumerate(self.written_fields())}

    def _skips_unchanged(self) -> bool:
        # Only contacts skip rows whose raw text matches the fingerprint their key was last written with:
        # they need no checks and no typed values (a re-run of an unchanged sync costs little more than
        # reading it). A contact row is all there is to its key; an object's fields come from several rows.
        return self.destination.kind == "contacts"

    def _typed_value(self, field: str, guarded: bool = True) -> str:
        """SQL for a field's typed value in the staged row `s` ("NULL" when the query lacks it); `guarded`, the
        value is NULL in a contact row that is unchanged (s.unchanged).

        A cast runs only where its own field's check passed, so it cannot fail; a field whose source type
        guarantees validity has no check and no guard. Guards never refer to `problem`, so Postgres evaluates
        the checks once per row (and may spread the scan over parallel workers).
        """
        rule = next((rule for f, _, rule in self._rules() if f == field), None)
        if rule is None:
            return "NULL"
        column = self.columns.fields[field]
        typed = rule.value
        checked = self._checked_fields()
        if field in checked:
            typed = f"CASE WHEN {_nv('s.' + column)} IS NULL OR NOT {checked[field]} THEN {typed} END"
        return self._unless_unchanged(typed) if guarded else typed

    def _unless_unchanged(self, sql: str) -> str:
        return f"CASE WHEN NOT s.unchanged THEN {sql} END" if self._skips_unchanged() else sql

    def _typed_select(self) -> str:
        c = self.columns.staged
        kind = self.destination.kind
        skips_unchanged = self._skips_unchanged()
        value = self._typed_value
        mapped = self.columns.fields
        typed_fields = ", ".join(f"{value(f)} AS {col}" for f, col in self.field_columns().items())
        # (an unchanged contact row keeps only its key and fingerprint: reject_duplicates reads its updated_at)
        updated_at = value("updated_at") + "::timestamptz" if "updated_at" in mapped else "NULL::timestamptz"
        email = self._unless_unchanged(trimmed_email_sql(c("email"))) if c("email") else "NULL::text"
        key = f"coalesce(s.{EMAIL_KEY}, {email_key_sql(c('email'))})" if c("email") else "NULL::text"
        email_norm = self._unless_unchanged(key)
        rel = value(RELATIONSHIP_FIELDS) + "::jsonb" if RELATIONSHIP_FIELDS in mapped else "NULL::jsonb"
        object_id = f"btrim({c('id')})" if kind == "custom_objects" else "NULL::text"
        if kind == "events":
            props_pairs = [(name, typed) for name, (typed, _, _) in self._property_rules().items()]
            explicit = value("properties") + "::jsonb" if "properties" in mapped else "NULL::jsonb"
            properties = f"coalesce({explicit}, '{{}}'::jsonb) || {json_object_sql(props_pairs)}"
            event_ts = value("timestamp")
            event_name = value("event_name")
            given = value("message_id")
            message_id = f"coalesce({given}, {derived_message_id_sql(key, event_name, event_ts, properties)})"
            row_key = "message_id"
        else:
            properties, event_ts, event_name, message_id = (
                "NULL::jsonb",
                "NULL::timestamptz",
                "NULL::text",
                "NULL::text",
            )
            row_key = (
                None if kind == "contacts" else f"object_id || {_UNIT_SEPARATOR} || coalesce(email_norm, '')"
            )
        fingerprint = f"s.{FINGERPRINT}"
        # action: the row against the fingerprint its key was last written with by this sync (added, changed,
        # unchanged); a write checks that no other run of the sync wrote since (plan_is_current)
        join = ""
        if skips_unchanged:
            source = f"""(SELECT s.*, f.fingerprint AS stored_fingerprint,
                                 coalesce(f.fingerprint = {fingerprint}, false) AS unchanged,
                                 CASE WHEN f.fingerprint = {fingerprint} THEN NULL ELSE {self._problem_case()} END
                                     AS problem
                          FROM {self.stage} s
                          LEFT JOIN sync_fingerprints f ON f.sync_name = %(sync)s AND f.row_key = {key})"""
            stored = "typed.stored_fingerprint"
        else:
            source = f"(SELECT *, false AS unchanged, {self._problem_case()} AS problem FROM {self.stage} s)"
            stored = "f.fingerprint"
            if kind == "custom_objects":
                join = f"LEFT JOIN sync_fingerprints f ON f.sync_name = %(sync)s AND f.row_key = {row_key}"
        action = (
            "NULL::text"
            if kind == "events"
            else f"""CASE WHEN {stored} IS NULL THEN 'added' WHEN {stored} = typed.fingerprint THEN 'unchanged'
                          ELSE 'changed' END"""
        )
        # a contact's key is its e-mail's, kept in unchanged rows too (where email_norm is NULL)
        inner_key, outer_key = (
            (f", {key} AS row_key", "") if row_key is None else ("", f", {row_key} AS row_key")
        )
        return f"""
            SELECT typed.*{outer_key}, NULL::bigint AS contact_id, {action} AS action, false AS skip,
                   false AS declined
            FROM (
                SELECT s.{ROW_NUMBER} AS row_number, s.problem{inner_key}, {email} AS email,
                       {email_norm} AS email_norm, {updated_at} AS updated_at{", " if typed_fields else ""}{typed_fields},
                       {rel} AS rel_fields, {object_id} AS object_id,
                       {event_name} AS event_name, ({event_ts})::timestamptz AS event_ts,
                       {message_id} AS message_id, {properties} AS properties, {fingerprint} AS fingerprint
                       {", s.stored_fingerprint" if skips_unchanged else ""}
                FROM {source} s
            ) typed {join}
        """

    def _staged_keys_select(self) -> str:
        """SELECT of each staged row's key as the rows table will hold it (contacts and custom objects)."""
        c = self.columns.staged
        key = f"coalesce(s.{EMAIL_KEY}, {email_key_sql(c('email'))})" if c("email") else "NULL::text"
        if self.destination.kind == "custom_objects":
            key = f"btrim({c('id')}) || {_UNIT_SEPARATOR} || coalesce({key}, '')"
        return f"SELECT {key} FROM {self.stage} s"

    def build_rows(self, conn: sa.Connection) -> int:
        """One pass over the staged rows: each row's first problem (if any) and its typed values, planned
        against the fingerprints whose store records are still as the sync left them."""
        fingerprints.forget_moved_records(
            conn,
            self.sync_name,
            self.destination.kind,
            self._staged_keys_select(),
            {"object_type": self.object_type},
        )
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {self.rows}")
        return conn.exec_driver_sql(
            f"CREATE UNLOGGED TABLE {self.rows} AS {self._typed_select()}",
            {"run_id": self.run_id, "sync": self.sync_name},
        ).rowcount

    def reject_duplicates(self, conn: sa.Connection, report: bool = True) -> tuple[int, int]:
        """Rows sharing a key: the later updated_at wins; different values are reported, identical ones merged.

        Returns (reported duplicates, identical rows merged). `report=False` only removes them (a rebuild).
        """
        # Most runs have none: counting distinct keys (a sort in byte order) answers that faster than
        # grouping them in a hash table of a million keys.
        surplus = conn.exec_driver_sql(
            f'SELECT count(*) - count(DISTINCT row_key COLLATE "C") FROM {self.rows} WHERE problem IS NULL'
        ).scalar_one()
        if not surplus:
            return 0, 0
        conn.exec_driver_sql(
            f"""CREATE TEMP TABLE _duplicated_keys ON COMMIT DROP AS
            SELECT row_key FROM {self.rows} WHERE problem IS NULL GROUP BY row_key HAVING count(*) > 1"""
        )
        updated_at, stage = "r.updated_at", ""
        if self._skips_unchanged() and "updated_at" in self.columns.fields:
            # an unchanged contact row has no updated_at in the rows table: read from its staged text
            updated_at = (
                f"coalesce(r.updated_at, ({self._typed_value('updated_at', guarded=False)})::timestamptz)"
            )
            stage = f"JOIN {self.stage} s ON s.{ROW_NUMBER} = r.row_number"
        conn.exec_driver_sql(
            f"""CREATE TEMP TABLE _ranked ON COMMIT DROP AS
            SELECT r.row_number AS rn, r.row_key, r.fingerprint,
                   first_value(r.fingerprint) OVER w AS winner_fp, first_value(r.row_number) OVER w AS winner,
                   row_number() OVER w AS rank
            FROM {self.rows} r {stage}
            WHERE r.problem IS NULL AND r.row_key IN (SELECT row_key FROM _duplicated_keys)
            WINDOW w AS (PARTITION BY r.row_key ORDER BY {updated_at} DESC NULLS LAST, r.row_number DESC)"""
        )
        conn.exec_driver_sql("DELETE FROM _ranked WHERE rank = 1")
        reported = 0
        if report:
            reported = self._report_duplicates(conn)
        merged = conn.exec_driver_sql(
            f"DELETE FROM {self.rows} t USING _ranked k WHERE t.row_number = k.rn"
        ).rowcount
        conn.exec_driver_sql("DROP TABLE _ranked; DROP TABLE _duplicated_keys")
        return reported, merged - reported

    def _report_duplicates(self, conn: sa.Connection) -> int:
        return conn.exec_driver_sql(
            f"""INSERT INTO sync_rejections (run_id, sync_name, row_key, column_name, code, message, row)
            SELECT %(run_id)s, %(sync)s, d.row_key_display, NULL, 'duplicate_key_in_batch',
                   'duplicate key ' || quote_literal(d.row_key_display) || ' in this run: row ' || k.winner
                   || ' has the same key and a later updated_at, so it wins',
                   r.row
            FROM _ranked k
            JOIN LATERAL (SELECT replace(k.row_key, chr(31), ' / ') AS row_key_display) d ON true
            JOIN LATERAL (
                SELECT {self._raw_row_json()} || jsonb_build_object('_row_number', s.{ROW_NUMBER}) AS row
                FROM {self.stage} s WHERE s.{ROW_NUMBER} = k.rn
            ) r ON true
            WHERE k.fingerprint <> k.winner_fp""",
            {"run_id": self.run_id, "sync": self.sync_name},
        ).rowcount

    def _analyze(self, conn: sa.Connection) -> None:
        """Statistics the writers' plans need (not the typed field columns: nothing filters or joins on them)."""
        conn.exec_driver_sql(
            f"ANALYZE {self.rows} (problem, action, skip, row_key, email_norm, contact_id, object_id, message_id)"
        )

    def rebuild(self, conn: sa.Connection) -> None:
        """Build the rows table again against the fingerprints stored now (for a write whose plan went stale).
        Rejections were recorded by the validation and come out the same, so they are not recorded again."""
        self.build_rows(conn)
        self.reject_duplicates(conn, report=False)
        self._analyze(conn)

    def run(self, conn: sa.Connection, queried: int) -> ValidationResult:
        conn.exec_driver_sql("SET LOCAL TimeZone = 'UTC'")
        # read before the rows are planned against the fingerprints: a write committed in between makes the
        # plan look stale, never current
        planned_after = sync_state.last_successful_run(conn, self.sync_name)
        built = self.build_rows(conn)
        rejected = self.reject_rows(conn)
        duplicates, merged = self.reject_duplicates(conn)
        self._analyze(conn)
        accepted = built - rejected - duplicates - merged
        return ValidationResult(
            queried=queried,
            accepted=accepted,
            rejected=rejected + duplicates,
            duplicates=duplicates,
            merged=merged,
            planned_after_run=planned_after,
        )
