"""Campaign member reconciliation as an asset, and its materialization metadata.

No `from __future__ import annotations` here: Dagster reads the asset's resource annotations at runtime.
"""

from typing import Any, Optional

import dagster as dg
from pydantic import Field

from conversion_sync.config.salesforce import SalesforceConfig
from conversion_sync.defs.automation import SALESFORCE_POOL
from conversion_sync.defs.salesforce.assets import SALESFORCE_GROUP
from conversion_sync.salesforce.budget import ApiBudget
from conversion_sync.salesforce.campaigns import CampaignError, reconcile_selection
from conversion_sync.salesforce.client import SalesforceApiError, SalesforceSettings
from conversion_sync.salesforce.reconcile import (
    CampaignReconciler,
    ReconcileInProgress,
    ReconcileOutcome,
)
from conversion_sync.store.contact_store import ContactStore
from conversion_sync.store.identity import IdentityMatcher

RECONCILE_ASSET = "campaign_reconciliation"
FAILURE_KIND = "failure_kind"
CAMPAIGNS_FAILED = "campaigns_failed"
"""The failure metadata `failure_kind` of a run failed only by campaigns that could not be reconciled (their
errors are in campaign_member_errors): the failure alert goes out only when one of them is new."""
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
    "removed_in_salesforce",
    "errors",
    "standing_errors",
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


class ReconcileConfig(dg.Config):
    """What to reconcile (the launchpad's run config; `conversion-sync campaigns reconcile [CAMPAIGN]`)."""

    campaign: Optional[str] = Field(  # noqa: UP045  (Dagster's config schema reads Optional)
        default=None,
        description="One linked store campaign to reconcile, by name; empty: every linked campaign",
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


def campaigns_failed_description(outcome: ReconcileOutcome) -> str:
    """Why the run failed: each failed campaign and its error, new ones first, standing ones said to be so."""
    failed = sorted(outcome.failed, key=lambda c: c.standing_failure)
    problems = "; ".join(
        f"'{c.name}'{' (standing, reported before)' if c.standing_failure else ''}: {c.failed}"
        for c in failed
    )
    return (
        f"{len(failed)} of {len(outcome.campaigns)} campaign(s) could not be reconciled ({problems}); the others "
        "were. The run stays failed until every campaign reconciles; the alert is sent once per error."
    )


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
    config: SalesforceConfig, salesforce: SalesforceSettings
) -> dg.AssetsDefinition:
    """The reconciliation as one asset; without credentials it still loads, says why, and fails if run."""
    not_configured = salesforce.not_configured_reason
    settings = config  # the asset's own `config` parameter is its run config

    @dg.asset(
        name=RECONCILE_ASSET,
        group_name=SALESFORCE_GROUP,
        description=_reconcile_description(config, not_configured),
        kinds={"salesforce", "postgres"},
        metadata={"schedule": config.reconcile_schedule},
        pool=SALESFORCE_POOL,
    )
    def campaign_reconciliation(
        context: dg.AssetExecutionContext,
        config: ReconcileConfig,
        contact_store: dg.ResourceParam[ContactStore],
        identity: dg.ResourceParam[IdentityMatcher],
        salesforce: dg.ResourceParam[SalesforceSettings],
    ) -> dg.MaterializeResult:
        reason = salesforce.not_configured_reason
        if reason:
            raise dg.Failure(description=f"Salesforce is not configured: {reason}")
        try:
            with contact_store.begin() as conn:
                names = reconcile_selection(conn, config.campaign)
        except CampaignError as exc:
            raise dg.Failure(description=str(exc)) from None
        budget = ApiBudget(reserve=settings.api_reserve)
        context.log.info(
            f"Salesforce: {salesforce.describe()}; keeping {settings.api_reserve} API calls in reserve"
            + (f"; campaign '{config.campaign}' only" if config.campaign else "")
        )
        try:
            client = salesforce.connect(budget, context.log)
        except SalesforceApiError as exc:
            raise dg.Failure(description=str(exc)) from None
        reconciler: CampaignReconciler | None = None
        try:
            reconciler = CampaignReconciler(
                contact_store,
                identity,
                client,
                run_id=context.run_id,
                logger=context.log,
                campaign_names=names,
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
            # a green run means every campaign is right: a standing failure fails the run too; the failure
            # alert is sent once per standing error (the alert sensor asks the store, see CAMPAIGNS_FAILED)
            raise dg.Failure(
                description=campaigns_failed_description(outcome),
                metadata={**metadata, FAILURE_KIND: dg.MetadataValue.text(CAMPAIGNS_FAILED)},
            )
        totals = outcome.totals
        context.log.info(
            f"Campaign reconciliation: {len(outcome.campaigns)} campaign(s), imported {totals.imported}, "
            f"pushed {totals.pushed}, updated in store {totals.updated_in_store}, updated in Salesforce "
            f"{totals.updated_in_salesforce}, errors {totals.errors}; {budget.calls_made} API calls"
        )
        return dg.MaterializeResult(metadata=metadata)

    return campaign_reconciliation
