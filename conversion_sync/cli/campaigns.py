"""CLI commands for store campaigns, their types, members and Salesforce links."""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from conversion_sync.cli.app import main, open_store
from conversion_sync.config import load_project_config


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


def _table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _check_link(mode: str, salesforce_id: str | None, check: bool) -> None:
    """Refuse a link to a Salesforce Campaign that does not exist (one query); --no-check skips it."""
    if mode != "existing" or not salesforce_id or not check:
        return
    from conversion_sync.salesforce.campaigns import salesforce_campaign_id
    from conversion_sync.salesforce.campaigns.salesforce_links import (
        SalesforceCheckFailed,
        check_campaign_exists,
    )
    from conversion_sync.salesforce.client import SalesforceSettings

    sf_id = salesforce_campaign_id(salesforce_id)
    try:
        check_campaign_exists(SalesforceSettings.from_env(), sf_id)
    except SalesforceCheckFailed as exc:
        raise click.ClickException(
            f"{exc}; nothing was linked. Try again, or link without the check: --no-check"
        ) from None


_NO_CHECK = click.option(
    "--no-check",
    "no_check",
    is_flag=True,
    help="Link without asking Salesforce whether the Campaign exists (e.g. while Salesforce is unreachable).",
)


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
@_NO_CHECK
def campaign_create(
    name: str, type_name: str, link: str | None, salesforce_id: str | None, no_check: bool
) -> None:
    """Create a store campaign, optionally linked to Salesforce (an existing Campaign must exist there)."""
    from conversion_sync.salesforce.campaigns import create_campaign

    mode = link or ("existing" if salesforce_id else "none")
    with _campaign_problems():
        _check_link(mode, salesforce_id, not no_check)
    with _campaign_problems(), open_store().begin() as conn:
        created = create_campaign(conn, name, type_name, mode, salesforce_id)
    click.echo(f"campaign '{created.name}' ({created.type.name}): {_describe_link(created)}")


@campaigns.command("link")
@click.argument("name")
@click.argument("mode", type=click.Choice(["none", "existing", "create"]))
@click.argument("salesforce_id", required=False)
@_NO_CHECK
def campaign_link(name: str, mode: str, salesforce_id: str | None, no_check: bool) -> None:
    """Link a campaign to Salesforce: none | existing SALESFORCE_ID | create.

    A link to an existing Campaign is checked in Salesforce first. A new link target starts over as a first
    link: Salesforce members are imported before store members are pushed.
    """
    from conversion_sync.salesforce.campaigns import link_campaign

    with _campaign_problems():
        _check_link(mode, salesforce_id, not no_check)
    with _campaign_problems(), open_store().begin() as conn:
        linked = link_campaign(conn, name, mode, salesforce_id)
    click.echo(f"campaign '{linked.name}': {_describe_link(linked)}")


@campaigns.command("list")
@click.option(
    "--offline", is_flag=True, help="Do not ask Salesforce whether the linked Campaigns still exist."
)
def campaign_list(offline: bool) -> None:
    """Table of campaigns: type and statuses, Salesforce link (BROKEN when the linked Campaign is gone),
    members, last reconciliation."""
    from conversion_sync.salesforce.campaigns import list_campaigns

    store = open_store()
    with store.begin() as conn:
        found = list_campaigns(conn)
    note = None if offline else _check_links(store, [c.salesforce_campaign_id for c in found])
    if note is None and not offline:
        with store.begin() as conn:
            found = list_campaigns(conn)
    rows = [("CAMPAIGN", "TYPE", "STATUSES", "LINK", "SALESFORCE CAMPAIGN", "MEMBERS", "LAST RECONCILED")]
    for c in found:
        when = c.last_reconciled_at.strftime("%Y-%m-%d %H:%M:%S") if c.last_reconciled_at else "-"
        sf_id = c.salesforce_campaign_id or ("(to create)" if c.salesforce_link == "create" else "-")
        link: str = c.salesforce_link
        if c.salesforce_missing_since is not None:
            link = (
                f"BROKEN ({link}: not found in Salesforce since {c.salesforce_missing_since:%Y-%m-%d %H:%M})"
            )
        rows.append((c.name, c.type.name, ", ".join(c.type.statuses), link, sf_id, str(c.members), when))
    _table(rows)
    if note:
        click.echo(note, err=True)


