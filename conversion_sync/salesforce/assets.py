"""Dagster definitions for Salesforce polling and campaign reconciliation: assets, jobs, schedules."""

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import dagster as dg

from conversion_sync.config.salesforce import SalesforceConfig
from conversion_sync.config.schedules import schedule_to_cron
from conversion_sync.salesforce.budget import ApiBudget
from conversion_sync.salesforce.client import SalesforceApiError, SalesforceResource
from conversion_sync.salesforce.poller import (
    POLL_ORDER,
    PollInProgress,
    PollOutcome,
    SalesforceMappingError,
    SalesforcePoller,
    mapped_fields,
)
from conversion_sync.salesforce.reconcile import (
    CampaignReconciler,
    ReconcileInProgress,
    ReconcileOutcome,
)
from conversion_sync.store.contact_store import ContactStore
from conversion_sync.store.identity import IdentityMatcher
from conversion_sync.syncs.factory import in_progress_run

SALESFORCE_GROUP = "salesforce"
POLL_ASSET = "salesforce_poll"
POLL_JOB = "salesforce_poll_job"
POLL_SCHEDULE = "salesforce_poll_schedule"
POLL_CHECK = "poll_completed"
SALESFORCE_RESOURCE_KEY = "salesforce"


@dataclass
class SalesforceDefinitions:
    assets: list[dg.AssetsDefinition] = field(default_factory=list)
    jobs: list[Any] = field(default_factory=list)
    schedules: list[dg.ScheduleDefinition] = field(default_factory=list)


def poll_metadata(outcome: PollOutcome) -> dict[str, Any]:
    """One materialization's metadata: counts per object and in total (plotted over time), API use, cursors."""
    objects = outcome.objects
    people = [objects[s].counts for s in ("Lead", "Contact")]
    companies = objects["Account"].counts
    metadata: dict[str, Any] = {
        f"read_{sobject}": dg.MetadataValue.int(objects[sobject].counts.read) for sobject in POLL_ORDER
    }
    for name in ("created", "linked", "updated", "unchanged", "unlinked", "relinked"):
        metadata[f"contacts_{name}"] = dg.MetadataValue.int(sum(getattr(c, name) for c in people))
    metadata["relink_conflicts"] = dg.MetadataValue.int(sum(c.conflicts for c in people))
    metadata["skipped_no_email"] = dg.MetadataValue.int(sum(c.skipped_no_email for c in people))
    for name in ("created", "updated", "unchanged", "unlinked", "relinked"):
        metadata[f"companies_{name}"] = dg.MetadataValue.int(getattr(companies, name))
    budget = outcome.budget
    metadata["api_calls_used"] = dg.MetadataValue.int(budget.calls_made)
    metadata["api_remaining"] = dg.MetadataValue.int(budget.remaining if budget.remaining is not None else -1)
    metadata["api_daily_max"] = dg.MetadataValue.int(budget.max if budget.max is not None else -1)
    metadata["api_reserve"] = dg.MetadataValue.int(budget.reserve)
    metadata["stopped_early"] = dg.MetadataValue.text(outcome.stopped_early or "")
    metadata["complete"] = dg.MetadataValue.bool(outcome.complete)
    metadata["upper_bound"] = dg.MetadataValue.text(outcome.upper_bound.isoformat())
    for sobject in POLL_ORDER:
        poll = objects[sobject]
        metadata[f"cursor_{sobject}"] = dg.MetadataValue.text(poll.cursor.isoformat() if poll.cursor else "")
        metadata[f"mode_{sobject}"] = dg.MetadataValue.text(poll.mode)
    metadata["duration_s"] = dg.MetadataValue.float(round(outcome.duration_seconds, 3))
    if outcome.conflicts:
        columns = ["kind", "salesforce_id", "now_salesforce_id", "unlinked_contact_id", "kept_contact_id"]
        metadata["relink_conflicts_preview"] = dg.MetadataValue.table(
            records=[
                dg.TableRecord({c: str(row.get(c) or "") for c in columns}) for row in outcome.conflicts
            ],
            schema=dg.TableSchema(columns=[dg.TableColumn(c, "string") for c in columns]),
        )
    return metadata


def _minutes(value: timedelta) -> str:
    minutes = value.total_seconds() / 60
    return f"{minutes:g} minute{'' if minutes == 1 else 's'}"


def _mapping_problems(config: SalesforceConfig) -> list[str]:
    problems = []
    for sobject in POLL_ORDER:
        try:
            mapped_fields(config, sobject)
        except SalesforceMappingError as exc:
            problems.append(str(exc))
    return problems


