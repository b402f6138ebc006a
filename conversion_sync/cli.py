"""The `conversion-sync` command: validate config, migrate the store, manage the embedded Postgres."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

import click

from conversion_sync.config import ProjectConfig, load_project_config
from conversion_sync.config.syncs import SyncConfig
from conversion_sync.store.contact_store import ContactStore
from conversion_sync.syncs.template import format_timestamp


class _Main(click.Group):
    """The command group; a store or environment that is not set up is an error message, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        from conversion_sync.config.environment import UnknownEnvironment
        from conversion_sync.store.connection import StoreNotConfigured

        try:
            return super().invoke(ctx)
        except (StoreNotConfigured, UnknownEnvironment) as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=_Main)
@click.option(
    "--config",
    "config_dir",
    envvar="CONVERSION_SYNC_CONFIG",
    default="syncs",
    show_default=True,
    help="Config directory (also $CONVERSION_SYNC_CONFIG).",
)
@click.pass_context
def main(ctx: click.Context, config_dir: str) -> None:
    """conversion_sync: warehouse and Salesforce syncs into the contact store."""
    ctx.obj = {"config_dir": config_dir}


@main.command()
@click.pass_context
def validate(ctx: click.Context) -> None:
    """Check every config file; print each problem with file, key and what is allowed."""
    project = load_project_config(ctx.obj["config_dir"])
    for problem in project.problems:
        click.echo(f"error: {problem}", err=True)
    for name in sorted(project.syncs):
        click.echo(f"ok: {name} ({project.sync_files[name]})")
    for broken in sorted(project.broken_syncs.values(), key=lambda b: b.file):
        click.echo(f"broken: {broken.name} ({broken.file}): {len(broken.problems)} problem(s)")
    if project.problems:
        click.echo(f"{len(project.problems)} problem(s) in {project.directory}", err=True)
        sys.exit(1)
    click.echo(f"config in {project.directory} is valid: {len(project.syncs)} sync(s)")


def _project_and_sync(ctx: click.Context, name: str) -> tuple[ProjectConfig, SyncConfig]:
    project = load_project_config(ctx.obj["config_dir"])
    if name in project.broken_syncs:
        lines = "\n".join(f"  {p}" for p in project.broken_syncs[name].problems)
        raise click.ClickException(f"sync '{name}' is broken:\n{lines}")
    if name not in project.syncs:
        known = ", ".join(sorted(project.syncs)) or "none"
        raise click.ClickException(f"unknown sync '{name}'; known syncs: {known}")
    return project, project.syncs[name]


def _store() -> ContactStore:
    return ContactStore()


def _print_counts(counts: dict[str, int]) -> None:
    width = max(len(k) for k in counts)
    for key, value in counts.items():
        click.echo(f"  {key:<{width}}  {value}")


@main.command("run")
@click.argument("sync_name")
@click.pass_context
def run_sync(ctx: click.Context, sync_name: str) -> None:
    """Run one sync now, in this process, and print its counts."""
    from conversion_sync.syncs.runner import SyncFailed, SyncRunner

    project, sync = _project_and_sync(ctx, sync_name)
    try:
        outcome = SyncRunner(sync, project, _store()).run()
    except SyncFailed as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"sync {sync_name}: run {outcome.run_id} succeeded")
    click.echo(
        f"  watermark used {format_timestamp(outcome.watermark_used)}, next {format_timestamp(outcome.next_watermark)}"
    )
    _print_counts(outcome.counts)
    if outcome.counts.get("rejected"):
        click.echo(f"rejected rows: {outcome.download_command}")


