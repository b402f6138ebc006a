"""The custom objects destination: objects of a schema.yaml type keyed by (object type, id), each related to the
contacts of its rows' e-mails."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from conversion_sync.config.store_schema import StoreSchemaConfig
from conversion_sync.config.syncs import SyncConfig
from conversion_sync.store import trace
from conversion_sync.store.contacts import lock_identities, trimmed_email_sql
from conversion_sync.store.sql_text import column_ref, quote_literal, text_array_sql
from conversion_sync.syncs import writers
from conversion_sync.syncs.destinations.base import (
    RELATIONSHIP_FIELDS,
    DestinationFields,
    FingerprintKeys,
    StagedRow,
    TypedColumns,
    UnknownObjectType,
)
from conversion_sync.syncs.field_rules import UNIT_SEPARATOR
from conversion_sync.syncs.writers import Plan, WriteContext, WriteCounts

_KEY_OBJECT = f"split_part(f.row_key, {UNIT_SEPARATOR}, 1)"
_KEY_EMAIL = f"split_part(f.row_key, {UNIT_SEPARATOR}, 2)"
MOVED_OBJECT = f"""(NOT EXISTS (SELECT 1 FROM custom_objects o
                                WHERE o.object_type = %(object_type)s AND o.object_id = {_KEY_OBJECT}
                                  AND o.xmin::text::bigint = f.record_version)
                     OR ({_KEY_EMAIL} <> '' AND NOT EXISTS (
                         SELECT 1 FROM object_relationships r JOIN contacts c ON c.id = r.contact_id
                         WHERE r.object_type = %(object_type)s AND r.object_id = {_KEY_OBJECT}
                           AND c.email_normalized = {_KEY_EMAIL} AND r.xmin::text::bigint = f.link_version)))"""
"""A fingerprint's object, or its relationship to the key's e-mail, is no longer as the sync last left it."""


class CustomObjectsDestination:
    """Custom objects: a row per (object id, e-mail); the object takes the fields of its latest row."""

    kind = "custom_objects"
    # an object's fields come from several rows: every row is checked and typed
    skips_unchanged = False

    def fields(self, sync: SyncConfig, schema: StoreSchemaConfig) -> DestinationFields:
        object_type = schema.object_types.get(sync.destination.object_type or "")
        if object_type is None:
            raise UnknownObjectType(sync.destination.object_type or "", sorted(schema.object_types))
        return DestinationFields(
            kind=self.kind,
            required=("id",),
            special={
                "id": "key",
                "email": "optional_email",
                RELATIONSHIP_FIELDS: "json_object",
                "updated_at": "datetime",
            },
            field_types=dict(object_type.fields),
        )

    def rejection_key_sql(self, row: StagedRow) -> str:
        email = row.staged("email")
        shown = f" || coalesce(' / ' || {trimmed_email_sql(email)}, '')" if email else ""
        return f"btrim({row.staged('id')}){shown}"

    def typed_columns(self, row: StagedRow) -> TypedColumns:
        return TypedColumns(
            row_key=f"object_id || {UNIT_SEPARATOR} || coalesce(email_norm, '')",
            object_id=f"btrim({row.staged('id')})",
        )

    def fingerprint_keys(self, row: StagedRow) -> FingerprintKeys:
        staged_key = f"btrim({row.staged('id')}) || {UNIT_SEPARATOR} || coalesce({row.email_key()}, '')"
        return FingerprintKeys(staged_key=staged_key, moved=MOVED_OBJECT)

    def write(self, conn: sa.Connection, ctx: WriteContext) -> WriteCounts:
        return write_custom_objects(conn, ctx)

    def preview(self, conn: sa.Connection, ctx: WriteContext, limit: int) -> list[dict[str, Any]]:
        return object_diff(conn, ctx, limit)


DESTINATION = CustomObjectsDestination()


# --- statements ------------------------------------------------------------------------------------------


def only_new_objects_sql(object_type: str) -> str:
    """True when no row to write meets a stored object (run without parameters: the type is a literal)."""
    return f"""SELECT NOT EXISTS (SELECT 1 FROM _writes w JOIN custom_objects o
                                  ON o.object_type = {quote_literal(object_type)} AND o.object_id = w.object_id)"""


def skip_by_mode_sql(mode: str) -> str | None:
    """mode update skips rows of unknown objects, mode insert rows of known ones."""
    if mode not in ("update", "insert"):
        return None
    exists = "EXISTS" if mode == "update" else "NOT EXISTS"
    return f"""UPDATE _writes w SET skip = true WHERE NOT {exists} (
                    SELECT 1 FROM custom_objects o WHERE o.object_type = %(object_type)s AND o.object_id = w.object_id)"""


def latest_objects_sql(ctx: WriteContext) -> str:
    """_objects: each object written with the fields of its latest row among all rows of the run, changed or
    not (with `nulls: keep`, its non-null ones). Only the written columns go through the sort, not whole rows."""
    columns = "".join(f", {column_ref('r', column)}" for column in ctx.field_columns.values())
    fields = writers.row_fields_json(ctx, "x")
    if ctx.sync.nulls == "keep":
        fields = f"jsonb_strip_nulls({fields})"
    return f"""CREATE TEMP TABLE _objects ON COMMIT DROP AS
        SELECT x.object_id, {fields} AS fields
        FROM (
            SELECT DISTINCT ON (r.object_id COLLATE "C") r.object_id{columns} FROM {ctx.rows_table} r
            WHERE r.problem IS NULL AND r.object_id IN (SELECT object_id FROM _writes WHERE NOT skip)
            ORDER BY r.object_id COLLATE "C", r.updated_at DESC NULLS LAST, r.row_number DESC
        ) x;
        ANALYZE _objects"""


UPDATE_OBJECTS = """UPDATE custom_objects o SET fields = o.fields || x.fields, updated_at = now() FROM _objects x
        WHERE o.object_type = %(object_type)s AND o.object_id = x.object_id AND o.fields || x.fields <> o.fields"""
INSERT_OBJECTS = """INSERT INTO custom_objects (object_type, object_id, fields)
        SELECT %(object_type)s, x.object_id, x.fields FROM _objects x
        WHERE NOT EXISTS (SELECT 1 FROM custom_objects o WHERE o.object_type = %(object_type)s AND o.object_id = x.object_id)
        ORDER BY x.object_id COLLATE "C"
        """

LATEST_PAIRS = """CREATE TEMP TABLE _pairs ON COMMIT DROP AS
        SELECT DISTINCT ON (w.object_id COLLATE "C", r.contact_id) w.object_id, r.contact_id,
               coalesce(w.rel_fields, '{}') AS fields
        FROM _writes w JOIN _related r ON r.email_norm = w.email_norm
        WHERE NOT w.skip AND r.contact_id IS NOT NULL
        ORDER BY w.object_id COLLATE "C", r.contact_id, w.updated_at DESC NULLS LAST, w.row_number DESC;
        ANALYZE _pairs"""
UPDATE_RELATIONSHIPS = """UPDATE object_relationships o SET fields = p.fields, updated_at = now() FROM _pairs p
        WHERE o.object_type = %(object_type)s AND o.object_id = p.object_id AND o.contact_id = p.contact_id
          AND o.fields <> p.fields"""
INSERT_RELATIONSHIPS = """INSERT INTO object_relationships (object_type, object_id, contact_id, fields)
        SELECT %(object_type)s, p.object_id, p.contact_id, p.fields FROM _pairs p
        WHERE NOT EXISTS (SELECT 1 FROM object_relationships o
                          WHERE o.object_type = %(object_type)s AND o.object_id = p.object_id
                            AND o.contact_id = p.contact_id)
        ORDER BY p.object_id COLLATE "C", p.contact_id  -- the primary key's order: filled page by page"""

