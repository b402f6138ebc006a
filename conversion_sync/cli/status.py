"""`conversion-sync status`: one table of every warehouse sync and its last run, then one of the Salesforce
poll, the push and each campaign."""

from __future__ import annotations

from typing import Any

import click

from conversion_sync.cli.app import main, open_store
from conversion_sync.config import load_project_config

SALESFORCE_RUNS = (("poll", "salesforce:poll"), ("push", "salesforce:push"))
"""The Salesforce work that records its runs in the store's run history, by the sync name it uses there."""

CAMPAIGN_COUNTS = (
    ("imported", "imported"),
    ("pushed", "pushed"),
    ("updated in store", "updated_in_store"),
    ("updated in Salesforce", "updated_in_salesforce"),
    ("removed in store", "removed_in_store"),
    ("removed in Salesforce", "removed_in_salesforce"),
    ("leads created", "leads_created"),
    ("skipped", "skipped_status"),
    ("errors", "errors"),
    ("standing errors", "standing_errors"),
)
"""A campaign's counts as `status` shows them (those that are not zero), after its member count."""


@main.command()
@click.pass_context
def status(ctx: click.Context) -> None:
    """Table of syncs: state, last run and its counts. A run whose process died shows as crashed.

    Below it, the Salesforce poll and push and each store campaign: state, last run, counts."""
    from conversion_sync.salesforce.campaigns import list_campaigns
    from conversion_sync.store.sync_state import latest_runs, mark_crashed_runs

    project = load_project_config(ctx.obj["config_dir"])
    with open_store().begin() as conn:
        mark_crashed_runs(conn)  # so that the runs' history says crashed too
        runs = latest_runs(conn)
        campaigns = list_campaigns(conn)
    rows: list[tuple[str, ...]] = [
        ("SYNC", "STATE", "LAST RUN", "QUERIED", "ADDED", "CHANGED", "UNCHANGED", "REMOVED", "REJECTED")
    ]
    for name in sorted(project.syncs):
        sync, run = project.syncs[name], runs.get(name)
        counts = run.counts if run else {}
        state = _state(sync.enabled, run)
        when = run.started_at.strftime("%Y-%m-%d %H:%M:%S") if run else "-"
        keys = ("queried", "added", "changed", "unchanged", "removed", "rejected")
        rows.append((name, state, when, *(str(counts.get(k, "-")) for k in keys)))
    for name in sorted(project.broken_syncs):
        rows.append((name, "broken", "-", *("-" * 6)))
    _table(rows)
    for name, run in sorted(runs.items()):
        if name in project.syncs and run.status in ("failed", "crashed") and run.error:
            click.echo(f"{name} {run.status}: {run.error.splitlines()[0].removeprefix('crashed: ')}")
    click.echo()
    _salesforce_status(runs, campaigns)


def _table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _salesforce_status(runs: dict[str, Any], campaigns: list[Any]) -> None:
    """The poll, the push (from the run history) and each campaign (from its latest reconciliation)."""
    from conversion_sync.salesforce.client import SalesforceSettings

    not_configured = SalesforceSettings.from_env().not_configured_reason
    rows: list[tuple[str, ...]] = [("SALESFORCE", "STATE", "LAST RUN", "COUNTS")]
    problems: list[str] = []
    for label, sync_name in SALESFORCE_RUNS:
        run = runs.get(sync_name)
        if run is None:
            rows.append((label, "not configured" if not_configured else "never run", "-", "-"))
            continue
        rows.append((label, _state(True, run), _when(run.started_at), _counts(run.counts.items())))
        if run.status in ("failed", "crashed") and run.error:
            problems.append(f"{label} {run.status}: {run.error.splitlines()[0].removeprefix('crashed: ')}")
    for c in campaigns:
        state = _campaign_state(c, not_configured)
        counts = c.last_run_counts or {}
        shown = [(label, counts.get(key, 0)) for label, key in CAMPAIGN_COUNTS]
        rows.append(
            (
                f"campaign {c.name}",
                state,
                _when(c.last_run_at),
                _counts([("members", c.members), *shown], keep=1),
            )
        )
        if state in ("failed", "broken link", "stopped") and c.last_run_error:
            problems.append(f"campaign {c.name} {state}: {c.last_run_error.splitlines()[0]}")
    _table(rows)
    for problem in problems:
        click.echo(problem)
    if not_configured:
        click.echo(f"Salesforce is not configured here: {not_configured}")


def _campaign_state(campaign: Any, not_configured: str | None) -> str:
    if campaign.salesforce_link == "none":
        return "not linked"
    if campaign.salesforce_missing_since is not None:
        return "broken link"
    if campaign.last_run_status is None:
        return "not configured" if not_configured else "never run"
    return {"reconciled": "healthy"}.get(campaign.last_run_status, campaign.last_run_status)


def _when(moment: Any) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment else "-"


def _counts(items: Any, keep: int = 0) -> str:
    """ "name value, …" of the numeric counts that are not zero (the first `keep` always shown)."""
    shown = [
        f"{name.replace('_', ' ')} {value}"
        for i, (name, value) in enumerate(items)
        if isinstance(value, int) and not isinstance(value, bool) and (value or i < keep)
    ]
    return ", ".join(shown) or "-"


def _state(enabled: bool, run: object) -> str:
    if run is None:
        return "pending" if enabled else "disabled"
    status_, phase = run.status, run.phase  # type: ignore[attr-defined]
    if status_ == "running":
        return phase or "querying"
    if status_ in ("failed", "crashed"):
        return status_
    return "healthy" if enabled else "disabled"
