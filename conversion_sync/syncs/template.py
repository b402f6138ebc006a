"""The sync query template: `{{last_sync_time}}` and `{{last_sync_time_unix}}`, nothing else."""

from __future__ import annotations

import re
from datetime import UTC, datetime

TEMPLATE_NAMES = ("last_sync_time", "last_sync_time_unix")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_PLACEHOLDER = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")


def template_names(query: str) -> list[str]:
    """Names used in `{{…}}` placeholders, in order of appearance."""
    return [m.group(1) for m in _PLACEHOLDER.finditer(query)]


def unknown_template_names(query: str) -> list[str]:
    """Placeholders that are not allowed template names."""
    return [name for name in template_names(query) if name not in TEMPLATE_NAMES]


def is_incremental(query: str) -> bool:
    """A query that uses the watermark reads only changes; one without it is a full sync."""
    return any(name in TEMPLATE_NAMES for name in template_names(query))


def format_timestamp(moment: datetime) -> str:
    """The UTC literal body every supported warehouse compares correctly with a timestamp column."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def render_query(query: str, last_sync_time: datetime) -> str:
    """Render the template. Values are generated here (digits and separators only), so they cannot inject SQL."""
    if last_sync_time.tzinfo is None:
        last_sync_time = last_sync_time.replace(tzinfo=UTC)
    values = {
        "last_sync_time": format_timestamp(last_sync_time),
        "last_sync_time_unix": str(int(last_sync_time.timestamp())),
    }

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise ValueError(f"unknown template name {{{{{name}}}}}; allowed: {', '.join(TEMPLATE_NAMES)}")
        return values[name]

    return _PLACEHOLDER.sub(substitute, query)
