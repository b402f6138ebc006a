"""`conversion-sync status`: one table of every sync and its last run."""

from __future__ import annotations

import click

from conversion_sync.cli.app import main, open_store
from conversion_sync.config import load_project_config


@main.command()
@click.pass_context
def status(ctx: click.Context) -> None:
    """Table of syncs: state, last run and its counts. A run whose process died shows as crashed."""
    from conversion_sync.store.sync_state import latest_runs, mark_crashed_runs

    project = load_project_config(ctx.obj["config_dir"])
    with open_store().begin() as conn:
        mark_crashed_runs(conn)  # so that the runs' history says crashed too
        runs = latest_runs(conn)
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
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    for name, run in sorted(runs.items()):
        if name in project.syncs and run.status in ("failed", "crashed") and run.error:
            click.echo(f"{name} {run.status}: {run.error.splitlines()[0].removeprefix('crashed: ')}")


def _state(enabled: bool, run: object) -> str:
    if run is None:
        return "pending" if enabled else "disabled"
    status_, phase = run.status, run.phase  # type: ignore[attr-defined]
    if status_ == "running":
        return phase or "querying"
    if status_ in ("failed", "crashed"):
        return status_
    return "healthy" if enabled else "disabled"
