"""The contact push: store contacts → Salesforce Leads and Contacts, field by field, without echoes.

A run (1) links the records Bulk API 2.0 jobs of an interrupted push created, (2) creates the contacts the
rules send to Salesforce, after searching Salesforce by email and linking what exists instead, and (3) writes
the changed fields of linked contacts where the store value wins. Every write is batched (collections of 200,
one Bulk API 2.0 ingest job from `push.bulk_threshold` records), every call counted against the API budget,
and every outcome committed per batch with the contact's push state.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from datetime import datetime
from functools import partial
from typing import Any

from conversion_sync.config.salesforce import SalesforceConfig
from conversion_sync.salesforce.budget import ApiBudget, ApiBudgetExhausted
from conversion_sync.salesforce.campaigns.lead_jobs import (
    FORGET_LEAD_JOBS_SQL,
    REMEMBER_LEAD_JOB_SQL,
    REMEMBERED_LEAD_JOBS_SQL,
)
from conversion_sync.salesforce.campaigns.salesforce_writes import RecordResult, SalesforceWriter
from conversion_sync.salesforce.client import SalesforceClient
from conversion_sync.salesforce.clock import parse_salesforce_datetime, soql_datetime
from conversion_sync.salesforce.poller import read_cursor
from conversion_sync.salesforce.push import state
from conversion_sync.salesforce.push.fields import (
    PEOPLE,
    all_push_fields,
    field_value,
    new_record,
    planned_update,
    read_fields,
)
from conversion_sync.store.contact_store import ContactStore
from conversion_sync.store.sync_state import RunHeartbeat, finish_run, this_host

PUSH_RUN_NAME = "salesforce:push"
"""sync_runs.sync_name of every push (Dagster or CLI), so `conversion-sync status` shows the push's runs."""

PUSH_LOCK_KEY = 7_310_005
"""Session advisory lock held for a whole push: two pushes never create the same contacts at once."""

JOBS_STATE = "salesforce_push:{sobject}:jobs"
"""sync_state row per object: Bulk API 2.0 insert jobs whose records are not linked to their contacts yet."""

CREATE_PAGE = 10_000
UPDATE_PAGE = 2_000
EMAIL_SEARCH_MAX = 1_000
"""Up to this many contacts to create, Salesforce is searched by their emails (200 a query per object); more,
and it reads the Leads and Contacts changed since the poll's cursor instead (what the poll has not seen)."""
EMAILS_PER_QUERY = 200
IDS_PER_QUERY = 300
"""Record ids in one `Id IN (…)` query: well inside the 16 KB a query URL may have."""
STAMPS_PER_QUERY = 200
"""Records whose LastModifiedDate is read back after a write, per query (a collection's worth)."""
ACCOUNT_NAMES_PER_QUERY = 200
"""Company names looked up as Account names in one `Name IN (…)` query."""

START_PUSH_RUN_SQL = """
    INSERT INTO sync_runs (run_id, sync_name, status, phase, started_at, heartbeat_at, host, pid)
    VALUES (%(run)s, %(sync)s, 'running', 'pushing', now(), now(), %(host)s, %(pid)s)
    ON CONFLICT (run_id) DO UPDATE SET status = 'running', phase = 'pushing', error = NULL, finished_at = NULL,
        counts = '{}'::jsonb, heartbeat_at = now(), host = EXCLUDED.host, pid = EXCLUDED.pid"""
TRY_LOCK_SQL = "SELECT pg_try_advisory_lock(%s)"
UNLOCK_SQL = "SELECT pg_advisory_unlock(%s)"


class PushInProgress(RuntimeError):
    """Another push holds the push lock."""


@dataclass(frozen=True)
class PushOptions:
    """Which contacts a run considers: all due ones (default), only these emails, or every pending one."""

    emails: tuple[str, ...] = ()
    """Only the contacts with these emails: created unless their rule is `never`, updated when changed."""
    all_pending: bool = False
    """Also create the contacts whose rule says `later` ("sync later", from a workflow or the dashboard)."""