OBJECT_ROWS = """CREATE TEMP TABLE _object_rows ON COMMIT DROP AS
        SELECT w.*, o.xmin::text::bigint AS object_version, o.created_at AS object_created_at,
               r.xmin::text::bigint AS link_version, r.created_at AS link_created_at
        FROM _writes w
        JOIN custom_objects o ON o.object_type = %(object_type)s AND o.object_id = w.object_id
        LEFT JOIN _related rl ON rl.email_norm = w.email_norm
        LEFT JOIN object_relationships r
               ON r.object_type = %(object_type)s AND r.object_id = w.object_id AND r.contact_id = rl.contact_id
        WHERE NOT w.skip"""
"""_object_rows: each written row with the version (xmin) and creation time of its object and (if it has an
e-mail) its relationship, as stored once both are written. The counts, the fingerprints and the trace read it:
each of them joining the rows with objects and relationships again read every relationship of the type."""


def count_object_rows_sql(plan: Plan) -> str:
    """(rows that created an object or relationship, rows that changed one, rows skipped by mode)."""
    version = int(plan.version)
    created = f"""((x.object_version = {version} AND x.object_created_at = now())
                   OR coalesce(x.link_version = {version} AND x.link_created_at = now(), false))"""
    changed = f"(x.object_version = {version} OR x.link_version = {version})"
    return f"""SELECT count(*) FILTER (WHERE {created}), count(*) FILTER (WHERE NOT {created} AND {changed}),
                   (SELECT count(*) FROM _writes WHERE skip)
        FROM _object_rows x"""


