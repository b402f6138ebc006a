"""Campaign member reconciliation (SPEC §6): store campaigns ⇄ linked Salesforce campaigns, both ways, batched."""

from __future__ import annotations

import csv
import io
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from functools import partial
from typing import Any, Literal

import sqlalchemy as sa
from simple_salesforce import Salesforce
from simple_salesforce.bulk2 import Operation, _Bulk2Client

from conversion_sync.salesforce.budget import ApiBudget, ApiBudgetExhausted
from conversion_sync.salesforce.campaigns import (
    Campaign,
    linked_campaigns,
    mark_reconciled,
    set_salesforce_campaign,
)
from conversion_sync.salesforce.client import (
    SalesforceApiError,
    SalesforceAuthenticationError,
    SalesforceClient,
    SalesforceUnavailable,
)
from conversion_sync.store.connection import prepare_bulk_transaction
from conversion_sync.store.contact_store import ContactStore
from conversion_sync.store.contacts import email_key_sql, lock_identities, trimmed_email_sql
from conversion_sync.store.identity import IdentityMatcher

COLLECTION_SIZE = 200
"""Records per composite/sobjects call: Salesforce's maximum."""

BULK_PUSH_THRESHOLD = 1000
"""A write of at least this many records (5 collections) goes through one Bulk API 2.0 ingest job instead,
which costs 4–6 calls whatever its size (create, upload, close, status polls, results)."""

RECONCILE_LOCK_KEY = 7_310_005
"""Session advisory lock held for a whole reconciliation: two runs never reconcile at once."""

ERROR_PREVIEW_LIMIT = 20
LEAD_JOBS_STATE = "campaign_reconcile:{campaign_id}:lead_jobs"
"""sync_state row per campaign: Bulk API 2.0 Lead insert jobs whose results are not linked in the store yet.
A run that stops or fails between creating the Leads and reading the job's results (budget, error) leaves
them here; the next run links those Leads first, so a contact never gets a second Lead."""
ERROR_RETENTION_DAYS = 30
PLACEHOLDER = "[not provided]"
"""Lead.LastName and Lead.Company are required in Salesforce; a contact without them gets this text."""

_LEAD_FIELDS = (
    ("LastName", "last_name", 80),
    ("FirstName", "first_name", 40),
    ("Company", "company", 255),
    ("Email", "email", 80),
    ("Title", "job_title", 128),
    ("Phone", "phone", 40),
    ("City", "city", 40),
)
"""Lead field, store column, Salesforce length: what a Lead created for a store contact carries."""

_MEMBER_SOQL = (
    "SELECT Id, LeadId, ContactId, Status, LastModifiedDate, Lead.Email, Contact.Email "
    "FROM CampaignMember WHERE CampaignId = '{campaign}' ORDER BY Id"
)
_STATUS_SOQL = (
    "SELECT Id, Label, IsDefault, SortOrder FROM CampaignMemberStatus WHERE CampaignId = '{campaign}' "
    "ORDER BY SortOrder, Id"
)
_STAGED_COLUMNS = (
    "member_id",
    "lead_id",
    "contact_sf_id",
    "person_id",
    "person_type",
    "email",
    "status",
    "last_modified",
)
Direction = Literal["salesforce_to_store", "store_to_salesforce", "link"]


class ReconcileInProgress(RuntimeError):
    """Another reconciliation holds the reconciliation lock."""


class CampaignLinkError(RuntimeError):
    """A linked campaign cannot be reconciled (its Salesforce campaign is gone, …); the others go on."""

    def __init__(self, message: str, code: str = "campaign_failed") -> None:
        super().__init__(message)
        self.code = code


@dataclass
class MemberCounts:
    """What happened to one campaign's members (or the whole run's)."""

    read_salesforce: int = 0
    imported: int = 0
    """Salesforce members new to the store campaign."""
    updated_in_store: int = 0
    """Store statuses taken from Salesforce (only Salesforce changed, or its LastModifiedDate is newer)."""
    removed_in_store: int = 0
    """Members deleted in Salesforce after a sync and unchanged in the store since: removed from the store."""
    pushed: int = 0
    """Store members created in Salesforce."""
    updated_in_salesforce: int = 0
    """Salesforce statuses taken from the store (only the store changed, or its updated_at is newer)."""
    leads_created: int = 0
    contacts_created: int = 0
    contacts_linked: int = 0
    conflicts: int = 0
    """Both sides changed the status since the last sync: decided by the more recent updated_at."""
    unchanged: int = 0
    skipped_status: int = 0
    """Salesforce members whose status is not in the store campaign type: not imported, reported."""
    skipped_no_email: int = 0
    errors: int = 0
    """Store members not pushed (status missing in Salesforce, Salesforce refused the Lead or member, …)."""

    def add(self, other: MemberCounts) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class CampaignOutcome:
    """One campaign's part of a run."""

    campaign_id: int
    name: str
    salesforce_campaign_id: str | None
    first_link: bool
    counts: MemberCounts = field(default_factory=MemberCounts)
    created_salesforce_campaign: bool = False
    bulk_jobs: int = 0
    api_calls: int = 0
    failed: str | None = None
    duration_seconds: float = 0.0


@dataclass
class ReconcileOutcome:
    """Everything a reconciliation run reports (one Dagster materialization)."""

    run_id: str
    budget: ApiBudget
    campaigns: list[CampaignOutcome] = field(default_factory=list)
    stopped_early: str | None = None
    errors_preview: list[dict[str, Any]] = field(default_factory=list)
    duration_seconds: float = 0.0

    @property
    def totals(self) -> MemberCounts:
        total = MemberCounts()
        for campaign in self.campaigns:
            total.add(campaign.counts)
        return total

    @property
    def failed(self) -> list[CampaignOutcome]:
        return [c for c in self.campaigns if c.failed]

    @property
    def complete(self) -> bool:
        return self.stopped_early is None and not self.failed


