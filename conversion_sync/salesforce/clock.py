"""One clock rule for Salesforce data, shared by the poll and the push: only Salesforce's timestamps are compared
with Salesforce records, a tie goes to Salesforce when reading, and the store wins only when strictly newer.

A store field written from Salesforce is stamped (`field_updated_at`) with the record's `LastModifiedDate`, so
the next comparison with that record is Salesforce's clock against Salesforce's clock. The poll reads
`SystemModstamp` from its cursor minus an overlap up to now minus a lag (records still committing inside the
lag are read by the next poll).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from conversion_sync.store.contacts import field_stamp_sql

PULL_PREFERENCES = frozenset({"most_recent", "salesforce_wins", "conversion_wins"})
"""Preferences under which Salesforce values may flow into the store."""

PUSH_PREFERENCES = frozenset({"most_recent", "conversion_wins"})
"""Preferences under which store values may flow to Salesforce."""


def whole_seconds(value: datetime) -> datetime:
    """`value` in UTC without microseconds (SOQL dateTime literals have whole seconds)."""
    return value.astimezone(UTC).replace(microsecond=0)


def soql_datetime(value: datetime) -> str:
    """A SOQL dateTime literal (whole seconds, UTC)."""
    return whole_seconds(value).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_salesforce_datetime(text: str | None) -> datetime | None:
    """A Salesforce dateTime (`2024-05-01T10:00:00.000+0000`, `…Z`) as an aware UTC datetime; None when empty."""
    if not text:
        return None
    return datetime.fromisoformat(text).astimezone(UTC)


def poll_upper_bound(now: datetime, lag: timedelta) -> datetime:
    """The latest SystemModstamp a poll reads: `now - lag`, whole seconds."""
    return whole_seconds(now - lag)


def poll_lower_bound(cursor: datetime | None, overlap: timedelta) -> datetime | None:
    """The earliest SystemModstamp a poll reads: the cursor minus the overlap (None: read everything)."""
    return None if cursor is None else whole_seconds(cursor - overlap)


def record_last_modified(record: Mapping[str, Any]) -> datetime | None:
    """A record's LastModifiedDate (REST or Bulk shape, field name in any case); None when absent."""
    for name, value in record.items():
        if name.lower() == "lastmodifieddate":
            return value if isinstance(value, datetime) else parse_salesforce_datetime(value)
    return None


def salesforce_value_wins(last_modified: datetime | None, field_stamp: datetime | None) -> bool:
    """A Salesforce value modified at `last_modified` may replace a store value stamped `field_stamp`: at least
    as new (a tie goes to Salesforce), or the store field was never stamped. Mirrors `incoming_wins_sql`."""
    if field_stamp is None:
        return True
    if last_modified is None:
        return False
    return last_modified >= field_stamp


def store_value_wins(field_stamp: datetime | None, last_modified: datetime | None) -> bool:
    """A store value stamped `field_stamp` may be written over Salesforce's (modified at `last_modified`): the
    exact negation of `salesforce_value_wins`, so no value is both read and pushed."""
    return not salesforce_value_wins(last_modified, field_stamp)


def store_value_wins_sql(field: str, last_modified: str, stamps: str = "c.field_updated_at") -> str:
    """SQL for `store_value_wins`: `field`'s stamp in `stamps` is strictly newer than `last_modified` (an SQL
    timestamptz expression). The negation of the store's merge rule (`incoming_wins_sql`) with Salesforce as the
    incoming side."""
    stamp = field_stamp_sql(field, stamps)
    return f"({stamp} IS NOT NULL AND ({last_modified} IS NULL OR {stamp} > {last_modified}))"