def _check_links(store: Any, ids: Sequence[str | None]) -> str | None:
    """Ask Salesforce which linked Campaigns exist and remember the answer; a note when it cannot be asked."""
    from conversion_sync.salesforce.campaigns.salesforce_links import (
        SalesforceCheckFailed,
        connect_for_check,
        existing_campaigns,
        record_link_check,
    )
    from conversion_sync.salesforce.client import SalesforceApiError, SalesforceSettings

    linked = [i for i in ids if i]
    if not linked:
        return None
    settings = SalesforceSettings.from_env()
    if not settings.configured:
        return "links not checked: Salesforce is not configured (broken links as of the last reconciliation)"
    try:
        client = connect_for_check(settings, "the linked Salesforce Campaigns")
        try:
            found = existing_campaigns(client, linked)
        finally:
            client.close()
    except (SalesforceCheckFailed, SalesforceApiError) as exc:
        return f"links not checked ({exc}); broken links as of the last check"
    with store.begin() as conn:
        record_link_check(conn, linked, list(found))
    return None


@campaigns.command("members")
@click.argument("name")
@click.option("--removed", is_flag=True, help="Also list members removed with remove-member (tombstones).")
def campaign_members_list(name: str, removed: bool) -> None:
    """Table of a campaign's members: status, Salesforce Lead/Contact and CampaignMember ids, and whether each
    is pushed, pending (not in Salesforce yet, or a status change to push) or in error."""
    from conversion_sync.salesforce.campaigns.members import campaign_members

    with _campaign_problems(), open_store().begin() as conn:
        found = campaign_members(conn, name, removed=removed)
    rows = [("EMAIL", "STATUS", "SALESFORCE PERSON", "CAMPAIGN MEMBER", "STATE", "DETAIL")]
    for m in found:
        person = f"{m.person_type} {m.person_id}" if m.person_id else "-"
        rows.append((m.email or "-", m.status, person, m.member_id or "-", m.state, m.detail))
    _table(rows)
    states: dict[str, int] = {}
    for m in found:
        states[m.state] = states.get(m.state, 0) + 1
    click.echo(", ".join(f"{n} {state}" for state, n in states.items()) or "no members", err=True)


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


@campaigns.command("add-members")
@click.argument("name")
@click.option(
    "--csv",
    "csv_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="CSV file with columns email[,status] (a header row naming them is optional).",
)
def campaign_add_members(name: str, csv_file: Path) -> None:
    """Add many members at once from a CSV file, in one transaction; lines with problems are listed (with
    their line number) and left out, the good lines are added."""
    from conversion_sync.salesforce.campaigns.members import add_members_file

    started = time.perf_counter()
    with _campaign_problems(), open_store().begin() as conn:
        result = add_members_file(conn, name, csv_file)
    for problem in result.problems:
        click.echo(f"{csv_file.name}:{problem.line}: {problem.problem}", err=True)
    click.echo(
        f"campaign '{name}': {result.added} added, {result.updated} status changed, {result.unchanged} "
        f"unchanged, {len(result.problems)} line(s) with problems of {result.rows}; "
        f"{result.contacts_created} new contact(s); {time.perf_counter() - started:.1f}s"
    )


@campaigns.command("remove-member")
@click.argument("name")
@click.argument("email")
@click.option(
    "--later", is_flag=True, help="Leave the Salesforce member's deletion to the next reconciliation."
)
def campaign_remove_member(name: str, email: str, later: bool) -> None:
    """Remove a member on both sides. Its Salesforce CampaignMember is deleted now (when Salesforce is
    configured and reachable) or by the next reconciliation; it is not imported back, unless it is added again
    in Salesforce after the removal (newer wins) or in the store."""
    from conversion_sync.salesforce.campaigns import get_campaign
    from conversion_sync.salesforce.campaigns.members import remove_member

    store = open_store()
    with _campaign_problems(), store.begin() as conn:
        campaign = get_campaign(conn, name)
        removed = remove_member(conn, name, email)
    member_ids = [r.salesforce_member_id for r in removed if r.salesforce_member_id]
    for r in removed:
        click.echo(f"{r.email}: removed from '{campaign.name}' (was {r.status})")
    if campaign.salesforce_link == "none" or not member_ids:
        return
    note = None if later else _delete_now(store, campaign.id, member_ids)
    if note is None and not later:
        click.echo(f"deleted in Salesforce: CampaignMember {', '.join(member_ids)}")
    else:
        click.echo(
            f"Salesforce CampaignMember {', '.join(member_ids)} is deleted by the next reconciliation"
            + (f" ({note})" if note else "")
        )


