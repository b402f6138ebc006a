"""Human schedule phrases and durations from sync YAML, turned into cron strings and timedeltas."""

from __future__ import annotations

import re
from datetime import timedelta

from dagster._utils.schedules import is_valid_cron_string

SCHEDULE_FORMS = 'every N minutes | hourly | every N hours | daily | cron "*/10 * * * *" | manual'
DURATION_FORMS = "N seconds | N minutes | N hours | N days"

_EVERY = re.compile(r"^every\s+(\d+)\s+(minute|minutes|hour|hours)$")
_CRON = re.compile(r"""^cron\s+["']?(.+?)["']?$""")
_DURATION = re.compile(r"^(\d+)\s*(second|seconds|s|minute|minutes|min|m|hour|hours|h|day|days|d)$")


def schedule_to_cron(phrase: str) -> str | None:
    """Return the cron string for a schedule phrase, None for `manual`; ValueError if not understood."""
    text = " ".join(str(phrase).strip().lower().split())
    if text == "manual":
        return None
    if text == "hourly":
        return "0 * * * *"
    if text == "daily":
        return "0 0 * * *"
    if match := _EVERY.match(text):
        n, unit = int(match.group(1)), match.group(2)
        if unit.startswith("minute") and 1 <= n <= 59:
            return "* * * * *" if n == 1 else f"*/{n} * * * *"
        if unit.startswith("hour") and 1 <= n <= 23:
            return "0 * * * *" if n == 1 else f"0 */{n} * * *"
        raise ValueError(
            f"'{phrase}' is out of range (1-59 minutes or 1-23 hours); allowed: {SCHEDULE_FORMS}"
        )
    if match := _CRON.match(str(phrase).strip()):
        cron = match.group(1).strip()
        if is_valid_cron_string(cron):
            return cron
        raise ValueError(f"'{cron}' is not a valid cron expression")
    raise ValueError(f"'{phrase}' is not a schedule; allowed: {SCHEDULE_FORMS}")


def parse_duration(text: str | int) -> timedelta:
    """Parse '5 minutes' style durations; a bare integer means seconds."""
    try:
        return _duration(text)
    except OverflowError:
        raise ValueError(f"'{text}' is too long a duration (at most 999999999 days)") from None


def _duration(text: str | int) -> timedelta:
    if isinstance(text, int):
        return timedelta(seconds=text)
    match = _DURATION.match(" ".join(str(text).strip().lower().split()))
    if not match:
        raise ValueError(f"'{text}' is not a duration; allowed: {DURATION_FORMS}")
    n, unit = int(match.group(1)), match.group(2)
    if unit.startswith("s"):
        return timedelta(seconds=n)
    if unit.startswith("m"):
        return timedelta(minutes=n)
    if unit.startswith("h"):
        return timedelta(hours=n)
    return timedelta(days=n)
