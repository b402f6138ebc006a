"""The push's SQL: which contacts to push, their links and per-contact push state, requests and a summary."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from conversion_sync.config.salesforce import PushConfig, PushSourceRule
from conversion_sync.salesforce.push.fields import PushField
from conversion_sync.store.contacts import email_key_sql, lock_identities, sql_literal

CONTACT_COLUMNS = ("first_name", "last_name", "job_title", "phone", "city", "company_name")
"""Store columns a push reads (custom fields come from custom_fields)."""

_SELECTED = ", ".join(f"c.{name}" for name in CONTACT_COLUMNS)

FINGERPRINTED_BY_SYNC = (
    "EXISTS (SELECT 1 FROM sync_fingerprints f WHERE f.sync_name = {name} AND f.row_key = c.email_normalized)"
)
WRITTEN_BY_NO_SYNC = """NOT EXISTS (SELECT 1 FROM sync_fingerprints f
    WHERE f.sync_name IN (SELECT DISTINCT sync_name FROM sync_runs) AND f.row_key = c.email_normalized)"""
IN_CAMPAIGN = """EXISTS (SELECT 1 FROM campaign_members m JOIN campaigns ca ON ca.id = m.campaign_id
    WHERE m.contact_id = c.id AND ca.name = {name})"""


def rule_sql(push: PushConfig) -> tuple[str, str]:
    """SQL (create policy, Salesforce object) of contact `c`: the first source override that applies
    (campaigns, then warehouse syncs, then manual), else the top-level rule."""
    sources: list[tuple[str, PushSourceRule]] = [
        (IN_CAMPAIGN.format(name=sql_literal(name)), rule) for name, rule in push.sources.campaigns.items()
    ]
    sources += [
        (FINGERPRINTED_BY_SYNC.format(name=sql_literal(name)), rule)
        for name, rule in push.sources.warehouse_syncs.items()
    ]
    if push.sources.manual is not None:
        sources.append((WRITTEN_BY_NO_SYNC, push.sources.manual))
    if not sources:
        return sql_literal(push.create), sql_literal(push.as_)
    create = " ".join(f"WHEN {cond} THEN {sql_literal(rule.create or push.create)}" for cond, rule in sources)
    sobject = " ".join(f"WHEN {cond} THEN {sql_literal(rule.as_ or push.as_)}" for cond, rule in sources)
    return (
        f"CASE {create} ELSE {sql_literal(push.create)} END",
        f"CASE {sobject} ELSE {sql_literal(push.as_)} END",
    )


NOT_REFUSED = "(s.error_code IS NULL OR c.updated_at > s.error_contact_updated_at)"
"""A contact whose last attempt Salesforce refused is tried again only once the contact has changed."""

ONE_PER_EMAIL = """NOT EXISTS (SELECT 1 FROM contacts o WHERE o.email_normalized = c.email_normalized
    AND o.id <> c.id AND (o.salesforce_id IS NOT NULL OR (o.updated_at, o.id) > (c.updated_at, c.id)))"""
"""One Salesforce record per email: no other contact with the email is linked, and this is the most recently
updated of the unlinked ones (the identity rules' choice)."""


def create_candidates_sql(push: PushConfig, *, emails: bool, all_pending: bool) -> str:
    """Contacts without a Salesforce record to create now, a page after `%(after)s` in id order: those the
    rules say go `immediately`, those marked for push, with `all_pending` also the `later` ones; with
    `emails`, only the contacts of `%(emails)s` (any rule but `never`)."""
    create, sobject = rule_sql(push)
    if emails:
        wanted = "k.policy <> 'never'"
    elif all_pending:
        wanted = "(k.requested OR k.policy IN ('immediately', 'later'))"
    else:
        wanted = "(k.requested OR k.policy = 'immediately')"
    email_filter = (
        f"AND c.email_normalized = ANY(SELECT {email_key_sql('e')} FROM unnest(%(emails)s::text[]) e)"
    )
    return f"""
    SELECT k.* FROM (
        SELECT c.id, c.email, c.email_normalized, c.updated_at, {_SELECTED}, c.custom_fields,
               c.field_updated_at, {create} AS policy, {sobject} AS sobject,
               s.requested_at IS NOT NULL AS requested
        FROM contacts c LEFT JOIN salesforce_push_state s ON s.contact_id = c.id
        WHERE c.salesforce_id IS NULL AND c.email_normalized IS NOT NULL AND c.id > %(after)s
          AND {NOT_REFUSED} AND {ONE_PER_EMAIL} {email_filter if emails else ""}
    ) k WHERE {wanted} ORDER BY k.id LIMIT %(limit)s"""


def _changed_sql(fields: Sequence[PushField]) -> str:
    """SQL true when a pushable field's store value differs from what Salesforce held after the last push
    (no state: unknown, so it counts); a most_recent field only when its stamp is newer than the record's
    LastModifiedDate as last read (an older store value could not win)."""
    parts = []
    for f in fields:
        value = f.store_json_sql()
        changed = (
            f"({value} IS NOT NULL AND (s.synced -> {sql_literal(f.store_field)}) IS DISTINCT FROM {value}"
        )
        if f.preference == "most_recent":
            stamp = f"(c.field_updated_at ->> {sql_literal(f.store_field)})::timestamptz"
            changed += f" AND {stamp} > coalesce(s.salesforce_modified, '-infinity')"
        parts.append(changed + ")")
    return " OR ".join(parts) or "false"


def update_candidates_sql(fields: dict[str, list[PushField]], *, emails: bool) -> str:
    """Linked contacts with a pushable field changed since the last push, a page after `%(after)s`."""
    changed = " OR ".join(
        f"(c.salesforce_type = {sql_literal(sobject)} AND ({_changed_sql(mapped)}))"
        for sobject, mapped in fields.items()
    )
    email_filter = (
        f"AND c.email_normalized = ANY(SELECT {email_key_sql('e')} FROM unnest(%(emails)s::text[]) e)"
    )
    return f"""
    SELECT c.id, c.email, c.email_normalized, c.salesforce_id, c.salesforce_type, c.updated_at, {_SELECTED},
           c.custom_fields, c.field_updated_at
    FROM contacts c LEFT JOIN salesforce_push_state s ON s.contact_id = c.id
    WHERE c.salesforce_id IS NOT NULL AND c.id > %(after)s AND {NOT_REFUSED} AND ({changed})
      {email_filter if emails else ""}
    ORDER BY c.id LIMIT %(limit)s"""


def contact_values(row: dict[str, Any]) -> dict[str, Any]:
    """Store field → value of a selected contact row (columns, then custom fields)."""
    return {**(row.get("custom_fields") or {}), **{name: row.get(name) for name in CONTACT_COLUMNS}}


def fetch(conn: sa.Connection, sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    return [dict(r) for r in conn.exec_driver_sql(sql, params).mappings()]


LINK_SQL = """
    UPDATE contacts c SET salesforce_id = v.sf_id, salesforce_type = v.sf_type, updated_at = now()
    FROM unnest(%(contacts)s::bigint[], %(ids)s::text[], %(types)s::text[]) AS v(contact_id, sf_id, sf_type)
    WHERE c.id = v.contact_id AND c.salesforce_id IS NULL
      AND NOT EXISTS (SELECT 1 FROM contacts o WHERE o.salesforce_id = v.sf_id)
    RETURNING c.id, v.sf_id, v.sf_type"""


def link_contacts(conn: sa.Connection, links: Sequence[tuple[int, str, str]]) -> dict[int, tuple[str, str]]:
    """Link contacts to Salesforce records (contact id, record id, Lead|Contact) under the identity lock; a
    contact linked meanwhile, or a record another contact holds, is left alone. Returns the links made."""
    if not links:
        return {}
    lock_identities(conn)
    done = conn.exec_driver_sql(
        LINK_SQL,
        {
            "contacts": [c for c, _, _ in links],
            "ids": [i for _, i, _ in links],
            "types": [t for _, _, t in links],
        },
    ).all()
    return {int(contact): (str(sf_id), str(sf_type)) for contact, sf_id, sf_type in done}


LINK_BY_EMAIL_SQL = f"""
    WITH v AS (
        SELECT {email_key_sql("v.email")} AS key, v.sf_id FROM unnest(%(emails)s::text[], %(ids)s::text[]) AS v(email, sf_id)
    ), pick AS (
        SELECT DISTINCT ON (v.sf_id) c.id, v.sf_id FROM v JOIN contacts c ON c.email_normalized = v.key
        WHERE c.salesforce_id IS NULL AND NOT EXISTS (SELECT 1 FROM contacts o WHERE o.salesforce_id = v.sf_id)
        ORDER BY v.sf_id, c.updated_at DESC, c.id DESC
    )
    UPDATE contacts c SET salesforce_id = pick.sf_id, salesforce_type = %(type)s, updated_at = now()
    FROM pick WHERE c.id = pick.id AND c.salesforce_id IS NULL RETURNING c.id"""


def link_by_email(conn: sa.Connection, sobject: str, created: dict[str, str]) -> int:
    """Link the records an interrupted push created (email → record id) to the unlinked contacts with those
    emails (the most recently updated one per email); returns how many were linked."""
    if not created:
        return 0
    lock_identities(conn)
    params = {"emails": list(created), "ids": list(created.values()), "type": sobject}
    return len(conn.exec_driver_sql(LINK_BY_EMAIL_SQL, params).all())


RELINK_CONVERTED_SQL = """
    UPDATE contacts c SET salesforce_id = %(to)s, salesforce_type = 'Contact', updated_at = now()
    WHERE c.id = %(contact)s AND c.salesforce_id = %(from)s
      AND NOT EXISTS (SELECT 1 FROM contacts o WHERE o.salesforce_id = %(to)s)
    RETURNING c.id"""


def relink_converted(conn: sa.Connection, contact_id: int, lead_id: str, contact_sf_id: str) -> bool:
    """A contact linked to a converted Lead moves to the Lead's Contact (as the poll does), unless another
    store contact holds that Contact already."""
    lock_identities(conn)
    params = {"to": contact_sf_id, "contact": contact_id, "from": lead_id}
    return conn.exec_driver_sql(RELINK_CONVERTED_SQL, params).first() is not None


RECORD_SYNCED_SQL = """
    INSERT INTO salesforce_push_state AS s (contact_id, salesforce_id, salesforce_type, synced, synced_at,
        salesforce_modified, updated_at)
    SELECT v.contact_id, v.sf_id, v.sf_type, v.synced::jsonb, now(), v.modified, now()
    FROM unnest(%(contacts)s::bigint[], %(ids)s::text[], %(types)s::text[], %(synced)s::text[],
                %(modified)s::timestamptz[]) AS v(contact_id, sf_id, sf_type, synced, modified)
    ON CONFLICT (contact_id) DO UPDATE SET salesforce_id = EXCLUDED.salesforce_id,
        salesforce_type = EXCLUDED.salesforce_type, synced = EXCLUDED.synced, synced_at = now(),
        salesforce_modified = coalesce(EXCLUDED.salesforce_modified, s.salesforce_modified), requested_at = NULL,
        error_code = NULL, error_message = NULL, error_at = NULL, error_contact_updated_at = NULL,
        updated_at = now()"""


def record_synced(
    conn: sa.Connection, rows: Sequence[tuple[int, str, str, dict[str, Any], datetime | None]]
) -> None:
    """(contact id, record id, Lead|Contact, store field → value Salesforce holds, LastModifiedDate as read):
    the push is done with these contacts; their request and last error are cleared."""
    if not rows:
        return
    conn.exec_driver_sql(
        RECORD_SYNCED_SQL,
        {
            "contacts": [r[0] for r in rows],
            "ids": [r[1] for r in rows],
            "types": [r[2] for r in rows],
            "synced": [json.dumps(r[3], default=str) for r in rows],
            "modified": [r[4] for r in rows],
        },
    )


RESTAMP_WRITTEN_SQL = """
    UPDATE contacts c SET field_updated_at = c.field_updated_at || (
        SELECT coalesce(jsonb_object_agg(e.key, to_jsonb(v.modified)), '{}'::jsonb)
        FROM jsonb_each(v.expected::jsonb) e
        WHERE coalesce(c.field_updated_at -> e.key, 'null'::jsonb) = e.value)
    FROM unnest(%(contacts)s::bigint[], %(expected)s::text[], %(modified)s::timestamptz[])
        AS v(contact_id, expected, modified)
    WHERE c.id = v.contact_id"""
"""The written fields take the record's LastModifiedDate as their stamp, each only while its stamp is still
the one the push read (a store edit since then keeps its own); updated_at does not move: no value changed."""


def restamp_written(conn: sa.Connection, rows: Sequence[tuple[int, dict[str, Any], datetime | None]]) -> None:
    """(contact id, store field → its stamp when the push read it, the record's LastModifiedDate after the
    write): the fields the push wrote are stamped with Salesforce's clock, as the poll stamps what it reads, so
    the next comparison with that record is Salesforce's clock against Salesforce's clock."""
    rows = [r for r in rows if r[1] and r[2] is not None]
    if not rows:
        return
    conn.exec_driver_sql(
        RESTAMP_WRITTEN_SQL,
        {
            "contacts": [r[0] for r in rows],
            "expected": [json.dumps(r[1]) for r in rows],
            "modified": [r[2] for r in rows],
        },
    )


RECORD_ERRORS_SQL = """
    INSERT INTO salesforce_push_state AS s (contact_id, error_code, error_message, error_at,
        error_contact_updated_at, updated_at)
    SELECT v.contact_id, v.code, v.message, now(), v.version, now()
    FROM unnest(%(contacts)s::bigint[], %(codes)s::text[], %(messages)s::text[], %(versions)s::timestamptz[])
        AS v(contact_id, code, message, version)
    ON CONFLICT (contact_id) DO UPDATE SET error_code = EXCLUDED.error_code,
        error_message = EXCLUDED.error_message, error_at = now(),
        error_contact_updated_at = EXCLUDED.error_contact_updated_at, updated_at = now()"""


def record_errors(conn: sa.Connection, rows: Sequence[tuple[int, str, str, datetime]]) -> None:
    """(contact id, Salesforce's error code, its message, the contact's updated_at when it was tried)."""
    if not rows:
        return
    conn.exec_driver_sql(
        RECORD_ERRORS_SQL,
        {
            "contacts": [r[0] for r in rows],
            "codes": [r[1] for r in rows],
            "messages": [r[2] for r in rows],
            "versions": [r[3] for r in rows],
        },
    )


MARK_FOR_PUSH_SQL = f"""
    INSERT INTO salesforce_push_state AS s (contact_id, requested_at, updated_at)
    SELECT c.id, now(), now() FROM contacts c
    WHERE c.email_normalized = ANY(SELECT {email_key_sql("e")} FROM unnest(%(emails)s::text[]) e)
    ON CONFLICT (contact_id) DO UPDATE SET requested_at = now(), error_code = NULL, error_message = NULL,
        error_at = NULL, error_contact_updated_at = NULL, updated_at = now()
    RETURNING (SELECT email FROM contacts WHERE id = s.contact_id)"""

KNOWN_EMAILS_SQL = f"""
    SELECT e FROM unnest(%(emails)s::text[]) e
    WHERE EXISTS (SELECT 1 FROM contacts c WHERE c.email_normalized = {email_key_sql("e")})"""


def mark_for_push(conn: sa.Connection, emails: Sequence[str]) -> tuple[int, list[str]]:
    """Mark the contacts with these emails for the next push ("sync later": created in Salesforce whatever
    the rules say, unless `never`); a standing error of theirs is cleared so they are tried again.
    Returns (contacts marked, the emails no contact has)."""
    marked = conn.exec_driver_sql(MARK_FOR_PUSH_SQL, {"emails": list(emails)}).all()
    known = {row[0] for row in conn.exec_driver_sql(KNOWN_EMAILS_SQL, {"emails": list(emails)}).all()}
    return len(marked), [e for e in emails if e not in known]


PUSH_SUMMARY_SQL = """
    SELECT count(*) FILTER (WHERE s.requested_at IS NOT NULL AND c.salesforce_id IS NULL) AS requested,
           count(*) FILTER (WHERE s.error_code IS NOT NULL) AS failed,
           count(*) FILTER (WHERE s.synced_at IS NOT NULL) AS synced
    FROM salesforce_push_state s JOIN contacts c ON c.id = s.contact_id"""

PUSH_ERRORS_SQL = """
    SELECT c.id AS contact_id, c.email, s.error_code, s.error_message, s.error_at
    FROM salesforce_push_state s JOIN contacts c ON c.id = s.contact_id
    WHERE s.error_code IS NOT NULL ORDER BY s.error_at DESC, c.id LIMIT %(limit)s"""


def push_summary(conn: sa.Connection) -> dict[str, int]:
    """For `status`: contacts marked for push and not yet in Salesforce, contacts whose last push Salesforce
    refused (waiting for a change), and contacts the push has synced."""
    row = conn.exec_driver_sql(PUSH_SUMMARY_SQL).mappings().one()
    return {key: int(value or 0) for key, value in row.items()}


def push_errors(conn: sa.Connection, limit: int = 50) -> list[dict[str, Any]]:
    """The contacts whose last push Salesforce refused, newest first, with Salesforce's code and message."""
    return fetch(conn, PUSH_ERRORS_SQL, {"limit": limit})
