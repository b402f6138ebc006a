"""The `conversion-sync` command: validate config, migrate the store, manage the embedded Postgres."""

from __future__ import annotations

import sys

import click

from conversion_sync.config import load_project_config


@click.group()
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
    """The embedded Postgres (used when CONVERSION_STORE_URL is unset)."""


@store.command("start")
def store_start() -> None:
    """Start the embedded Postgres (or join a running one) and print the store URL."""
    from conversion_sync.dev.embedded_postgres import start_embedded_postgres

    click.echo(start_embedded_postgres())


@store.command("url")
@click.option(
    "--database", default="conversion", show_default=True, help="conversion (the store) or dagster."
)
def store_url(database: str) -> None:
    """Print a database URL on the embedded Postgres, starting it if needed."""
    from conversion_sync.dev.embedded_postgres import DAGSTER_DATABASE, dagster_storage_url, embedded_url

    click.echo(dagster_storage_url() if database == DAGSTER_DATABASE else embedded_url(database))


@store.command("stop")
def store_stop() -> None:
    """Stop the embedded Postgres."""
    from conversion_sync.dev.embedded_postgres import stop_embedded_postgres

    click.echo(
        "embedded Postgres stopped" if stop_embedded_postgres() else "embedded Postgres was not running"
    )


if __name__ == "__main__":
    main()
