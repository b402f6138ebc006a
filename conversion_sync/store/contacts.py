"""Contacts: the one owner of the e-mail key, the identity lock and the field merge rule every writer uses.

Every writer of contact fields (warehouse syncs, the Salesforce poll, campaign imports through the identity
matcher) builds its SQL from here, so they cannot disagree on which value wins or on which contact an e-mail
means.

The merge rule: a contact field takes an incoming value when the value's time (the row's `updated_at`, or the
Salesforce record's `LastModifiedDate`) is at least the field's stamp in `field_updated_at`; the stamp then
becomes that time. A tie goes to the incoming value (the later write wins), so a source that corrects a value
without moving its timestamp is not ignored. A field with no stamp takes any value.
"""

from __future__ import annotations

import sqlalchemy as sa

IDENTITY_LOCK_KEY = 7_310_002
"""Transaction-scoped advisory lock: every writer that may create, link or change contacts takes it first."""


def email_key_sql(expression: str) -> str:
    """SQL for an e-mail's matching key (NULL when blank): trimmed of Unicode white space and zero-width
    characters, lower-cased the same way on every server locale (conversion_email_key, migration 0009)."""
    return f"conversion_email_key({expression})"


def trimmed_email_sql(expression: str) -> str:
    """SQL for an e-mail as stored: trimmed of white space and zero-width characters, case kept."""
    return f"conversion_email_trim({expression})"


def email_invalid_sql(expression: str) -> str:
    """SQL true when a present (non-blank) e-mail is not a valid address: the HTML standard's rule (a browser's
    `type=email` check) with a dot-atom local part (no leading, trailing or doubled dot), non-ASCII letters
    allowed, and a domain of at least two labels of at most 63 characters each
    (conversion_email_is_valid, migrations 0009 and 0016)."""
    return f"NOT conversion_email_is_valid({expression})"


def sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def lock_identities(conn: sa.Connection) -> None:
    """Take the identity lock for the rest of this transaction."""
    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": IDENTITY_LOCK_KEY})


def field_stamp_sql(field: str, stamps: str = "c.field_updated_at") -> str:
    """SQL for a field's stamp in a `field_updated_at` object (NULL when the field was never written)."""
    return f"({stamps} ->> {sql_literal(field)})::timestamptz"


def incoming_wins_sql(field: str, moment: str, stamps: str = "c.field_updated_at") -> str:
    """The merge rule: SQL true when a value stamped `moment` may replace the field's stored value."""
    return f"({moment} >= coalesce({field_stamp_sql(field, stamps)}, '-infinity'))"
