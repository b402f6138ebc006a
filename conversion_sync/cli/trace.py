"""`conversion-sync trace`: every run that wrote, rejected or removed one key."""

from __future__ import annotations

import json

import click

from conversion_sync.cli.app import main, open_store


@main.command()
@click.argument("key")
def trace(key: str) -> None:
    """Every run that wrote, declined, rejected or removed KEY (an e-mail, object id or event message id)."""
    from conversion_sync.store.trace import key_history, retention_days

    with open_store().begin() as conn:
        entries = key_history(conn, key)
    if not entries:
        raise click.ClickException(
            f"no run wrote, rejected or removed '{key}' in the last {retention_days()} days"
        )
    for entry in entries:
        click.echo(
            f"{entry.at:%Y-%m-%d %H:%M:%S}  {entry.sync_name}  run {entry.run_id}  {entry.action:<8}  {entry.key}"
        )
        if entry.action == "rejected":
            click.echo(f"    [{entry.code}] {entry.message}")
        if entry.values:
            click.echo(f"    {json.dumps(entry.values, sort_keys=True, default=str)}")
