"""The contacts destination: one contact per e-mail, its fields merged by the store's newer-wins rule."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from conversion_sync.config.store_schema import STANDARD_CONTACT_FIELDS, StoreSchemaConfig
from conversion_sync.config.syncs import SyncConfig
from conversion_sync.store import trace
from conversion_sync.store.contacts import incoming_wins_sql, lock_identities, trimmed_email_sql
from conversion_sync.store.sql_text import (
    column_ref,
    json_object_sql,
    quote_ident,
    quote_literal,
    text_array_sql,
)
from conversion_sync.syncs import writers
from conversion_sync.syncs.destinations.base import (
    DestinationFields,
    FingerprintKeys,
    StagedRow,
    TypedColumns,
)
from conversion_sync.syncs.writers import Plan, WriteContext, WriteCounts

MOVED_CONTACT = """NOT EXISTS (SELECT 1 FROM contacts c
                               WHERE c.email_normalized = f.row_key AND c.xmin::text::bigint = f.record_version)"""
"""A fingerprint's contact is no longer as the sync last wrote or checked it (changed, cleared or deleted)."""

SKIP_UNKNOWN = "UPDATE _writes SET skip = true WHERE contact_id IS NULL"
"""mode update: rows of e-mails without a contact are skipped."""
SKIP_KNOWN = "UPDATE _writes SET skip = true WHERE contact_id IS NOT NULL"
"""mode insert: rows of known contacts are skipped."""
COUNT_SKIPPED = "SELECT count(*) FROM _writes WHERE skip"
ONLY_NEW_CONTACTS = "SELECT NOT EXISTS (SELECT 1 FROM _writes WHERE contact_id IS NOT NULL)"
REMOVED_CONTACTS = (
    "CREATE TEMP TABLE _removed_contacts (email text, contact_id bigint) ON COMMIT DROP;"
    "INSERT INTO _removed_contacts (email) SELECT row_key FROM _removed"
)


class ContactsDestination:
    """Contacts, keyed by e-mail (trimmed, lower-cased)."""

    kind = "contacts"
    # A contact row is all there is to its key: a row whose raw text matches the fingerprint its key was last
    # written with needs no checks and no typed values (a re-run of an unchanged sync costs little more than
    # reading it).
    skips_unchanged = True

    def fields(self, sync: SyncConfig, schema: StoreSchemaConfig) -> DestinationFields:
        return DestinationFields(
            kind=self.kind,
            required=("email",),
            special={"email": "email", "updated_at": "datetime"},
            field_types=schema.contact_field_types(),
        )

    def rejection_key_sql(self, row: StagedRow) -> str:
        email = row.staged("email")
        return trimmed_email_sql(email) if email else "NULL::text"

    def typed_columns(self, row: StagedRow) -> TypedColumns:
        # the key is the e-mail's, kept in unchanged rows too (where email_norm is NULL)
        return TypedColumns(row_key=row.email_key(), row_key_from_stage=True)

    def fingerprint_keys(self, row: StagedRow) -> FingerprintKeys:
        return FingerprintKeys(staged_key=row.email_key(), moved=MOVED_CONTACT)

    def write(self, conn: sa.Connection, ctx: WriteContext) -> WriteCounts:
        return write_contacts(conn, ctx)

    def preview(self, conn: sa.Connection, ctx: WriteContext, limit: int) -> list[dict[str, Any]]:
        return contact_diff(conn, ctx, limit)


DESTINATION = ContactsDestination()


# --- the merge rule per written field --------------------------------------------------------------------


@dataclass(frozen=True)
class _ContactField:
    """One written contact field: its typed value in `w`, its stored value in `c`, and the merge rule."""

    name: str
    value: str
    stored: str
    standard: bool
    keep_nulls: bool

    @property
    def differs(self) -> str:
        present = f"{self.value} IS NOT NULL AND " if self.keep_nulls else ""
        return f"({present}{self.value} IS DISTINCT FROM {self.stored})"

    @property
    def applies(self) -> str:
        """The row changes this field's stored value: it differs and it wins the merge rule."""
        return f"({self.differs} AND {incoming_wins_sql(self.name, 'w.ts')})"

    @property
    def declined(self) -> str:
        """The row's value differs, but the store holds a newer one."""
        return f"({self.differs} AND NOT {incoming_wins_sql(self.name, 'w.ts')})"


