"""Salesforce → store: one transaction stages a campaign's Salesforce members, matches their people to store
contacts, pairs them with the store members, takes what Salesforce decides and reports what it cannot import.

Every statement is set-based over the staged members (_cm_sf) and their pairing (_cm_pairs)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from conversion_sync.salesforce.campaigns.member_errors import ErrorTally, record_errors_sql
from conversion_sync.salesforce.campaigns.outcomes import MemberCounts
from conversion_sync.salesforce.campaigns.store_campaigns import Campaign
from conversion_sync.store.connection import prepare_bulk_transaction
from conversion_sync.store.contact_store import ContactStore
from conversion_sync.store.contacts import email_key_sql, lock_identities, trimmed_email_sql
from conversion_sync.store.identity import IdentityMatcher

STAGED_COLUMNS = (
    "member_id",
    "lead_id",
    "contact_sf_id",
    "person_id",
    "person_type",
    "email",
    "status",
    "last_modified",
)

CREATE_STAGED_MEMBERS_SQL = """
    CREATE TEMP TABLE _cm_sf (
        member_id text PRIMARY KEY, lead_id text, contact_sf_id text, person_id text,
        person_type text, email text, status text, last_modified timestamptz,
        type_status text, contact_id bigint, rank integer
    ) ON COMMIT DROP"""

COPY_STAGED_MEMBERS_SQL = f"COPY _cm_sf ({', '.join(STAGED_COLUMNS)}) FROM STDIN"

ANALYZE_STAGED_MEMBERS_SQL = "ANALYZE _cm_sf"

SET_TYPE_STATUS_SQL = """
    UPDATE _cm_sf s SET type_status = t.status
    FROM unnest(%(statuses)s::text[]) AS t(status) WHERE lower(t.status) = lower(s.status)"""
"""The store type's spelling of each Salesforce status (statuses compare case-insensitively)."""

LINK_KNOWN_PEOPLE_SQL = """
    UPDATE _cm_sf s SET contact_id = coalesce(
        (SELECT c.id FROM contacts c WHERE c.salesforce_id = s.contact_sf_id),
        (SELECT c.id FROM contacts c WHERE c.salesforce_id = s.lead_id))"""
"""A store contact linked to the member's Contact, else to its (converted) Lead."""

IMPORTABLE = "type_status IS NOT NULL"
"""Staged members whose status the campaign type knows: matching them may create store contacts."""
NOT_IMPORTABLE = "type_status IS NULL"
"""Staged members with a status unknown to the type: only matched, so they can pair with store members."""


def staged_identities_sql(condition: str) -> str:
    """The staged members still without a store contact, with an email, and meeting `condition` (IMPORTABLE
    or NOT_IMPORTABLE), as a table the identity matcher resolves."""
    return f"""
    CREATE TEMP TABLE _cm_identities ON COMMIT DROP AS
    SELECT member_id, person_id AS sf_id, person_type AS sf_type, {trimmed_email_sql("email")} AS email,
           NULL::bigint AS contact_id, NULL::text AS outcome
    FROM _cm_sf WHERE contact_id IS NULL AND {email_key_sql("email")} IS NOT NULL AND {condition}"""


SET_MATCHED_CONTACTS_SQL = """
    UPDATE _cm_sf s SET contact_id = i.contact_id FROM _cm_identities i
    WHERE i.member_id = s.member_id AND i.contact_id IS NOT NULL"""

DROP_IDENTITIES_SQL = "DROP TABLE _cm_identities"

RANK_MEMBERS_SQL = """
    UPDATE _cm_sf s SET rank = r.rank FROM (
        SELECT member_id, row_number() OVER (
            PARTITION BY contact_id ORDER BY last_modified DESC, member_id) AS rank
        FROM _cm_sf WHERE contact_id IS NOT NULL) r
    WHERE r.member_id = s.member_id"""
"""Two Salesforce members for one store contact: the most recently modified one (rank 1) pairs."""

REMOVE_DELETED_MEMBERS_SQL = """
    DELETE FROM campaign_members m
    WHERE m.campaign_id = %(campaign)s AND m.salesforce_member_id IS NOT NULL
      AND lower(m.status) IS NOT DISTINCT FROM lower(m.synced_status)
      AND NOT EXISTS (SELECT 1 FROM _cm_sf s WHERE s.member_id = m.salesforce_member_id)"""
"""Deleted in Salesforce after a sync, unchanged in the store since: removed in the store too."""