def _delete_now(store: Any, campaign_id: int, member_ids: list[str]) -> str | None:
    """Delete removed members' Salesforce CampaignMembers now; None when done, else why not."""
    from conversion_sync.salesforce.campaigns.members import mark_deleted_in_salesforce
    from conversion_sync.salesforce.campaigns.push_members import GONE_CODES
    from conversion_sync.salesforce.campaigns.salesforce_links import SalesforceCheckFailed, connect_for_check
    from conversion_sync.salesforce.campaigns.salesforce_writes import SalesforceWriter
    from conversion_sync.salesforce.client import SalesforceApiError, SalesforceSettings

    settings = SalesforceSettings.from_env()
    if not settings.configured:
        return "Salesforce is not configured here"
    try:
        client = connect_for_check(settings, "Salesforce")
        try:
            results = SalesforceWriter(client).delete(member_ids)
        finally:
            client.close()
    except (SalesforceCheckFailed, SalesforceApiError) as exc:
        return str(exc)
    done = [i for i, r in zip(member_ids, results, strict=True) if r.ok or r.code in GONE_CODES]
    with store.begin() as conn:
        mark_deleted_in_salesforce(conn, campaign_id, done)
    refused = [f"{r.code}: {r.message}" for r in results if not (r.ok or r.code in GONE_CODES)]
    return "; ".join(refused) or None


@campaigns.command("reconcile")
@click.argument("name", required=False)
@click.pass_context
def campaign_reconcile(ctx: click.Context, name: str | None) -> None:
    """Reconcile now, in this process: one linked campaign, or every linked campaign without NAME.

    The same work as campaign_reconciliation_job; it waits for nothing: when a reconciliation is already
    running, this one does nothing and says so."""
    from conversion_sync.salesforce.budget import ApiBudget
    from conversion_sync.salesforce.campaigns import reconcile_selection
    from conversion_sync.salesforce.client import SalesforceApiError, SalesforceSettings
    from conversion_sync.salesforce.reconcile import CampaignReconciler, ReconcileInProgress
    from conversion_sync.store.identity import IdentityMatcher

    project = load_project_config(ctx.obj["config_dir"])
    store = open_store()
    with _campaign_problems(), store.begin() as conn:
        names = reconcile_selection(conn, name)
    settings = SalesforceSettings.from_env()
    if settings.not_configured_reason:
        raise click.ClickException(f"Salesforce is not configured: {settings.not_configured_reason}")
    budget = ApiBudget(reserve=project.salesforce.api_reserve)
    try:
        client = settings.connect(budget)
    except SalesforceApiError as exc:
        raise click.ClickException(str(exc)) from None
    run_id = f"cli-{uuid.uuid4()}"
    try:
        outcome = CampaignReconciler(
            store, IdentityMatcher(), client, run_id=run_id, campaign_names=names
        ).run()
    except (ReconcileInProgress, SalesforceApiError) as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        client.close()
    _print_outcome(outcome)
    if outcome.failed or outcome.stopped_early:
        sys.exit(1)


_OUTCOME_COUNTS = (
    ("read", "read_salesforce"),
    ("imported", "imported"),
    ("updated in store", "updated_in_store"),
    ("removed in store", "removed_in_store"),
    ("pushed", "pushed"),
    ("updated in Salesforce", "updated_in_salesforce"),
    ("removed in Salesforce", "removed_in_salesforce"),
    ("leads created", "leads_created"),
    ("conflicts", "conflicts"),
    ("unchanged", "unchanged"),
    ("skipped", "skipped_status"),
    ("errors", "errors"),
    ("standing errors", "standing_errors"),
)


def _print_outcome(outcome: Any) -> None:
    if not outcome.campaigns:
        click.echo("no campaign linked to Salesforce: nothing to reconcile")
    for c in outcome.campaigns:
        counts = c.counts.as_dict()
        state = "failed" if c.failed else "reconciled"
        click.echo(
            f"campaign '{c.name}' ⇄ {c.salesforce_campaign_id or '-'}: {state} ({c.api_calls} API calls)"
        )
        for label, key in _OUTCOME_COUNTS:
            click.echo(f"  {label:<22} {counts[key]}")
        if c.failed:
            again = " (reported before)" if c.standing_failure else ""
            click.echo(f"  error{again}: {c.failed}")
    if outcome.stopped_early:
        click.echo(f"stopped early: {outcome.stopped_early}; the next run continues")
    if outcome.errors_preview:
        click.echo(
            f"{len(outcome.errors_preview)} new error(s): conversion-sync campaigns errors CAMPAIGN --run "
            f"{outcome.run_id}"
        )


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
