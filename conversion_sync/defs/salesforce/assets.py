"""The Salesforce poll as an asset (with its `poll_completed` check), its launchpad choices and its metadata.

No `from __future__ import annotations` here: Dagster reads the asset's resource annotations at runtime.
"""

from datetime import timedelta
from typing import Any

import dagster as dg
from pydantic import Field

from conversion_sync.config.salesforce import SalesforceConfig
from conversion_sync.defs.automation import SALESFORCE_POOL
from conversion_sync.salesforce.budget import ApiBudget
from conversion_sync.salesforce.client import SalesforceApiError, SalesforceSettings
from conversion_sync.salesforce.poller import (
    POLL_ORDER,
    PollInProgress,
    PollOptions,
    PollOutcome,
    SalesforceMappingError,
    SalesforcePoller,
    mapped_fields,
)
from conversion_sync.store.contact_store import ContactStore
from conversion_sync.store.identity import IdentityMatcher

SALESFORCE_GROUP = "salesforce"
POLL_ASSET = "salesforce_poll"
POLL_CHECK = "poll_completed"
CONFLICT_COLUMNS = (
    "kind",
    "salesforce_id",
    "now_salesforce_id",
    "unlinked_contact_id",
    "kept_contact_id",
    "other_contact_id",
    "reason",
)


class PollRunConfig(dg.Config):
    """What one poll does, chosen in the launchpad: the same choices as `conversion-sync salesforce poll`."""

    objects: list[str] = Field(
        default_factory=list,
        description=f"Objects to poll, among {', '.join(POLL_ORDER)}; empty polls all of them",
    )
    full: bool = Field(
        default=False,
        description="Re-read every record from the beginning instead of from each object's cursor",
    )
    sweep: bool = Field(
        default=False,
        description="Sweep Ids now, due or not: unlink store records whose Salesforce record is gone for good",
    )

    def options(self) -> PollOptions:
        return PollOptions(objects=tuple(self.objects) or POLL_ORDER, full=self.full, sweep=self.sweep)


def poll_metadata(outcome: PollOutcome) -> dict[str, Any]:
    """One materialization's metadata: counts per object and in total (plotted over time), API use, cursors."""
    objects = outcome.objects
    people = [objects[s].counts for s in ("Lead", "Contact")]
    companies = objects["Account"].counts
    metadata: dict[str, Any] = {
        f"read_{sobject}": dg.MetadataValue.int(objects[sobject].counts.read) for sobject in POLL_ORDER
    }
    for name in ("created", "linked", "updated", "unchanged", "unlinked", "relinked", "email_changed"):
        metadata[f"contacts_{name}"] = dg.MetadataValue.int(sum(getattr(c, name) for c in people))
    metadata["conflicts"] = dg.MetadataValue.int(sum(c.conflicts for c in people))
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
    metadata["full_reread"] = dg.MetadataValue.bool(outcome.full)
    metadata["store_run_id"] = dg.MetadataValue.text(outcome.run_id)
    sweeps = outcome.sweeps.values()
    metadata["swept_objects"] = dg.MetadataValue.text(", ".join(s.sobject for s in sweeps))
    metadata["sweep_checked"] = dg.MetadataValue.int(sum(s.checked for s in sweeps))
    metadata["sweep_unlinked"] = dg.MetadataValue.int(sum(s.unlinked for s in sweeps))
    refused = [f"{s.sobject}: {s.refused}" for s in sweeps if s.refused]
    if refused:
        metadata["sweep_refused"] = dg.MetadataValue.text("; ".join(refused))
    if outcome.conflicts:
        metadata["conflicts_preview"] = dg.MetadataValue.table(
            records=[
                dg.TableRecord({c: str(row.get(c) or "") for c in CONFLICT_COLUMNS})
                for row in outcome.conflicts
            ],
            schema=dg.TableSchema(columns=[dg.TableColumn(c, "string") for c in CONFLICT_COLUMNS]),
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
        f"no more than {config.api_reserve} daily API calls (api_reserve) would be left. More than "
        f"{config.bulk_threshold} changed records are read with Bulk API 2.0. "
        + (
            f"Every {_minutes(config.id_sweep_every)} it also lists every Id and unlinks store records whose "
            "Salesforce record is gone for good. "
            if config.id_sweep_every.total_seconds() > 0
            else "The Id sweep is off (id_sweep_every: 0). "
        )
        + "Launchpad: `objects`, `full`, `sweep`."
    )
    problems = _mapping_problems(config)
    if problems:
        text = "BROKEN FIELD MAPPING: " + "; ".join(problems) + f"\n\n{text}"
    if not_configured:
        text = f"NOT CONFIGURED: {not_configured}. The schedule is stopped.\n\n{text}"
    return text


def salesforce_poll_asset(
    salesforce_config: SalesforceConfig, salesforce: SalesforceSettings
) -> dg.AssetsDefinition:
    """The poll as one asset (run config: PollRunConfig); without credentials it still loads, says why, and
    fails if run."""
    not_configured = salesforce.not_configured_reason
    config_ = salesforce_config

    @dg.asset(
        name=POLL_ASSET,
        group_name=SALESFORCE_GROUP,
        description=_description(config_, not_configured),
        kinds={"salesforce", "postgres"},
        pool=SALESFORCE_POOL,
        metadata={"schedule": config_.poll_schedule, "objects": ", ".join(POLL_ORDER)},
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
        config: PollRunConfig,
        contact_store: dg.ResourceParam[ContactStore],
        identity: dg.ResourceParam[IdentityMatcher],
        salesforce: dg.ResourceParam[SalesforceSettings],
    ) -> dg.MaterializeResult:
        reason = salesforce.not_configured_reason
        if reason:
            raise dg.Failure(description=f"Salesforce is not configured: {reason}")
        try:
            options = config.options()
        except ValueError as exc:
            raise dg.Failure(description=f"run config: {exc}") from None
        budget = ApiBudget(reserve=config_.api_reserve)
        poller: SalesforcePoller | None = None
        context.log.info(
            f"Salesforce: {salesforce.describe()}; keeping {config_.api_reserve} API calls in reserve; "
            f"polling {', '.join(options.objects)}{' (full re-read)' if options.full else ''}"
            f"{' and sweeping their Ids' if options.sweep else ''}"
        )
        try:
            client = salesforce.connect(budget, context.log)
        except SalesforceApiError as exc:
            raise dg.Failure(description=str(exc)) from None
        try:
            poller = SalesforcePoller(
                config_,
                contact_store,
                identity,
                client,
                run_id=context.run_id,
                logger=context.log,
                options=options,
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
        counts = ", ".join(f"{s} read {outcome.objects[s].counts.read}" for s in options.objects)
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
