"""CLI commands for the contact store: migrate, and the embedded Postgres (local only)."""

from __future__ import annotations

from types import ModuleType

import click

from conversion_sync.cli.app import main


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
