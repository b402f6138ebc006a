"""`conversion-sync salesforce poll`: read Salesforce changes into the store now."""

from __future__ import annotations

import click

from conversion_sync.cli.app import open_store, print_counts
from conversion_sync.cli.salesforce import salesforce

OBJECTS = ("Account", "Lead", "Contact")


@salesforce.command("poll")
@click.option(
    "--object",
    "objects",
    multiple=True,
    type=click.Choice(OBJECTS),
    help="Poll only this object (repeat for several); default: Account, Lead and Contact.",
)
@click.option("--full", is_flag=True, help="Re-read every record from the beginning, not from the cursor.")
@click.option(
    "--sweep",
    is_flag=True,
    help="Sweep Ids now, due or not: unlink store records whose Salesforce record is gone for good.",
)
@click.pass_context
def poll(ctx: click.Context, objects: tuple[str, ...], full: bool, sweep: bool) -> None:
    """Poll Salesforce now, in this process, and print the counts (recorded as `salesforce:poll`)."""
    from conversion_sync.config import load_project_config
    from conversion_sync.salesforce.budget import ApiBudget
    from conversion_sync.salesforce.client import SalesforceApiError, SalesforceSettings
    from conversion_sync.salesforce.poller import (
        PollInProgress,
        PollOptions,
        SalesforceMappingError,
        SalesforcePoller,
    )
    from conversion_sync.store.identity import IdentityMatcher

    project = load_project_config(ctx.obj["config_dir"])
    problems = [p for p in project.problems if p.file == "salesforce.yaml"]
    if problems:
        raise click.ClickException("salesforce.yaml has problems:\n" + "\n".join(f"  {p}" for p in problems))
    config = project.salesforce
    settings = SalesforceSettings.from_env()
    if settings.not_configured_reason:
        raise click.ClickException(f"Salesforce is not configured: {settings.not_configured_reason}")
    options = PollOptions(objects=objects or OBJECTS, full=full, sweep=sweep)
    click.echo(
        f"polling {', '.join(options.objects)} from {settings.describe()}"
        + (" (full re-read)" if full else "")
        + (", sweeping Ids" if sweep else "")
    )
    budget = ApiBudget(reserve=config.api_reserve)
    try:
        client = settings.connect(budget)
        try:
            outcome = SalesforcePoller(config, open_store(), IdentityMatcher(), client, options=options).run()
        finally:
            client.close()
    except (SalesforceApiError, SalesforceMappingError, PollInProgress) as exc:
        raise click.ClickException(
            f"{exc}. Pages committed before the error are kept; the next poll continues from there."
        ) from None
    counts = outcome.run_counts()
    print_counts({k: int(v) for k, v in counts.items() if k not in ("complete", "stopped_early")})
    for sobject in options.objects:
        poll_ = outcome.objects[sobject]
        click.echo(f"{sobject}: read {poll_.counts.read} via {poll_.mode}")
    for conflict in outcome.conflicts:
        reason = conflict.get("reason") or (
            f"{conflict['kind']}: {conflict['salesforce_id']} is now {conflict['now_salesforce_id']}, which "
            f"store contact {conflict['kept_contact_id']} holds; contact {conflict['unlinked_contact_id']} "
            "was unlinked"
        )
        click.echo(f"conflict: {reason}")
    for result in outcome.sweeps.values():
        if result.refused:
            click.echo(f"sweep of {result.sobject} refused: {result.refused}", err=True)
    if outcome.stopped_early:
        click.echo(
            f"stopped early: {outcome.stopped_early}; the next poll continues from each cursor", err=True
        )
    click.echo(f"run {outcome.run_id}: {'complete' if outcome.complete else 'incomplete'}")