def _description(config: SalesforceConfig, not_configured: str | None) -> str:
    text = (
        "Polls Salesforce for new and changed Accounts (→ companies), Leads and Contacts (→ contacts, "
        f"matched by Salesforce Id, then email) on `{config.poll_schedule}`, incremental on SystemModstamp "
        f"with a {_minutes(config.poll_overlap)} overlap. Stops cleanly (metadata `stopped_early`) when "
        f"no more than {config.api_reserve} daily API calls (api_reserve) would be left."
    )
    problems = _mapping_problems(config)
    if problems:
        text = "BROKEN FIELD MAPPING: " + "; ".join(problems) + f"\n\n{text}"
    if not_configured:
        text = f"NOT CONFIGURED: {not_configured}. The schedule is stopped.\n\n{text}"
    return text


def salesforce_poll_asset(config: SalesforceConfig, salesforce: SalesforceResource) -> dg.AssetsDefinition:
    """The poll as one asset; without credentials it still loads, says why, and fails if run."""
    not_configured = salesforce.not_configured_reason

    @dg.asset(
        name=POLL_ASSET,
        group_name=SALESFORCE_GROUP,
        description=_description(config, not_configured),
        kinds={"salesforce", "postgres"},
        metadata={"schedule": config.poll_schedule, "objects": ", ".join(POLL_ORDER)},
        check_specs=[
            dg.AssetCheckSpec(
                POLL_CHECK,
                asset=POLL_ASSET,
                description="Warns when a poll stopped early (API budget) before reading everything",
            )
        ],
    )
    def salesforce_poll(
        context: dg.AssetExecutionContext,
        contact_store: ContactStore,
        identity: IdentityMatcher,
        salesforce: SalesforceResource,
    ) -> dg.MaterializeResult:
        reason = salesforce.not_configured_reason
        if reason:
            raise dg.Failure(description=f"Salesforce is not configured: {reason}")
        budget = ApiBudget(reserve=config.api_reserve)
        poller: SalesforcePoller | None = None
        context.log.info(
            f"Salesforce: {salesforce.describe()}; keeping {config.api_reserve} API calls in reserve"
        )
        try:
            client = salesforce.connect(budget, context.log)
        except SalesforceApiError as exc:
            raise dg.Failure(description=str(exc)) from None
        try:
            poller = SalesforcePoller(
                config, contact_store, identity, client, run_id=context.run_id, logger=context.log
            )
            outcome = poller.run()
        except (SalesforceApiError, SalesforceMappingError, PollInProgress) as exc:
            partial = poll_metadata(poller.outcome) if poller is not None else {}
            raise dg.Failure(
                description=f"{exc}. Pages committed before the error are kept; each object's cursor "
                "stays at its last commit, so the next poll continues from there.",
                metadata=partial,
            ) from None
        finally:
            client.close()
        counts = ", ".join(f"{s} read {outcome.objects[s].counts.read}" for s in POLL_ORDER)
        context.log.info(f"Salesforce poll: {counts}; {budget.calls_made} API calls")
        return dg.MaterializeResult(
            metadata=poll_metadata(outcome),
            check_results=[
                dg.AssetCheckResult(
                    check_name=POLL_CHECK,
                    passed=outcome.complete,
                    severity=dg.AssetCheckSeverity.WARN,
                    description=outcome.stopped_early or "every object was read up to the upper bound",
                )
            ],
        )

    return salesforce_poll


def _add_job_and_schedule(
    out: SalesforceDefinitions,
    salesforce: SalesforceResource,
    *,
    asset: str,
    job_name: str,
    schedule_name: str,
    phrase: str,
    description: str,
    tag: str,
    what: str,
    short: str,
) -> None:
    """A job for the asset and its schedule: skips a tick while a run is in progress; stopped without credentials."""
    job = dg.define_asset_job(
        job_name,
        selection=dg.AssetSelection.assets(asset),
        description=description,
        tags={"conversion_sync/salesforce": tag},
    )
    out.jobs.append(job)
    cron = schedule_to_cron(phrase)
    if cron is None:
        return
    not_configured = salesforce.not_configured_reason

    @dg.schedule(
        name=schedule_name,
        cron_schedule=cron,
        job=job,
        default_status=dg.DefaultScheduleStatus.STOPPED
        if not_configured
        else dg.DefaultScheduleStatus.RUNNING,
        description=(
            f"{phrase} ({cron}); a tick while the previous {short} runs is skipped"
            + (f". Stopped: {not_configured}" if not_configured else "")
        ),
        execution_timezone="UTC",
    )
    def _schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        if not_configured:
            return dg.SkipReason(f"Salesforce is not configured: {not_configured}")
        running = in_progress_run(context, job_name)
        if running:
            return dg.SkipReason(f"the previous {what} is still running (run {running}); tick skipped")
        return dg.RunRequest()

    out.schedules.append(_schedule)