FORGET_STALE_MEMBER_IDS_SQL = """
    UPDATE campaign_members m
    SET salesforce_member_id = NULL, synced_status = NULL, salesforce_synced_at = NULL
    WHERE m.campaign_id = %(campaign)s AND m.salesforce_member_id IS NOT NULL
      AND NOT EXISTS (
          SELECT 1 FROM _cm_sf s
          WHERE s.member_id = m.salesforce_member_id AND s.contact_id = m.contact_id AND s.rank = 1)"""
"""A member id that no longer belongs to this store contact (deleted and changed in the store, or the
Salesforce person moved): forget it and the sync state; the pairing decides anew."""

PAIR_MEMBERS_SQL = """
    CREATE TEMP TABLE _cm_pairs ON COMMIT DROP AS
    SELECT s.member_id, s.contact_id, s.type_status, m.status AS store_status,
           m.contact_id IS NOT NULL AS in_store, d.both_changed,
           CASE
               WHEN m.contact_id IS NULL AND t.contact_id IS NOT NULL
                    AND coalesce(s.last_modified <= t.removed_at, true)
                   THEN 'delete_salesforce'
               WHEN m.contact_id IS NULL
                   THEN CASE WHEN s.type_status IS NULL THEN 'skip_status' ELSE 'import' END
               WHEN lower(m.status) = lower(s.status) THEN 'same'
               WHEN (d.sf_changed AND NOT d.store_changed)
                    OR (d.both_changed AND s.last_modified > m.updated_at)
                   THEN CASE WHEN s.type_status IS NULL THEN 'skip_status' ELSE 'update_store' END
               ELSE 'update_salesforce'
           END AS action
    FROM _cm_sf s
    LEFT JOIN campaign_members m ON m.campaign_id = %(campaign)s AND m.contact_id = s.contact_id
    LEFT JOIN campaign_member_tombstones t ON t.campaign_id = %(campaign)s AND t.contact_id = s.contact_id
    CROSS JOIN LATERAL (
        SELECT lower(s.status) IS DISTINCT FROM lower(m.synced_status) AS sf_changed,
               lower(m.status) IS DISTINCT FROM lower(m.synced_status) AS store_changed,
               lower(s.status) IS DISTINCT FROM lower(m.synced_status)
               AND lower(m.status) IS DISTINCT FROM lower(m.synced_status) AS both_changed
    ) d
    WHERE s.contact_id IS NOT NULL AND s.rank = 1"""
"""Each paired Salesforce member and what to do: import, same, update_store, update_salesforce, skip_status,
delete_salesforce (removed in the store after Salesforce last modified it: the tombstone wins)."""

TALLY_ACTIONS_SQL = "SELECT action, count(*) FROM _cm_pairs GROUP BY action"

COUNT_CONFLICTS_SQL = """
    SELECT count(*) FROM _cm_pairs
    WHERE action IN ('update_store', 'update_salesforce') AND both_changed"""

REMEMBER_MEMBER_IDS_SQL = """
    UPDATE campaign_members m SET salesforce_member_id = p.member_id
    FROM _cm_pairs p
    WHERE p.in_store AND m.campaign_id = %(campaign)s AND m.contact_id = p.contact_id
      AND m.salesforce_member_id IS DISTINCT FROM p.member_id"""
"""Pure bookkeeping: the store row of a paired member knows its Salesforce member id."""

MARK_SAME_SYNCED_SQL = """
    UPDATE campaign_members m SET synced_status = m.status, salesforce_synced_at = now()
    FROM _cm_pairs p
    WHERE p.action = 'same' AND m.campaign_id = %(campaign)s AND m.contact_id = p.contact_id
      AND lower(m.synced_status) IS DISTINCT FROM lower(m.status)"""

UPDATE_STORE_STATUSES_SQL = """
    UPDATE campaign_members m SET status = p.type_status, synced_status = p.type_status,
        updated_at = now(), salesforce_synced_at = now()
    FROM _cm_pairs p
    WHERE p.action = 'update_store' AND m.campaign_id = %(campaign)s AND m.contact_id = p.contact_id"""

INSERT_IMPORTED_MEMBERS_SQL = """
    INSERT INTO campaign_members (campaign_id, contact_id, status, updated_at, salesforce_member_id,
        salesforce_synced_at, synced_status)
    SELECT %(campaign)s, contact_id, type_status, now(), member_id, now(), type_status
    FROM _cm_pairs WHERE action = 'import'
    ON CONFLICT DO NOTHING"""

