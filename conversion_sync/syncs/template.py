"""The sync query template: `{{last_sync_time}}` and `{{last_sync_time_unix}}`, nothing else.

The query text is read with the warehouse's own SQL tokenizer (sqlglot's, per dialect), so that comments
and quoted text are told apart the way the warehouse itself tells them apart: a placeholder inside a
comment does not make a sync incremental, and a trailing `;` or comment is dropped before the query runs
(Postgres wraps the query in `COPY (...) TO STDOUT`, where either breaks it).
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlglot.dialects.dialect import Dialect
from sqlglot.errors import TokenError
from sqlglot.tokens import Tokenizer, TokenType

TEMPLATE_NAMES = ("last_sync_time", "last_sync_time_unix")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_PLACEHOLDER = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")

OFFSET_LITERAL_KINDS = frozenset({"postgres", "duckdb", "snowflake"})
"""Warehouse types whose `{{last_sync_time}}` literal carries `+00:00`: each compares such a literal correctly
with its timestamp columns with and without time zone (and DATE columns). BigQuery's does not: a DATETIME
column refuses a literal with an offset, and a BigQuery literal without one is UTC already."""

_DIALECTS = {"postgres": "postgres", "duckdb": "duckdb", "snowflake": "snowflake", "bigquery": "bigquery"}


def template_names(query: str) -> list[str]:
    """Names used in `{{…}}` placeholders, in order of appearance (in comments too)."""
    return [m.group(1) for m in _PLACEHOLDER.finditer(query)]


def unknown_template_names(query: str) -> list[str]:
    """Placeholders that are not allowed template names."""
    return [name for name in template_names(query) if name not in TEMPLATE_NAMES]


@dataclass(frozen=True)
class _QueryText:
    """Where a query's code is: token spans (start, end inclusive) in order; text between them is whitespace
    or comments. `end` is where the query's last token that is not a `;` ends (exclusive)."""

    starts: list[int]
    ends: list[int]
    end: int

    def in_code(self, offset: int) -> bool:
        i = bisect.bisect_right(self.starts, offset) - 1
        return i >= 0 and offset <= self.ends[i]


def _tokenizer(kind: str | None) -> Tokenizer:
    dialect = _DIALECTS.get(kind or "")
    return Dialect.get_or_raise(dialect).tokenizer_class() if dialect else Tokenizer()


def _scan(query: str, kind: str | None) -> _QueryText | None:
    """The query's token spans in the warehouse's dialect; None when the tokenizer cannot read it (an
    unterminated string or comment): the warehouse will say what is wrong."""
    try:
        tokens = _tokenizer(kind).tokenize(query)
    except TokenError:
        return None
    starts = [t.start for t in tokens]
    ends = [t.end for t in tokens]
    meaningful = [t for t in tokens if t.token_type != TokenType.SEMICOLON]
    end = meaningful[-1].end + 1 if meaningful else len(query)
    return _QueryText(starts, ends, end)


def is_incremental(query: str, kind: str | None = None) -> bool:
    """A query that uses the watermark outside comments reads only changes; one without it is a full sync.

    `kind` is the warehouse type, whose comment syntax applies (`#` on BigQuery, `//` on Snowflake, `--`
    and `/* */` everywhere); without it the comments all four share.
    """
    used = [m for m in _PLACEHOLDER.finditer(query) if m.group(1) in TEMPLATE_NAMES]
    if not used:
        return False
    text = _scan(query, kind)
    return text is None or any(text.in_code(m.start()) for m in used)


def format_timestamp(moment: datetime) -> str:
    """A moment as UTC text `YYYY-MM-DD HH:MM:SS.ffffff` (also the literal body without an offset)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def timestamp_literal(moment: datetime, kind: str | None = None) -> str:
    """The `{{last_sync_time}}` text for a warehouse type: UTC, with `+00:00` where the dialect compares that
    correctly with every timestamp column type (see OFFSET_LITERAL_KINDS)."""
    body = format_timestamp(moment)
    return f"{body}+00:00" if kind in OFFSET_LITERAL_KINDS else body


def prepare_query(query: str, kind: str | None = None) -> str:
    """The query without trailing `;` and trailing comments, which some drivers cannot wrap."""
    text = _scan(query, kind)
    return query if text is None else query[: text.end]


def render_query(query: str, last_sync_time: datetime, kind: str | None = None) -> str:
    """Render the template for a warehouse type (`kind`), without trailing `;` or comments.

    Values are generated here (digits and separators only), so they cannot inject SQL.
    """
    if last_sync_time.tzinfo is None:
        last_sync_time = last_sync_time.replace(tzinfo=UTC)
    values = {
        "last_sync_time": timestamp_literal(last_sync_time, kind),
        "last_sync_time_unix": str(int(last_sync_time.timestamp())),
    }

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise ValueError(f"unknown template name {{{{{name}}}}}; allowed: {', '.join(TEMPLATE_NAMES)}")
        return values[name]

    return _PLACEHOLDER.sub(substitute, prepare_query(query, kind))
