"""What a reconciliation could not do, kept in campaign_member_errors (for 30 days after it was last seen) and
previewed in the report of the run that found it. An error that every later run finds again is standing: it is
reported once, and its row only says when it was last seen and how often."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import sqlalchemy as sa

from conversion_sync.salesforce.campaigns.outcomes import MemberCounts
from conversion_sync.salesforce.campaigns.salesforce_writes import RecordResult
from conversion_sync.store.contact_store import ContactStore

ERROR_PREVIEW_LIMIT = 20
ERROR_RETENTION_DAYS = 30

Direction = Literal["salesforce_to_store", "store_to_salesforce", "link"]

ERROR_KEY_SQL = (
    "md5(concat_ws('|', v.direction, v.code, coalesce(v.contact_id::text, ''), coalesce(v.member_id, ''), "
    "coalesce(v.person_id, ''), coalesce(v.status, ''), v.message))"
)
"""An error's identity within its campaign: the same member, code, status and message is the same error."""


def record_errors_sql(source: str) -> str:
    """Keep the errors `source` selects (columns contact_id, email, member_id, person_id, direction, code,
    status, message); returns (code, new) per error.

    An error the campaign's previous run (campaigns.last_run_id) or this run already recorded is a standing
    error: its row is seen again (last_run_id, last_seen_at, times_seen), nothing new is written. Every other
    error is a new row. Parameters: %(run)s, %(campaign)s and the source's own."""
    return f"""
    WITH keyed AS (
        SELECT DISTINCT ON (key) v.*, key
        FROM ({source}) AS v(contact_id, email, member_id, person_id, direction, code, status, message)
        CROSS JOIN LATERAL (SELECT {ERROR_KEY_SQL} AS key) k
        ORDER BY key
    ), seen AS (
        UPDATE campaign_member_errors e
        SET times_seen = e.times_seen + CASE WHEN e.last_run_id = %(run)s THEN 0 ELSE 1 END,
            last_run_id = %(run)s, last_seen_at = now()
        FROM keyed
        WHERE e.campaign_id = %(campaign)s AND e.error_key = keyed.key
          AND e.last_run_id IN (SELECT last_run_id FROM campaigns WHERE id = %(campaign)s UNION ALL SELECT %(run)s)
        RETURNING e.error_key
    ), added AS (
        INSERT INTO campaign_member_errors (run_id, campaign_id, contact_id, email, salesforce_member_id,
            salesforce_person_id, direction, code, status, message, error_key, last_run_id, last_seen_at)
        SELECT %(run)s, %(campaign)s, contact_id, email, member_id, person_id, direction, code, status, message,
               key, %(run)s, now()
        FROM keyed WHERE key NOT IN (SELECT error_key FROM seen)
        RETURNING error_key
    )
    SELECT code, key NOT IN (SELECT error_key FROM seen) AS new FROM keyed"""


MEMBER_ERRORS_SOURCE_SQL = """
    SELECT * FROM unnest(%(contacts)s::bigint[], %(emails)s::text[], %(members)s::text[], %(people)s::text[],
                %(directions)s::text[], %(codes)s::text[], %(statuses)s::text[], %(messages)s::text[])"""

INSERT_MEMBER_ERRORS_SQL = record_errors_sql(MEMBER_ERRORS_SOURCE_SQL)

DELETE_EXPIRED_ERRORS_SQL = "DELETE FROM campaign_member_errors WHERE coalesce(last_seen_at, created_at) < now() - make_interval(days => %s)"

RUN_ERRORS_PREVIEW_SQL = """
    SELECT c.name AS campaign, e.direction, e.code, e.email, e.contact_id,
           e.salesforce_person_id, e.status, e.message
    FROM campaign_member_errors e JOIN campaigns c ON c.id = e.campaign_id
    WHERE e.run_id = %s ORDER BY e.id LIMIT %s"""
"""The errors this run found first (standing errors, found again, were reported by the run that found them)."""


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


@dataclass
class ErrorTally:
    """How many of a batch of errors were new, and how many were standing (reported by an earlier run)."""

    new: int = 0
    standing: int = 0
    new_by_code: Counter[str] = field(default_factory=Counter)

    @classmethod
    def of(cls, rows: Sequence[Any]) -> ErrorTally:
        """From record_errors_sql's (code, new) rows."""
        new_codes = Counter(str(code) for code, new in rows if new)
        return cls(sum(new_codes.values()), sum(1 for _, new in rows if not new), new_codes)

    def count(self, counts: MemberCounts) -> None:
        """Add to a campaign's counts: new errors to `errors`, standing ones to `standing_errors`."""
        counts.errors += self.new
        counts.standing_errors += self.standing


class MemberErrorLog:
    """One run's member errors: written in batches (messages redacted), read back as the run's preview."""

    def __init__(self, store: ContactStore, run_id: str, redact: Callable[[str], str]) -> None:
        self.store = store
        self.run_id = run_id
        self.redact = redact

    def record(self, campaign_id: int, errors: Sequence[MemberError]) -> ErrorTally:
        """Keep `errors` in a transaction of their own (nothing when there are none)."""
        if not errors:
            return ErrorTally()
        with self.store.begin() as conn:
            return self.insert(conn, campaign_id, errors)

    def insert(self, conn: sa.Connection, campaign_id: int, errors: Sequence[MemberError]) -> ErrorTally:
        """Keep `errors` in the caller's transaction: one statement for the batch; standing errors are seen
        again, not written anew."""
        if not errors:
            return ErrorTally()
        rows = conn.exec_driver_sql(
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
        ).all()
        return ErrorTally.of(rows)

    def delete_expired(self, conn: sa.Connection) -> None:
        """Forget errors older than ERROR_RETENTION_DAYS."""
        conn.exec_driver_sql(DELETE_EXPIRED_ERRORS_SQL, (ERROR_RETENTION_DAYS,))

    def preview(self) -> list[dict[str, Any]]:
        """This run's first ERROR_PREVIEW_LIMIT errors, with their campaign's name."""
        with self.store.begin() as conn:
            rows = conn.exec_driver_sql(RUN_ERRORS_PREVIEW_SQL, (self.run_id, ERROR_PREVIEW_LIMIT)).mappings()
            return [dict(r) for r in rows]


CAMPAIGN_FAILURES_OF_RUN_SQL = """
    SELECT count(*) FILTER (WHERE run_id = %(run)s) AS new, count(*) FILTER (WHERE run_id <> %(run)s) AS standing
    FROM campaign_member_errors WHERE direction = 'link' AND last_run_id = %(run)s"""


@dataclass(frozen=True)
class CampaignFailures:
    """The campaign failures (`link` errors) a reconciliation run saw: first found by it, or standing (found by
    an earlier run and seen again in each run since, with no successful run in between)."""

    new: int
    standing: int

    @property
    def only_standing(self) -> bool:
        """Every failure of the run was reported before: no alert is due."""
        return self.new == 0 and self.standing > 0


def campaign_failures_of_run(conn: sa.Connection, run_id: str) -> CampaignFailures:
    """How many of the campaign failures a run saw were new, and how many standing. An error whose text
    changes is a new error; one that comes back after a successful run is new again."""
    row = conn.exec_driver_sql(CAMPAIGN_FAILURES_OF_RUN_SQL, {"run": run_id}).one()
    return CampaignFailures(int(row.new or 0), int(row.standing or 0))
