"""Store campaign members in bulk: many added from a CSV file in one transaction, members removed on both sides
(with a tombstone), and the member list with each member's Salesforce side."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import sqlalchemy as sa

from conversion_sync.salesforce.campaigns.store_campaigns import Campaign, CampaignError, get_campaign
from conversion_sync.store.connection import prepare_bulk_transaction
from conversion_sync.store.contacts import email_invalid_sql, email_key_sql, trimmed_email_sql
from conversion_sync.store.identity import IdentityMatcher

CSV_COLUMNS = ("email", "status")

# -- add-members: CSV rows staged by COPY, checked and written with set-based statements ------------------

CREATE_CSV_ROWS_SQL = """
    CREATE TEMP TABLE _cm_csv (
        line integer PRIMARY KEY, email text, status text, email_key text, type_status text, problem text
    ) ON COMMIT DROP"""

COPY_CSV_ROWS_SQL = "COPY _cm_csv (line, email, status) FROM STDIN"

CLEAN_CSV_ROWS_SQL = f"""
    UPDATE _cm_csv SET email = {trimmed_email_sql("email")}, email_key = {email_key_sql("email")},
        status = coalesce(NULLIF(btrim(status), ''), %(default)s)"""
"""The email as it is stored and its matching key; a blank status is the type's default."""

SET_CSV_TYPE_STATUS_SQL = """
    UPDATE _cm_csv s SET type_status = t.status
    FROM unnest(%(statuses)s::text[]) AS t(status) WHERE lower(t.status) = lower(s.status)"""
"""The type's spelling of each row's status (statuses compare case-insensitively)."""

CSV_PROBLEMS_SQL = (
    "UPDATE _cm_csv SET problem = 'no email' WHERE email_key IS NULL",
    f"""UPDATE _cm_csv SET problem = format('''%%s'' is not an email address', email)
    WHERE problem IS NULL AND {email_invalid_sql("email")}""",
    """UPDATE _cm_csv SET problem = format('status ''%%s'' is not allowed in campaign %%s (type %%s); allowed: %%s',
        status, %(campaign_name)s::text, %(type)s::text, %(allowed)s::text)
    WHERE problem IS NULL AND type_status IS NULL""",
    """UPDATE _cm_csv s SET problem = format('%%s is listed again on line %%s, which wins; this line is ignored',
        s.email, d.last_line)
    FROM (SELECT email_key, max(line) AS last_line FROM _cm_csv WHERE problem IS NULL
          GROUP BY email_key HAVING count(*) > 1) d
    WHERE s.problem IS NULL AND s.email_key = d.email_key AND s.line < d.last_line""",
)
"""Each row's first problem: no email, not an email address, a status the type lacks, an email listed again
(its last line wins, as if the lines were added one after the other)."""

CREATE_CSV_PEOPLE_SQL = """
    CREATE TEMP TABLE _cm_csv_people ON COMMIT DROP AS
    SELECT line, email, email_key, type_status, NULL::bigint AS contact_id, NULL::text AS outcome
    FROM _cm_csv WHERE problem IS NULL"""
"""The good rows, one per email key: the identity matcher fills contact_id (matching or creating contacts)."""

UPSERT_CSV_MEMBERS_SQL = """
    WITH before AS (
        SELECT m.contact_id FROM campaign_members m JOIN _cm_csv_people p ON p.contact_id = m.contact_id
        WHERE m.campaign_id = %(campaign)s
    ), upsert AS (
        INSERT INTO campaign_members (campaign_id, contact_id, status, updated_at)
        SELECT %(campaign)s, contact_id, type_status, now() FROM _cm_csv_people WHERE contact_id IS NOT NULL
        ON CONFLICT (campaign_id, contact_id) DO UPDATE SET status = EXCLUDED.status, updated_at = now()
        WHERE campaign_members.status IS DISTINCT FROM EXCLUDED.status
        RETURNING contact_id
    )
    SELECT count(*) FILTER (WHERE b.contact_id IS NULL AND u.contact_id IS NOT NULL) AS added,
           count(*) FILTER (WHERE b.contact_id IS NOT NULL AND u.contact_id IS NOT NULL) AS updated,
           count(*) FILTER (WHERE u.contact_id IS NULL) AS unchanged
    FROM _cm_csv_people p LEFT JOIN before b ON b.contact_id = p.contact_id
    LEFT JOIN upsert u ON u.contact_id = p.contact_id"""
