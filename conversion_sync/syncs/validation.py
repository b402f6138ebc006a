"""Set-based validation of a staged run: whole-run column checks, row rejections, typed rows, duplicates.

What differs by destination (its key, its own typed columns, how its rows meet fingerprints) comes from the
destination's module (syncs/destinations/); this module holds none of it.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from conversion_sync.store import fingerprints, sync_state
from conversion_sync.store.contacts import email_key_sql, trimmed_email_sql
from conversion_sync.store.sql_text import column_ref, json_object_sql, quote_ident, quote_literal
from conversion_sync.store.staging import (
    BAD_TEXT,
    EMAIL_KEY,
    FINGERPRINT,
    ROW_NUMBER,
    SCRATCH_TABLE,
    qualified,
)
from conversion_sync.syncs.destinations.base import (
    RELATIONSHIP_FIELDS,
    Destination,
    DestinationFields,
    TypedColumns,
)
from conversion_sync.syncs.field_rules import (
    Rule,
    blank_to_null,
    implied_valid,
    property_rule,
    rule_for,
    typed_invalid,
)


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
        return column_ref("s", column) if column else None


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


# --- statements ----------------------------------------------------------------------------------------------


def rows_table(staging_table: str) -> str:
    """The typed rows table of a staging table (a name, not quoted)."""
    return f"{staging_table}_rows"


SET_UTC = "SET LOCAL TimeZone = 'UTC'"
_STAGED_ROW_NUMBER = column_ref("s", ROW_NUMBER)
_STAGED_FINGERPRINT = column_ref("s", FINGERPRINT)
_STAGED_BAD_TEXT = column_ref("s", BAD_TEXT)
_ACTION_NONE = "NULL::text"


def action_sql(stored: str) -> str:
    """A row's action against the fingerprint `stored` its key was last written with by this sync."""
    return f"""CASE WHEN {stored} IS NULL THEN 'added' WHEN {stored} = typed.fingerprint THEN 'unchanged'
                          ELSE 'changed' END"""


def skipping_source_sql(stage: str, key: str, problem_case: str) -> str:
    """The staged rows with their key's stored fingerprint: a row that matches it is `unchanged` and unchecked."""
    fingerprint = _STAGED_FINGERPRINT
    return f"""(SELECT s.*, f.fingerprint AS stored_fingerprint,
                                 coalesce(f.fingerprint = {fingerprint}, false) AS unchanged,
                                 CASE WHEN f.fingerprint = {fingerprint} THEN NULL ELSE {problem_case} END
                                     AS problem
                          FROM {stage} s
                          LEFT JOIN sync_fingerprints f ON f.sync_name = %(sync)s AND f.row_key = {key})"""


def checked_source_sql(stage: str, problem_case: str) -> str:
    """The staged rows, each checked."""
    return f"(SELECT *, false AS unchanged, {problem_case} AS problem FROM {stage} s)"


def fingerprint_join_sql(row_key: str) -> str:
    return f"LEFT JOIN sync_fingerprints f ON f.sync_name = %(sync)s AND f.row_key = {row_key}"


def typed_rows_sql(outer_key: str, action: str, inner_columns: list[str], source: str, join: str) -> str:
    """The rows table's SELECT: the staged rows' typed columns, then their key, action and write flags."""
    columns = ", ".join(inner_columns)
    return f"""
            SELECT typed.*{outer_key}, NULL::bigint AS contact_id, {action} AS action, false AS skip,
                   false AS declined
            FROM (
                SELECT {columns}
                FROM {source} s
            ) typed {join}
        """


def create_rows_sql(rows: str, select: str) -> str:
    return f"CREATE UNLOGGED TABLE {rows} {SCRATCH_TABLE} AS {select}"


def drop_rows_sql(rows: str) -> str:
    return f"DROP TABLE IF EXISTS {rows}"


def analyze_rows_sql(rows: str) -> str:
    """Statistics the writers' plans need (not the typed field columns: nothing filters or joins on them)."""
    return f"ANALYZE {rows} (problem, action, skip, row_key, email_norm, contact_id, object_id, message_id)"


