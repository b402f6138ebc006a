"""Change detection checked against the store, resets that survive runs in flight, one e-mail key everywhere.

- `sync_fingerprints.record_version` / `link_version`: the transaction id (xmin) of the store record (a contact,
  or a custom object and its relationship) as this sync last wrote or checked it. Every UPDATE of a row, by any
  writer, gives it a new xmin, so a fingerprint whose record has moved on no longer counts as unchanged.
  Existing fingerprints get NULL: their keys are checked against the store once more by the next run.
- `sync_state.reset_at`: when `resync` last reset the sync; a run that started before it writes nothing.
- `sync_state.field_types`: the destination's field types as of the last successful run; a type changed in
  schema.yaml makes the next run read everything again and retype what it wrote.
- `conversion_email_trim`, `conversion_email_is_valid`, `conversion_email_key(text)`: an e-mail as stored,
  whether it is a valid address, and its matching key, the same on every server locale: Unicode white space
  and zero-width characters trimmed, ASCII lower-cased in byte terms, other letters by a fixed table (not the
  server's locale, whose lower() differs between C, en_US and tr_TR). Stored keys are recomputed with it.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

EMAIL_WHITESPACE = (
    " \t\n\r\x0b\x0c\x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000\ufeff\u180e\u200b\u200c\u200d\u2060"
)
"""Trimmed from both ends of an e-mail: Unicode white space and the zero-width characters that copy-paste and
spreadsheets add invisibly (a key with one left in would be a second contact)."""

_ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~\u0080-\U0010FFFF-"
_LABEL = r"[A-Za-z0-9\u0080-\U0010FFFF]([A-Za-z0-9\u0080-\U0010FFFF-]{0,61}[A-Za-z0-9\u0080-\U0010FFFF])?"
EMAIL_PATTERN = rf"^[{_ATEXT}]+(\.[{_ATEXT}]+)*@{_LABEL}(\.{_LABEL})+$"
"""A valid address: the HTML living standard's rule, with the local part a dot-atom and non-ASCII letters
allowed on both sides (internationalised addresses), and at least two domain labels."""


def sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def _lower_case_table() -> tuple[str, str]:
    """Every non-ASCII character whose lower case is one other character (Python's Unicode tables, fixed in
    the store when this migration runs), as translate()'s two strings."""
    upper, lower = [], []
    for code in range(0x80, 0x110000):
        if 0xD800 <= code <= 0xDFFF:
            continue
        char = chr(code)
        lowered = char.lower()
        if len(lowered) == 1 and lowered != char:
            upper.append(char)
            lower.append(lowered)
    return "".join(upper), "".join(lower)


def email_functions() -> list[str]:
    """conversion_email_trim / _key / _is_valid(text): plain SQL expressions, which the planner inlines into
    each statement that calls them."""
    upper, lower = _lower_case_table()
    trimmed = f"btrim(email, {sql_literal(EMAIL_WHITESPACE)})"
    return [
        f"""CREATE OR REPLACE FUNCTION conversion_email_trim(email text) RETURNS text
        LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$ SELECT {trimmed} $fn$""",
        f"""CREATE OR REPLACE FUNCTION conversion_email_key(email text) RETURNS text
        LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
        SELECT NULLIF(CASE WHEN octet_length({trimmed}) = length({trimmed}) THEN lower({trimmed} COLLATE "C")
                           ELSE translate(lower({trimmed} COLLATE "C"), {sql_literal(upper)}, {sql_literal(lower)})
                      END, '')
        $fn$""",
        f"""CREATE OR REPLACE FUNCTION conversion_email_is_valid(email text) RETURNS boolean
        LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
        SELECT {trimmed} ~ {sql_literal(EMAIL_PATTERN)} AND length({trimmed}) <= 254
               AND strpos({trimmed}, '@') <= 65
        $fn$""",
    ]


def upgrade() -> None:
    op.add_column("sync_fingerprints", sa.Column("record_version", sa.BigInteger))
    op.add_column("sync_fingerprints", sa.Column("link_version", sa.BigInteger))
    op.add_column("sync_state", sa.Column("reset_at", sa.DateTime(timezone=True)))
    op.add_column("sync_state", sa.Column("field_types", JSONB))
    for statement in email_functions():
        op.execute(statement)
    op.execute(
        "UPDATE contacts SET email_normalized = conversion_email_key(email) "
        "WHERE email_normalized IS DISTINCT FROM conversion_email_key(email)"
    )


def downgrade() -> None:
    for name in ("conversion_email_trim", "conversion_email_key", "conversion_email_is_valid"):
        op.execute(f"DROP FUNCTION IF EXISTS {name}(text)")
    op.drop_column("sync_state", "field_types")
    op.drop_column("sync_state", "reset_at")
    op.drop_column("sync_fingerprints", "link_version")
    op.drop_column("sync_fingerprints", "record_version")