@dataclass
class RecordResult:
    """One record's outcome of a collection call or a Bulk API 2.0 job."""

    ok: bool
    id: str | None = None
    code: str | None = None
    message: str | None = None


@dataclass
class MemberError:
    """One row of campaign_member_errors."""

    direction: Direction
    code: str
    message: str
    contact_id: int | None = None
    email: str | None = None
    member_id: str | None = None
    person_id: str | None = None
    status: str | None = None


def _clip(value: Any, length: int) -> str | None:
    text = str(value).strip() if value is not None else ""
    return text[:length] if text else None


def _bulk2(sf: Salesforce, sobject: str) -> _Bulk2Client:
    """simple-salesforce's Bulk API 2.0 client for `sobject`, with the connection's current session."""
    return getattr(sf.bulk2, sobject)._client  # type: ignore[no-any-return]


def _soql_id(value: str) -> str:
    if not value.isalnum():
        raise CampaignLinkError(f"'{value}' is not a Salesforce id")
    return value


def _link_leads(conn: sa.Connection, pairs: Sequence[tuple[int, str]]) -> dict[int, str]:
    """Link contacts to the Leads created for them, under the identity lock; a contact that got a
    Salesforce record meanwhile keeps it. Returns the links made (contact id → Lead id)."""
    lock_identities(conn)
    done = conn.exec_driver_sql(
        """UPDATE contacts c SET salesforce_id = v.sf_id, salesforce_type = 'Lead', updated_at = now()
        FROM unnest(%(contacts)s::bigint[], %(leads)s::text[]) AS v(contact_id, sf_id)
        WHERE c.id = v.contact_id AND c.salesforce_id IS NULL
        RETURNING c.id, v.sf_id""",
        {"contacts": [c for c, _ in pairs], "leads": [lead for _, lead in pairs]},
    ).all()
    return {contact_id: str(sf) for contact_id, sf in done}


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

    # -- the run ----------------------------------------------------------------------------

    def run(self) -> ReconcileOutcome:
        """Reconcile each linked campaign; a campaign that fails is reported and the others go on.

        Stops cleanly (stopped_early) when the API budget runs out; what was committed stays.
        """
        started = time.perf_counter()
        outcome = self.outcome
        try:
            with self._exclusive():
                with self.store.begin() as conn:
                    conn.exec_driver_sql(
                        "DELETE FROM campaign_member_errors WHERE created_at < now() - make_interval(days => %s)",
                        (ERROR_RETENTION_DAYS,),
                    )
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
            locked = conn.exec_driver_sql(
                "SELECT pg_try_advisory_lock(%s)", (RECONCILE_LOCK_KEY,)
            ).scalar_one()
            if not locked:
                raise ReconcileInProgress(
                    "another campaign reconciliation is running against this store (it holds the "
                    "reconciliation lock); this run did nothing"
                )
            try:
                yield
            finally:
                conn.exec_driver_sql("SELECT pg_advisory_unlock(%s)", (RECONCILE_LOCK_KEY,))

    def _load_error_preview(self) -> None:
        try:
            with self.store.begin() as conn:
                rows = conn.exec_driver_sql(
                    """SELECT c.name AS campaign, e.direction, e.code, e.email, e.contact_id,
                           e.salesforce_person_id, e.status, e.message
                    FROM campaign_member_errors e JOIN campaigns c ON c.id = e.campaign_id
                    WHERE e.run_id = %s ORDER BY e.id LIMIT %s""",
                    (self.run_id, ERROR_PREVIEW_LIMIT),
                ).mappings()
                self.outcome.errors_preview = [dict(r) for r in rows]
        except sa.exc.SQLAlchemyError as exc:  # the preview must never hide the run's own error
            self.log.warning(f"could not read the error preview: {type(exc).__name__}")

    def _reconcile(self, campaign: Campaign) -> None:
        outcome = CampaignOutcome(
            campaign.id, campaign.name, campaign.salesforce_campaign_id, campaign.first_link
        )
        self.outcome.campaigns.append(outcome)
        budget = self.client.budget
        calls_before, started = budget.calls_made, time.perf_counter()
        try:
            sf_id = campaign.salesforce_campaign_id
            if sf_id is None:
                sf_id, statuses = self._create_salesforce_campaign(campaign, outcome)
            else:
                statuses = self._salesforce_statuses(sf_id)
                if not statuses:
                    raise CampaignLinkError(
                        f"Salesforce campaign {sf_id} was not found (deleted, or not visible to the integration "
                        f"user): link campaign '{campaign.name}' anew (conversion-sync campaigns link)",
                        code="salesforce_campaign_not_found",
                    )
                if campaign.salesforce_link == "create":
                    statuses = self._add_missing_statuses(campaign, sf_id, statuses, outcome, fresh=False)
            labels = {str(row["Label"]).lower(): str(row["Label"]) for row in statuses}
            records = self._query_all(_MEMBER_SOQL.format(campaign=_soql_id(sf_id)))
            outcome.counts.read_salesforce = len(records)
            updates = self._import(campaign, records, outcome)
            self._push(campaign, sf_id, labels, updates, outcome)
            with self.store.begin() as conn:
                mark_reconciled(conn, campaign.id)
            c = outcome.counts
            self.log.info(
                f"campaign '{campaign.name}' ⇄ {sf_id}{' (first link)' if outcome.first_link else ''}: "
                f"read {c.read_salesforce}, imported {c.imported}, updated in store {c.updated_in_store}, "
                f"pushed {c.pushed}, updated in Salesforce {c.updated_in_salesforce}, leads created "
                f"{c.leads_created}, skipped (status) {c.skipped_status}, errors {c.errors}"
            )
        except (SalesforceAuthenticationError, SalesforceUnavailable, ApiBudgetExhausted):
            raise
        except (SalesforceApiError, CampaignLinkError) as exc:
            outcome.failed = self.client.redact(str(exc))
            code = exc.code if isinstance(exc, CampaignLinkError) else "salesforce_error"
            self.log.error(f"campaign '{campaign.name}' failed: {outcome.failed}")
            self._record_errors(campaign.id, [MemberError("link", code, outcome.failed)])
            outcome.counts.errors += 1
        finally:
            outcome.api_calls = budget.calls_made - calls_before
            outcome.duration_seconds = time.perf_counter() - started

    # -- Salesforce campaign and statuses ---------------------------------------------------

    def _query_all(self, soql: str) -> list[dict[str, Any]]:
        page = self.client.query(soql)
        records = list(page.records)
        while page.next_records_url:
            page = self.client.query_more(page.next_records_url)
            records.extend(page.records)
        return records

    def _salesforce_statuses(self, sf_id: str) -> list[dict[str, Any]]:
        return self._query_all(_STATUS_SOQL.format(campaign=_soql_id(sf_id)))

    def _create_salesforce_campaign(
        self, campaign: Campaign, outcome: CampaignOutcome
    ) -> tuple[str, list[dict[str, Any]]]:
        """Link `create`: a new Salesforce Campaign with exactly the type's statuses; its id is committed at once."""
        created = self.client.call(
            "create Campaign", lambda sf: sf.Campaign.create({"Name": campaign.name[:80], "IsActive": True})
        )
        sf_id = str(created["id"])
        with self.store.begin() as conn:
            set_salesforce_campaign(conn, campaign.id, sf_id)
        outcome.salesforce_campaign_id = sf_id
        outcome.created_salesforce_campaign = True
        self.log.info(f"campaign '{campaign.name}': created Salesforce Campaign {sf_id}")
        statuses = self._salesforce_statuses(sf_id)
        return sf_id, self._add_missing_statuses(campaign, sf_id, statuses, outcome, fresh=True)

    def _add_missing_statuses(
        self,
        campaign: Campaign,
        sf_id: str,
        existing: list[dict[str, Any]],
        outcome: CampaignOutcome,
        *,
        fresh: bool,
    ) -> list[dict[str, Any]]:
        """Give a link `create` campaign the type's statuses it lacks; a `fresh` one also takes the type's
        default and loses Salesforce's own defaults (Sent, Responded) that the type does not list."""
        ctype = campaign.type
        have = {str(r["Label"]).lower(): r for r in existing}
        wanted = {s.lower() for s in ctype.statuses}
        missing = [s for s in ctype.statuses if s.lower() not in have]
        statuses = list(existing)
        problems: list[MemberError] = []
        if missing:
            order = max((int(r.get("SortOrder") or 0) for r in existing), default=0)
            records = [
                {
                    "CampaignId": sf_id,
                    "Label": label,
                    "SortOrder": order + i + 1,
                    "IsDefault": fresh and label == ctype.default_status,
                    "HasResponded": False,
                }
                for i, label in enumerate(missing)
            ]
            for record, result in zip(
                records, self._collection("POST", "CampaignMemberStatus", records), strict=True
            ):
                if result.ok:
                    statuses.append({"Id": result.id, **record})
                else:
                    problems.append(
                        MemberError(
                            "link",
                            result.code or "status_not_created",
                            f"could not add member status '{record['Label']}' to Salesforce campaign "
                            f"{sf_id}: {result.message}",
                            status=str(record["Label"]),
                        )
                    )
        if fresh:
            default = have.get(ctype.default_status.lower())
            if default is not None and not default.get("IsDefault"):
                self._collection("PATCH", "CampaignMemberStatus", [{"Id": default["Id"], "IsDefault": True}])
            extras = [r for r in existing if str(r["Label"]).lower() not in wanted]
            if extras:
                results = self._delete([str(r["Id"]) for r in extras])
                removed = {str(r["Id"]) for r, res in zip(extras, results, strict=True) if res.ok}
                statuses = [s for s in statuses if str(s.get("Id")) not in removed]
        if problems:
            outcome.counts.errors += len(problems)
            self._record_errors(campaign.id, problems)
        return statuses

    # -- Salesforce → store -----------------------------------------------------------------

    def _import(
        self, campaign: Campaign, records: list[dict[str, Any]], outcome: CampaignOutcome
    ) -> list[dict[str, Any]]:
        """One transaction: stage the Salesforce members, match their people, decide per member, import.

        Returns the members whose store status wins and must be written to Salesforce.
        """
        counts = outcome.counts
        rows = [_staged_member(record) for record in records]
        params: dict[str, Any] = {
            "campaign": campaign.id,
            "statuses": campaign.type.statuses,
            "run": self.run_id,
            "type": campaign.type.name,
            "allowed": ", ".join(campaign.type.statuses),
        }
        with self.store.begin() as conn:
            prepare_bulk_transaction(conn)
            lock_identities(conn)
            run = conn.exec_driver_sql
            run(
                """CREATE TEMP TABLE _cm_sf (
                    member_id text PRIMARY KEY, lead_id text, contact_sf_id text, person_id text,
                    person_type text, email text, status text, last_modified timestamptz,
                    type_status text, contact_id bigint, rank integer
                ) ON COMMIT DROP"""
            )
            raw = conn.connection.dbapi_connection
            assert raw is not None
            with (
                raw.cursor() as cursor,
                cursor.copy(f"COPY _cm_sf ({', '.join(_STAGED_COLUMNS)}) FROM STDIN") as copy,  # type: ignore[attr-defined]
            ):
                for row in rows:
                    copy.write_row(row)
            run("ANALYZE _cm_sf")
            # the store type's spelling of each Salesforce status (statuses compare case-insensitively)
            run(
                """UPDATE _cm_sf s SET type_status = t.status
                FROM unnest(%(statuses)s::text[]) AS t(status) WHERE lower(t.status) = lower(s.status)""",
                params,
            )
            # a store contact linked to the member's Contact, else to its (converted) Lead
            run(
                """UPDATE _cm_sf s SET contact_id = coalesce(
                    (SELECT c.id FROM contacts c WHERE c.salesforce_id = s.contact_sf_id),
                    (SELECT c.id FROM contacts c WHERE c.salesforce_id = s.lead_id))"""
            )
            # everyone else through the identity matcher: importable members may create contacts,
            # skipped ones (status unknown to the type) are only matched, so they can pair with store members
            self._resolve(conn, "type_status IS NOT NULL", create=True, counts=counts)
            self._resolve(conn, "type_status IS NULL", create=False, counts=counts)
            run(
                """UPDATE _cm_sf s SET rank = r.rank FROM (
                    SELECT member_id, row_number() OVER (
                        PARTITION BY contact_id ORDER BY last_modified DESC, member_id) AS rank
                    FROM _cm_sf WHERE contact_id IS NOT NULL) r
                WHERE r.member_id = s.member_id"""
            )
            # deleted in Salesforce after a sync, unchanged in the store since: removed in the store too
            counts.removed_in_store += run(
                """DELETE FROM campaign_members m
                WHERE m.campaign_id = %(campaign)s AND m.salesforce_member_id IS NOT NULL
                  AND lower(m.status) IS NOT DISTINCT FROM lower(m.synced_status)
                  AND NOT EXISTS (SELECT 1 FROM _cm_sf s WHERE s.member_id = m.salesforce_member_id)""",
                params,
            ).rowcount
            # a member id that no longer belongs to this store contact (deleted and changed in the store,
            # or the Salesforce person moved): forget it and the sync state; the pairing below decides anew
            run(
                """UPDATE campaign_members m
                SET salesforce_member_id = NULL, synced_status = NULL, salesforce_synced_at = NULL
                WHERE m.campaign_id = %(campaign)s AND m.salesforce_member_id IS NOT NULL
                  AND NOT EXISTS (
                      SELECT 1 FROM _cm_sf s
                      WHERE s.member_id = m.salesforce_member_id AND s.contact_id = m.contact_id AND s.rank = 1)""",
                params,
            )
            run(
                """CREATE TEMP TABLE _cm_pairs ON COMMIT DROP AS
                SELECT s.member_id, s.contact_id, s.type_status, m.status AS store_status,
                       m.contact_id IS NOT NULL AS in_store, d.both_changed,
                       CASE
                           WHEN m.contact_id IS NULL
                               THEN CASE WHEN s.type_status IS NULL THEN 'skip_status' ELSE 'import' END
                           WHEN lower(m.status) = lower(s.status) THEN 'same'
                           WHEN (d.sf_changed AND NOT d.store_changed)
                                OR (d.both_changed AND s.last_modified > m.updated_at)
                               THEN CASE WHEN s.type_status IS NULL THEN 'skip_status' ELSE 'update_store' END
                           ELSE 'update_salesforce'
                       END AS action
                FROM _cm_sf s
                LEFT JOIN campaign_members m ON m.campaign_id = %(campaign)s AND m.contact_id = s.contact_id
                CROSS JOIN LATERAL (
                    SELECT lower(s.status) IS DISTINCT FROM lower(m.synced_status) AS sf_changed,
                           lower(m.status) IS DISTINCT FROM lower(m.synced_status) AS store_changed,
                           lower(s.status) IS DISTINCT FROM lower(m.synced_status)
                           AND lower(m.status) IS DISTINCT FROM lower(m.synced_status) AS both_changed
                ) d
                WHERE s.contact_id IS NOT NULL AND s.rank = 1""",
                params,
            )
            tallies = dict(run("SELECT action, count(*) FROM _cm_pairs GROUP BY action").all())
            counts.conflicts += run(
                """SELECT count(*) FROM _cm_pairs
                WHERE action IN ('update_store', 'update_salesforce') AND both_changed"""
            ).scalar_one()
            # pure bookkeeping: the store row of a paired member knows its Salesforce member id
            run(
                """UPDATE campaign_members m SET salesforce_member_id = p.member_id
                FROM _cm_pairs p
                WHERE p.in_store AND m.campaign_id = %(campaign)s AND m.contact_id = p.contact_id
                  AND m.salesforce_member_id IS DISTINCT FROM p.member_id""",
                params,
            )
            run(
                """UPDATE campaign_members m SET synced_status = m.status, salesforce_synced_at = now()
                FROM _cm_pairs p
                WHERE p.action = 'same' AND m.campaign_id = %(campaign)s AND m.contact_id = p.contact_id
                  AND lower(m.synced_status) IS DISTINCT FROM lower(m.status)""",
                params,
            )
            counts.updated_in_store += run(
                """UPDATE campaign_members m SET status = p.type_status, synced_status = p.type_status,
                    updated_at = now(), salesforce_synced_at = now()
                FROM _cm_pairs p
                WHERE p.action = 'update_store' AND m.campaign_id = %(campaign)s AND m.contact_id = p.contact_id""",
                params,
            ).rowcount
            counts.imported += run(
                """INSERT INTO campaign_members (campaign_id, contact_id, status, updated_at, salesforce_member_id,
                    salesforce_synced_at, synced_status)
                SELECT %(campaign)s, contact_id, type_status, now(), member_id, now(), type_status
                FROM _cm_pairs WHERE action = 'import'
                ON CONFLICT DO NOTHING""",
                params,
            ).rowcount
            skipped = Counter(
                run(
                    """INSERT INTO campaign_member_errors (run_id, campaign_id, contact_id, email,
                        salesforce_member_id, salesforce_person_id, direction, code, status, message)
                    SELECT %(run)s, %(campaign)s, s.contact_id, s.email, s.member_id, s.person_id,
                           'salesforce_to_store', c.code, s.status,
                           CASE c.code
                               WHEN 'status_not_in_campaign_type' THEN concat(
                                   'Salesforce status ''', s.status, ''' is not a status of campaign type ',
                                   %(type)s::text, ' (', %(allowed)s::text, '); member not imported')
                               WHEN 'no_email' THEN concat(
                                   'the Salesforce ', s.person_type, ' ', s.person_id, ' has no email and is not ',
                                   'linked to a store contact; member not imported')
                               ELSE concat('another member of this Salesforce campaign is the same store contact ',
                                   s.contact_id, '; member not imported')
                           END
                    FROM _cm_sf s LEFT JOIN _cm_pairs p ON p.member_id = s.member_id
                    CROSS JOIN LATERAL (SELECT CASE
                        WHEN s.type_status IS NULL THEN 'status_not_in_campaign_type'
                        WHEN s.contact_id IS NULL THEN 'no_email'
                        ELSE 'duplicate_person' END AS code) c
                    WHERE p.action = 'skip_status' OR p.member_id IS NULL
                    RETURNING code""",
                    params,
                ).scalars()
            )
            counts.skipped_status += skipped["status_not_in_campaign_type"]
            counts.skipped_no_email += skipped["no_email"]
            counts.errors += skipped["duplicate_person"]
            counts.unchanged += tallies.get("same", 0)
            updates = [
                dict(r)
                for r in run(
                    """SELECT p.member_id, p.contact_id, p.store_status AS status, s.person_id, s.email
                    FROM _cm_pairs p JOIN _cm_sf s ON s.member_id = p.member_id
                    WHERE p.action = 'update_salesforce' ORDER BY p.member_id"""
                ).mappings()
            ]
        return updates

    def _resolve(self, conn: sa.Connection, condition: str, *, create: bool, counts: MemberCounts) -> None:
        """Match (or create) store contacts for the staged members without one, through the identity matcher."""
        run = conn.exec_driver_sql
        staged = run(
            f"""CREATE TEMP TABLE _cm_identities ON COMMIT DROP AS
            SELECT member_id, person_id AS sf_id, person_type AS sf_type, {trimmed_email_sql("email")} AS email,
                   NULL::bigint AS contact_id, NULL::text AS outcome
            FROM _cm_sf WHERE contact_id IS NULL AND {email_key_sql("email")} IS NOT NULL AND {condition}"""
        ).rowcount
        if staged:
            matched = self.identity.resolve_table(
                conn,
                "_cm_identities",
                email_column="email",
                salesforce_id_column="sf_id",
                salesforce_type_column="sf_type",
                outcome_column="outcome",
                create=create,
            )
            counts.contacts_created += matched.created
            counts.contacts_linked += matched.linked_by_email
            run(
                """UPDATE _cm_sf s SET contact_id = i.contact_id FROM _cm_identities i
                WHERE i.member_id = s.member_id AND i.contact_id IS NOT NULL"""
            )
        run("DROP TABLE _cm_identities")

    # -- store → Salesforce -----------------------------------------------------------------

    def _push(
        self,
        campaign: Campaign,
        sf_id: str,
        labels: dict[str, str],
        updates: list[dict[str, Any]],
        outcome: CampaignOutcome,
    ) -> None:
        """Leads for contacts without a Salesforce record, then new members, then changed statuses."""
        with self.store.begin() as conn:
            creates = [
                dict(r)
                for r in conn.exec_driver_sql(
                    """SELECT m.contact_id, m.status, c.email, c.salesforce_id,
                           CASE left(c.salesforce_id, 3) WHEN '003' THEN 'Contact' WHEN '00Q' THEN 'Lead'
                               ELSE c.salesforce_type END AS salesforce_type,
                           c.first_name, c.last_name, c.job_title, c.phone, c.city,
                           coalesce(NULLIF(btrim(c.company_name), ''), co.name) AS company
                    FROM campaign_members m JOIN contacts c ON c.id = m.contact_id
                    LEFT JOIN companies co ON co.id = c.company_id
                    WHERE m.campaign_id = %(campaign)s AND m.salesforce_member_id IS NULL
                    ORDER BY m.contact_id""",
                    {"campaign": campaign.id},
                ).mappings()
            ]
        missing: list[MemberError] = []

        def label_for(row: dict[str, Any], person_id: str | None) -> str | None:
            label = labels.get(str(row["status"]).lower())
            if label is None:
                missing.append(
                    MemberError(
                        "store_to_salesforce",
                        "status_not_in_salesforce_campaign",
                        f"status '{row['status']}' is not a member status of Salesforce campaign {sf_id} "
                        f"(it has: {', '.join(sorted(labels.values()))}); member not pushed",
                        contact_id=row["contact_id"],
                        email=row.get("email"),
                        member_id=row.get("member_id"),
                        person_id=person_id,
                        status=row["status"],
                    )
                )
            return label

        to_create = [(row, label) for row in creates if (label := label_for(row, row["salesforce_id"]))]
        to_update = [(row, label) for row in updates if (label := label_for(row, row["person_id"]))]
        if missing:
            outcome.counts.errors += len(missing)
            self._record_errors(campaign.id, missing)
        need_lead = [row for row, _ in to_create if not row["salesforce_id"]]
        if need_lead:
            leads = self._create_leads(campaign, need_lead, outcome)
            for row, _ in to_create:
                if not row["salesforce_id"] and row["contact_id"] in leads:
                    row["salesforce_id"], row["salesforce_type"] = leads[row["contact_id"]], "Lead"
        ready = [(row, label) for row, label in to_create if row["salesforce_id"]]
        if ready:
            self._create_members(campaign, sf_id, ready, outcome)
        if to_update:
            self._update_members(campaign, to_update, outcome)

    def _create_leads(
        self, campaign: Campaign, pending: list[dict[str, Any]], outcome: CampaignOutcome
    ) -> dict[int, str]:
        """Leads for contacts without a Salesforce record; each batch's links are committed at once."""
        linked = self._link_unread_lead_jobs(campaign, pending)
        pending = [row for row in pending if row["contact_id"] not in linked]
        records = [_lead_record(row) for row in pending]
        remember = partial(self._lead_jobs, campaign)
        for indexes, results in self._write("Lead", "insert", records, ("Email",), outcome, remember):
            created = [
                (pending[i]["contact_id"], r.id) for i, r in zip(indexes, results, strict=True) if r.ok
            ]
            errors = [
                MemberError(
                    "store_to_salesforce",
                    r.code or "lead_not_created",
                    f"Salesforce refused the Lead for this contact: {r.message}; member not pushed",
                    contact_id=pending[i]["contact_id"],
                    email=pending[i]["email"],
                    status=pending[i]["status"],
                )
                for i, r in zip(indexes, results, strict=True)
                if not r.ok
            ]
            with self.store.begin() as conn:
                if created:
                    done = _link_leads(conn, created)
                    linked.update(done)
                    if len(done) < len(created):
                        self.log.warning(
                            f"campaign '{campaign.name}': {len(created) - len(done)} contact(s) were linked to "
                            "a Salesforce record by another process while their Lead was created; the new "
                            "Lead(s) stay unlinked"
                        )
                self._insert_errors(conn, campaign.id, errors)
            outcome.counts.leads_created += len(created)
            outcome.counts.errors += len(errors)
        with self.store.begin() as conn:
            self._forget_lead_jobs(conn, campaign)  # every job's Leads are linked now
        return linked

    def _lead_jobs(self, campaign: Campaign, add: str | None = None) -> list[str]:
        """The campaign's Lead insert jobs whose results are not linked yet (`add`: one more, committed now)."""
        name = LEAD_JOBS_STATE.format(campaign_id=campaign.id)
        with self.store.begin() as conn:
            if add is not None:
                conn.exec_driver_sql(
                    """INSERT INTO sync_state (sync_name, cursor, last_run_id, updated_at)
                    VALUES (%(name)s, jsonb_build_object('jobs', jsonb_build_array(%(job)s::text)), %(run)s, now())
                    ON CONFLICT (sync_name) DO UPDATE SET cursor = jsonb_build_object('jobs',
                        coalesce(sync_state.cursor -> 'jobs', '[]'::jsonb) || to_jsonb(%(job)s::text)),
                        last_run_id = EXCLUDED.last_run_id, updated_at = now()""",
                    {"name": name, "job": add, "run": self.run_id},
                )
            jobs = conn.exec_driver_sql(
                "SELECT cursor -> 'jobs' FROM sync_state WHERE sync_name = %s", (name,)
            ).scalar()
        return [str(j) for j in jobs or []]

    def _forget_lead_jobs(self, conn: sa.Connection, campaign: Campaign) -> None:
        conn.exec_driver_sql(
            "DELETE FROM sync_state WHERE sync_name = %s", (LEAD_JOBS_STATE.format(campaign_id=campaign.id),)
        )

    def _link_unread_lead_jobs(self, campaign: Campaign, pending: list[dict[str, Any]]) -> dict[int, str]:
        """Link contacts to the Leads that jobs of an earlier, interrupted run created (matched by Email)."""
        jobs = self._lead_jobs(campaign)
        if not jobs:
            return {}
        emails = Counter(str(row["email"]).strip() for row in pending if row.get("email"))
        contact_by_email = {
            str(row["email"]).strip(): row["contact_id"]
            for row in pending
            if row.get("email") and emails[str(row["email"]).strip()] == 1
        }
        leads: dict[str, str] = {}
        for job_id in jobs:
            leads.update(self._bulk_job_created(job_id, "Lead", ("Email",)))
        pairs = [
            (contact_by_email[email], lead) for email, lead in leads.items() if email in contact_by_email
        ]
        with self.store.begin() as conn:
            done = _link_leads(conn, pairs)
            self._forget_lead_jobs(conn, campaign)
        if done:
            self.log.info(
                f"campaign '{campaign.name}': linked {len(done)} contact(s) to the Leads an interrupted run "
                "created (its Bulk API 2.0 results had not been read)"
            )
        return done

    def _create_members(
        self,
        campaign: Campaign,
        sf_id: str,
        ready: list[tuple[dict[str, Any], str]],
        outcome: CampaignOutcome,
    ) -> None:
        records = [
            {
                "CampaignId": sf_id,
                "LeadId": row["salesforce_id"] if row["salesforce_type"] == "Lead" else None,
                "ContactId": row["salesforce_id"] if row["salesforce_type"] != "Lead" else None,
                "Status": label,
            }
            for row, label in ready
        ]
        for indexes, results in self._write(
            "CampaignMember", "insert", records, ("LeadId", "ContactId"), outcome
        ):
            done = [(ready[i][0], r.id) for i, r in zip(indexes, results, strict=True) if r.ok]
            errors = [
                _push_error(ready[i][0], r, "Salesforce refused the new member")
                for i, r in zip(indexes, results, strict=True)
                if not r.ok
            ]
            with self.store.begin() as conn:
                if done:
                    conn.exec_driver_sql(
                        """UPDATE campaign_members m SET salesforce_member_id = v.member_id,
                            synced_status = v.status, salesforce_synced_at = now()
                        FROM unnest(%(contacts)s::bigint[], %(members)s::text[], %(statuses)s::text[])
                            AS v(contact_id, member_id, status)
                        WHERE m.campaign_id = %(campaign)s AND m.contact_id = v.contact_id""",
                        {
                            "campaign": campaign.id,
                            "contacts": [row["contact_id"] for row, _ in done],
                            "members": [member for _, member in done],
                            "statuses": [row["status"] for row, _ in done],
                        },
                    )
                self._insert_errors(conn, campaign.id, errors)
            outcome.counts.pushed += len(done)
            outcome.counts.errors += len(errors)

    def _update_members(
        self, campaign: Campaign, to_update: list[tuple[dict[str, Any], str]], outcome: CampaignOutcome
    ) -> None:
        records = [{"Id": row["member_id"], "Status": label} for row, label in to_update]
        for indexes, results in self._write("CampaignMember", "update", records, ("Id",), outcome):
            done = [to_update[i][0] for i, r in zip(indexes, results, strict=True) if r.ok]
            errors = [
                _push_error(to_update[i][0], r, "Salesforce refused the status change")
                for i, r in zip(indexes, results, strict=True)
                if not r.ok
            ]
            with self.store.begin() as conn:
                if done:
                    conn.exec_driver_sql(
                        """UPDATE campaign_members m SET synced_status = v.status, salesforce_synced_at = now()
                        FROM unnest(%(contacts)s::bigint[], %(statuses)s::text[]) AS v(contact_id, status)
                        WHERE m.campaign_id = %(campaign)s AND m.contact_id = v.contact_id""",
                        {
                            "campaign": campaign.id,
                            "contacts": [row["contact_id"] for row in done],
                            "statuses": [row["status"] for row in done],
                        },
                    )
                self._insert_errors(conn, campaign.id, errors)
            outcome.counts.updated_in_salesforce += len(done)
            outcome.counts.errors += len(errors)

    # -- batched Salesforce writes ----------------------------------------------------------

    def _write(
        self,
        sobject: str,
        operation: Literal["insert", "update"],
        records: list[dict[str, Any]],
        key_fields: tuple[str, ...],
        outcome: CampaignOutcome,
        remember_job: Callable[[str], object] | None = None,
    ) -> Iterator[tuple[list[int], list[RecordResult]]]:
        """Write `records` in batches, yielding (record indexes, results) per batch.

        At least `bulk_threshold` records go through one Bulk API 2.0 ingest job; its result rows are matched
        back by `key_fields`, so records whose key is missing or repeated go through collections instead.
        """
        indexes = list(range(len(records)))
        rest = indexes
        if len(records) >= self.bulk_threshold:
            keys = [_key(records[i], key_fields) for i in indexes]
            seen = Counter(k for k in keys if k)
            bulk = [i for i in indexes if keys[i] and seen[keys[i]] == 1]
            rest = [i for i in indexes if not (keys[i] and seen[keys[i]] == 1)]
            if bulk:
                outcome.bulk_jobs += 1
                yield (
                    bulk,
                    self._bulk_ingest(
                        sobject, operation, [records[i] for i in bulk], key_fields, remember_job
                    ),
                )
        method = "POST" if operation == "insert" else "PATCH"
        for start in range(0, len(rest), COLLECTION_SIZE):
            chunk = rest[start : start + COLLECTION_SIZE]
            yield chunk, self._collection(method, sobject, [records[i] for i in chunk])

    def _collection(self, method: str, sobject: str, records: list[dict[str, Any]]) -> list[RecordResult]:
        """One composite/sobjects call (≤ 200 records, allOrNone false): a result per record, in order."""
        body = {
            "allOrNone": False,
            "records": [
                {"attributes": {"type": sobject}, **{k: v for k, v in r.items() if v is not None}}
                for r in records
            ],
        }
        verb = "create" if method == "POST" else "update"
        results = self.client.call(
            f"{verb} {len(records)} {sobject} (composite/sobjects)",
            lambda sf: sf.restful("composite/sobjects", method=method, json=body),
        )
        return [_collection_result(r) for r in results or []]

    def _delete(self, ids: list[str]) -> list[RecordResult]:
        results = self.client.call(
            f"delete {len(ids)} records (composite/sobjects)",
            lambda sf: sf.restful(
                "composite/sobjects", method="DELETE", params={"ids": ",".join(ids), "allOrNone": "false"}
            ),
        )
        return [_collection_result(r) for r in results or []]

    def _bulk_ingest(
        self,
        sobject: str,
        operation: Literal["insert", "update"],
        records: list[dict[str, Any]],
        key_fields: tuple[str, ...],
        remember_job: Callable[[str], object] | None = None,
    ) -> list[RecordResult]:
        """One Bulk API 2.0 ingest job: create, upload the CSV, close, wait, read the results.

        `remember_job` is told the job id as soon as the job exists (before any record can be written)."""
        columns = list(dict.fromkeys(name for record in records for name in record))
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(["" if r.get(c) is None else str(r[c]) for c in columns] for r in records)
        data = buffer.getvalue()
        op = Operation.insert if operation == "insert" else Operation.update
        client = self.client
        job = client.call(
            f"Bulk API 2.0 {operation} job ({sobject})", lambda sf: _bulk2(sf, sobject).create_job(op)
        )
        job_id = str(job["id"])
        if remember_job is not None:
            remember_job(job_id)
        client.call(
            f"Bulk API 2.0 upload ({len(records)} {sobject} rows)",
            lambda sf: _bulk2(sf, sobject).upload_job_data(job_id, data),
        )
        info = client.call("Bulk API 2.0 close job", lambda sf: _bulk2(sf, sobject).close_job(job_id))
        info = self._finished_job(sobject, job_id, info)
        by_key: dict[str, RecordResult] = {}
        processed = int(info.get("numberRecordsProcessed") or 0)
        failed = int(info.get("numberRecordsFailed") or 0)
        if processed > failed:
            text = client.call(
                "Bulk API 2.0 successful results",
                lambda sf: _bulk2(sf, sobject).get_ingest_results(job_id, "successfulResults"),
            )
            for row in csv.DictReader(io.StringIO(text)):
                by_key[_key(row, key_fields)] = RecordResult(True, id=row.get("sf__Id") or None)
        if failed:
            text = client.call(
                "Bulk API 2.0 failed results",
                lambda sf: _bulk2(sf, sobject).get_ingest_results(job_id, "failedResults"),
            )
            for row in csv.DictReader(io.StringIO(text)):
                # sf__Error is "CODE:message:field,field --"
                code, _, rest = (row.get("sf__Error") or "").partition(":")
                message = rest.removesuffix("--").strip().rpartition(":")[0] or rest
                by_key[_key(row, key_fields)] = RecordResult(
                    False, code=code or "BULK_ROW_FAILED", message=message.strip()
                )
        reason = info.get("errorMessage") or f"Bulk API 2.0 job {job_id} ended {info.get('state')}"
        return [
            by_key.get(_key(record, key_fields))
            or RecordResult(False, code="BULK_NOT_PROCESSED", message=f"not processed: {reason}")
            for record in records
        ]

    def _finished_job(self, sobject: str, job_id: str, info: dict[str, Any]) -> dict[str, Any]:
        """Wait (polling with backoff) until the ingest job is over; returns its final info."""
        delay = self.client.settings.bulk_poll_seconds
        while info.get("state") not in ("JobComplete", "Failed", "Aborted"):
            time.sleep(delay)
            delay = min(max(delay * 2, 0.05), self.client.settings.max_backoff_seconds)
            info = self.client.call(
                "Bulk API 2.0 job status", lambda sf: _bulk2(sf, sobject).get_job(job_id, False)
            )
        return info

    def _bulk_job_created(self, job_id: str, sobject: str, key_fields: tuple[str, ...]) -> dict[str, str]:
        """Key → record id of what an earlier ingest job created. A job left open (its upload may be partial)
        is aborted: it created nothing."""
        info = self.client.call(
            "Bulk API 2.0 job status", lambda sf: _bulk2(sf, sobject).get_job(job_id, False)
        )
        if info.get("state") == "Open":
            self.client.call(
                "Bulk API 2.0 abort job", lambda sf: _bulk2(sf, sobject).abort_job(job_id, False)
            )
            return {}
        info = self._finished_job(sobject, job_id, info)
        if int(info.get("numberRecordsProcessed") or 0) <= int(info.get("numberRecordsFailed") or 0):
            return {}
        text = self.client.call(
            "Bulk API 2.0 successful results",
            lambda sf: _bulk2(sf, sobject).get_ingest_results(job_id, "successfulResults"),
        )
        return {
            _key(row, key_fields): str(row["sf__Id"])
            for row in csv.DictReader(io.StringIO(text))
            if row.get("sf__Id") and _key(row, key_fields)
        }

    # -- errors -----------------------------------------------------------------------------

    def _record_errors(self, campaign_id: int, errors: Sequence[MemberError]) -> None:
        if errors:
            with self.store.begin() as conn:
                self._insert_errors(conn, campaign_id, errors)

    def _insert_errors(self, conn: sa.Connection, campaign_id: int, errors: Sequence[MemberError]) -> None:
        """Keep errors in campaign_member_errors: one statement for the batch."""
        if not errors:
            return
        conn.exec_driver_sql(
            """INSERT INTO campaign_member_errors (run_id, campaign_id, contact_id, email, salesforce_member_id,
                salesforce_person_id, direction, code, status, message)
            SELECT %(run)s, %(campaign)s, v.contact_id, v.email, v.member_id, v.person_id, v.direction, v.code,
                   v.status, v.message
            FROM unnest(%(contacts)s::bigint[], %(emails)s::text[], %(members)s::text[], %(people)s::text[],
                        %(directions)s::text[], %(codes)s::text[], %(statuses)s::text[], %(messages)s::text[])
                AS v(contact_id, email, member_id, person_id, direction, code, status, message)""",
            {
                "run": self.run_id,
                "campaign": campaign_id,
                "contacts": [e.contact_id for e in errors],
                "emails": [e.email for e in errors],
                "members": [e.member_id for e in errors],
                "people": [e.person_id for e in errors],
                "directions": [e.direction for e in errors],
                "codes": [e.code for e in errors],
                "statuses": [e.status for e in errors],
                "messages": [self.client.redact(e.message) for e in errors],
            },
        )