def object_fingerprints_sql() -> str:
    """(row_key, fingerprint, record_version, link_version, action) of the object rows to remember."""
    return "SELECT row_key, fingerprint, object_version AS record_version, link_version, action FROM _object_rows"


REFRESH_OBJECT_VERSIONS = """UPDATE sync_fingerprints f SET record_version = o.xmin::text::bigint
        FROM _objects x JOIN custom_objects o ON o.object_type = %(object_type)s AND o.object_id = x.object_id
        WHERE f.sync_name = %(sync)s AND f.row_key >= x.object_id || chr(31) AND f.row_key < x.object_id || chr(32)
          AND f.record_version IS DISTINCT FROM o.xmin::text::bigint"""
"""An object rewritten from all of this run's rows holds what each of them would write: the sync's other keys of
that object (rows planned unchanged) take its new version, or their next run would see it as moved."""


def removed_pairs_sql(all_keys_select: str) -> str:
    """_removed_pairs: each removed key's object and e-mail, whether any row still has the object, and whether a
    peer sync (%(peers)s) still provides the pair or the object."""
    return f"""CREATE TEMP TABLE _removed_pairs ON COMMIT DROP AS
        SELECT split_part(row_key, chr(31), 1) AS object_id, NULLIF(split_part(row_key, chr(31), 2), '') AS email,
               NULL::bigint AS contact_id,
               NOT EXISTS (SELECT 1 FROM ({all_keys_select}) k
                           WHERE split_part(k.row_key, chr(31), 1) = split_part(r.row_key, chr(31), 1)) AS object_gone,
               EXISTS (SELECT 1 FROM sync_fingerprints f WHERE f.sync_name = ANY(%(peers)s::text[])
                       AND f.row_key = r.row_key) AS pair_provided,
               EXISTS (SELECT 1 FROM sync_fingerprints f WHERE f.sync_name = ANY(%(peers)s::text[])
                       AND f.row_key >= split_part(r.row_key, chr(31), 1) || chr(31)
                       AND f.row_key < split_part(r.row_key, chr(31), 1) || chr(32)) AS object_provided
        FROM _removed r"""