def contact_fields(ctx: WriteContext) -> list[_ContactField]:
    out = []
    keep_nulls = ctx.sync.nulls == "keep"
    for name in ctx.written_fields:
        column = column_ref("w", ctx.field_columns[name])
        if name in STANDARD_CONTACT_FIELDS:
            out.append(_ContactField(name, f"{column}::text", column_ref("c", name), True, keep_nulls))
        else:
            stored = f"NULLIF(c.custom_fields -> {quote_literal(name)}, 'null'::jsonb)"
            out.append(_ContactField(name, f"to_jsonb({column})", stored, False, keep_nulls))
    return out


# --- statements ------------------------------------------------------------------------------------------


def new_contact_stamps_sql(fields: list[_ContactField], keep_nulls: bool) -> str:
    """field_updated_at for a new contact: every written field stamped with the row's time (with `nulls: keep`,
    only those with a value). jsonb_object over two arrays builds it about three times faster than
    jsonb_build_object over the pairs."""
    if not fields:
        return "'{}'::jsonb"
    if keep_nulls:
        pairs = [(f.name, f"CASE WHEN {f.value} IS NOT NULL THEN w.ts_json END") for f in fields]
        return f"jsonb_strip_nulls({json_object_sql(pairs)})"
    keys = text_array_sql([f.name for f in fields])
    return f"jsonb_object({keys}, array_fill(w.ts_json #>> '{{}}', ARRAY[{len(fields)}]))"


def insert_contacts_sql(fields: list[_ContactField], keep_nulls: bool) -> str:
    """Rule 3 of identity matching, with the row's fields: one contact per new email (rows are unique by email)."""
    std = [f for f in fields if f.standard]
    custom_json = json_object_sql([(f.name, f.value) for f in fields if not f.standard])
    if keep_nulls:
        custom_json = f"jsonb_strip_nulls({custom_json})"
    columns = ", ".join(
        [
            "email",
            "email_normalized",
            *(quote_ident(f.name) for f in std),
            "custom_fields",
            "field_updated_at",
        ]
    )
    values = ", ".join(["w.email", "w.email_norm", *(f.value for f in std), custom_json])
    return f"""INSERT INTO contacts ({columns})
        SELECT {values}, {new_contact_stamps_sql(fields, keep_nulls)}
        FROM _writes w WHERE w.contact_id IS NULL AND NOT w.skip"""


def update_contacts_sql(fields: list[_ContactField]) -> str:
    """Known contacts take each field the row changes and wins (the merge rule); a contact whose stored values
    all equal the row's, or hold newer ones, is not written at all."""
    sets = [
        f"{quote_ident(f.name)} = CASE WHEN {f.applies} THEN {f.value} ELSE {f.stored} END"
        for f in fields
        if f.standard
    ]
    custom = [f for f in fields if not f.standard]
    if custom:
        merged = json_object_sql(
            [
                (
                    f.name,
                    f"CASE WHEN {f.applies} THEN {f.value} ELSE c.custom_fields -> {quote_literal(f.name)} END",
                )
                for f in custom
            ]
        )
        sets.append(f"custom_fields = c.custom_fields || {merged}")
    stamps = json_object_sql(
        [
            (
                f.name,
                f"CASE WHEN {f.applies} THEN w.ts_json ELSE c.field_updated_at -> {quote_literal(f.name)} END",
            )
            for f in fields
        ]
    )
    sets += [f"field_updated_at = jsonb_strip_nulls(c.field_updated_at || {stamps})", "updated_at = now()"]
    return f"""UPDATE contacts c SET {", ".join(sets)} FROM _writes w
        WHERE w.contact_id IS NOT NULL AND c.id = w.contact_id AND NOT w.skip
          AND ({" OR ".join(f.applies for f in fields)})"""


def mark_declined_sql(fields: list[_ContactField]) -> str:
    return f"""UPDATE _writes w SET declined = true FROM contacts c
        WHERE w.contact_id IS NOT NULL AND c.id = w.contact_id AND NOT w.skip
          AND ({" OR ".join(f.declined for f in fields)})"""


STORED_CONTACT_VERSION = """CASE WHEN w.contact_id IS NOT NULL THEN
        (SELECT c.xmin::text::bigint FROM contacts c WHERE c.id = w.contact_id) END"""
"""The xmin of a row's known contact, probed by id; NULL for a contact this run created (rule 3 does not write
its id back). A join instead read every contact to hash them, even when all the rows' contacts were new: at 1M
contacts that cost about 0.5 s for 50k new rows, whatever the statistics said."""