NOT_IMPORTED_SQL = """
    SELECT s.contact_id, s.email, s.member_id, s.person_id, 'salesforce_to_store', c.code, s.status,
           CASE c.code
               WHEN 'status_not_in_campaign_type' THEN concat(
                   'Salesforce status ''', s.status, ''' is not a status of campaign type ',
                   %(type)s::text, ' (', %(allowed)s::text, '); member not imported')
               WHEN 'no_email' THEN concat(
                   'the Salesforce ', s.person_type, ' ', s.person_id, ' has no email and is not ',
                   'linked to a store contact; member not imported')
               ELSE concat('another member of this Salesforce campaign is the same store contact ',
                   s.contact_id, '; member not imported')
           END
    FROM _cm_sf s LEFT JOIN _cm_pairs p ON p.member_id = s.member_id
    CROSS JOIN LATERAL (SELECT CASE
        WHEN s.type_status IS NULL THEN 'status_not_in_campaign_type'
        WHEN s.contact_id IS NULL THEN 'no_email'
        ELSE 'duplicate_person' END AS code) c
    WHERE p.action = 'skip_status' OR p.member_id IS NULL"""
"""Salesforce members not imported (status unknown to the type, no email, a second member for one contact)."""

REPORT_NOT_IMPORTED_SQL = record_errors_sql(NOT_IMPORTED_SQL)
"""Keeps an error per Salesforce member not imported (once: a standing one is only seen again)."""

CLEAR_OVERRIDDEN_TOMBSTONES_SQL = """
    DELETE FROM campaign_member_tombstones t USING _cm_pairs p
    WHERE t.campaign_id = %(campaign)s AND t.contact_id = p.contact_id AND p.action = 'import'"""
"""A member removed in the store but modified in Salesforce since (re-added there): Salesforce is newer and
wins; the member is imported and its tombstone goes."""

TOMBSTONED_MEMBERS_SQL = """
    SELECT p.member_id, p.contact_id, s.email, s.person_id, s.status FROM _cm_pairs p
    JOIN _cm_sf s ON s.member_id = p.member_id
    WHERE p.action = 'delete_salesforce' ORDER BY p.member_id"""
"""Salesforce members of removed store members, not modified in Salesforce since the removal: to delete."""

STORE_WINS_SQL = """
    SELECT p.member_id, p.contact_id, p.store_status AS status, s.person_id, s.email
    FROM _cm_pairs p JOIN _cm_sf s ON s.member_id = p.member_id
    WHERE p.action = 'update_salesforce' ORDER BY p.member_id"""
"""Paired members whose store status wins: written to Salesforce by the push."""


def staged_member(record: dict[str, Any]) -> tuple[Any, ...]:
    """A CampaignMember record → a row of _cm_sf (the person is the Contact when there is one)."""
    lead_id, contact_id = record.get("LeadId"), record.get("ContactId")
    lead, contact = record.get("Lead") or {}, record.get("Contact") or {}
    if contact_id:
        person_id, person_type = contact_id, "Contact"
        email = contact.get("Email") or lead.get("Email")
    else:
        person_id, person_type = lead_id, "Lead"
        email = lead.get("Email")
    return (
        record["Id"],
        lead_id,
        contact_id,
        person_id,
        person_type,
        email,
        record.get("Status"),
        record.get("LastModifiedDate"),
    )


@dataclass
class ImportResult:
    """What the push writes to Salesforce after an import."""

    updates: list[dict[str, Any]] = field(default_factory=list)
    """Paired members whose store status wins."""
    deletes: list[dict[str, Any]] = field(default_factory=list)
    """Salesforce members of members removed in the store (tombstones that win)."""