@dataclass
class PushCounts:
    """What one push did to contacts (the run record's counts)."""

    created: int = 0
    linked: int = 0
    updated: int = 0
    unchanged: int = 0
    failed: int = 0
    skipped: int = 0
    relinked: int = 0
    recovered: int = 0
    accounts_set: int = 0
    """Contacts created as Salesforce Contacts under the Account their company name matched."""

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class PushOutcome:
    """Everything a push run reports."""

    run_id: str
    budget: ApiBudget
    counts: PushCounts = field(default_factory=PushCounts)
    errors: list[dict[str, Any]] = field(default_factory=list)
    """A preview of the per-contact errors of this run (contact id, email, code, message)."""
    stopped_early: str | None = None
    bulk_jobs: int = 0
    duration_seconds: float = 0.0

    def run_counts(self) -> dict[str, Any]:
        return {
            **self.counts.as_dict(),
            "api_calls": self.budget.calls_made,
            "bulk_jobs": self.bulk_jobs,
            "complete": self.stopped_early is None,
        }


@dataclass
class _Write:
    """One record to write for one contact, and what Salesforce holds for the contact's fields after it."""

    row: dict[str, Any]
    sobject: str
    record: dict[str, Any]
    synced: dict[str, Any]
    salesforce_id: str | None = None
    last_modified: datetime | None = None
    written: tuple[str, ...] = ()
    """Store fields whose store value this write sends; after it they carry Salesforce's stamp."""


ERROR_PREVIEW = 20


