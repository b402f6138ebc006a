"""The Salesforce contact push in Dagster: the `salesforce_push` asset, its job, the sensor that runs it after
each successful poll, and its safety-net schedule; neither launches a push while a poll or a push is queued or
running (they look at the instance's runs: the `salesforce_api` pool limits ops, not runs, to two or three at
once, so it would let a push run beside a poll).

No `from __future__ import annotations` here: Dagster reads the asset's config and resource annotations at
runtime.
"""

from typing import Any

import dagster as dg
from pydantic import Field

from conversion_sync.config.salesforce import SalesforceConfig
from conversion_sync.config.schedules import schedule_to_cron
from conversion_sync.defs.automation import SALESFORCE_POOL, in_progress_run
from conversion_sync.defs.salesforce.assets import SALESFORCE_GROUP
from conversion_sync.defs.salesforce.jobs import SALESFORCE_TAG
from conversion_sync.salesforce.budget import ApiBudget
from conversion_sync.salesforce.client import SalesforceApiError, SalesforceSettings
from conversion_sync.salesforce.poller import SalesforceMappingError
from conversion_sync.salesforce.push import PushInProgress, PushOptions, PushOutcome, SalesforcePusher
from conversion_sync.store.contact_store import ContactStore

PUSH_ASSET = "salesforce_push"
PUSH_JOB = "salesforce_push_job"
PUSH_SENSOR = "salesforce_push_after_poll"
PUSH_SCHEDULE = "salesforce_push_schedule"


class PushRunConfig(dg.Config):
    """Launchpad choices, as on the command line: only some emails, or every pending contact."""

    emails: list[str] = Field(
        default_factory=list, description="Push only the contacts with these emails (created unless `never`)."
    )
    all_pending: bool = Field(
        default=False, description="Also create every contact whose rule says `later` (sync later)."
    )


def push_metadata(outcome: PushOutcome) -> dict[str, Any]:
    """One materialization's metadata: the counts (plotted over time), API use, per-contact errors."""
    metadata: dict[str, Any] = {
        f"contacts_{name}": dg.MetadataValue.int(value) for name, value in outcome.counts.as_dict().items()
    }
    metadata["api_calls_used"] = dg.MetadataValue.int(outcome.budget.calls_made)
    metadata["bulk_jobs"] = dg.MetadataValue.int(outcome.bulk_jobs)
    metadata["stopped_early"] = dg.MetadataValue.text(outcome.stopped_early or "")
    metadata["duration_s"] = dg.MetadataValue.float(round(outcome.duration_seconds, 3))
    if outcome.errors:
        columns = ["contact_id", "email", "code", "message"]
        metadata["errors_preview"] = dg.MetadataValue.table(
            records=[dg.TableRecord({c: str(e.get(c) or "") for c in columns}) for e in outcome.errors],
            schema=dg.TableSchema(columns=[dg.TableColumn(c, "string") for c in columns]),
        )
    return metadata


def salesforce_push_asset(config: SalesforceConfig, salesforce: SalesforceSettings) -> dg.AssetsDefinition:
    """The push as one asset; without credentials it still loads, says why, and fails if run."""
    not_configured = salesforce.not_configured_reason
    push_settings = config
    push = config.push
    description = (
        "Pushes store contacts to Salesforce: creates the ones the push rules send (default "
        f"`{push.create}`, as {push.as_}) after searching Salesforce by email, and writes linked contacts' "
        "changed fields where the store value wins (conversion_wins, or most_recent when newer). Runs after "
        f"each successful poll, and on `{push.schedule}` as a safety net, never while a poll or another push "
        "is queued or running; launch it with `emails` or `all_pending` to sync contacts later."
    )
    if not_configured:
        description = f"NOT CONFIGURED: {not_configured}.\n\n{description}"

    @dg.asset(
        name=PUSH_ASSET,
        group_name=SALESFORCE_GROUP,
        description=description,
        kinds={"salesforce", "postgres"},
        pool=SALESFORCE_POOL,
        metadata={
            "create": push.create,
            "as": push.as_,
            "bulk_threshold": push.bulk_threshold,
            "push_schedule": push.schedule,  # not `schedule`: its freshness follows the poll it runs after
        },
    )
    def salesforce_push(
        context: dg.AssetExecutionContext,
        config: PushRunConfig,
        contact_store: dg.ResourceParam[ContactStore],
        salesforce: dg.ResourceParam[SalesforceSettings],
    ) -> dg.MaterializeResult:
        reason = salesforce.not_configured_reason
        if reason:
            raise dg.Failure(description=f"Salesforce is not configured: {reason}")
        settings = push_settings
        try:
            client = salesforce.connect(ApiBudget(reserve=settings.api_reserve), context.log)
        except SalesforceApiError as exc:
            raise dg.Failure(description=str(exc)) from None
        options = PushOptions(emails=tuple(config.emails), all_pending=config.all_pending)
        pusher = SalesforcePusher(
            settings, contact_store, client, run_id=context.run_id, options=options, logger=context.log
        )
        try:
            outcome = pusher.run()
        except (SalesforceApiError, SalesforceMappingError, PushInProgress) as exc:
            raise dg.Failure(
                description=f"{exc}. What was pushed before the error is recorded; the next push continues.",
                metadata=push_metadata(pusher.outcome),
            ) from None
        finally:
            client.close()
        counts = outcome.counts
        context.log.info(
            f"Salesforce push: {counts.created} created, {counts.linked} linked, {counts.updated} updated, "
            f"{counts.failed} refused; {outcome.budget.calls_made} API calls"
        )
        return dg.MaterializeResult(metadata=push_metadata(outcome))

    return salesforce_push