def contact_fingerprints_sql(plan: Plan) -> str:
    """(row_key, fingerprint, record_version, link_version, action) of the contact rows to remember."""
    return f"""SELECT w.row_key, w.fingerprint, coalesce({STORED_CONTACT_VERSION}, {plan.version}) AS record_version,
               NULL::bigint AS link_version, w.action
        FROM _writes w WHERE NOT w.skip AND NOT w.declined"""


def provided_elsewhere_sql(contact: str, email_key: str) -> str:
    """SQL true when a contact is still provided by something other than this sync: a Salesforce record, a
    campaign membership, a custom object's relationship or an event (written by other syncs), or another
    contacts sync's last write of its e-mail."""
    return f"""({contact}.salesforce_id IS NOT NULL
        OR EXISTS (SELECT 1 FROM campaign_members m WHERE m.contact_id = {contact}.id)
        OR EXISTS (SELECT 1 FROM object_relationships o WHERE o.contact_id = {contact}.id)
        OR EXISTS (SELECT 1 FROM events e WHERE e.contact_id = {contact}.id)
        OR EXISTS (SELECT 1 FROM sync_fingerprints f
                   WHERE f.sync_name = ANY(%(peers)s::text[]) AND f.row_key = {email_key}))"""


DELETE_REMOVED_CONTACTS = f"""DELETE FROM contacts c USING _removed_contacts r
            WHERE c.id = r.contact_id AND NOT {provided_elsewhere_sql("c", "r.email")}"""


def clear_removed_contacts_sql(fields: list[_ContactField]) -> str | None:
    """Clear this sync's fields of the removed keys' contacts; a cleared field keeps no stamp, so the next value
    any writer brings applies. None when the sync writes no field."""
    clears = [f"{quote_ident(f.name)} = NULL" for f in fields if f.standard]
    custom = [f.name for f in fields if not f.standard]
    if custom:
        clears.append(f"custom_fields = c.custom_fields - {text_array_sql(custom)}")
    if not clears:
        return None
    names = text_array_sql([f.name for f in fields])
    clears += [f"field_updated_at = c.field_updated_at - {names}", "updated_at = now()"]
    return f"UPDATE contacts c SET {', '.join(clears)} FROM _removed_contacts r WHERE c.id = r.contact_id"


# --- the write -------------------------------------------------------------------------------------------


def _insert_contacts(conn: sa.Connection, ctx: WriteContext, fields: list[_ContactField]) -> int:
    return conn.exec_driver_sql(insert_contacts_sql(fields, ctx.sync.nulls == "keep")).rowcount


def _update_contacts(conn: sa.Connection, fields: list[_ContactField]) -> int:
    """Returns the contacts changed."""
    if not fields:
        return 0
    return conn.exec_driver_sql(update_contacts_sql(fields)).rowcount


def _mark_declined(conn: sa.Connection, fields: list[_ContactField]) -> int:
    """Rows with a value the store holds newer (the merge rule kept the stored one): they record no fingerprint,
    so a later row with a newer updated_at is applied even if its values are the same."""
    if not fields:
        return 0
    return conn.exec_driver_sql(mark_declined_sql(fields)).rowcount


def _remove_contacts(
    conn: sa.Connection, ctx: WriteContext, fields: list[_ContactField], counts: WriteCounts
) -> None:
    """Apply delete_behavior to the contacts of removed keys: clear_fields clears this sync's fields (and their
    stamps, so the next value any writer brings applies); delete deletes a contact nothing else provides and
    clears this sync's fields of the others (counted apart)."""
    conn.exec_driver_sql(REMOVED_CONTACTS)
    ctx.matcher.resolve_table(conn, "_removed_contacts", email_column="email", create=False)
    params = writers.write_params(ctx)
    if ctx.sync.delete_behavior == "delete":
        counts.extra["contacts_deleted"] = conn.exec_driver_sql(DELETE_REMOVED_CONTACTS, params).rowcount
    clear = clear_removed_contacts_sql(fields)
    if clear is None:
        return
    cleared = conn.exec_driver_sql(clear, params).rowcount
    if ctx.sync.delete_behavior == "delete":
        counts.extra["kept_provided_elsewhere"] = cleared


def _skip_by_mode(conn: sa.Connection, ctx: WriteContext) -> None:
    if ctx.sync.mode == "update":
        conn.exec_driver_sql(SKIP_UNKNOWN)
    elif ctx.sync.mode == "insert":
        conn.exec_driver_sql(SKIP_KNOWN)


