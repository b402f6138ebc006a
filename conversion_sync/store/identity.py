"""Identity matching: staged (email, Salesforce id) pairs → contact ids, set-based and race-free."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import sqlalchemy as sa

from conversion_sync.store.contacts import email_key_sql, lock_identities, trimmed_email_sql

if TYPE_CHECKING:
    import psycopg


@dataclass
class IdentityCounts:
    """How the distinct identities of one resolution were matched."""

    matched_by_salesforce_id: int = 0
    linked_by_email: int = 0
    matched_by_email: int = 0
    created: int = 0
    unresolved: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


_KEYS = "_identity_keys"


def _key_expressions(prefix: str, email_column: str, salesforce_id_column: str | None) -> tuple[str, str]:
    """SQL for the normalised Salesforce id and email of a staged row (blank counts as missing)."""
    sf_id = f"NULLIF(btrim({prefix}{salesforce_id_column}), '')" if salesforce_id_column else "NULL::text"
    return sf_id, email_key_sql(f"{prefix}{email_column}")


def _latest_contacts(emails_table: str, normalized: str) -> str:
    """SQL: the most recently updated contact (id, email_normalized) for each email of `emails_table` (aliased
    t; `normalized` is its normalized email). A join, not IN (…): the table has each email once."""
    return f"""SELECT DISTINCT ON (c.email_normalized COLLATE "C") c.id, c.email_normalized
        FROM contacts c JOIN {emails_table} t ON c.email_normalized = {normalized}
        ORDER BY c.email_normalized COLLATE "C", c.updated_at DESC, c.id DESC"""


def _stage_keys_sql(
    table: str, email_column: str, salesforce_id_column: str | None, salesforce_type_column: str | None
) -> str:
    """SQL: the temporary table of distinct identities of `table`: one row per Salesforce id, and one per
    normalized email among the rows without a Salesforce id."""
    sf_id, email_norm = _key_expressions("", email_column, salesforce_id_column)
    sf_type = salesforce_type_column or "NULL::text"
    email = trimmed_email_sql(email_column)
    return f"""CREATE TEMP TABLE {_KEYS} ON COMMIT DROP AS
        SELECT {sf_id} AS salesforce_id, min({sf_type}) AS salesforce_type,
               min({email_norm}) AS email_norm, min({email}) AS email,
               NULL::bigint AS contact_id, NULL::text AS outcome
        FROM {table} WHERE {sf_id} IS NOT NULL GROUP BY 1
        UNION ALL
        SELECT NULL, NULL, {email_norm}, min({email}), NULL::bigint, NULL::text
        FROM {table} WHERE {sf_id} IS NULL AND {email_norm} IS NOT NULL GROUP BY 3"""


INDEX_KEYS = (
    f"""CREATE INDEX ON {_KEYS} (email_norm); CREATE INDEX ON {_KEYS} (salesforce_id); ANALYZE {_KEYS}"""
)
"""Temporary tables are never auto-analysed: the planner needs the keys' row counts for hash joins. The indexes
keep the write-back's cost linear whatever it estimates for the caller's table (often unanalysed, and then taken
to be small): a nested loop over it probes the keys by index instead of scanning them once per row, which made
10,000 new identities take 100 s (n² calls of the e-mail key function)."""

# Rule 1: the Salesforce id decides.
_MATCH_BY_SALESFORCE_ID = f"""UPDATE {_KEYS} k SET contact_id = c.id, outcome = 'matched_by_salesforce_id'
    FROM contacts c WHERE k.salesforce_id IS NOT NULL AND c.salesforce_id = k.salesforce_id"""

# Rule 2 for Salesforce records: link the most recently updated unlinked contact with the email; several new
# Salesforce records with one email take the unlinked contacts in recency order.
_LINK_BY_EMAIL = f"""WITH wanted AS (
        SELECT ctid AS key_row, email_norm,
               row_number() OVER (PARTITION BY email_norm ORDER BY salesforce_id) AS rank
        FROM {_KEYS} WHERE contact_id IS NULL AND salesforce_id IS NOT NULL AND email_norm IS NOT NULL
    ), candidates AS (
        SELECT id, email_normalized,
               row_number() OVER (PARTITION BY email_normalized ORDER BY updated_at DESC, id DESC) AS rank
        FROM contacts
        WHERE salesforce_id IS NULL AND email_normalized IN (SELECT email_norm FROM wanted)
    )
    UPDATE {_KEYS} k SET contact_id = c.id, outcome = 'linked_by_email'
    FROM wanted w JOIN candidates c ON c.email_normalized = w.email_norm AND c.rank = w.rank
    WHERE k.ctid = w.key_row"""

_LINK_CONTACTS = f"""UPDATE contacts c SET salesforce_id = k.salesforce_id, salesforce_type = k.salesforce_type,
           updated_at = now()
    FROM {_KEYS} k WHERE k.outcome = 'linked_by_email' AND c.id = k.contact_id"""

# Rule 3 for Salesforce records: a new contact each.
_CREATE_FOR_SALESFORCE_IDS = f"""WITH created AS (
        INSERT INTO contacts (email, email_normalized, salesforce_id, salesforce_type)
        SELECT email, email_norm, salesforce_id, salesforce_type FROM {_KEYS}
        WHERE contact_id IS NULL AND salesforce_id IS NOT NULL ORDER BY email_norm
        RETURNING id, salesforce_id
    )
    UPDATE {_KEYS} k SET contact_id = created.id, outcome = 'created'
    FROM created WHERE k.salesforce_id = created.salesforce_id"""

# Rule 2 for plain emails: the most recently updated contact with the email, linked or not.
_MATCH_BY_EMAIL = f"""UPDATE {_KEYS} k SET contact_id = m.id, outcome = 'matched_by_email'
    FROM (
        SELECT DISTINCT ON (email_normalized) id, email_normalized FROM contacts
        WHERE email_normalized IN (
            SELECT email_norm FROM {_KEYS} WHERE contact_id IS NULL AND salesforce_id IS NULL)
        ORDER BY email_normalized, updated_at DESC, id DESC
    ) m
    WHERE k.contact_id IS NULL AND k.salesforce_id IS NULL AND k.email_norm = m.email_normalized"""

# Rule 3 for plain emails.
_CREATE_FOR_EMAILS = f"""WITH created AS (
        INSERT INTO contacts (email, email_normalized)
        SELECT email, email_norm FROM {_KEYS} WHERE contact_id IS NULL AND salesforce_id IS NULL
        ORDER BY email_norm
        RETURNING id, email_normalized
    )
    UPDATE {_KEYS} k SET contact_id = created.id, outcome = 'created'
    FROM created WHERE k.salesforce_id IS NULL AND k.email_norm = created.email_normalized"""

_COUNT_UNRESOLVED = f"SELECT count(*) FROM {_KEYS} WHERE contact_id IS NULL"


def _write_back_sql(
    table: str,
    email_column: str,
    salesforce_id_column: str | None,
    contact_column: str,
    outcome_column: str | None,
) -> list[str]:
    """SQL: copy each resolved identity's contact (and outcome) back to the rows of `table` that carry it."""
    s_sf_id, s_email_norm = _key_expressions("s.", email_column, salesforce_id_column)
    targets = f"{contact_column} = k.contact_id" + (
        f", {outcome_column} = k.outcome" if outcome_column else ""
    )
    statements = []
    if salesforce_id_column:
        statements.append(
            f"""UPDATE {table} s SET {targets} FROM {_KEYS} k
            WHERE k.contact_id IS NOT NULL AND k.salesforce_id IS NOT NULL AND k.salesforce_id = {s_sf_id}"""
        )
    statements.append(
        f"""UPDATE {table} s SET {targets} FROM {_KEYS} k
        WHERE k.contact_id IS NOT NULL AND k.salesforce_id IS NULL AND k.email_norm = {s_email_norm}
          AND {s_sf_id} IS NULL"""
    )
    return statements