def case_by_problem_sql(values: list[str]) -> str:
    return "CASE r.problem " + " ".join(f"WHEN {i} THEN {v}" for i, v in enumerate(values)) + " END"


def reject_rows_sql(rows: str, stage: str, key: str, column: str, code: str, message: str, raw: str) -> str:
    return f"""INSERT INTO sync_rejections (run_id, sync_name, row_key, column_name, code, message, row)
            SELECT %(run_id)s, %(sync)s, {key}, {column}, {code}, {message},
                   {raw} || jsonb_build_object('_row_number', {_STAGED_ROW_NUMBER})
            FROM {rows} r JOIN {stage} s ON {_STAGED_ROW_NUMBER} = r.row_number
            WHERE r.problem IS NOT NULL"""


def raw_row_json_sql(source_names: list[str]) -> str:
    """The staged row `s` as users sent it: source column name → its text."""
    names = ", ".join(quote_literal(n) for n in source_names)
    values = ", ".join(column_ref("s", f"c{i}") for i in range(len(source_names)))
    return f"jsonb_object(ARRAY[{names}]::text[], ARRAY[{values}]::text[])"


def surplus_keys_sql(rows: str) -> str:
    """How many accepted rows share a key with another. Counting distinct keys (a sort in byte order) answers
    that faster than grouping them in a hash table of a million keys."""
    return f'SELECT count(*) - count(DISTINCT row_key COLLATE "C") FROM {rows} WHERE problem IS NULL'


def duplicated_keys_sql(rows: str) -> str:
    return f"""CREATE TEMP TABLE _duplicated_keys ON COMMIT DROP AS
            SELECT row_key FROM {rows} WHERE problem IS NULL GROUP BY row_key HAVING count(*) > 1"""


def ranked_duplicates_sql(rows: str, stage_join: str, updated_at: str) -> str:
    """_ranked: the rows of duplicated keys, each with its key's winner (the later updated_at, then row)."""
    return f"""CREATE TEMP TABLE _ranked ON COMMIT DROP AS
            SELECT r.row_number AS rn, r.row_key, r.fingerprint,
                   first_value(r.fingerprint) OVER w AS winner_fp, first_value(r.row_number) OVER w AS winner,
                   row_number() OVER w AS rank
            FROM {rows} r {stage_join}
            WHERE r.problem IS NULL AND r.row_key IN (SELECT row_key FROM _duplicated_keys)
            WINDOW w AS (PARTITION BY r.row_key ORDER BY {updated_at} DESC NULLS LAST, r.row_number DESC)"""


KEEP_ONLY_LOSERS = "DELETE FROM _ranked WHERE rank = 1"
DROP_RANKED = "DROP TABLE _ranked; DROP TABLE _duplicated_keys"


def delete_losers_sql(rows: str) -> str:
    return f"DELETE FROM {rows} t USING _ranked k WHERE t.row_number = k.rn"


def report_duplicates_sql(stage: str, raw: str) -> str:
    """A rejection per losing row whose values differ from its key's winner."""
    return f"""INSERT INTO sync_rejections (run_id, sync_name, row_key, column_name, code, message, row)
            SELECT %(run_id)s, %(sync)s, d.row_key_display, NULL, 'duplicate_key_in_batch',
                   'duplicate key ' || quote_literal(d.row_key_display) || ' in this run: row ' || k.winner
                   || ' has the same key and a later updated_at, so it wins',
                   r.row
            FROM _ranked k
            JOIN LATERAL (SELECT replace(k.row_key, chr(31), ' / ') AS row_key_display) d ON true
            JOIN LATERAL (
                SELECT {raw} || jsonb_build_object('_row_number', {_STAGED_ROW_NUMBER}) AS row
                FROM {stage} s WHERE {_STAGED_ROW_NUMBER} = k.rn
            ) r ON true
            WHERE k.fingerprint <> k.winner_fp"""


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


@dataclass(frozen=True)
class Check:
    """One row check: the column it names, SQL true when it fails, its code and its message SQL."""

    column: str
    condition: str
    code: str
    message: str