DELETE_REMOVED_RELATIONSHIPS = """DELETE FROM object_relationships o USING _removed_pairs p
            WHERE o.object_type = %(object_type)s AND o.object_id = p.object_id AND o.contact_id = p.contact_id
              AND NOT p.pair_provided"""
DELETE_REMOVED_OBJECTS = """DELETE FROM custom_objects o USING _removed_pairs p
            WHERE o.object_type = %(object_type)s AND o.object_id = p.object_id AND p.object_gone
              AND NOT p.object_provided"""


def clear_removed_relationships_sql(only_provided: bool) -> str:
    pair_kept = "p.pair_provided" if only_provided else "true"
    return f"""UPDATE object_relationships o SET fields = '{{}}'::jsonb, updated_at = now() FROM _removed_pairs p
        WHERE o.object_type = %(object_type)s AND o.object_id = p.object_id AND o.contact_id = p.contact_id
          AND {pair_kept}"""


def clear_removed_objects_sql(written_fields: list[str], only_provided: bool) -> str:
    object_kept = "p.object_provided" if only_provided else "true"
    return f"""UPDATE custom_objects o SET fields = o.fields - {text_array_sql(written_fields)}, updated_at = now() FROM _removed_pairs p
        WHERE o.object_type = %(object_type)s AND o.object_id = p.object_id AND p.object_gone AND {object_kept}"""


# --- the write -------------------------------------------------------------------------------------------


def write_custom_objects(conn: sa.Connection, ctx: WriteContext) -> WriteCounts:
    """Objects take the fields of their latest row; each (object, e-mail) row relates the object to a contact.
    Counts are per row: added (its object or relationship created), changed (a stored value of either
    changed), unchanged (nothing written), skipped (by mode)."""
    counts = WriteCounts()
    params = writers.write_params(ctx)
    lock_identities(conn)
    plan = writers.plan_changes(conn, ctx)
    counts.removed = writers.plan_removed(conn, ctx, plan)
    only_new = only_new_objects_sql(ctx.sync.destination.object_type or "")
    with writers.fingerprint_build(conn, ctx, plan, only_new) as build:
        skip = skip_by_mode_sql(ctx.sync.mode)
        if skip is not None:
            conn.exec_driver_sql(skip, params)
        counts.contacts_created = writers.resolve_emails(conn, ctx, create=ctx.sync.mode != "update")
        _write_objects(conn, ctx, params)
        _write_relationships(conn, params)
        _count_object_rows(conn, plan, params, counts)
        writers.save_fingerprints(conn, ctx, object_fingerprints_sql(), build)
        conn.exec_driver_sql(REFRESH_OBJECT_VERSIONS, params)
        if writers.applies_removals(ctx, counts.removed):
            _remove_objects(conn, ctx, params, counts)
        writers.forget_removed(conn, ctx)
        trace.record_run(conn, ctx, ctx.trace_aside)  # the per-key history (store/trace.py)
        writers.refresh_statistics(
            conn,
            ctx,
            {
                "custom_objects": counts.added,
                "object_relationships": counts.added,
                "contacts": counts.contacts_created,
            },
        )
        writers.drop_writes(conn, plan.view)
        return counts


def _write_objects(conn: sa.Connection, ctx: WriteContext, params: dict[str, object]) -> None:
    """Known objects are updated only where a value changes, and new ones inserted without ON CONFLICT, as
    relationships are (only this writer writes objects, under the identity lock)."""
    conn.exec_driver_sql(latest_objects_sql(ctx))
    conn.exec_driver_sql(UPDATE_OBJECTS, params)
    conn.exec_driver_sql(INSERT_OBJECTS, params)


def _write_relationships(conn: sa.Connection, params: dict[str, object]) -> None:
    """One relationship per (object, contact), with the fields of its latest row. Known pairs are updated where
    their fields change, and new ones inserted with a plain INSERT (only this writer adds pairs, under the
    identity lock): ON CONFLICT's speculative insertion made a first load's inserts 1.7 times as slow."""
    conn.exec_driver_sql(LATEST_PAIRS)
    conn.exec_driver_sql(UPDATE_RELATIONSHIPS, params)
    conn.exec_driver_sql(INSERT_RELATIONSHIPS, params)


