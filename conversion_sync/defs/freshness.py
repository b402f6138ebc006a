"""Freshness policies derived from schedules: an asset is late when it has missed about two of its runs.

A scheduled asset warns after 1.5 × and fails (shown late, red) after 2 × the longest gap between two ticks
of its schedule (a weekday 9:00 schedule's longest gap is the weekend). A sync that runs after other syncs
(`after:`), or when its upstream syncs update (`run_on: upstream`), is expected as often as its slowest
upstream sync and no less often than its own schedule. A sync's `late_after:` replaces the derived fail window
(and gives a manual sync a policy). Manual assets, disabled syncs (`enabled: false`), and syncs started only by
tables this code location does not schedule have no policy: nothing is expected of them.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from itertools import pairwise, takewhile

import dagster as dg
from dagster._utils.schedules import cron_string_iterator

from conversion_sync.config import ProjectConfig
from conversion_sync.config.schedules import schedule_to_cron
from conversion_sync.config.syncs import SyncConfig

WARN_AFTER = 1.5
FAIL_AFTER = 2.0
SCHEDULE_METADATA = "schedule"
"""The definition metadata entry holding an asset's schedule phrase (as written in the YAML)."""
_SAMPLE_FROM = datetime(2025, 1, 1, tzinfo=UTC)  # fixed, so the derived windows do not vary with the day
_SAMPLE_TICKS = 1000
_SAMPLE_SPAN = timedelta(days=400)


def longest_gap(cron: str) -> timedelta:
    """The longest time between two consecutive ticks of `cron` (UTC), over a year of ticks at most."""
    ticks = cron_string_iterator(_SAMPLE_FROM.timestamp(), cron, "UTC")
    end = _SAMPLE_FROM + _SAMPLE_SPAN
    sample = list(takewhile(lambda t: t <= end, (next(ticks) for _ in range(_SAMPLE_TICKS))))
    return max((b - a for a, b in pairwise(sample)), default=_SAMPLE_SPAN)


def expected_interval(phrase: str | None) -> timedelta | None:
    """How often a schedule phrase runs at least (its longest gap), None for `manual` or no schedule."""
    cron = schedule_to_cron(phrase) if phrase else None
    return longest_gap(cron) if cron else None


def policy_for_interval(
    interval: timedelta | None, late_after: timedelta | None = None
) -> dg.FreshnessPolicy | None:
    """Late after FAIL_AFTER × `interval` (or `late_after`, a sync's own choice), a warning after WARN_AFTER ×
    `interval` when that comes first (Dagster's minimum is a minute)."""
    if interval is None and late_after is None:
        return None
    fail = late_after or max((interval or timedelta()) * FAIL_AFTER, timedelta(minutes=2))
    warn = max((interval or fail) * WARN_AFTER, timedelta(minutes=1))
    return dg.FreshnessPolicy.time_window(fail_window=fail, warn_window=warn if warn < fail else None)


def schedule_freshness(phrase: str | None) -> dg.FreshnessPolicy | None:
    """The freshness policy of an asset materialized on the schedule `phrase` (None for manual)."""
    return policy_for_interval(expected_interval(phrase))


def sync_intervals(
    project: ProjectConfig, triggering_syncs: Callable[[SyncConfig], Iterable[str]]
) -> dict[str, timedelta]:
    """Each sync's expected interval, the shortest of: its own schedule's; the longest of its `after:`
    syncs' (it waits for all of them); the shortest of the syncs whose update starts it
    (`triggering_syncs(sync)`, for run_on: upstream or both). Disabled syncs, and syncs with none of these,
    are left out."""
    intervals: dict[str, timedelta | None] = {}

    def interval(name: str, seen: frozenset[str]) -> timedelta | None:
        if name not in intervals:
            sync = project.syncs[name]
            if not sync.enabled:
                intervals[name] = None  # disabled: nothing is expected of it
                return None

            def known(names: Iterable[str]) -> list[timedelta]:
                found = (interval(n, seen | {name}) for n in names if n in project.syncs and n not in seen)
                return [value for value in found if value is not None]

            after, triggers = known(sync.after), known(triggering_syncs(sync))
            candidates = [
                expected_interval(sync.schedule) if sync.run_on != "upstream" else None,
                max(after) if after else None,
                min(triggers) if triggers else None,
            ]
            present = [c for c in candidates if c is not None]
            intervals[name] = min(present) if present else None
        return intervals[name]

    for name in project.syncs:
        interval(name, frozenset())
    return {name: value for name, value in intervals.items() if value is not None}


def with_schedule_freshness(
    defs: dg.Definitions,
    skip: Iterable[dg.AssetKey] = (),
    cadences: Mapping[dg.AssetKey, str] | None = None,
) -> dg.Definitions:
    """Give every asset that has a `schedule` metadata phrase (or a phrase in `cadences`, for an asset that
    runs when another does) and no freshness policy yet the policy of that schedule (the Salesforce poll,
    push and campaign reconciliation); `skip` the assets that decided already (the syncs: sync_intervals)."""
    skipped = set(skip)
    phrases = dict(cadences or {})

    def apply(spec: dg.AssetSpec) -> dg.AssetSpec:
        phrase = spec.metadata.get(SCHEDULE_METADATA, phrases.get(spec.key))
        if spec.freshness_policy is not None or not isinstance(phrase, str) or spec.key in skipped:
            return spec
        try:
            policy = schedule_freshness(phrase)
        except ValueError:
            return spec  # a phrase the config loader already reports
        return dg.apply_freshness_policy(spec, policy) if policy else spec

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)  # map_asset_specs is "preview" in Dagster 1.13
        return defs.map_asset_specs(func=apply)