def push_job() -> Any:
    return dg.define_asset_job(
        PUSH_JOB,
        selection=dg.AssetSelection.assets(PUSH_ASSET),
        description="Push store contacts to Salesforce",
        tags={SALESFORCE_TAG: "push"},
    )


def push_blocked_by(
    context: dg.ScheduleEvaluationContext | dg.RunStatusSensorContext, poll_job_name: str
) -> str | None:
    """Why no push may start now: a poll or a push run of this instance is queued or running; else None."""
    for name, what in ((poll_job_name, "a Salesforce poll"), (PUSH_JOB, "a Salesforce push")):
        running = in_progress_run(context, name)
        if running:
            return f"{what} is queued or running (run {running})"
    return None


def push_after_poll_sensor(poll_job: Any, job: Any, salesforce: SalesforceSettings) -> dg.SensorDefinition:
    """Requests a push after each successful poll, unless a poll or a push is queued or running (the next
    poll's success, or the push schedule, asks again)."""
    not_configured = salesforce.not_configured_reason

    @dg.run_status_sensor(
        name=PUSH_SENSOR,
        run_status=dg.DagsterRunStatus.SUCCESS,
        monitored_jobs=[poll_job],
        request_job=job,
        default_status=dg.DefaultSensorStatus.STOPPED if not_configured else dg.DefaultSensorStatus.RUNNING,
        description="Runs the Salesforce push after each successful poll; skipped while a poll or a push runs",
    )
    def _after_poll(context: dg.RunStatusSensorContext) -> dg.RunRequest | dg.SkipReason:
        blocked = push_blocked_by(context, poll_job.name)
        if blocked:
            return dg.SkipReason(f"{blocked}; the next poll's success asks again")
        return dg.RunRequest(run_key=f"after_poll_{context.dagster_run.run_id}")

    return _after_poll


def push_schedule(
    config: SalesforceConfig, poll_job: Any, job: Any, salesforce: SalesforceSettings
) -> dg.ScheduleDefinition | None:
    """The push on `push.schedule` (None for `manual`): a tick while a poll or a push is queued or running
    is skipped; stopped (and skipping) while Salesforce has no credentials."""
    phrase = config.push.schedule
    cron = schedule_to_cron(phrase)
    if cron is None:
        return None
    not_configured = salesforce.not_configured_reason
    poll_job_name = poll_job.name

    @dg.schedule(
        name=PUSH_SCHEDULE,
        cron_schedule=cron,
        job=job,
        default_status=dg.DefaultScheduleStatus.STOPPED
        if not_configured
        else dg.DefaultScheduleStatus.RUNNING,
        description=f"{phrase} ({cron}): the push as a safety net beside the push after each poll; a tick "
        "while a poll or a push is queued or running is skipped"
        + (f". Stopped: {not_configured}" if not_configured else ""),
        execution_timezone="UTC",
    )
    def _push_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        if not_configured:
            return dg.SkipReason(f"Salesforce is not configured: {not_configured}")
        blocked = push_blocked_by(context, poll_job_name)
        if blocked:
            return dg.SkipReason(f"{blocked}; tick skipped")
        return dg.RunRequest()

    return _push_schedule


def build_push_defs(
    config: SalesforceConfig, salesforce: SalesforceSettings, poll_job: Any
) -> dg.Definitions:
    """The push asset, its job, the after-poll sensor and the schedule (unless `manual`)."""
    job = push_job()
    schedule = push_schedule(config, poll_job, job, salesforce)
    return dg.Definitions(
        assets=[salesforce_push_asset(config, salesforce)],
        jobs=[job],
        sensors=[push_after_poll_sensor(poll_job, job, salesforce)],
        schedules=[schedule] if schedule else [],
    )