def _count_object_rows(
    conn: sa.Connection, plan: Plan, params: dict[str, object], counts: WriteCounts
) -> None:
    """Per row, what this transaction did to its object and relationship: created one, changed one, or neither
    (from _object_rows, made here)."""
    conn.exec_driver_sql(OBJECT_ROWS, params)
    counts.added, counts.changed, counts.skipped = conn.exec_driver_sql(
        count_object_rows_sql(plan), params
    ).one()
    counts.unchanged = plan.accepted - counts.added - counts.changed - counts.skipped


def _remove_objects(
    conn: sa.Connection, ctx: WriteContext, params: dict[str, object], counts: WriteCounts
) -> None:
    """Apply delete_behavior to relationships and objects the full query no longer returns. `delete` deletes a
    relationship, or an object no row returns any more, only when no other sync writing this object type still
    provides it (its last run wrote that key); those are cleared of this sync's fields instead (counted apart).
    Contacts are never deleted by an objects sync."""
    conn.exec_driver_sql(removed_pairs_sql(ctx.all_keys_select), params)
    ctx.matcher.resolve_table(conn, "_removed_pairs", email_column="email", create=False)
    delete = ctx.sync.delete_behavior == "delete"
    if delete:
        conn.exec_driver_sql(DELETE_REMOVED_RELATIONSHIPS, params)
        counts.extra["objects_deleted"] = conn.exec_driver_sql(DELETE_REMOVED_OBJECTS, params).rowcount
    kept = conn.exec_driver_sql(clear_removed_relationships_sql(delete), params).rowcount
    kept += conn.exec_driver_sql(clear_removed_objects_sql(ctx.written_fields, delete), params).rowcount
    if delete:
        counts.extra["kept_provided_elsewhere"] = kept


# --- the preview -----------------------------------------------------------------------------------------


def object_diff_sql(ctx: WriteContext) -> str:
    """Each accepted row against its fingerprint (add, change, unchanged), with its fields and the object's."""
    old = f"""(SELECT o.fields FROM custom_objects o
                   WHERE o.object_type = {quote_literal(ctx.sync.destination.object_type or "")} AND o.object_id = r.object_id)"""
    return f"""SELECT r.object_id || coalesce(' / ' || r.email, '') AS key,
                   CASE WHEN f.fingerprint IS NULL THEN 'add' WHEN f.fingerprint <> r.fingerprint THEN 'change'
                        ELSE 'unchanged' END AS action,
                   {writers.row_fields_json(ctx, "r")} AS new, {old} AS old
            FROM {ctx.rows_table} r
            LEFT JOIN sync_fingerprints f ON f.sync_name = %(sync)s AND f.row_key = r.row_key
            WHERE r.problem IS NULL ORDER BY (f.fingerprint IS NOT DISTINCT FROM r.fingerprint), r.row_number LIMIT %(limit)s"""


def object_diff(conn: sa.Connection, ctx: WriteContext, limit: int) -> list[dict[str, Any]]:
    """Per-row diff for a dry run: action and, for changed rows, each field's stored and new value."""
    rows = conn.exec_driver_sql(object_diff_sql(ctx), {"sync": ctx.sync.name, "limit": limit}).mappings()
    out: list[dict[str, Any]] = []
    for row in rows:
        entry = {"key": row["key"], "action": row["action"]}
        new, old_values = row["new"] or {}, row["old"] or {}
        if row["action"] == "change":
            entry["fields"] = {k: [old_values.get(k), v] for k, v in new.items() if old_values.get(k) != v}
        elif row["action"] == "add":
            entry["fields"] = new
        out.append(entry)
    return out
