"""Human schedule phrases and durations from sync YAML, turned into cron strings and timedeltas."""

from __future__ import annotations

import re
from datetime import timedelta

SCHEDULE_FORMS = 'every N minutes | hourly | every N hours | daily | cron "*/10 * * * *" | manual'
DURATION_FORMS = "N seconds | N minutes | N hours | N days"

_EVERY = re.compile(r"^every\s+(\d+)\s+(minute|minutes|hour|hours)$")
_CRON = re.compile(r"""^cron\s+["']?(.+?)["']?$""")
_CRON_PART = re.compile(r"^(?P<base>\*|[a-z0-9]+(?:-[a-z0-9]+)?)(?:/(?P<step>\d+))?$")
_CRON_ALIASES = frozenset({"@midnight", "@hourly", "@daily", "@weekly", "@monthly", "@yearly", "@annually"})
_MONTHS = {"jan": 1, "feb": 2, "mar": 3, "apr": 4, "may": 5, "jun": 6}
_MONTHS |= {"jul": 7, "aug": 8, "sep": 9, "oct": 10, "nov": 11, "dec": 12}
_WEEKDAYS = {"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}
_CRON_FIELDS: tuple[tuple[int, int, dict[str, int]], ...] = (
    (0, 59, {}),  # minute
    (0, 23, {}),  # hour
    (1, 31, {}),  # day of month
    (1, 12, _MONTHS),  # month
    (0, 6, _WEEKDAYS),  # day of week (7 is Sunday too)
)
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
        if is_valid_cron(cron):
            return cron
        raise ValueError(f"'{cron}' is not a valid cron expression")
    raise ValueError(f"'{phrase}' is not a schedule; allowed: {SCHEDULE_FORMS}")


def is_valid_cron(cron: str) -> bool:
    """Whether `cron` is a five-field cron expression (or an @daily-style alias) that schedules accept.

    Fields take `*`, numbers, month and weekday names, ranges `a-b`, steps `/n` and lists `a,b`; `?`
    stands for any day. The rarer extensions (L, #, H) are not accepted, and neither is a day that no
    month has (February 30th or 31st).
    """
    text = cron.strip().lower()
    if text in _CRON_ALIASES:
        return True
    fields = text.split()
    if len(fields) != len(_CRON_FIELDS):
        return False
    values = [_cron_field(field, index) for index, field in enumerate(fields)]
    if any(v is None for v in values):
        return False
    days, months = values[2], values[3]
    return not (months == {2} and days is not None and len(days) == 1 and days <= {30, 31})


def _cron_field(field: str, index: int) -> set[int] | None:
    """The values a cron field stands for, None when it is not valid."""
    low, high, _ = _CRON_FIELDS[index]
    if field == "?":
        return set(range(low, high + 1)) if index in (2, 4) else None
    values: set[int] = set()
    for part in field.split(","):
        match = _CRON_PART.match(part)
        step = int(match.group("step") or 1) if match else 0
        if match is None or step < 1:
            return None
        base = match.group("base")
        bounds = [low, high] if base == "*" else [_cron_value(b, index) for b in base.split("-")]
        if any(b is None for b in bounds):
            return None
        first, last = bounds[0], bounds[-1]
        if match.group("step") and len(bounds) == 1:
            last = high  # "10/5" counts from 10 to the end
        assert first is not None and last is not None
        if len(bounds) == 2 and first == last and base != "*":
            first, last = low, high  # "mon-mon" is the whole cycle
        cycle = list(range(low, high + 1))
        span = cycle[cycle.index(first) :] + cycle[: cycle.index(last) + 1] if first > last else None
        values.update((span or list(range(first, last + 1)))[::step])
    return values


def _cron_value(text: str, index: int) -> int | None:
    low, high, names = _CRON_FIELDS[index]
    value = names.get(text) if not text.isdigit() else int(text)
    if value == 7 and index == 4:
        value = 0
    return value if value is not None and low <= value <= high else None


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