"""Add the members, or change their status (a changed status moves updated_at: the next reconciliation pushes
it); counts added, updated, unchanged."""

CLEAR_CSV_TOMBSTONES_SQL = """
    DELETE FROM campaign_member_tombstones t USING _cm_csv_people p
    WHERE t.campaign_id = %(campaign)s AND t.contact_id = p.contact_id"""
"""Added again in the store: a member removed earlier is no longer removed."""

CSV_PROBLEM_ROWS_SQL = "SELECT line, email, problem FROM _cm_csv WHERE problem IS NOT NULL ORDER BY line"

# -- remove-member ------------------------------------------------------------------------------------

REMOVE_MEMBER_SQL = f"""
    WITH gone AS (
        DELETE FROM campaign_members m USING contacts c
        WHERE m.campaign_id = %(campaign)s AND c.id = m.contact_id
          AND c.email_normalized = {email_key_sql("%(email)s")}
        RETURNING m.contact_id, c.email, m.status, m.salesforce_member_id
    )
    INSERT INTO campaign_member_tombstones AS t (campaign_id, contact_id, email, status, salesforce_member_id)
    SELECT %(campaign)s, contact_id, email, status, salesforce_member_id FROM gone
    ON CONFLICT (campaign_id, contact_id) DO UPDATE SET email = EXCLUDED.email, status = EXCLUDED.status,
        salesforce_member_id = coalesce(EXCLUDED.salesforce_member_id, t.salesforce_member_id),
        removed_at = now(), salesforce_deleted_at = NULL
    RETURNING contact_id, email, status, salesforce_member_id"""
"""Remove the campaign's members with this email (every contact with it) and keep a tombstone for each."""

CLEAR_TOMBSTONE_SQL = (
    "DELETE FROM campaign_member_tombstones WHERE campaign_id = :campaign AND contact_id = :contact"
)

MARK_DELETED_SQL = """
    UPDATE campaign_member_tombstones SET salesforce_deleted_at = now()
    WHERE campaign_id = :campaign AND salesforce_member_id = ANY(:members)"""

# -- members --------------------------------------------------------------------------------------------

MEMBERS_SQL = """
    SELECT c.email, m.status, m.contact_id, c.salesforce_id AS person_id, c.salesforce_type AS person_type,
           m.salesforce_member_id AS member_id, m.synced_status, m.updated_at, e.code AS error_code,
           e.message AS error
    FROM campaign_members m JOIN contacts c ON c.id = m.contact_id
    LEFT JOIN LATERAL (
        SELECT code, message FROM campaign_member_errors e
        WHERE e.campaign_id = m.campaign_id AND e.contact_id = m.contact_id AND e.last_run_id = %(last_run)s
        ORDER BY e.id DESC LIMIT 1
    ) e ON true
    WHERE m.campaign_id = %(campaign)s
    ORDER BY c.email_normalized COLLATE "C", m.contact_id"""
"""Each member, its contact's Salesforce person, its CampaignMember, and an error of the campaign's latest run."""

TOMBSTONES_SQL = """
    SELECT t.email, t.status, t.contact_id, c.salesforce_id AS person_id, c.salesforce_type AS person_type,
           t.salesforce_member_id AS member_id, t.removed_at, t.salesforce_deleted_at
    FROM campaign_member_tombstones t JOIN contacts c ON c.id = t.contact_id
    WHERE t.campaign_id = %(campaign)s ORDER BY t.removed_at, t.contact_id"""


@dataclass
class CsvProblem:
    """A line of an add-members file that was not added, and why."""

    line: int
    email: str
    problem: str


@dataclass
class BulkAdd:
    """What `add_members_csv` did."""

    rows: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    contacts_created: int = 0
    problems: list[CsvProblem] = field(default_factory=list)