class IdentityMatcher:
    """Resolves contacts for a staged set of identities, following three rules.

    1. a contact linked to the Salesforce id is always the one;
    2. else the most recently updated contact with that email not linked to a different Salesforce id
       (it gets linked);
    3. else a new contact.

    It holds no settings; Dagster jobs get one from the `identity` resource (conversion_sync.defs.resources).
    """

    def resolve_table(
        self,
        conn: sa.Connection,
        table: str,
        *,
        email_column: str = "email",
        salesforce_id_column: str | None = None,
        salesforce_type_column: str | None = None,
        contact_column: str = "contact_id",
        outcome_column: str | None = None,
        create: bool = True,
        unique_emails: bool = False,
        normalized_email_column: str | None = None,
    ) -> IdentityCounts:
        """Fill `contact_column` of every row in the staged `table`; one statement per rule.

        Must run inside a transaction; holds the identity lock until it commits, so concurrent
        resolutions of the same new emails create each contact once. `unique_emails` promises that
        the table has no Salesforce ids, an email in every row and no two rows with one email: the rules then
        run on the table itself (or an updatable view), reading `normalized_email_column` if it has one.
        """
        lock_identities(conn)
        if unique_emails and not salesforce_id_column:
            return self._resolve_unique_emails(
                conn, table, email_column, contact_column, outcome_column, create, normalized_email_column
            )
        run = conn.exec_driver_sql
        run(f"DROP TABLE IF EXISTS {_KEYS}")
        run(_stage_keys_sql(table, email_column, salesforce_id_column, salesforce_type_column))
        run(INDEX_KEYS)
        counts = self._apply_rules(conn, create)
        for statement in _write_back_sql(
            table, email_column, salesforce_id_column, contact_column, outcome_column
        ):
            run(statement)
        run(f"DROP TABLE {_KEYS}")
        return counts

    def _apply_rules(self, conn: sa.Connection, create: bool) -> IdentityCounts:
        """The three rules over the staged keys, one statement each, Salesforce ids before plain emails."""
        run = conn.exec_driver_sql
        counts = IdentityCounts()
        counts.matched_by_salesforce_id = run(_MATCH_BY_SALESFORCE_ID).rowcount
        counts.linked_by_email = run(_LINK_BY_EMAIL).rowcount
        run(_LINK_CONTACTS)
        if create:
            counts.created += run(_CREATE_FOR_SALESFORCE_IDS).rowcount
        counts.matched_by_email = run(_MATCH_BY_EMAIL).rowcount
        if create:
            counts.created += run(_CREATE_FOR_EMAILS).rowcount
        counts.unresolved = run(_COUNT_UNRESOLVED).scalar_one()
        return counts

    def _resolve_unique_emails(
        self,
        conn: sa.Connection,
        table: str,
        email_column: str,
        contact_column: str,
        outcome_column: str | None,
        create: bool,
        normalized_column: str | None,
    ) -> IdentityCounts:
        """Rules 2 and 3 for plain emails, straight on a table with one row per email (no Salesforce ids):
        no copy of the keys is needed. `normalized_column`, if the table has one, holds each email normalized
        as the contacts' email_normalized is (not computed again per row)."""

        def norm(prefix: str) -> str:
            return (
                f"{prefix}{normalized_column}"
                if normalized_column
                else _key_expressions(prefix, email_column, None)[1]
            )

        s_email_norm = norm("s.")

        def outcome(name: str) -> str:
            return f", {outcome_column} = '{name}'" if outcome_column else ""

        counts = IdentityCounts()
        counts.matched_by_email = conn.exec_driver_sql(
            f"""UPDATE {table} s SET {contact_column} = m.id{outcome("matched_by_email")}
            FROM ({_latest_contacts(table, norm("t."))}) m
            WHERE m.email_normalized = {s_email_norm}"""
        ).rowcount
        if create:
            counts.created = self._create_missing(
                conn, table, email_column, norm, contact_column, outcome_column
            )
        # every row has an email (the unique_emails promise): the rest have no contact
        rows = conn.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar_one()
        counts.unresolved = rows - counts.matched_by_email - counts.created
        return counts

    def _create_missing(
        self,
        conn: sa.Connection,
        table: str,
        email_column: str,
        norm: Callable[[str], str],
        contact_column: str,
        outcome_column: str | None,
    ) -> int:
        """Rule 3: a new contact for each row of `table` (one per email) left without one. `norm(prefix)` is
        the SQL for a row's normalized email."""
        outcome = f", {outcome_column} = 'created'" if outcome_column else ""
        return conn.exec_driver_sql(
            f"""WITH created AS (
                INSERT INTO contacts (email, email_normalized)
                SELECT {trimmed_email_sql(email_column)}, {norm("")} FROM {table}
                WHERE {contact_column} IS NULL AND {norm("")} IS NOT NULL
                ORDER BY {norm("")} COLLATE "C"  -- byte order: the index on email_normalized fills page by page
                RETURNING id, email_normalized
            )
            UPDATE {table} s SET {contact_column} = created.id{outcome}
            FROM created WHERE {norm("s.")} = created.email_normalized"""
        ).rowcount

    def create_email_table(
        self, conn: sa.Connection, table: str, emails_select: str, *, create: bool = True
    ) -> IdentityCounts:
        """Create the temporary table `table` (email, email_norm, contact_id) from `emails_select`, which yields
        (email, email_norm) once per normalized email, with no Salesforce ids: rule 2 is applied while the table
        is built (one join and one sort, not an update of every row afterwards), then rule 3 if `create`."""
        lock_identities(conn)
        conn.exec_driver_sql(
            f"""CREATE TEMP TABLE {table} ON COMMIT DROP AS
            SELECT DISTINCT ON (e.email_norm COLLATE "C") e.email, e.email_norm, c.id AS contact_id
            FROM ({emails_select}) e LEFT JOIN contacts c ON c.email_normalized = e.email_norm
            ORDER BY e.email_norm COLLATE "C", c.updated_at DESC NULLS LAST, c.id DESC;
            ANALYZE {table}"""
        )
        rows, matched = conn.exec_driver_sql(f"SELECT count(*), count(contact_id) FROM {table}").one()
        counts = IdentityCounts(matched_by_email=matched)
        if create:
            counts.created = self._create_missing(
                conn, table, "email", lambda prefix: f"{prefix}email_norm", "contact_id", None
            )
        counts.unresolved = rows - matched - counts.created
        return counts

    def resolve(
        self,
        conn: sa.Connection,
        identities: Iterable[tuple[str | None, str | None, str | None]],
        *,
        create: bool = True,
    ) -> tuple[list[int | None], IdentityCounts]:
        """Resolve (email, salesforce_id, salesforce_type) tuples; returns contact ids in input order."""
        rows: Sequence[tuple[str | None, str | None, str | None]] = list(identities)
        conn.exec_driver_sql(
            "CREATE TEMP TABLE IF NOT EXISTS _identity_input (ord bigint, email text, salesforce_id text, "
            "salesforce_type text, contact_id bigint) ON COMMIT DROP"
        )
        conn.exec_driver_sql("TRUNCATE _identity_input")
        raw = cast("psycopg.Connection[Any]", conn.connection.dbapi_connection)
        with (
            raw.cursor() as cursor,
            cursor.copy(
                "COPY _identity_input (ord, email, salesforce_id, salesforce_type) FROM STDIN"
            ) as copy,
        ):
            for ord_, (email, sf_id, sf_type) in enumerate(rows):
                copy.write_row((ord_, email, sf_id, sf_type))
        counts = self.resolve_table(
            conn,
            "_identity_input",
            salesforce_id_column="salesforce_id",
            salesforce_type_column="salesforce_type",
            create=create,
        )
        result = conn.exec_driver_sql("SELECT contact_id FROM _identity_input ORDER BY ord").scalars().all()
        return list(result), counts