@main.command()
@click.argument("sync_name")
@click.option("--limit", default=20, show_default=True, help="Rows of diff and rejections to show.")
@click.pass_context
def preview(ctx: click.Context, sync_name: str, limit: int) -> None:
    """Dry run: what would be added, changed, removed and rejected. Writes nothing."""
    from conversion_sync.syncs.runner import SyncFailed, SyncRunner

    project, sync = _project_and_sync(ctx, sync_name)
    try:
        result = SyncRunner(sync, project, _store()).preview(limit=limit)
    except SyncFailed as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"sync {sync_name} (dry run, nothing written) from watermark {result.describe_watermark()}")
    _print_counts(result.counts)
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
@click.pass_context
def status(ctx: click.Context) -> None:
    """Table of syncs: state, last run and its counts. A run whose process died shows as crashed."""
    from conversion_sync.store.sync_state import latest_runs, mark_crashed_runs

    project = load_project_config(ctx.obj["config_dir"])
    with _store().begin() as conn:
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
    with _store().begin() as conn:
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

    _project_and_sync(ctx, sync_name)
    with _store().begin() as conn:
        had_state, fingerprints = reset_sync(conn, sync_name)
    click.echo(
        f"sync {sync_name}: watermark {'reset' if had_state else 'was not set'}, {fingerprints} fingerprint(s) cleared; "
        "the next run is a full resync"
    )


@main.command()
def migrate() -> None:
    """Bring the store schema up to date (a no-op when it already is)."""
    from conversion_sync.store.connection import redact_url, resolve_store_url
    from conversion_sync.store.migrate import migrate_store

    url = resolve_store_url()
    before, after = migrate_store(url)
    if before == after:
        click.echo(f"store {redact_url(url)} is up to date at revision {after}")
    else:
        click.echo(f"store {redact_url(url)} migrated from {before or 'empty'} to {after}")


@main.group()
def store() -> None:
    """The embedded Postgres, local only (CONVERSION_SYNC_ENV=local, as make dev and the tests set)."""
    from conversion_sync.config.environment import ENV_VAR, environment
    from conversion_sync.store.connection import STORE_URL_ENV

    if environment() != "local":
        raise click.ClickException(
            f"the embedded store is local only ({ENV_VAR}=local, as make dev and make test set); "
            f"in production the contact store is the Postgres at {STORE_URL_ENV}"
        )


def _embedded_postgres() -> ModuleType:
    """The embedded store's launcher module, or a clean error when the dev extra is not installed."""
    from conversion_sync.store.connection import DEV_EXTRA_HINT

    try:
        from conversion_sync_dev import embedded_postgres
    except ModuleNotFoundError as exc:
        raise click.ClickException(DEV_EXTRA_HINT) from exc
    return embedded_postgres


@store.command("start")
def store_start() -> None:
    """Start the embedded Postgres (or join a running one) and print the store URL."""
    click.echo(_embedded_postgres().start_embedded_postgres())


@store.command("url")
@click.option(
    "--database", default="conversion", show_default=True, help="conversion (the store) or dagster."
)
def store_url(database: str) -> None:
    """Print a database URL on the embedded Postgres, starting it if needed."""
    embedded = _embedded_postgres()
    if database == embedded.DAGSTER_DATABASE:
        click.echo(embedded.dagster_storage_url())
    else:
        click.echo(embedded.embedded_url(database))


@store.command("stop")
def store_stop() -> None:
    """Stop the embedded Postgres."""
    stopped = _embedded_postgres().stop_embedded_postgres()
    click.echo("embedded Postgres stopped" if stopped else "embedded Postgres was not running")


# -- campaigns -----------------------------------------------------------------------------------


@contextmanager
def _campaign_problems() -> Iterator[None]:
    """CampaignError (what was wrong, what is allowed) → a clean CLI error."""
    from conversion_sync.salesforce.campaigns import CampaignError

    try:
        yield
    except CampaignError as exc:
        raise click.ClickException(str(exc)) from None


def _describe_link(campaign: Any) -> str:
    if campaign.salesforce_link == "none":
        return "not linked to Salesforce"
    if campaign.salesforce_campaign_id is None:
        return "will create a Salesforce Campaign on the next reconciliation"
    return f"linked to Salesforce Campaign {campaign.salesforce_campaign_id} ({campaign.salesforce_link})"


@main.group()
def campaigns() -> None:
    """Store campaigns, their types and Salesforce links (reconciled by campaign_reconciliation_job)."""


@campaigns.group("type")
def campaign_type() -> None:
    """Campaign types: the member statuses their campaigns allow."""