def _staged_member(record: dict[str, Any]) -> tuple[Any, ...]:
    """A CampaignMember record → a row of _cm_sf (the person is the Contact when there is one)."""
    lead_id, contact_id = record.get("LeadId"), record.get("ContactId")
    lead, contact = record.get("Lead") or {}, record.get("Contact") or {}
    if contact_id:
        person_id, person_type = contact_id, "Contact"
        email = contact.get("Email") or lead.get("Email")
    else:
        person_id, person_type = lead_id, "Lead"
        email = lead.get("Email")
    return (
        record["Id"],
        lead_id,
        contact_id,
        person_id,
        person_type,
        email,
        record.get("Status"),
        record.get("LastModifiedDate"),
    )


def _lead_record(row: dict[str, Any]) -> dict[str, Any]:
    """The Lead for a store contact: its fields where it has them, PLACEHOLDER for LastName and Company."""
    record: dict[str, Any] = {}
    for sf_field, column, length in _LEAD_FIELDS:
        record[sf_field] = _clip(row.get(column), length)
    record["LastName"] = record["LastName"] or PLACEHOLDER
    record["Company"] = record["Company"] or PLACEHOLDER
    if row.get("email"):
        record["Email"] = str(row["email"]).strip()  # never clipped: a clipped email would be another address
    return record


def _key(row: dict[str, Any], key_fields: tuple[str, ...]) -> str:
    return next((str(row[f]) for f in key_fields if row.get(f)), "")


def _collection_result(result: dict[str, Any]) -> RecordResult:
    if result.get("success"):
        return RecordResult(True, id=result.get("id"))
    errors = result.get("errors") or [{}]
    first = errors[0] if isinstance(errors[0], dict) else {}
    return RecordResult(
        False,
        code=first.get("statusCode") or "UNKNOWN_ERROR",
        message="; ".join(str(e.get("message")) for e in errors if isinstance(e, dict)) or "no message",
    )


def _push_error(row: dict[str, Any], result: RecordResult, what: str) -> MemberError:
    return MemberError(
        "store_to_salesforce",
        result.code or "UNKNOWN_ERROR",
        f"{what}: {result.message}",
        contact_id=row["contact_id"],
        email=row.get("email"),
        member_id=row.get("member_id"),
        person_id=row.get("salesforce_id") or row.get("person_id"),
        status=row["status"],
    )