class Validator:
    """Builds and runs the validation SQL for one staged run (a StagedRow to its destination's module)."""

    def __init__(
        self,
        *,
        sync_name: str,
        run_id: str,
        staging_table: str,
        destination: Destination,
        fields: DestinationFields,
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
        self.fields = fields
        self.columns = columns
        self.source_names = source_names
        self.source_types = source_types or {}
        self.object_type = object_type

    # --- the staged row, as destinations see it (StagedRow) ---

    def staged(self, field: str) -> str | None:
        return self.columns.staged(field)

    def value(self, field: str) -> str:
        return self._typed_value(field)

    def email_key(self) -> str:
        email = self.staged("email")
        if not email:
            return "NULL::text"
        return f"coalesce({column_ref('s', EMAIL_KEY)}, {email_key_sql(email)})"

    def property_pairs(self) -> list[tuple[str, str]]:
        return [(name, typed) for name, (typed, _, _) in self._property_rules().items()]

    # --- rules and checks ---

    def _rules(self) -> list[tuple[str, str, Rule]]:
        """(field, staged column SQL, rule) in the query's column order."""
        out = []
        for field, column in self.columns.fields.items():
            label = self.columns.source_names[field]
            staged = column_ref("s", column)
            out.append((field, staged, rule_for(self.fields.type_of(field), staged, label)))
        return out

    def row_key_sql(self) -> str:
        """The key as users read it in rejections."""
        return self.destination.rejection_key_sql(self)

    def all_keys_select(self) -> str:
        """Every staged row's key, accepted or rejected: a rejected row is not a removed one."""
        return f"SELECT row_key FROM {self.rows}"

    def written_fields(self) -> list[str]:
        """Destination fields (not keys or timestamps) the query provides."""
        special = set(self.fields.special)
        return [f for f in self.columns.fields if f not in special and f != RELATIONSHIP_FIELDS]

    def _raw_row_json(self) -> str:
        return raw_row_json_sql(self.source_names)

    def _checks(self) -> list[Check]:
        """The row checks in evaluation order: text, then each field's, then each property's."""
        checks = [
            Check(
                _STAGED_BAD_TEXT,
                f"{_STAGED_BAD_TEXT} IS NOT NULL",
                "invalid_field_value",
                f"{_STAGED_BAD_TEXT} || ': text contains a NUL character'",
            )
        ]
        checked = self._checked_fields()
        for field, staged, rule in self._rules():
            lit = quote_literal(self.columns.source_names[field])
            present = blank_to_null(staged)
            if rule.required:
                checks.append(
                    Check(
                        lit,
                        f"{present} IS NULL",
                        "missing_required_field",
                        f"{lit} || ' is missing (null or empty)'",
                    )
                )
            if field in checked:
                checks.append(
                    Check(
                        lit,
                        f"{present} IS NOT NULL AND {checked[field]}",
                        "invalid_field_value",
                        rule.message,
                    )
                )
        for name, (_, invalid, message) in self._property_rules().items():
            if invalid is not None:
                staged = column_ref("s", self.columns.properties[name])
                condition = f"{staged} IS NOT NULL AND {invalid}"
                checks.append(Check(quote_literal(name), condition, "invalid_field_value", message))
        return checks

    def _property_rules(self) -> dict[str, tuple[str, str | None, str]]:
        """Extra columns that are properties (events): name → property_rule by the column's source type."""
        return {
            name: property_rule(self.source_types.get(name, "string"), column_ref("s", column), name)
            for name, column in self.columns.properties.items()
        }

    def _checked_fields(self) -> dict[str, str]:
        """Fields whose values are checked (their text may be invalid for the field type), with the SQL
        that is true for an invalid value: the full rule, or for a typed source only its range check."""
        checked = {}
        for field, staged, rule in self._rules():
            field_type = self.fields.type_of(field)
            source_type = self.source_types.get(self.columns.source_names[field], "string")
            if not rule.invalid:
                continue
            if not implied_valid(field_type, source_type):
                checked[field] = rule.invalid
            elif (out_of_range := typed_invalid(field_type, staged)) is not None:
                checked[field] = out_of_range
        return checked

    def _problem_case(self) -> str:
        """SQL numbering the first failing check of a staged row (NULL when the row is good)."""
        whens = " ".join(f"WHEN {check.condition} THEN {i}" for i, check in enumerate(self._checks()))
        return f"CASE {whens} END"

    def reject_rows(self, conn: sa.Connection) -> int:
        """Record the first problem of every bad row in sync_rejections; returns how many.

        Rejected rows stay in the rows table, flagged by `problem`, so their keys still count as
        present in a full sync (a rejected row is not a removed one); writers take `problem IS NULL`.
        """
        checks = self._checks()
        statement = reject_rows_sql(
            self.rows,
            self.stage,
            self.row_key_sql(),
            case_by_problem_sql([c.column for c in checks]),
            case_by_problem_sql([quote_literal(c.code) for c in checks]),
            case_by_problem_sql([c.message for c in checks]),
            self._raw_row_json(),
        )
        return conn.exec_driver_sql(statement, {"run_id": self.run_id, "sync": self.sync_name}).rowcount

    # --- typed values ---

    def field_columns(self) -> dict[str, str]:
        """Written field → its typed column in the rows table (v0, v1, …; not quoted)."""
        return {f: f"v{i}" for i, f in enumerate(self.written_fields())}

    def _typed_value(self, field: str, guarded: bool = True) -> str:
        """SQL for a field's typed value in the staged row `s` ("NULL" when the query lacks it); `guarded`, the
        value is NULL in a row that is unchanged (s.unchanged) of a destination that skips those.

        A cast runs only where its own field's check passed, so it cannot fail; a field whose source type
        guarantees validity has no check and no guard. Guards never refer to `problem`, so Postgres evaluates
        the checks once per row (and may spread the scan over parallel workers).
        """
        rule = next((rule for f, _, rule in self._rules() if f == field), None)
        if rule is None:
            return "NULL"
        typed = rule.value
        checked = self._checked_fields()
        if field in checked:
            staged = column_ref("s", self.columns.fields[field])
            typed = f"CASE WHEN {blank_to_null(staged)} IS NULL OR NOT {checked[field]} THEN {typed} END"
        return self._unless_unchanged(typed) if guarded else typed

    def _unless_unchanged(self, sql: str) -> str:
        return f"CASE WHEN NOT s.unchanged THEN {sql} END" if self.destination.skips_unchanged else sql

    def _typed_columns(self, own: TypedColumns) -> list[str]:
        """The inner SELECT's columns: what every destination's rows hold, then the destination's own."""
        value, mapped, email = self._typed_value, self.columns.fields, self.staged("email")
        typed_fields = [f"{value(f)} AS {quote_ident(col)}" for f, col in self.field_columns().items()]
        # (an unchanged contact row keeps only its key and fingerprint: reject_duplicates reads its updated_at)
        updated_at = value("updated_at") + "::timestamptz" if "updated_at" in mapped else "NULL::timestamptz"
        rel = value(RELATIONSHIP_FIELDS) + "::jsonb" if RELATIONSHIP_FIELDS in mapped else "NULL::jsonb"
        inner_key = [f"s.problem, {own.row_key} AS row_key" if own.row_key_from_stage else "s.problem"]
        return [
            f"{_STAGED_ROW_NUMBER} AS row_number",
            *inner_key,
            f"{self._unless_unchanged(trimmed_email_sql(email)) if email else 'NULL::text'} AS email",
            f"{self._unless_unchanged(self.email_key())} AS email_norm",
            f"{updated_at} AS updated_at",
            *typed_fields,
            f"{rel} AS rel_fields",
            f"{own.object_id} AS object_id",
            f"{own.event_name} AS event_name",
            f"({own.event_ts})::timestamptz AS event_ts",
            f"{own.message_id} AS message_id",
            f"{own.properties} AS properties",
            f"{_STAGED_FINGERPRINT} AS fingerprint",
            *(["s.stored_fingerprint"] if self.destination.skips_unchanged else []),
        ]

    def _typed_select(self) -> str:
        """The rows table: each staged row's first problem, typed values, key and action (added, changed or
        unchanged against the fingerprint its key was last written with by this sync; a write checks that no
        other run of the sync wrote since, plan_is_current)."""
        own = self.destination.typed_columns(self)
        keys = self.destination.fingerprint_keys(self)
        outer_key = "" if own.row_key_from_stage else f", {own.row_key} AS row_key"
        problem = self._problem_case()
        source, action, join = checked_source_sql(self.stage, problem), _ACTION_NONE, ""
        if keys is not None and self.destination.skips_unchanged:
            source = skipping_source_sql(self.stage, keys.staged_key, problem)
            action = action_sql("typed.stored_fingerprint")
        elif keys is not None:
            action, join = action_sql("f.fingerprint"), fingerprint_join_sql(own.row_key)
        return typed_rows_sql(outer_key, action, self._typed_columns(own), source, join)

    def build_rows(self, conn: sa.Connection) -> int:
        """One pass over the staged rows: each row's first problem (if any) and its typed values, planned
        against the fingerprints whose store records are still as the sync left them."""
        keys = self.destination.fingerprint_keys(self)
        if keys is not None:
            fingerprints.forget_moved_records(
                conn,
                self.sync_name,
                keys.moved,
                f"SELECT {keys.staged_key} FROM {self.stage} s",
                {"object_type": self.object_type},
            )
        conn.exec_driver_sql(drop_rows_sql(self.rows))
        return conn.exec_driver_sql(
            create_rows_sql(self.rows, self._typed_select()), {"run_id": self.run_id, "sync": self.sync_name}
        ).rowcount

    # --- duplicates ---

    def reject_duplicates(self, conn: sa.Connection, report: bool = True) -> tuple[int, int]:
        """Rows sharing a key: the later updated_at wins; different values are reported, identical ones merged.

        Returns (reported duplicates, identical rows merged). `report=False` only removes them (a rebuild).
        """
        if not conn.exec_driver_sql(surplus_keys_sql(self.rows)).scalar_one():
            return 0, 0
        conn.exec_driver_sql(duplicated_keys_sql(self.rows))
        updated_at, stage = "r.updated_at", ""
        if self.destination.skips_unchanged and "updated_at" in self.columns.fields:
            # an unchanged row has no updated_at in the rows table: read from its staged text
            updated_at = (
                f"coalesce(r.updated_at, ({self._typed_value('updated_at', guarded=False)})::timestamptz)"
            )
            stage = f"JOIN {self.stage} s ON {_STAGED_ROW_NUMBER} = r.row_number"
        conn.exec_driver_sql(ranked_duplicates_sql(self.rows, stage, updated_at))
        conn.exec_driver_sql(KEEP_ONLY_LOSERS)
        reported = self._report_duplicates(conn) if report else 0
        merged = conn.exec_driver_sql(delete_losers_sql(self.rows)).rowcount
        conn.exec_driver_sql(DROP_RANKED)
        return reported, merged - reported

    def _report_duplicates(self, conn: sa.Connection) -> int:
        return conn.exec_driver_sql(
            report_duplicates_sql(self.stage, self._raw_row_json()),
            {"run_id": self.run_id, "sync": self.sync_name},
        ).rowcount

    def _analyze(self, conn: sa.Connection) -> None:
        conn.exec_driver_sql(analyze_rows_sql(self.rows))

    # --- the pass ---

    def rebuild(self, conn: sa.Connection) -> None:
        """Build the rows table again against the fingerprints stored now (for a write whose plan went stale).
        Rejections were recorded by the validation and come out the same, so they are not recorded again."""
        self.build_rows(conn)
        self.reject_duplicates(conn, report=False)
        self._analyze(conn)

    def run(self, conn: sa.Connection, queried: int) -> ValidationResult:
        conn.exec_driver_sql(SET_UTC)
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


__all__ = ["ColumnMap", "ValidationResult", "Validator", "WholeRunError", "json_object_sql", "map_columns"]