@campaign_type.command("create")
@click.argument("name")
@click.option("--status", "statuses", multiple=True, required=True, help="An allowed member status (repeat).")
@click.option("--default", "default_status", default=None, help="The default status (default: the first).")
def campaign_type_create(name: str, statuses: tuple[str, ...], default_status: str | None) -> None:
    """Create a campaign type with its allowed member statuses."""
    from conversion_sync.salesforce.campaigns import create_campaign_type

    with _campaign_problems(), _store().begin() as conn:
        created = create_campaign_type(conn, name, statuses, default_status)
    click.echo(
        f"campaign type '{created.name}' with statuses {', '.join(created.statuses)} "
        f"(default {created.default_status})"
    )


@campaigns.command("create")
@click.argument("name")
@click.option("--type", "type_name", required=True, help="The campaign type (its statuses are allowed).")
@click.option(
    "--link",
    type=click.Choice(["none", "existing", "create"]),
    default=None,
    help="Salesforce link: none (default), existing (with --salesforce-id), create (a new Salesforce Campaign).",
)
@click.option("--salesforce-id", default=None, help="The Salesforce Campaign id (701…) for --link existing.")
def campaign_create(name: str, type_name: str, link: str | None, salesforce_id: str | None) -> None:
    """Create a store campaign, optionally linked to Salesforce."""
    from conversion_sync.salesforce.campaigns import create_campaign

    mode = link or ("existing" if salesforce_id else "none")
    with _campaign_problems(), _store().begin() as conn:
        created = create_campaign(conn, name, type_name, mode, salesforce_id)
    click.echo(f"campaign '{created.name}' ({created.type.name}): {_describe_link(created)}")


@campaigns.command("link")
@click.argument("name")
@click.argument("mode", type=click.Choice(["none", "existing", "create"]))
@click.argument("salesforce_id", required=False)
def campaign_link(name: str, mode: str, salesforce_id: str | None) -> None:
    """Link a campaign to Salesforce: none | existing SALESFORCE_ID | create.

    A new link target starts over as a first link: Salesforce members are imported before store members are pushed.
    """
    from conversion_sync.salesforce.campaigns import link_campaign

    with _campaign_problems(), _store().begin() as conn:
        linked = link_campaign(conn, name, mode, salesforce_id)
    click.echo(f"campaign '{linked.name}': {_describe_link(linked)}")


@campaigns.command("list")
def campaign_list() -> None:
    """Table of campaigns: type and statuses, Salesforce link, members, last reconciliation."""
    from conversion_sync.salesforce.campaigns import list_campaigns

    with _store().begin() as conn:
        found = list_campaigns(conn)
    rows = [("CAMPAIGN", "TYPE", "STATUSES", "LINK", "SALESFORCE CAMPAIGN", "MEMBERS", "LAST RECONCILED")]
    for c in found:
        when = c.last_reconciled_at.strftime("%Y-%m-%d %H:%M:%S") if c.last_reconciled_at else "-"
        sf_id = c.salesforce_campaign_id or ("(to create)" if c.salesforce_link == "create" else "-")
        rows.append(
            (c.name, c.type.name, ", ".join(c.type.statuses), c.salesforce_link, sf_id, str(c.members), when)
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


@campaigns.command("add-member")
@click.argument("name")
@click.argument("email")
@click.option("--status", default=None, help="A status of the campaign's type (default: the type's default).")
def campaign_add_member(name: str, email: str, status: str | None) -> None:
    """Add a contact (matched or created by email) to a campaign, or change its member status."""
    from conversion_sync.salesforce.campaigns import add_member

    with _campaign_problems(), _store().begin() as conn:
        change = add_member(conn, name, email, status)
    created = " (new contact)" if change.contact_created else ""
    click.echo(f"{email}{created}: {change.action} in '{name}' with status {change.status}")


@campaigns.command("errors")
@click.argument("name")
@click.option("--run", "run_id", default=None, help="Run id (default: the latest run with errors).")
def campaign_errors_csv(name: str, run_id: str | None) -> None:
    """Every reconciliation error and skipped member of a campaign's run, as CSV on standard output."""
    import csv

    from conversion_sync.salesforce.campaigns import campaign_errors

    with _campaign_problems(), _store().begin() as conn:
        found_run, rows = campaign_errors(conn, name, run_id)
    if not rows:
        raise click.ClickException(
            f"campaign '{name}' has no reconciliation errors" + (f" in run {run_id}" if run_id else "")
        )
    writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    click.echo(f"{len(rows)} error(s) of run {found_run}", err=True)


if __name__ == "__main__":
    main()