class MemberImport:
    """Imports a campaign's Salesforce members into the store campaign, one transaction per campaign."""

    def __init__(self, store: ContactStore, identity: IdentityMatcher, run_id: str) -> None:
        self.store = store
        self.identity = identity
        self.run_id = run_id

    def run(self, campaign: Campaign, records: list[dict[str, Any]], counts: MemberCounts) -> ImportResult:
        """Stage, match, pair, import; returns what the push must write to Salesforce."""
        params: dict[str, Any] = {
            "campaign": campaign.id,
            "statuses": campaign.type.statuses,
            "run": self.run_id,
            "type": campaign.type.name,
            "allowed": ", ".join(campaign.type.statuses),
        }
        with self.store.begin() as conn:
            prepare_bulk_transaction(conn)
            lock_identities(conn)
            stage_members(conn, [staged_member(record) for record in records], params)
            self._match_people(conn, IMPORTABLE, create=True, counts=counts)
            self._match_people(conn, NOT_IMPORTABLE, create=False, counts=counts)
            same = pair_members(conn, params, counts)
            take_salesforce_side(conn, params, counts)
            report_not_imported(conn, params, counts)
            counts.unchanged += same
            return ImportResult(
                updates=[dict(r) for r in conn.exec_driver_sql(STORE_WINS_SQL).mappings()],
                deletes=[dict(r) for r in conn.exec_driver_sql(TOMBSTONED_MEMBERS_SQL).mappings()],
            )

    def _match_people(
        self, conn: sa.Connection, condition: str, *, create: bool, counts: MemberCounts
    ) -> None:
        """Match (or, with `create`, create) store contacts for the staged members without one."""
        if conn.exec_driver_sql(staged_identities_sql(condition)).rowcount:
            matched = self.identity.resolve_table(
                conn,
                "_cm_identities",
                email_column="email",
                salesforce_id_column="sf_id",
                salesforce_type_column="sf_type",
                outcome_column="outcome",
                create=create,
            )
            counts.contacts_created += matched.created
            counts.contacts_linked += matched.linked_by_email
            conn.exec_driver_sql(SET_MATCHED_CONTACTS_SQL)
        conn.exec_driver_sql(DROP_IDENTITIES_SQL)


def stage_members(conn: sa.Connection, rows: list[tuple[Any, ...]], params: dict[str, Any]) -> None:
    """COPY the members into _cm_sf, with their type status and the store contacts already linked to them."""
    conn.exec_driver_sql(CREATE_STAGED_MEMBERS_SQL)
    raw = conn.connection.dbapi_connection
    assert raw is not None
    with raw.cursor() as cursor, cursor.copy(COPY_STAGED_MEMBERS_SQL) as copy:  # type: ignore[attr-defined]
        for row in rows:
            copy.write_row(row)
    conn.exec_driver_sql(ANALYZE_STAGED_MEMBERS_SQL)
    conn.exec_driver_sql(SET_TYPE_STATUS_SQL, params)
    conn.exec_driver_sql(LINK_KNOWN_PEOPLE_SQL)


def pair_members(conn: sa.Connection, params: dict[str, Any], counts: MemberCounts) -> int:
    """Rank, drop what Salesforce deleted, forget stale member ids, pair; returns the pairs already equal."""
    run = conn.exec_driver_sql
    run(RANK_MEMBERS_SQL)
    counts.removed_in_store += run(REMOVE_DELETED_MEMBERS_SQL, params).rowcount
    run(FORGET_STALE_MEMBER_IDS_SQL, params)
    run(PAIR_MEMBERS_SQL, params)
    tallies: dict[str, int] = {str(action): int(n) for action, n in run(TALLY_ACTIONS_SQL).all()}
    counts.conflicts += run(COUNT_CONFLICTS_SQL).scalar_one()
    return tallies.get("same", 0)


def take_salesforce_side(conn: sa.Connection, params: dict[str, Any], counts: MemberCounts) -> None:
    """Remember member ids, mark equal pairs synced, take Salesforce's newer statuses, import new members."""
    run = conn.exec_driver_sql
    run(REMEMBER_MEMBER_IDS_SQL, params)
    run(CLEAR_OVERRIDDEN_TOMBSTONES_SQL, params)
    run(MARK_SAME_SYNCED_SQL, params)
    counts.updated_in_store += run(UPDATE_STORE_STATUSES_SQL, params).rowcount
    counts.imported += run(INSERT_IMPORTED_MEMBERS_SQL, params).rowcount


def report_not_imported(conn: sa.Connection, params: dict[str, Any], counts: MemberCounts) -> None:
    """Keep an error per Salesforce member not imported, and count them by reason."""
    rows = conn.exec_driver_sql(REPORT_NOT_IMPORTED_SQL, params).all()
    counts.skipped_status += sum(1 for code, _ in rows if code == "status_not_in_campaign_type")
    counts.skipped_no_email += sum(1 for code, _ in rows if code == "no_email")
    tally = ErrorTally.of(rows)
    counts.errors += tally.new_by_code["duplicate_person"]
    counts.standing_errors += tally.standing