class SalesforcePusher:
    """Pushes store contacts to Salesforce (see the module docstring)."""

    def __init__(
        self,
        config: SalesforceConfig,
        store: ContactStore,
        client: SalesforceClient,
        *,
        run_id: str = "",
        options: PushOptions | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.client = client
        self.options = options or PushOptions()
        self.log = logger or logging.getLogger(__name__)
        self.fields = all_push_fields(config)
        self.writer = SalesforceWriter(client, bulk_threshold=config.push.bulk_threshold)
        self.outcome = PushOutcome(run_id=run_id or uuid.uuid4().hex, budget=client.budget)
        self._delta: dict[str, dict[str, Any]] | None = None

    # -- the run ----------------------------------------------------------------------------------

    def run(self) -> PushOutcome:
        """One push; stops cleanly (stopped_early) when the API budget runs out, keeping what it committed."""
        started = time.perf_counter()
        outcome = self.outcome
        try:
            with self._exclusive(), self._recorded():
                try:
                    self._recover_jobs()
                    self._create_contacts()
                    self._update_contacts()
                except ApiBudgetExhausted as exc:
                    outcome.stopped_early = exc.reason
                    self.log.warning(
                        f"Salesforce push stopped early: {exc.reason}. Everything pushed so far is recorded; "
                        "the next push continues with the rest."
                    )
        finally:
            outcome.bulk_jobs = self.writer.bulk_jobs
            outcome.duration_seconds = time.perf_counter() - started
        return outcome

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        with self.store.engine().connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            if not conn.exec_driver_sql(TRY_LOCK_SQL, (PUSH_LOCK_KEY,)).scalar_one():
                raise PushInProgress(
                    "another Salesforce push is running against this store (it holds the push lock); "
                    "this run did nothing"
                )
            try:
                yield
            finally:
                conn.exec_driver_sql(UNLOCK_SQL, (PUSH_LOCK_KEY,))

    @contextmanager
    def _recorded(self) -> Iterator[None]:
        """The run's record in sync_runs (`salesforce:push`), finished with its counts or its error."""
        run_id = self.outcome.run_id
        with self.store.begin() as conn:
            conn.exec_driver_sql(
                START_PUSH_RUN_SQL,
                {"run": run_id, "sync": PUSH_RUN_NAME, "host": this_host(), "pid": os.getpid()},
            )
        try:
            with RunHeartbeat(self.store.engine(), run_id):
                yield
        except BaseException as exc:
            with self.store.begin() as conn:
                finish_run(conn, run_id, "failed", self.outcome.run_counts(), error=str(exc)[:2000])
            raise
        with self.store.begin() as conn:
            finish_run(conn, run_id, "success", self.outcome.run_counts())

    # -- Bulk API 2.0 jobs of an interrupted push -------------------------------------------------

    def _remembered_jobs(self, sobject: str, add: str | None = None) -> list[str]:
        name = JOBS_STATE.format(sobject=sobject)
        with self.store.begin() as conn:
            if add is not None:
                conn.exec_driver_sql(
                    REMEMBER_LEAD_JOB_SQL, {"name": name, "job": add, "run": self.outcome.run_id}
                )
            jobs = conn.exec_driver_sql(REMEMBERED_LEAD_JOBS_SQL, (name,)).scalar()
        return [str(j) for j in jobs or []]

    def _forget_jobs(self, sobject: str) -> None:
        with self.store.begin() as conn:
            conn.exec_driver_sql(FORGET_LEAD_JOBS_SQL, (JOBS_STATE.format(sobject=sobject),))

    def _recover_jobs(self) -> None:
        """Link what the ingest jobs of an interrupted push created (an open job is aborted: it created
        nothing), so those contacts never get a second record."""
        for sobject in PEOPLE:
            jobs = self._remembered_jobs(sobject)
            if not jobs:
                continue
            created: dict[str, str] = {}
            for job_id in jobs:
                created.update(self.writer.job_created(job_id, sobject, ("Email",)))
            with self.store.begin() as conn:
                linked = state.link_by_email(conn, sobject, created)
                conn.exec_driver_sql(FORGET_LEAD_JOBS_SQL, (JOBS_STATE.format(sobject=sobject),))
            self.outcome.counts.recovered += linked
            if linked:
                self.log.info(
                    f"linked {linked} contact(s) to the {sobject}s an interrupted push created "
                    "(its Bulk API 2.0 results had not been read)"
                )

    # -- creating ---------------------------------------------------------------------------------

    def _email_params(self) -> dict[str, Any]:
        return {"emails": list(self.options.emails)}

    def _create_contacts(self) -> None:
        sql = state.create_candidates_sql(
            self.config.push, emails=bool(self.options.emails), all_pending=self.options.all_pending
        )
        after = 0
        while True:
            with self.store.begin() as conn:
                rows = state.fetch(conn, sql, {"after": after, "limit": CREATE_PAGE, **self._email_params()})
            if not rows:
                return
            after = rows[-1]["id"]
            self._create_page(rows)

    def _create_page(self, rows: list[dict[str, Any]]) -> None:
        """Link the contacts whose email Salesforce has, create the others."""
        found = self._search(rows)
        links = [
            (row["id"], found[row["email_normalized"]]) for row in rows if row["email_normalized"] in found
        ]
        linked: dict[int, tuple[str, str]] = {}
        if links:
            with self.store.begin() as conn:
                linked = state.link_contacts(
                    conn, [(cid, str(rec["Id"]), str(rec["attributes"]["type"])) for cid, rec in links]
                )
            self.outcome.counts.linked += len(linked)
        by_id = {row["id"]: row for row in rows}
        updates = [self._planned(by_id[cid], rec) for cid, rec in links if cid in linked]
        self._write_updates(updates)
        searched = {cid for cid, _ in links}
        for sobject in PEOPLE:
            todo = [row for row in rows if row["id"] not in searched and row["sobject"] == sobject]
            if todo:
                self._create(sobject, todo)
        self.outcome.counts.skipped += sum(1 for cid, _ in links if cid not in linked)

    def _create(self, sobject: str, rows: list[dict[str, Any]]) -> None:
        accounts = self._accounts_by_name(rows) if sobject == "Contact" else {}
        writes = []
        for row in rows:
            values = state.contact_values(row)
            record, synced = new_record(sobject, row["email"], values, self.fields[sobject])
            account = accounts.get(_name_key(row.get("company_name")))
            if account is not None:
                record["AccountId"] = account
            written = tuple(
                f.store_field for f in self.fields[sobject] if values.get(f.store_field) is not None
            )
            writes.append(_Write(row, sobject, record, synced, written=written))
        remember = partial(self._remembered_jobs, sobject)
        records = [w.record for w in writes]
        for indexes, results in self.writer.write(sobject, "insert", records, ("Email",), remember):
            batch = [(writes[i], r) for i, r in zip(indexes, results, strict=True)]
            for w, r in batch:
                w.salesforce_id = str(r.id) if r.ok and r.id else None
            created = [w for w, r in batch if w.salesforce_id]
            with self.store.begin() as conn:  # linked at once: a push stopped after this creates no duplicate
                linked = state.link_contacts(
                    conn, [(w.row["id"], str(w.salesforce_id), sobject) for w in created]
                )
                self._record_failures(conn, [(w, r) for w, r in batch if not r.ok])
            done = [w for w in created if w.row["id"] in linked]
            self._stamp_after_write(sobject, done)
            with self.store.begin() as conn:
                state.record_synced(conn, [_synced_row(w) for w in done])
                state.restamp_written(conn, [_restamp_row(w) for w in done])
            self.outcome.counts.created += len(linked)
            self.outcome.counts.accounts_set += sum(1 for w in done if "AccountId" in w.record)
            unlinked = sum(1 for w, r in batch if r.ok and w.row["id"] not in linked)
            if unlinked:
                self.log.warning(
                    f"{unlinked} contact(s) were linked to a Salesforce record by another process while their "
                    f"{sobject} was created; the new {sobject}(s) stay unlinked"
                )
        self._forget_jobs(sobject)  # every job's records are linked now

    # -- searching Salesforce by email ------------------------------------------------------------

    def _search(self, rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Email key → the live Salesforce Lead (unconverted) or Contact with that email (a Contact first,
        then the most recently modified)."""
        keys = [row["email_normalized"] for row in rows]
        if len(keys) > EMAIL_SEARCH_MAX:
            delta = self._changed_since_poll()
            return {key: delta[key] for key in keys if key in delta}
        emails = sorted({str(row["email"]).strip() for row in rows})
        found: dict[str, dict[str, Any]] = {}
        for sobject in PEOPLE:
            for start in range(0, len(emails), EMAILS_PER_QUERY):
                chunk = ", ".join(_soql_string(e) for e in emails[start : start + EMAILS_PER_QUERY])
                self._keep_best(found, self._query(sobject, f"Email IN ({chunk})"))
        return found

    def _changed_since_poll(self) -> dict[str, dict[str, Any]]:
        """Email key → record, of the Leads and Contacts changed since each object's poll cursor (less the
        overlap): the poll has linked every older one with an email already. Read once per run."""
        if self._delta is None:
            self._delta = {}
            for sobject in PEOPLE:
                with self.store.begin() as conn:
                    cursor = read_cursor(conn, sobject)
                where = "Email != null"
                if cursor is not None:
                    where += f" AND SystemModstamp >= {soql_datetime(cursor - self.config.poll_overlap)}"
                self._keep_best(self._delta, self._query(sobject, where))
        return self._delta

    def _query(self, sobject: str, where: str) -> Iterator[dict[str, Any]]:
        """The live records of `sobject` matching `where`, with the fields a push reads (all pages)."""
        if sobject == "Lead":
            where = f"IsConverted = false AND ({where})"
        select = ", ".join(read_fields(self.config, sobject))
        page = self.client.query(f"SELECT {select} FROM {sobject} WHERE {where}")
        while True:
            yield from page.records
            if page.next_records_url is None:
                return
            page = self.client.query_more(page.next_records_url)

    @staticmethod
    def _keep_best(found: dict[str, dict[str, Any]], records: Iterator[dict[str, Any]]) -> None:
        for record in records:
            email = field_value(record, "Email")
            if not email:
                continue
            key = str(email).strip().lower()
            held = found.get(key)
            if held is None or _preference(record) > _preference(held):
                found[key] = record

    # -- updating ---------------------------------------------------------------------------------

    def _update_contacts(self) -> None:
        sql = state.update_candidates_sql(self.fields, emails=bool(self.options.emails))
        after = 0
        while True:
            with self.store.begin() as conn:
                rows = state.fetch(conn, sql, {"after": after, "limit": UPDATE_PAGE, **self._email_params()})
            if not rows:
                return
            after = rows[-1]["id"]
            self._update_page(rows)

    def _update_page(self, rows: list[dict[str, Any]]) -> None:
        """Read the linked records, follow converted Leads to their Contacts, write what the store wins."""
        records = self._read("Lead", [r["salesforce_id"] for r in rows if r["salesforce_type"] == "Lead"])
        records.update(
            self._read("Contact", [r["salesforce_id"] for r in rows if r["salesforce_type"] == "Contact"])
        )
        moved: list[dict[str, Any]] = []
        for row in rows:
            record = records.get(row["salesforce_id"])
            if record is None:
                continue
            if field_value(record, "IsConverted") and field_value(record, "ConvertedContactId"):
                contact_sf = str(field_value(record, "ConvertedContactId"))
                with self.store.begin() as conn:
                    done = state.relink_converted(conn, row["id"], row["salesforce_id"], contact_sf)
                if done:
                    self.outcome.counts.relinked += 1
                    moved.append({**row, "salesforce_id": contact_sf, "salesforce_type": "Contact"})
                else:
                    self.outcome.counts.skipped += 1
        records.update(self._read("Contact", [r["salesforce_id"] for r in moved]))
        writes = []
        for row in [*rows, *moved]:
            record = records.get(row["salesforce_id"])
            if record is None or field_value(record, "IsConverted"):
                if record is None:
                    self.outcome.counts.skipped += 1  # deleted or merged: the poll unlinks or relinks it
                continue
            writes.append(self._planned(row, record))
        self._write_updates(writes)

    def _read(self, sobject: str, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        select = ", ".join(read_fields(self.config, sobject))
        for start in range(0, len(ids), IDS_PER_QUERY):
            chunk = ", ".join(_soql_string(i) for i in ids[start : start + IDS_PER_QUERY])
            page = self.client.query(f"SELECT {select} FROM {sobject} WHERE Id IN ({chunk})")
            while True:
                for record in page.records:
                    out[_id15(str(record["Id"]))] = record
                if page.next_records_url is None:
                    break
                page = self.client.query_more(page.next_records_url)
        return {i: out[_id15(i)] for i in ids if _id15(i) in out}

    def _planned(self, row: dict[str, Any], record: dict[str, Any]) -> _Write:
        sobject = str(record["attributes"]["type"])
        last_modified = parse_salesforce_datetime(field_value(record, "LastModifiedDate"))
        changes, synced = planned_update(
            record,
            state.contact_values(row),
            row["field_updated_at"] or {},
            self.fields[sobject],
            last_modified,
        )
        sf_id = str(record["Id"])
        written = tuple(f.store_field for f in self.fields[sobject] if f.salesforce_field in changes)
        return _Write(
            row, sobject, {"Id": sf_id, **changes} if changes else {}, synced, sf_id, last_modified, written
        )

    # -- after a write: Salesforce's own stamp ----------------------------------------------------

    def _stamp_after_write(self, sobject: str, written: list[_Write]) -> None:
        """Read the LastModifiedDate the write gave each record (one query per STAMPS_PER_QUERY records), so
        the push state and the written fields' stamps carry Salesforce's clock, not the local one; a record
        not found (deleted meanwhile) keeps no stamp."""
        ids = [str(w.salesforce_id) for w in written if w.salesforce_id]
        stamps: dict[str, datetime | None] = {}
        for start in range(0, len(ids), STAMPS_PER_QUERY):
            chunk = ", ".join(_soql_string(i) for i in ids[start : start + STAMPS_PER_QUERY])
            page = self.client.query(f"SELECT Id, LastModifiedDate FROM {sobject} WHERE Id IN ({chunk})")
            while True:
                for record in page.records:
                    stamps[_id15(str(record["Id"]))] = parse_salesforce_datetime(
                        field_value(record, "LastModifiedDate")
                    )
                if page.next_records_url is None:
                    break
                page = self.client.query_more(page.next_records_url)
        for w in written:
            w.last_modified = stamps.get(_id15(str(w.salesforce_id)))

    # -- a Contact's Account ----------------------------------------------------------------------

    def _accounts_by_name(self, rows: list[dict[str, Any]]) -> dict[str, str]:
        """Company name (case-insensitive) → the id of the one Account with that Name, for the company names of
        contacts created as Contacts (one query per ACCOUNT_NAMES_PER_QUERY names); a name two Accounts share
        is left out (the Contact is created without an Account rather than under the wrong one)."""
        names = sorted({str(r["company_name"]).strip() for r in rows if _name_key(r.get("company_name"))})
        found: dict[str, set[str]] = {}
        for start in range(0, len(names), ACCOUNT_NAMES_PER_QUERY):
            chunk = ", ".join(_soql_string(n) for n in names[start : start + ACCOUNT_NAMES_PER_QUERY])
            page = self.client.query(f"SELECT Id, Name FROM Account WHERE Name IN ({chunk})")
            while True:
                for record in page.records:
                    found.setdefault(_name_key(record.get("Name")), set()).add(str(record["Id"]))
                if page.next_records_url is None:
                    break
                page = self.client.query_more(page.next_records_url)
        shared = sorted(name for name, ids in found.items() if len(ids) > 1)
        if shared:
            self.log.warning(
                f"{len(shared)} company name(s) match several Salesforce Accounts (e.g. '{shared[0]}'); their "
                "contacts are created as Contacts without an Account"
            )
        return {name: next(iter(ids)) for name, ids in found.items() if len(ids) == 1}

    def _write_updates(self, writes: list[_Write]) -> None:
        unchanged = [w for w in writes if not w.record]
        if unchanged:
            with self.store.begin() as conn:
                state.record_synced(conn, [_synced_row(w) for w in unchanged])
            self.outcome.counts.unchanged += len(unchanged)
        for sobject in PEOPLE:
            todo = [w for w in writes if w.record and w.sobject == sobject]
            if not todo:
                continue
            records = [w.record for w in todo]
            for indexes, results in self.writer.write(sobject, "update", records, ("Id",)):
                batch = [(todo[i], r) for i, r in zip(indexes, results, strict=True)]
                done = [w for w, r in batch if r.ok]
                self._stamp_after_write(sobject, done)
                with self.store.begin() as conn:
                    state.record_synced(conn, [_synced_row(w) for w in done])
                    state.restamp_written(conn, [_restamp_row(w) for w in done])
                    self._record_failures(conn, [(w, r) for w, r in batch if not r.ok])
                self.outcome.counts.updated += sum(1 for _, r in batch if r.ok)

    # -- errors -----------------------------------------------------------------------------------

    def _record_failures(self, conn: Any, failures: list[tuple[_Write, RecordResult]]) -> None:
        """Salesforce refused these records: keep its code and message per contact, with the contact's
        version, so the contact is tried again only once it has changed."""
        rows = [
            (
                w.row["id"],
                r.code or "UNKNOWN_ERROR",
                f"Salesforce refused the {w.sobject} {'update' if w.salesforce_id else 'creation'}: "
                f"{r.message or 'no message'}",
                w.row["updated_at"],
            )
            for w, r in failures
        ]
        state.record_errors(conn, rows)
        self.outcome.counts.failed += len(rows)
        room = ERROR_PREVIEW - len(self.outcome.errors)
        self.outcome.errors.extend(
            {"contact_id": cid, "email": w.row["email"], "code": code, "message": message}
            for (cid, code, message, _), (w, _) in list(zip(rows, failures, strict=True))[: max(0, room)]
        )


def _synced_row(w: _Write) -> tuple[int, str, str, dict[str, Any], datetime | None]:
    return (w.row["id"], str(w.salesforce_id), w.sobject, w.synced, w.last_modified)


def _restamp_row(w: _Write) -> tuple[int, dict[str, Any], datetime | None]:
    """(contact id, written store field → its stamp as the push read it, the record's LastModifiedDate)."""
    stamps = w.row.get("field_updated_at") or {}
    return (w.row["id"], {name: stamps.get(name) for name in w.written}, w.last_modified)


def _name_key(name: Any) -> str:
    """A company or Account name as Salesforce compares it (trimmed, case-insensitive); '' when empty."""
    return str(name).strip().lower() if name is not None else ""


def _preference(record: dict[str, Any]) -> tuple[bool, str]:
    """A Contact before a Lead, then the most recently modified."""
    return (record["attributes"]["type"] == "Contact", str(field_value(record, "LastModifiedDate") or ""))


def _soql_string(value: str) -> str:
    """A SOQL string literal (backslash and quote escaped)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _id15(record_id: str) -> str:
    """The case-sensitive 15-character form of a Salesforce id (18-character ids end in a checksum)."""
    return record_id[:15]