@dataclass(frozen=True)
class Member:
    """A campaign member (or a removed one) as `campaigns members` shows it."""

    email: str | None
    status: str
    contact_id: int
    person_id: str | None
    person_type: str | None
    member_id: str | None
    state: str
    detail: str = ""


@dataclass(frozen=True)
class RemovedMember:
    """A member `remove_member` removed (its tombstone)."""

    contact_id: int
    email: str | None
    status: str
    salesforce_member_id: str | None


def read_member_csv(stream: TextIO) -> tuple[list[tuple[int, str, str | None]], list[CsvProblem]]:
    """(line, email, status) of each non-blank row of an `email[,status]` CSV, and the lines whose shape is
    wrong. A first row naming an `email` column (and maybe `status`, in any order, other columns ignored) is
    a header; without one, the columns are email, then status."""
    reader = csv.reader(stream)
    rows: list[tuple[int, str, str | None]] = []
    problems: list[CsvProblem] = []
    email_at, status_at, headerless, first = 0, 1, True, True
    for record in reader:
        cells = [cell.strip() for cell in record]
        if not any(cells):
            continue
        if first:
            first = False
            names = [cell.lower() for cell in cells]
            if "email" in names:
                email_at, headerless = names.index("email"), False
                status_at = names.index("status") if "status" in names else -1
                continue
        if headerless and len([c for c in cells[2:] if c]) > 0:
            problems.append(
                CsvProblem(reader.line_num, cells[0], f"{len(cells)} columns; expected email[,status]")
            )
            continue
        email = cells[email_at] if email_at < len(cells) else ""
        status = cells[status_at] if 0 <= status_at < len(cells) else None
        rows.append((reader.line_num, email, status or None))
    return rows, problems


def add_members_csv(
    conn: sa.Connection,
    campaign_name: str,
    stream: TextIO,
    identity: IdentityMatcher | None = None,
) -> BulkAdd:
    """Add every good row of an `email[,status]` CSV to a campaign in the caller's transaction, with set-based
    statements: contacts matched or created by email, members added or their status changed, removed members'
    tombstones cleared. Bad rows (no email, not an email address, unknown status, an email listed again) are
    reported with their line number; the good rows are added all the same."""
    campaign = get_campaign(conn, campaign_name)
    rows, problems = read_member_csv(stream)
    result = BulkAdd(rows=len(rows) + len(problems))
    prepare_bulk_transaction(conn)
    run = conn.exec_driver_sql
    run(CREATE_CSV_ROWS_SQL)
    _copy_rows(conn, COPY_CSV_ROWS_SQL, rows)
    params = _campaign_params(campaign)
    for statement in (CLEAN_CSV_ROWS_SQL, SET_CSV_TYPE_STATUS_SQL, *CSV_PROBLEMS_SQL):
        run(statement, params)
    run(CREATE_CSV_PEOPLE_SQL)
    matched = (identity or IdentityMatcher()).resolve_table(
        conn,
        "_cm_csv_people",
        email_column="email",
        outcome_column="outcome",
        unique_emails=True,
        normalized_email_column="email_key",
    )
    result.contacts_created = matched.created
    counts = run(UPSERT_CSV_MEMBERS_SQL, params).mappings().one()
    result.added, result.updated, result.unchanged = counts["added"], counts["updated"], counts["unchanged"]
    run(CLEAR_CSV_TOMBSTONES_SQL, params)
    problems += [CsvProblem(line, email or "", problem) for line, email, problem in run(CSV_PROBLEM_ROWS_SQL)]
    result.problems = sorted(problems, key=lambda p: p.line)
    return result


def add_members_file(conn: sa.Connection, campaign_name: str, path: Path) -> BulkAdd:
    """`add_members_csv` for a file (UTF-8, with or without a byte order mark)."""
    with path.open(encoding="utf-8-sig", newline="") as stream:
        return add_members_csv(conn, campaign_name, stream)