def write_contacts(conn: sa.Connection, ctx: WriteContext) -> WriteCounts:
    """New emails become contacts with all their fields in one INSERT; known ones take the fields they change
    and win by the merge rule. Counts say what happened: added (contact created), changed (a stored value
    changed), unchanged (nothing written), skipped (by mode), older_than_store (a value kept because the store's
    is newer)."""
    counts = WriteCounts()
    lock_identities(conn)
    plan = writers.plan_changes(conn, ctx)
    counts.removed = writers.plan_removed(conn, ctx, plan)
    identities = ctx.matcher.resolve_table(
        conn,
        "_writes",
        email_column="email",
        create=False,
        unique_emails=True,
        normalized_email_column="email_norm",
    )
    # a first load's rows meet no contact: the statements for known contacts would only scan them all
    known = identities.matched_by_email > 0
    with writers.fingerprint_build(conn, ctx, plan, ONLY_NEW_CONTACTS) as build:
        _skip_by_mode(conn, ctx)
        fields = contact_fields(ctx)
        counts.added = counts.contacts_created = _insert_contacts(conn, ctx, fields)
        counts.changed = _update_contacts(conn, fields) if known else 0
        counts.extra["older_than_store"] = _mark_declined(conn, fields) if known else 0
        counts.skipped = conn.exec_driver_sql(COUNT_SKIPPED).scalar_one() if ctx.sync.mode != "upsert" else 0
        counts.unchanged = plan.accepted - counts.added - counts.changed - counts.skipped
        writers.save_fingerprints(conn, ctx, contact_fingerprints_sql(plan), build)
        if writers.applies_removals(ctx, counts.removed):
            _remove_contacts(conn, ctx, fields, counts)
        writers.forget_removed(conn, ctx)
        trace.record_run(conn, ctx, ctx.trace_aside)  # the per-key history (store/trace.py)
        writers.refresh_statistics(conn, ctx, {"contacts": counts.contacts_created})
        writers.drop_writes(conn, plan.view)
        return counts


# --- the preview -----------------------------------------------------------------------------------------


def contact_diff_sql(ctx: WriteContext, fields: list[_ContactField]) -> str:
    """Each accepted row with the action the write would take and the fields it adds or changes."""
    changes = json_object_sql(
        [
            (
                f.name,
                f"CASE WHEN {f.applies} THEN jsonb_build_array(to_jsonb({f.stored}), to_jsonb({f.value})) END",
            )
            for f in fields
        ]
    )
    skip = {"update": "c.id IS NULL", "insert": "c.id IS NOT NULL"}.get(ctx.sync.mode, "false")
    applies = " OR ".join(f.applies for f in fields) or "false"
    return f"""SELECT coalesce(w.email, w.row_key) AS key, d.action,
                   CASE WHEN d.action = 'add' THEN {writers.row_fields_json(ctx, "w")}
                        WHEN d.action = 'change' THEN jsonb_strip_nulls({changes}) END AS fields
            FROM (SELECT r.*, coalesce(r.updated_at, %(started)s) AS ts FROM {ctx.rows_table} r
                  WHERE r.problem IS NULL) w
            LEFT JOIN LATERAL (SELECT * FROM contacts x WHERE x.email_normalized = w.email_norm
                               ORDER BY x.updated_at DESC, x.id DESC LIMIT 1) c ON true
            CROSS JOIN LATERAL (
                SELECT CASE WHEN w.action = 'unchanged' THEN 'unchanged' WHEN {skip} THEN 'skip'
                            WHEN c.id IS NULL THEN 'add' WHEN {applies} THEN 'change' ELSE 'unchanged' END AS action
            ) d
            ORDER BY d.action = 'unchanged', w.row_number LIMIT %(limit)s"""


def contact_diff(conn: sa.Connection, ctx: WriteContext, limit: int) -> list[dict[str, Any]]:
    """Each contact row as the write would treat it: `add` (a contact created, with its fields), `change` (the
    fields it changes, [stored, new], by the merge rule and `nulls`), `skip` (by mode) or `unchanged`."""
    rows = conn.exec_driver_sql(
        contact_diff_sql(ctx, contact_fields(ctx)), {"limit": limit, "started": ctx.run_started}
    ).mappings()
    out: list[dict[str, Any]] = []
    for row in rows:
        entry: dict[str, Any] = {"key": row["key"], "action": row["action"]}
        if row["action"] in ("add", "change"):
            entry["fields"] = row["fields"]
        out.append(entry)
    return out
