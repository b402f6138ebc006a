"""What a reconciliation could not do, kept in campaign_member_errors per run (for 30 days) and previewed in
the run's report."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa

from conversion_sync.salesforce.campaigns.salesforce_writes import RecordResult
from conversion_sync.store.contact_store import ContactStore

ERROR_PREVIEW_LIMIT = 20
ERROR_RETENTION_DAYS = 30

Direction = Literal["salesforce_to_store", "store_to_salesforce", "link"]

INSERT_MEMBER_ERRORS_SQL = """
    INSERT INTO campaign_member_errors (run_id, campaign_id, contact_id, email, salesforce_member_id,
        salesforce_person_id, direction, code, status, message)
    SELECT %(run)s, %(campaign)s, v.contact_id, v.email, v.member_id, v.person_id, v.direction, v.code,
           v.status, v.message
    FROM unnest(%(contacts)s::bigint[], %(emails)s::text[], %(members)s::text[], %(people)s::text[],
                %(directions)s::text[], %(codes)s::text[], %(statuses)s::text[], %(messages)s::text[])
        AS v(contact_id, email, member_id, person_id, direction, code, status, message)"""

DELETE_EXPIRED_ERRORS_SQL = (
    "DELETE FROM campaign_member_errors WHERE created_at < now() - make_interval(days => %s)"
)

RUN_ERRORS_PREVIEW_SQL = """
    SELECT c.name AS campaign, e.direction, e.code, e.email, e.contact_id,
           e.salesforce_person_id, e.status, e.message
    FROM campaign_member_errors e JOIN campaigns c ON c.id = e.campaign_id
    WHERE e.run_id = %s ORDER BY e.id LIMIT %s"""


@dataclass
class MemberError:
    """One row of campaign_member_errors."""

    direction: Direction
    code: str
    message: str
    contact_id: int | None = None
    email: str | None = None
    member_id: str | None = None
    person_id: str | None = None
    status: str | None = None


def push_error(row: dict[str, Any], result: RecordResult, what: str) -> MemberError:
    """The error of a store member Salesforce refused (`what` says which write)."""
    return MemberError(
        "store_to_salesforce",
        result.code or "UNKNOWN_ERROR",
        f"{what}: {result.message}",
        contact_id=row["contact_id"],
        email=row.get("email"),
        member_id=row.get("member_id"),
        person_id=row.get("salesforce_id") or row.get("person_id"),
        status=row["status"],
    )


class MemberErrorLog:
    """One run's member errors: written in batches (messages redacted), read back as the run's preview."""

    def __init__(self, store: ContactStore, run_id: str, redact: Callable[[str], str]) -> None:
        self.store = store
        self.run_id = run_id
        self.redact = redact

    def record(self, campaign_id: int, errors: Sequence[MemberError]) -> None:
        """Keep `errors` in a transaction of their own (nothing when there are none)."""
        if errors:
            with self.store.begin() as conn:
                self.insert(conn, campaign_id, errors)

    def insert(self, conn: sa.Connection, campaign_id: int, errors: Sequence[MemberError]) -> None:
        """Keep `errors` in the caller's transaction: one statement for the batch."""
        if not errors:
            return
        conn.exec_driver_sql(
            INSERT_MEMBER_ERRORS_SQL,
            {
                "run": self.run_id,
                "campaign": campaign_id,
                "contacts": [e.contact_id for e in errors],
                "emails": [e.email for e in errors],
                "members": [e.member_id for e in errors],
                "people": [e.person_id for e in errors],
                "directions": [e.direction for e in errors],
                "codes": [e.code for e in errors],
                "statuses": [e.status for e in errors],
                "messages": [self.redact(e.message) for e in errors],
            },
        )

    def delete_expired(self, conn: sa.Connection) -> None:
        """Forget errors older than ERROR_RETENTION_DAYS."""
        conn.exec_driver_sql(DELETE_EXPIRED_ERRORS_SQL, (ERROR_RETENTION_DAYS,))

    def preview(self) -> list[dict[str, Any]]:
        """This run's first ERROR_PREVIEW_LIMIT errors, with their campaign's name."""
        with self.store.begin() as conn:
            rows = conn.exec_driver_sql(RUN_ERRORS_PREVIEW_SQL, (self.run_id, ERROR_PREVIEW_LIMIT)).mappings()
            return [dict(r) for r in rows]
