"""`conversion-sync salesforce push`: send store contacts to Salesforce now; `mark-for-push` and `push-errors`."""

from __future__ import annotations

import click

from conversion_sync.cli.app import open_store, print_counts
from conversion_sync.cli.salesforce import salesforce


def _salesforce_config(ctx: click.Context) -> object:
    from conversion_sync.config import load_project_config

    project = load_project_config(ctx.obj["config_dir"])
    problems = [p for p in project.problems if p.file == "salesforce.yaml"]
    if problems:
        raise click.ClickException("salesforce.yaml has problems:\n" + "\n".join(f"  {p}" for p in problems))
    return project.salesforce


@salesforce.command("push")
@click.option(
    "--email",
    "emails",
    multiple=True,
    help="Push only the contact with this email (repeat for several); created unless its rule says never.",
)
@click.option(
    "--all-pending",
    is_flag=True,
    help="Also create every contact whose rule says `later` (sync later, from a workflow).",
)
@click.pass_context
def push(ctx: click.Context, emails: tuple[str, ...], all_pending: bool) -> None:
    """Push store contacts to Salesforce now, in this process, and print the counts (recorded as
    `salesforce:push`). Without options: the contacts the rules send `immediately`, those marked for push,
    and the changed fields of linked contacts."""
    from conversion_sync.config.salesforce import SalesforceConfig
    from conversion_sync.salesforce.budget import ApiBudget
    from conversion_sync.salesforce.client import SalesforceApiError, SalesforceSettings
    from conversion_sync.salesforce.poller import SalesforceMappingError
    from conversion_sync.salesforce.push import PushInProgress, PushOptions, SalesforcePusher

    if emails and all_pending:
        raise click.UsageError("use --email or --all-pending, not both")
    config = _salesforce_config(ctx)
    assert isinstance(config, SalesforceConfig)
    settings = SalesforceSettings.from_env()
    if settings.not_configured_reason:
        raise click.ClickException(f"Salesforce is not configured: {settings.not_configured_reason}")
    which = (
        f"{len(emails)} email(s)" if emails else "every pending contact" if all_pending else "due contacts"
    )
    click.echo(f"pushing {which} to {settings.describe()}")
    try:
        client = settings.connect(ApiBudget(reserve=config.api_reserve))
        try:
            options = PushOptions(emails=emails, all_pending=all_pending)
            outcome = SalesforcePusher(config, open_store(), client, options=options).run()
        finally:
            client.close()
    except (SalesforceApiError, SalesforceMappingError, PushInProgress) as exc:
        raise click.ClickException(
            f"{exc}. What was pushed before the error is recorded; the next push continues with the rest."
        ) from None
    print_counts({k: int(v) for k, v in outcome.run_counts().items() if k != "complete"})
    for error in outcome.errors:
        click.echo(
            f"refused: {error['email']} (contact {error['contact_id']}): {error['code']}: {error['message']}"
        )
    if outcome.stopped_early:
        click.echo(f"stopped early: {outcome.stopped_early}", err=True)


@salesforce.command("mark-for-push")
@click.argument("emails", nargs=-1, required=True)
def mark_for_push_command(emails: tuple[str, ...]) -> None:
    """Mark contacts (by email) for the next push: created in Salesforce then, whatever the rules say (unless
    `never`); a standing error of theirs is cleared so they are tried again."""
    from conversion_sync.salesforce.push import mark_for_push

    with open_store().begin() as conn:
        marked, unknown = mark_for_push(conn, emails)
    click.echo(f"marked {marked} contact(s) for the next Salesforce push")
    for email in unknown:
        click.echo(f"no contact has the email {email}", err=True)
    if unknown:
        raise SystemExit(1)


@salesforce.command("push-errors")
@click.option("--limit", default=50, show_default=True, help="Show at most this many contacts.")
def push_errors_command(limit: int) -> None:
    """Contacts whose last push Salesforce refused, with its message; each is tried again once it changes."""
    from conversion_sync.salesforce.push import push_errors

    with open_store().begin() as conn:
        errors = push_errors(conn, limit)
    for error in errors:
        click.echo(
            f"{error['email']} (contact {error['contact_id']}, {error['error_at']:%Y-%m-%d %H:%M}): "
            f"{error['error_code']}: {error['error_message']}"
        )
    if not errors:
        click.echo("no contact is waiting with a push error")
