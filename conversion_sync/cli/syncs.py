"""CLI commands for warehouse syncs: run, preview, rejections, resync."""

from __future__ import annotations

import sys

import click

from conversion_sync.cli.app import main, open_store, print_counts, project_and_sync
from conversion_sync.config import load_project_config
from conversion_sync.syncs.template import format_timestamp


@main.command("run")
@click.argument("sync_name")
@click.pass_context
def run_sync(ctx: click.Context, sync_name: str) -> None:
    """Run one sync now, in this process, and print its counts."""
    from conversion_sync.syncs.runner import SyncFailed, SyncRunner

    project, sync = project_and_sync(ctx, sync_name)
    try:
        outcome = SyncRunner(sync, project, open_store()).run()
    except SyncFailed as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"sync {sync_name}: run {outcome.run_id} succeeded")
    click.echo(
        f"  watermark used {format_timestamp(outcome.watermark_used)}, next {format_timestamp(outcome.next_watermark)}"
    )
    print_counts(outcome.counts)
    if outcome.counts.get("rejected"):
        click.echo(f"rejected rows: {outcome.download_command}")


@main.command()
@click.argument("sync_name")
@click.option("--limit", default=20, show_default=True, help="Rows of diff and rejections to show.")
@click.pass_context
def preview(ctx: click.Context, sync_name: str, limit: int) -> None:
    """Dry run: what would be added, changed, removed and rejected. Writes nothing."""
    from conversion_sync.syncs.runner import SyncFailed, SyncRunner

    project, sync = project_and_sync(ctx, sync_name)
    try:
        result = SyncRunner(sync, project, open_store()).preview(limit=limit)
    except SyncFailed as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"sync {sync_name} (dry run, nothing written) from watermark {result.describe_watermark()}")
    print_counts(result.counts)
    for row in result.diff:
        if row["action"] == "unchanged":
            continue
        click.echo(f"{row['action']:>9}  {row['key']}")
        for field, value in (row.get("fields") or {}).items():
            shown = f"{value[0]!r} → {value[1]!r}" if row["action"] == "change" else repr(value)
            click.echo(f"           {field}: {shown}")
    for rejection in result.rejected:
        click.echo(f"   reject  {rejection['row_key']}  [{rejection['code']}] {rejection['message']}")


@main.command()
@click.argument("sync_name")
@click.option(
    "--run", "run_id", default=None, help="Run id (default: the latest finished run with rejected rows)."
)
@click.pass_context
def rejections(ctx: click.Context, sync_name: str, run_id: str | None) -> None:
    """Every rejected row of a finished run, as CSV on standard output."""
    from conversion_sync.store.sync_state import (
        get_run,
        last_run_with_rejections,
        mark_crashed_runs,
        rejections_csv,
    )

    project = load_project_config(ctx.obj["config_dir"])
    if sync_name not in project.syncs and sync_name not in project.broken_syncs:
        raise click.ClickException(f"unknown sync '{sync_name}'")
    with open_store().begin() as conn:
        mark_crashed_runs(conn, sync_name)
        if run_id is not None:
            run = get_run(conn, run_id)
            if run is None or run.sync_name != sync_name or run.preview:
                raise click.ClickException(f"sync '{sync_name}' has no run '{run_id}'")
            if run.status == "running":
                raise click.ClickException(
                    f"run {run_id} of sync '{sync_name}' is still running; its rejected rows are kept when it finishes"
                )
            if run.status != "success":
                raise click.ClickException(
                    f"run {run_id} of sync '{sync_name}' did not finish ({run.status}): nothing of it was written "
                    "and its rejected rows were discarded; the next successful run reports them again"
                )
        run_id = run_id or last_run_with_rejections(conn, sync_name)
        if run_id is None:
            raise click.ClickException(f"sync '{sync_name}' has no rejected rows")
        count = rejections_csv(conn, sync_name, run_id, sys.stdout)
    click.echo(f"{count} rejected row(s) of run {run_id}", err=True)


@main.command()
@click.argument("sync_name")
@click.pass_context
def resync(ctx: click.Context, sync_name: str) -> None:
    """Reset a sync's watermark and fingerprints: the next run reads and compares everything."""
    from conversion_sync.store.sync_state import reset_sync

    project_and_sync(ctx, sync_name)
    with open_store().begin() as conn:
        had_state, fingerprints = reset_sync(conn, sync_name)
    click.echo(
        f"sync {sync_name}: watermark {'reset' if had_state else 'was not set'}, {fingerprints} fingerprint(s) cleared; "
        "the next run is a full resync"
    )


@main.command("retry-rejected")
@click.argument("sync_name")
@click.pass_context
def retry_rejected_rows(ctx: click.Context, sync_name: str) -> None:
    """Re-read the keys earlier runs rejected (the query from the epoch, filtered to them) and write them now.

    The watermark does not move. Rows that still fail stay rejected with their reason."""
    from conversion_sync.syncs.runner import SyncFailed, SyncRunner

    project, sync = project_and_sync(ctx, sync_name)
    try:
        outcome = SyncRunner(sync, project, open_store(), mode="retry_rejected").run()
    except SyncFailed as exc:
        raise click.ClickException(str(exc)) from None
    counts = outcome.counts
    click.echo(
        f"sync {sync_name}: retry run {outcome.run_id} re-read {counts.get('retried', 0)} rejected key(s)"
    )
    print_counts(counts)
    if counts.get("still_rejected"):
        click.echo(f"still rejected: {outcome.download_command}")