def build_salesforce_definitions(
    config: SalesforceConfig, salesforce: SalesforceResource
) -> SalesforceDefinitions:
    """The salesforce_poll asset, job and schedule (stopped when there are no credentials)."""
    out = SalesforceDefinitions()
    out.assets.append(salesforce_poll_asset(config, salesforce))
    _add_job_and_schedule(
        out,
        salesforce,
        asset=POLL_ASSET,
        job_name=POLL_JOB,
        schedule_name=POLL_SCHEDULE,
        phrase=config.poll_schedule,
        description="Poll Salesforce for changed Accounts, Leads and Contacts",
        tag="poll",
        what="Salesforce poll",
        short="poll",
    )
    return out


# -- campaign member reconciliation (SPEC §6) ---------------------------------------------------

RECONCILE_ASSET = "campaign_reconciliation"
RECONCILE_JOB = "campaign_reconciliation_job"
RECONCILE_SCHEDULE = "campaign_reconciliation_schedule"
_CAMPAIGN_COLUMNS = (
    "read_salesforce",
    "imported",
    "updated_in_store",
    "removed_in_store",
    "pushed",
    "updated_in_salesforce",
    "leads_created",
    "conflicts",
    "unchanged",
    "skipped_status",
    "skipped_no_email",
    "errors",
)
_ERROR_COLUMNS = (
    "campaign",
    "direction",
    "code",
    "email",
    "contact_id",
    "salesforce_person_id",
    "status",
    "message",
)


def reconcile_metadata(outcome: ReconcileOutcome) -> dict[str, Any]:
    """One materialization's metadata: totals (plotted over time), API use, a row per campaign, an error preview."""
    totals = outcome.totals.as_dict()
    metadata: dict[str, Any] = {name: dg.MetadataValue.int(value) for name, value in totals.items()}
    metadata["campaigns_reconciled"] = dg.MetadataValue.int(len(outcome.campaigns) - len(outcome.failed))
    metadata["campaigns_failed"] = dg.MetadataValue.int(len(outcome.failed))
    budget = outcome.budget
    metadata["api_calls_used"] = dg.MetadataValue.int(budget.calls_made)
    metadata["api_remaining"] = dg.MetadataValue.int(budget.remaining if budget.remaining is not None else -1)
    metadata["api_daily_max"] = dg.MetadataValue.int(budget.max if budget.max is not None else -1)
    metadata["api_reserve"] = dg.MetadataValue.int(budget.reserve)
    metadata["stopped_early"] = dg.MetadataValue.text(outcome.stopped_early or "")
    metadata["complete"] = dg.MetadataValue.bool(outcome.complete)
    columns = [
        "campaign",
        "salesforce_campaign_id",
        "first_link",
        *_CAMPAIGN_COLUMNS,
        "bulk_jobs",
        "api_calls",
        "seconds",
        "failed",
    ]
    metadata["campaigns"] = dg.MetadataValue.table(
        records=[
            dg.TableRecord(
                {
                    "campaign": c.name,
                    "salesforce_campaign_id": c.salesforce_campaign_id or "",
                    "first_link": c.first_link,
                    **{name: getattr(c.counts, name) for name in _CAMPAIGN_COLUMNS},
                    "bulk_jobs": c.bulk_jobs,
                    "api_calls": c.api_calls,
                    "seconds": round(c.duration_seconds, 2),
                    "failed": c.failed or "",
                }
            )
            for c in outcome.campaigns
        ],
        schema=dg.TableSchema(
            columns=[
                dg.TableColumn(
                    name,
                    "string"
                    if name in ("campaign", "salesforce_campaign_id", "failed")
                    else ("bool" if name == "first_link" else ("float" if name == "seconds" else "int")),
                )
                for name in columns
            ]
        ),
    )
    if outcome.errors_preview:
        metadata["errors_preview"] = dg.MetadataValue.table(
            records=[
                dg.TableRecord({c: str(row.get(c) if row.get(c) is not None else "") for c in _ERROR_COLUMNS})
                for row in outcome.errors_preview
            ],
            schema=dg.TableSchema(columns=[dg.TableColumn(c, "string") for c in _ERROR_COLUMNS]),
        )
        names = sorted({str(row["campaign"]) for row in outcome.errors_preview})
        metadata["errors_command"] = dg.MetadataValue.text(
            " ; ".join(f"conversion-sync campaigns errors '{n}' --run {outcome.run_id}" for n in names)
        )
    metadata["duration_s"] = dg.MetadataValue.float(round(outcome.duration_seconds, 3))
    return metadata


