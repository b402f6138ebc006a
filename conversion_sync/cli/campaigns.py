"""CLI commands for store campaigns, their types, members and Salesforce links."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from conversion_sync.cli.app import main, open_store


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

    with _campaign_problems(), open_store().begin() as conn:
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
    with _campaign_problems(), open_store().begin() as conn:
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

    with _campaign_problems(), open_store().begin() as conn:
        linked = link_campaign(conn, name, mode, salesforce_id)
    click.echo(f"campaign '{linked.name}': {_describe_link(linked)}")


@campaigns.command("list")
def campaign_list() -> None:
    """Table of campaigns: type and statuses, Salesforce link, members, last reconciliation."""
    from conversion_sync.salesforce.campaigns import list_campaigns

    with open_store().begin() as conn:
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

    with _campaign_problems(), open_store().begin() as conn:
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

    with _campaign_problems(), open_store().begin() as conn:
        found_run, rows = campaign_errors(conn, name, run_id)
    if not rows:
        raise click.ClickException(
            f"campaign '{name}' has no reconciliation errors" + (f" in run {run_id}" if run_id else "")
        )
    writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    click.echo(f"{len(rows)} error(s) of run {found_run}", err=True)
