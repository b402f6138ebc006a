"""Campaign member reconciliation: every linked store campaign ⇄ its Salesforce campaign, both ways, batched,
one campaign at a time under a lock that keeps two runs from reconciling at once."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import sqlalchemy as sa

from conversion_sync.salesforce.budget import ApiBudgetExhausted
from conversion_sync.salesforce.campaigns.import_members import MemberImport
from conversion_sync.salesforce.campaigns.lead_jobs import LeadJobs
from conversion_sync.salesforce.campaigns.member_errors import MemberError, MemberErrorLog
from conversion_sync.salesforce.campaigns.outcomes import CampaignLinkError, CampaignOutcome, ReconcileOutcome
from conversion_sync.salesforce.campaigns.push_members import MemberPush
from conversion_sync.salesforce.campaigns.salesforce_campaign import LinkedSalesforceCampaign
from conversion_sync.salesforce.campaigns.salesforce_writes import BULK_PUSH_THRESHOLD, SalesforceWriter
from conversion_sync.salesforce.campaigns.store_campaigns import (
    Campaign,
    CampaignRun,
    linked_campaigns,
    mark_reconciled,
    record_campaign_run,
)
from conversion_sync.salesforce.client import (
    SalesforceApiError,
    SalesforceAuthenticationError,
    SalesforceClient,
    SalesforceUnavailable,
)
from conversion_sync.store.contact_store import ContactStore
from conversion_sync.store.identity import IdentityMatcher

RECONCILE_LOCK_KEY = 7_310_005
"""Session advisory lock held for a whole reconciliation: two runs never reconcile at once."""

TRY_LOCK_SQL = "SELECT pg_try_advisory_lock(%s)"
UNLOCK_SQL = "SELECT pg_advisory_unlock(%s)"


class ReconcileInProgress(RuntimeError):
    """Another reconciliation holds the reconciliation lock."""


class CampaignReconciler:
    """Reconciles every linked store campaign with its Salesforce campaign, one campaign at a time.

    Per campaign: its Salesforce member statuses (one query; a link `create` campaign is created first),
    all its Salesforce members (pages of 2000), then one store transaction imports Salesforce → store
    (members matched or created through the identity matcher, conflicts decided per member), then the store
    members to push go to Salesforce: Leads for contacts without a Salesforce record, new members, changed
    statuses — in collections of 200, or one Bulk API 2.0 job per kind for large sets; each batch's
    outcome is committed before the next. Members whose status equals the last synced one on both sides
    cause no writes.
    """

    def __init__(
        self,
        store: ContactStore,
        identity: IdentityMatcher,
        client: SalesforceClient,
        *,
        run_id: str = "",
        logger: logging.Logger | None = None,
        bulk_threshold: int = BULK_PUSH_THRESHOLD,
        campaign_names: Sequence[str] | None = None,
    ) -> None:
        self.store = store
        self.identity = identity
        self.client = client
        self.run_id = run_id or f"reconcile-{uuid.uuid4()}"
        self.log = logger or logging.getLogger(__name__)
        self.bulk_threshold = bulk_threshold
        self.campaign_names = list(campaign_names) if campaign_names is not None else None
        self.outcome = ReconcileOutcome(run_id=self.run_id, budget=client.budget)
        self.writer = SalesforceWriter(client, bulk_threshold)
        self.errors = MemberErrorLog(store, self.run_id, client.redact)
        self.salesforce = LinkedSalesforceCampaign(store, client, self.writer, self.errors, self.log)
        self.importer = MemberImport(store, identity, self.run_id)
        leads = LeadJobs(store, self.writer, self.errors, self.run_id, self.log)
        self.pusher = MemberPush(store, self.writer, self.errors, leads)

    def run(self) -> ReconcileOutcome:
        """Reconcile each linked campaign; a campaign that fails is reported and the others go on.

        Stops cleanly (stopped_early) when the API budget runs out; what was committed stays.
        """
        started = time.perf_counter()
        outcome = self.outcome
        try:
            with self._exclusive():
                with self.store.begin() as conn:
                    self.errors.delete_expired(conn)
                    targets = linked_campaigns(conn, self.campaign_names)
                for campaign in targets:
                    try:
                        self._reconcile(campaign)
                    except ApiBudgetExhausted as exc:
                        outcome.stopped_early = exc.reason
                        self.log.warning(
                            f"Campaign reconciliation stopped early at campaign '{campaign.name}': {exc.reason}. "
                            "Everything committed so far stays; the next run continues."
                        )
                        break
        finally:
            outcome.duration_seconds = time.perf_counter() - started
            self._load_error_preview()
        return outcome

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        with self.store.engine().connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            if not conn.exec_driver_sql(TRY_LOCK_SQL, (RECONCILE_LOCK_KEY,)).scalar_one():
                raise ReconcileInProgress(
                    "another campaign reconciliation is running against this store (it holds the "
                    "reconciliation lock); this run did nothing"
                )
            try:
                yield
            finally:
                conn.exec_driver_sql(UNLOCK_SQL, (RECONCILE_LOCK_KEY,))

    def _load_error_preview(self) -> None:
        try:
            self.outcome.errors_preview = self.errors.preview()
        except sa.exc.SQLAlchemyError as exc:  # the preview must never hide the run's own error
            self.log.warning(f"could not read the error preview: {type(exc).__name__}")

    def _reconcile(self, campaign: Campaign) -> None:
        """One campaign; a Salesforce error or a broken link fails only this campaign (reported and kept)."""
        outcome = CampaignOutcome(
            campaign.id, campaign.name, campaign.salesforce_campaign_id, campaign.first_link
        )
        self.outcome.campaigns.append(outcome)
        budget = self.client.budget
        calls_before, jobs_before, started = budget.calls_made, self.writer.bulk_jobs, time.perf_counter()
        run = CampaignRun(self.run_id, "failed")
        try:
            self._reconcile_members(campaign, outcome)
            run.status, run.missing = "reconciled", False
        except ApiBudgetExhausted as exc:
            run.status, run.error = "stopped", exc.reason
            raise
        except (SalesforceAuthenticationError, SalesforceUnavailable) as exc:
            run.error = self.client.redact(str(exc))
            raise
        except (SalesforceApiError, CampaignLinkError) as exc:
            outcome.failed = run.error = self.client.redact(str(exc))
            code = exc.code if isinstance(exc, CampaignLinkError) else "salesforce_error"
            run.missing = True if code == "salesforce_campaign_not_found" else None
            tally = self.errors.record(campaign.id, [MemberError("link", code, outcome.failed)])
            outcome.standing_failure = tally.new == 0
            tally.count(outcome.counts)
            if outcome.standing_failure:
                self.log.warning(
                    f"campaign '{campaign.name}' still fails (reported before): {outcome.failed}"
                )
            else:
                self.log.error(f"campaign '{campaign.name}' failed: {outcome.failed}")
        finally:
            outcome.api_calls = budget.calls_made - calls_before
            outcome.bulk_jobs = self.writer.bulk_jobs - jobs_before
            outcome.duration_seconds = time.perf_counter() - started
            run.counts = outcome.counts.as_dict()
            self._remember_run(campaign, run)

    def _remember_run(self, campaign: Campaign, run: CampaignRun) -> None:
        """The campaign's latest reconciliation, for `status`, `campaigns list` and the next run's standing
        errors; never hides the run's own error."""
        try:
            with self.store.begin() as conn:
                record_campaign_run(conn, campaign.id, run)
        except sa.exc.SQLAlchemyError as exc:
            self.log.warning(f"could not record campaign '{campaign.name}' run: {type(exc).__name__}")

    def _reconcile_members(self, campaign: Campaign, outcome: CampaignOutcome) -> None:
        sf_id, labels = self.salesforce.open(campaign, outcome)
        records = self.salesforce.members(sf_id)
        counts = outcome.counts
        counts.read_salesforce = len(records)
        result = self.importer.run(campaign, records, counts)
        self.pusher.run(campaign, sf_id, labels, result.updates, counts, result.deletes)
        with self.store.begin() as conn:
            mark_reconciled(conn, campaign.id)
        self.log.info(
            f"campaign '{campaign.name}' ⇄ {sf_id}{' (first link)' if outcome.first_link else ''}: "
            f"read {counts.read_salesforce}, imported {counts.imported}, updated in store {counts.updated_in_store}, "
            f"pushed {counts.pushed}, updated in Salesforce {counts.updated_in_salesforce}, leads created "
            f"{counts.leads_created}, removed in Salesforce {counts.removed_in_salesforce}, skipped (status) "
            f"{counts.skipped_status}, errors {counts.errors} (standing, reported before: {counts.standing_errors})"
        )