def _reconcile_description(config: SalesforceConfig, not_configured: str | None) -> str:
    text = (
        f"Two-way campaign member reconciliation on `{config.reconcile_schedule}`: for every store campaign "
        "linked to Salesforce, Salesforce members are imported first (people matched or created by the identity "
        "matcher; a status unknown to the campaign type is skipped and reported), then store members are pushed "
        "(a Lead is created for a contact without a Salesforce record; a status the Salesforce campaign lacks is "
        "an error for that member only). When both sides changed a member, the more recent updated_at wins. "
        "Writes go in collections of 200, or Bulk API 2.0 jobs for large sets. Errors are kept in the store "
        "table campaign_member_errors (preview in each run's metadata)."
    )
    if not_configured:
        text = f"NOT CONFIGURED: {not_configured}. The schedule is stopped.\n\n{text}"
    return text


def campaign_reconciliation_asset(
    config: SalesforceConfig, salesforce: SalesforceResource
) -> dg.AssetsDefinition:
    """The reconciliation as one asset; without credentials it still loads, says why, and fails if run."""
    not_configured = salesforce.not_configured_reason

    @dg.asset(
        name=RECONCILE_ASSET,
        group_name=SALESFORCE_GROUP,
        description=_reconcile_description(config, not_configured),
        kinds={"salesforce", "postgres"},
        metadata={"schedule": config.reconcile_schedule},
    )
    def campaign_reconciliation(
        context: dg.AssetExecutionContext,
        contact_store: ContactStore,
        identity: IdentityMatcher,
        salesforce: SalesforceResource,
    ) -> dg.MaterializeResult:
        reason = salesforce.not_configured_reason
        if reason:
            raise dg.Failure(description=f"Salesforce is not configured: {reason}")
        budget = ApiBudget(reserve=config.api_reserve)
        context.log.info(
            f"Salesforce: {salesforce.describe()}; keeping {config.api_reserve} API calls in reserve"
        )
        try:
            client = salesforce.connect(budget, context.log)
        except SalesforceApiError as exc:
            raise dg.Failure(description=str(exc)) from None
        reconciler: CampaignReconciler | None = None
        try:
            reconciler = CampaignReconciler(
                contact_store, identity, client, run_id=context.run_id, logger=context.log
            )
            outcome = reconciler.run()
        except (SalesforceApiError, ReconcileInProgress) as exc:
            partial = reconcile_metadata(reconciler.outcome) if reconciler is not None else {}
            raise dg.Failure(
                description=f"{exc}. Campaign batches committed before the error are kept; the next run "
                "continues from there.",
                metadata=partial,
            ) from None
        finally:
            client.close()
        metadata = reconcile_metadata(outcome)
        if outcome.failed:
            problems = "; ".join(f"'{c.name}': {c.failed}" for c in outcome.failed)
            raise dg.Failure(
                description=f"{len(outcome.failed)} of {len(outcome.campaigns)} campaign(s) could not be "
                f"reconciled ({problems}); the others were.",
                metadata=metadata,
            )
        totals = outcome.totals
        context.log.info(
            f"Campaign reconciliation: {len(outcome.campaigns)} campaign(s), imported {totals.imported}, "
            f"pushed {totals.pushed}, updated in store {totals.updated_in_store}, updated in Salesforce "
            f"{totals.updated_in_salesforce}, errors {totals.errors}; {budget.calls_made} API calls"
        )
        return dg.MaterializeResult(metadata=metadata)

    return campaign_reconciliation


def build_campaign_definitions(
    config: SalesforceConfig, salesforce: SalesforceResource
) -> SalesforceDefinitions:
    """The campaign_reconciliation asset, job and schedule (stopped when there are no credentials)."""
    out = SalesforceDefinitions()
    out.assets.append(campaign_reconciliation_asset(config, salesforce))
    _add_job_and_schedule(
        out,
        salesforce,
        asset=RECONCILE_ASSET,
        job_name=RECONCILE_JOB,
        schedule_name=RECONCILE_SCHEDULE,
        phrase=config.reconcile_schedule,
        description="Reconcile store campaign members with their linked Salesforce campaigns, both ways",
        tag="campaigns",
        what="campaign reconciliation",
        short="reconciliation",
    )
    return out