def _campaign_params(campaign: Campaign) -> dict[str, Any]:
    return {
        "campaign": campaign.id,
        "campaign_name": campaign.name,
        "type": campaign.type.name,
        "statuses": campaign.type.statuses,
        "allowed": ", ".join(campaign.type.statuses),
        "default": campaign.type.default_status,
    }


def _copy_rows(conn: sa.Connection, copy_sql: str, rows: Iterable[tuple[Any, ...]]) -> None:
    raw = conn.connection.dbapi_connection
    assert raw is not None
    with raw.cursor() as cursor, cursor.copy(copy_sql) as copy:  # type: ignore[attr-defined]
        for row in rows:
            copy.write_row(row)


def remove_member(conn: sa.Connection, campaign_name: str, email: str) -> list[RemovedMember]:
    """Remove the campaign's member(s) with this email and keep a tombstone for each: the next reconciliation
    deletes its Salesforce member and does not import it back (unless Salesforce re-adds it later)."""
    campaign = get_campaign(conn, campaign_name)
    rows = conn.exec_driver_sql(REMOVE_MEMBER_SQL, {"campaign": campaign.id, "email": email.strip()}).all()
    if not rows:
        raise CampaignError(f"'{email.strip()}' is not a member of campaign '{campaign.name}'")
    return [RemovedMember(*row) for row in rows]


def clear_tombstone(conn: sa.Connection, campaign_id: int, contact_id: int) -> None:
    """Added again in the store: the member is no longer removed."""
    conn.execute(sa.text(CLEAR_TOMBSTONE_SQL), {"campaign": campaign_id, "contact": contact_id})


def mark_deleted_in_salesforce(conn: sa.Connection, campaign_id: int, member_ids: list[str]) -> None:
    """Tombstones whose Salesforce members were deleted right away (not left to the next reconciliation)."""
    if member_ids:
        conn.execute(sa.text(MARK_DELETED_SQL), {"campaign": campaign_id, "members": member_ids})


def campaign_members(conn: sa.Connection, campaign_name: str, *, removed: bool = False) -> list[Member]:
    """The campaign's members with their Salesforce side and state, then (with `removed`) removed members."""
    campaign = get_campaign(conn, campaign_name)
    last_run = conn.execute(
        sa.text("SELECT last_run_id FROM campaigns WHERE id = :id"), {"id": campaign.id}
    ).scalar()
    rows = conn.exec_driver_sql(MEMBERS_SQL, {"campaign": campaign.id, "last_run": last_run}).mappings()
    members = [_member(campaign, row) for row in rows]
    if removed:
        tombstones = conn.exec_driver_sql(TOMBSTONES_SQL, {"campaign": campaign.id}).mappings()
        members += [_removed(campaign, row) for row in tombstones]
    return members


def _member(campaign: Campaign, row: Any) -> Member:
    state, detail = _member_state(campaign, row)
    return Member(
        row["email"],
        row["status"],
        row["contact_id"],
        row["person_id"],
        row["person_type"],
        row["member_id"],
        state,
        detail,
    )


def _member_state(campaign: Campaign, row: Any) -> tuple[str, str]:
    if campaign.salesforce_link == "none":
        return "not linked", ""
    if row["error_code"]:
        return "error", f"{row['error_code']}: {row['error']}"
    synced = row["synced_status"]
    if row["member_id"] and synced is not None and str(synced).lower() == str(row["status"]).lower():
        return "pushed", ""
    return "pending", "status changed" if row["member_id"] else "not in Salesforce yet"


def _removed(campaign: Campaign, row: Any) -> Member:
    deleted: datetime | None = row["salesforce_deleted_at"]
    if deleted is not None:
        detail = f"deleted in Salesforce {deleted:%Y-%m-%d %H:%M:%S}"
    elif row["member_id"] and campaign.salesforce_link != "none":
        detail = "Salesforce member deleted at the next reconciliation"
    else:
        detail = ""
    return Member(
        row["email"],
        row["status"] or "",
        row["contact_id"],
        row["person_id"],
        row["person_type"],
        row["member_id"],
        "removed",
        f"removed {row['removed_at']:%Y-%m-%d %H:%M:%S}" + (f"; {detail}" if detail else ""),
    )
