"""Salesforce polling: Accounts → companies, Leads and Contacts → contacts, incremental on SystemModstamp, with a
periodic Id sweep, and each poll recorded in the store's run history."""

from __future__ import annotations

import json
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from conversion_sync.config.salesforce import SalesforceConfig
from conversion_sync.config.store_schema import RESERVED_CONTACT_NAMES, STANDARD_CONTACT_FIELDS
from conversion_sync.salesforce.budget import ApiBudget, ApiBudgetExhausted
from conversion_sync.salesforce.client import SalesforceClient
from conversion_sync.salesforce.clock import (
    parse_salesforce_datetime,
    poll_lower_bound,
    poll_upper_bound,
    soql_datetime,
    whole_seconds,
)
from conversion_sync.salesforce.id_sweep import SweepResult, sweep_due, sweep_object
from conversion_sync.store.contact_store import ContactStore
from conversion_sync.store.contacts import (
    email_key_sql,
    incoming_wins_sql,
    lock_identities,
    sql_literal,
    trimmed_email_sql,
)
from conversion_sync.store.identity import IdentityMatcher
from conversion_sync.store.sql_text import quote_ident
from conversion_sync.store.sync_state import RunHeartbeat, finish_run, this_host

POLL_ORDER = ("Account", "Lead", "Contact")
"""Accounts first, so companies exist before people link to them; Leads before Contacts, so a converted
Lead's store contact is re-linked to its new Contact before that Contact is read (read the other way
round, the new Contact would get a second store contact)."""

POLL_RUN_NAME = "salesforce:poll"
"""sync_runs.sync_name of every poll (Dagster or CLI), so `conversion-sync status` shows the poll's runs."""

CURSOR_PREFIX = "salesforce_poll:"
"""sync_state rows `salesforce_poll:Account|Lead|Contact`: watermark = SystemModstamp committed up to."""

POLL_LOCK_KEY = 7_310_004
"""Session advisory lock held for a whole poll: two polls never work on the same cursors at once."""

CONFLICT_PREVIEW_LIMIT = 20
COMPANY_COLUMNS = ("name",)
RESERVED_COMPANY_NAMES = frozenset(
    {"id", "salesforce_account_id", "fields", "field_updated_at", "created_at"}
)
_STORE_FIELD = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_SALESFORCE_FIELD = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,79}$")

CONTROL_FIELDS: dict[str, tuple[str, ...]] = {
    "Account": ("Id", "IsDeleted", "MasterRecordId", "SystemModstamp", "LastModifiedDate"),
    "Lead": (
        "Id",
        "IsDeleted",
        "MasterRecordId",
        "SystemModstamp",
        "LastModifiedDate",
        "Email",
        "IsConverted",
        "ConvertedContactId",
        "ConvertedAccountId",
    ),
    "Contact": (
        "Id",
        "IsDeleted",
        "MasterRecordId",
        "SystemModstamp",
        "LastModifiedDate",
        "Email",
        "AccountId",
    ),
}
"""Fields every poll reads besides the mapped ones: identity, deletion/merge, conversion, company link."""

TRY_LOCK_SQL = "SELECT pg_try_advisory_lock(%s)"
UNLOCK_SQL = "SELECT pg_advisory_unlock(%s)"

_STAGED_COLUMNS = (
    "sf_id",
    "is_deleted",
    "master_id",
    "email",
    "account_id",
    "is_converted",
    "converted_contact_id",
    "converted_account_id",
    "last_modified",
    "system_modstamp",
    "fields",
)


class SalesforceMappingError(ValueError):
    """A field mapping in salesforce.yaml that cannot be polled (names the object and field)."""


class PollInProgress(RuntimeError):
    """Another poll holds the poll lock."""


@dataclass(frozen=True)
class MappedField:
    """One mapped field of one Salesforce object: where it lands in the store and who wins a conflict."""

    store_field: str
    salesforce_field: str
    preference: str
    is_column: bool
    """A column of contacts/companies (first_name, name, …); else a key of custom_fields / fields."""


def mapped_fields(config: SalesforceConfig, sobject: str) -> list[MappedField]:
    """The synced (not do_not_sync) field mappings of `sobject`; SalesforceMappingError for unusable names."""
    columns = COMPANY_COLUMNS if sobject == "Account" else STANDARD_CONTACT_FIELDS
    reserved = RESERVED_COMPANY_NAMES if sobject == "Account" else RESERVED_CONTACT_NAMES
    out = []
    for store_field, mapping in config.field_mappings.get(sobject, {}).items():  # type: ignore[call-overload]
        where = f"salesforce.yaml: field_mappings.{sobject}.{store_field}"
        if store_field == "email" and sobject != "Account":
            if mapping.salesforce.lower() != "email":
                raise SalesforceMappingError(
                    f"{where}: the store's email is the contact's identity and maps only to Salesforce's Email "
                    f"(with a preference), not '{mapping.salesforce}'"
                )
            continue  # its preference is read by email_preference()
        if not _STORE_FIELD.match(store_field) or store_field in reserved or store_field == "updated_at":
            raise SalesforceMappingError(
                f"{where}: '{store_field}' cannot receive Salesforce values; use a store field name of "
                f"lower-case letters, digits and underscores, not one of {', '.join(sorted(reserved))}"
            )
        if not _SALESFORCE_FIELD.match(mapping.salesforce):
            raise SalesforceMappingError(f"{where}: '{mapping.salesforce}' is not a Salesforce field name")
        if mapping.preference != "do_not_sync":
            out.append(
                MappedField(store_field, mapping.salesforce, mapping.preference, store_field in columns)
            )
    return out


def email_preference(config: SalesforceConfig, sobject: str) -> str:
    """How an email changed in Salesforce reaches the linked contact: the preference of an `email: Email`
    mapping, else most_recent (newer-wins on the record's LastModifiedDate against the email's stamp)."""
    if sobject == "Account":
        return "do_not_sync"
    mapping = config.field_mappings.get(sobject, {}).get("email")  # type: ignore[call-overload]
    return mapping.preference if mapping is not None else "most_recent"


def select_list(sobject: str, mapped: Sequence[MappedField]) -> list[str]:
    """Control fields, then mapped Salesforce fields, each once (field names are case-insensitive)."""
    names: dict[str, str] = {}
    for name in (*CONTROL_FIELDS[sobject], *(m.salesforce_field for m in mapped)):
        names.setdefault(name.lower(), name)
    return list(names.values())


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class RecordCounts:
    """What happened to the records of one object (or one batch of them)."""

    read: int = 0
    skipped_no_email: int = 0
    created: int = 0
    linked: int = 0
    updated: int = 0
    unchanged: int = 0
    unlinked: int = 0
    relinked: int = 0
    email_changed: int = 0
    conflicts: int = 0

    def add(self, other: RecordCounts) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


@dataclass
class ObjectPoll:
    """One object's part of a poll: counts, how it was read, and its cursor afterwards."""

    sobject: str
    counts: RecordCounts = field(default_factory=RecordCounts)
    mode: str = "rest"
    """rest | bulk (a delta above bulk_threshold) | skipped (not asked for in this poll)."""
    batches: int = 0
    cursor: datetime | None = None
    complete: bool = False


@dataclass(frozen=True)
class PollOptions:
    """What one poll does: which objects (in poll order), a full re-read from the beginning instead of the
    cursor, and an Id sweep now whether or not one is due."""

    objects: tuple[str, ...] = POLL_ORDER
    full: bool = False
    sweep: bool = False

    def __post_init__(self) -> None:
        unknown = sorted(set(self.objects) - set(POLL_ORDER))
        if unknown or not self.objects:
            raise ValueError(
                f"cannot poll {', '.join(unknown) or 'no object'}; choose among {', '.join(POLL_ORDER)}"
            )
        object.__setattr__(self, "objects", tuple(s for s in POLL_ORDER if s in self.objects))


@dataclass
class PollOutcome:
    """Everything a poll run reports (one Dagster materialization, one run record)."""

    upper_bound: datetime
    objects: dict[str, ObjectPoll]
    budget: ApiBudget
    stopped_early: str | None = None
    conflicts: list[dict[str, Any]] = field(default_factory=list)
    duration_seconds: float = 0.0
    run_id: str = ""
    full: bool = False
    sweeps: dict[str, SweepResult] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return self.stopped_early is None and all(o.complete for o in self.objects.values())

    def run_counts(self) -> dict[str, Any]:
        """The counts of the run record (sync_runs.counts) and the CLI: people summed over Leads and Contacts,
        companies apart, the sweep, API calls, and whether the poll read everything up to its upper bound."""
        people = RecordCounts()
        for sobject in ("Lead", "Contact"):
            people.add(self.objects[sobject].counts)
        companies = self.objects["Account"].counts
        counts: dict[str, Any] = {"read": sum(o.counts.read for o in self.objects.values())}
        for name in ("created", "linked", "updated", "unchanged", "unlinked", "relinked", "email_changed"):
            counts[name] = getattr(people, name)
        counts["conflicts"] = people.conflicts
        counts["skipped_no_email"] = people.skipped_no_email
        for name in ("created", "updated", "unlinked"):
            counts[f"companies_{name}"] = getattr(companies, name)
        counts["swept"] = sum(s.checked for s in self.sweeps.values())
        counts["sweep_unlinked"] = sum(s.unlinked for s in self.sweeps.values())
        counts["sweep_refused"] = sum(1 for s in self.sweeps.values() if s.refused)
        counts["api_calls"] = self.budget.calls_made
        counts["complete"] = self.complete
        counts["stopped_early"] = self.stopped_early or ""
        return counts


class SalesforcePoller:
    """Reads what changed in Salesforce since each object's cursor and merges it into the store.

    Per object: `SystemModstamp >= cursor - overlap AND SystemModstamp <= upper bound ORDER BY SystemModstamp,
    Id` through queryAll (deleted and merged records included), 2000 records a page; when the first page says
    more than `bulk_threshold` records match (a first load, a full re-read or any large delta), a Bulk API 2.0
    query job reads them instead. Each page is staged, matched and merged in one transaction that also moves
    the cursor, so a stopped or failed poll resumes from its last commit; re-reading a record changes nothing.
    Every `id_sweep_every` the poll also sweeps each object's Ids (see id_sweep). Each run is recorded in
    sync_runs as `salesforce:poll`.
    """

    def __init__(
        self,
        config: SalesforceConfig,
        store: ContactStore,
        identity: IdentityMatcher,
        client: SalesforceClient,
        *,
        run_id: str = "",
        now: Callable[[], datetime] = _utc_now,
        logger: logging.Logger | None = None,
        bulk_max_records: int = 50_000,
        options: PollOptions | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.identity = identity
        self.client = client
        self.run_id = run_id or f"poll-{uuid.uuid4()}"
        self.now = now
        self.log = logger or logging.getLogger(__name__)
        self.bulk_max_records = bulk_max_records
        self.options = options or PollOptions()
        self.outcome = PollOutcome(
            upper_bound=whole_seconds(now()),
            objects={s: ObjectPoll(s) for s in POLL_ORDER},
            budget=client.budget,
            run_id=self.run_id,
            full=self.options.full,
        )

    def run(self) -> PollOutcome:
        """Poll the chosen objects (and sweep their Ids when due); stops cleanly (stopped_early) when the API
        budget runs out. The run is recorded in sync_runs: success (also when stopped early) or failed."""
        started = time.perf_counter()
        outcome = self.outcome
        outcome.upper_bound = poll_upper_bound(self.now(), self.config.poll_upper_bound_lag)
        mappings = {sobject: mapped_fields(self.config, sobject) for sobject in POLL_ORDER}
        for sobject in POLL_ORDER:
            if sobject not in self.options.objects:
                outcome.objects[sobject].mode, outcome.objects[sobject].complete = "skipped", True
        try:
            with self._exclusive(), self._recorded():
                for sobject in self.options.objects:
                    self._phase(sobject)
                    try:
                        self._poll_object(outcome.objects[sobject], mappings[sobject])
                    except ApiBudgetExhausted as exc:
                        self._stopped(exc, f"while reading {sobject}")
                        break
                else:
                    self._sweep()
        finally:
            outcome.duration_seconds = time.perf_counter() - started
        return outcome

    def _stopped(self, exc: ApiBudgetExhausted, where: str) -> None:
        self.outcome.stopped_early = exc.reason
        self.log.warning(
            f"Salesforce poll stopped early {where}: {exc.reason}. Everything read so far is committed; the "
            "next poll continues from each object's cursor."
        )

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        with self.store.engine().connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            if not conn.exec_driver_sql(TRY_LOCK_SQL, (POLL_LOCK_KEY,)).scalar_one():
                raise PollInProgress(
                    "another Salesforce poll is running against this store (it holds the poll lock); "
                    "this run did nothing"
                )
            try:
                yield
            finally:
                conn.exec_driver_sql(UNLOCK_SQL, (POLL_LOCK_KEY,))

    @contextmanager
    def _recorded(self) -> Iterator[None]:
        """The run's record in sync_runs (running, with a heartbeat), finished with its counts or its error."""
        with self.store.begin() as conn:
            conn.exec_driver_sql(
                START_POLL_RUN_SQL,
                {
                    "run": self.run_id,
                    "sync": POLL_RUN_NAME,
                    "full": self.options.full,
                    "host": this_host(),
                    "pid": os.getpid(),
                },
            )
        try:
            with RunHeartbeat(self.store.engine(), self.run_id):
                yield
        except BaseException as exc:
            with self.store.begin() as conn:
                error = self.client.redact(f"{type(exc).__name__}: {exc}")
                finish_run(conn, self.run_id, "failed", self.outcome.run_counts(), error=error)
            raise
        with self.store.begin() as conn:
            finish_run(conn, self.run_id, "success", self.outcome.run_counts())

    def _phase(self, phase: str) -> None:
        with self.store.begin() as conn:
            conn.exec_driver_sql(SET_POLL_PHASE_SQL, {"run": self.run_id, "phase": phase})

    # -- reading ----------------------------------------------------------------------------

    def _poll_object(self, poll: ObjectPoll, mapped: list[MappedField]) -> None:
        sobject = poll.sobject
        upper = self.outcome.upper_bound
        with self.store.begin() as conn:
            watermark = read_cursor(conn, sobject)
        poll.cursor = watermark
        conditions = [f"SystemModstamp <= {soql_datetime(upper)}"]
        lower = None if self.options.full else poll_lower_bound(watermark, self.config.poll_overlap)
        if lower is not None:
            conditions.insert(0, f"SystemModstamp >= {soql_datetime(lower)}")
        select = ", ".join(select_list(sobject, mapped))
        where = " AND ".join(conditions)
        page = self.client.query(
            f"SELECT {select} FROM {sobject} WHERE {where} ORDER BY SystemModstamp, Id", include_deleted=True
        )
        if page.total_size > self.config.bulk_threshold:
            what = "first load" if watermark is None else "full re-read" if lower is None else "delta"
            self.log.info(
                f"{sobject}: {what} of {page.total_size} records (above bulk_threshold "
                f"{self.config.bulk_threshold}); reading them with a Bulk API 2.0 query job"
            )
            self._bulk_load(poll, mapped, f"SELECT {select} FROM {sobject} WHERE {where}")
            return
        while True:
            next_url = page.next_records_url
            last_stamp = None if next_url is None else page.records[-1]["SystemModstamp"]
            cursor = upper if last_stamp is None else parse_salesforce_datetime(last_stamp)
            self._merge_batch(poll, mapped, page.records, cursor, complete=next_url is None)
            if next_url is None:
                return
            page = self.client.query_more(next_url)

    def _bulk_load(self, poll: ObjectPoll, mapped: list[MappedField], soql: str) -> None:
        """A Bulk API 2.0 read: result chunks are unordered, so the cursor moves with the last one."""
        poll.mode = "bulk"
        types = self.client.field_types(poll.sobject)
        chunks = self.client.bulk_query(
            poll.sobject, soql, include_deleted=True, field_types=types, max_records=self.bulk_max_records
        )
        pending: list[dict[str, Any]] | None = None
        for chunk in chunks:
            if pending is not None:
                self._merge_batch(poll, mapped, pending, None, complete=False)
            pending = chunk
        self._merge_batch(poll, mapped, pending or [], self.outcome.upper_bound, complete=True)

    # -- the Id sweep -----------------------------------------------------------------------

    def _sweep(self) -> None:
        """Sweep the chosen objects whose sweep is due (or all of them when asked), after reading them."""
        upper = self.outcome.upper_bound
        every = self.config.id_sweep_every
        for sobject in self.options.objects:
            with self.store.begin() as conn:
                due = sweep_due(conn, sobject, upper, every, forced=self.options.sweep)
            if not due:
                continue
            self._phase("sweep")
            try:
                self.outcome.sweeps[sobject] = sweep_object(
                    self.store, self.client, sobject, upper, max_records=self.bulk_max_records, log=self.log
                )
            except ApiBudgetExhausted as exc:
                self._stopped(exc, f"while sweeping {sobject} Ids")
                return

    # -- one batch, one transaction ---------------------------------------------------------

    def _merge_batch(
        self,
        poll: ObjectPoll,
        mapped: list[MappedField],
        records: list[dict[str, Any]],
        cursor: datetime | None,
        *,
        complete: bool,
    ) -> None:
        """Stage, match and merge one page/chunk, and move the cursor, in a single transaction."""
        rows = staged_rows(poll.sobject, mapped, records)
        batch = RecordCounts(read=len(records))
        conflicts: list[dict[str, Any]] = []
        with self.store.begin() as conn:
            if rows:
                lock_identities(conn)
                stage_records(conn, rows)
                if poll.sobject == "Account":
                    merge_accounts(conn, mapped, batch)
                else:
                    preference = email_preference(self.config, poll.sobject)
                    merge_people(conn, poll.sobject, mapped, self.identity, batch, conflicts, preference)
            if cursor is not None:
                save_cursor(conn, poll.sobject, cursor, self.run_id, mode=poll.mode, complete=complete)
            conn.exec_driver_sql(
                POLL_RUN_COUNTS_SQL, {"run": self.run_id, "counts": json.dumps(self.outcome.run_counts())}
            )
        poll.counts.add(batch)
        poll.batches += 1
        poll.complete = complete
        if cursor is not None and (poll.cursor is None or cursor > poll.cursor):
            poll.cursor = cursor
        room = CONFLICT_PREVIEW_LIMIT - len(self.outcome.conflicts)
        self.outcome.conflicts.extend(conflicts[: max(0, room)])


START_POLL_RUN_SQL = """
    INSERT INTO sync_runs (run_id, sync_name, status, phase, full_sync, started_at, heartbeat_at, host, pid)
    VALUES (%(run)s, %(sync)s, 'running', 'starting', %(full)s, now(), now(), %(host)s, %(pid)s)
    ON CONFLICT (run_id) DO UPDATE SET status = 'running', phase = 'starting', error = NULL, finished_at = NULL,
        counts = '{}'::jsonb, full_sync = EXCLUDED.full_sync, heartbeat_at = now(), host = EXCLUDED.host,
        pid = EXCLUDED.pid"""

SET_POLL_PHASE_SQL = "UPDATE sync_runs SET phase = %(phase)s WHERE run_id = %(run)s"

POLL_RUN_COUNTS_SQL = "UPDATE sync_runs SET counts = %(counts)s::jsonb WHERE run_id = %(run)s"
"""The counts so far, in the batch's transaction (the batch's own counts are added after it commits, so the
record lags one batch until the run finishes)."""


# -- cursors ----------------------------------------------------------------------------------


READ_CURSOR_SQL = "SELECT watermark FROM sync_state WHERE sync_name = %s"

SAVE_CURSOR_SQL = """
    INSERT INTO sync_state (sync_name, watermark, cursor, last_run_id, last_success_at, updated_at)
    VALUES (%(name)s, %(watermark)s, %(cursor)s::jsonb, %(run)s, now(), now())
    ON CONFLICT (sync_name) DO UPDATE SET watermark = GREATEST(sync_state.watermark, EXCLUDED.watermark),
        cursor = EXCLUDED.cursor, last_run_id = EXCLUDED.last_run_id, last_success_at = now(),
        updated_at = now()"""


def cursor_name(sobject: str) -> str:
    return f"{CURSOR_PREFIX}{sobject}"


def read_cursor(conn: sa.Connection, sobject: str) -> datetime | None:
    """The SystemModstamp up to which `sobject` is committed, None before the first load."""
    return conn.exec_driver_sql(READ_CURSOR_SQL, (cursor_name(sobject),)).scalar()


def save_cursor(
    conn: sa.Connection, sobject: str, watermark: datetime, run_id: str, *, mode: str, complete: bool
) -> None:
    """Move the cursor (never backwards); call in the transaction that committed the batch."""
    details = {
        "object": sobject,
        "mode": mode,
        "complete": complete,
        "system_modstamp": watermark.isoformat(),
    }
    conn.exec_driver_sql(
        SAVE_CURSOR_SQL,
        {"name": cursor_name(sobject), "watermark": watermark, "cursor": json.dumps(details), "run": run_id},
    )


# -- staging ----------------------------------------------------------------------------------


CREATE_STAGED_RECORDS_SQL = """
    CREATE TEMP TABLE _sf_records (
        sf_id text PRIMARY KEY, is_deleted boolean NOT NULL, master_id text, email text, account_id text,
        is_converted boolean NOT NULL, converted_contact_id text, converted_account_id text,
        last_modified timestamptz, system_modstamp timestamptz, fields jsonb NOT NULL
    ) ON COMMIT DROP"""

COPY_STAGED_RECORDS_SQL = f"COPY _sf_records ({', '.join(_STAGED_COLUMNS)}) FROM STDIN"

ANALYZE_STAGED_RECORDS_SQL = "ANALYZE _sf_records"


def staged_rows(
    sobject: str, mapped: Sequence[MappedField], records: Sequence[dict[str, Any]]
) -> list[tuple[Any, ...]]:
    """Salesforce records → rows of _sf_records (mapped values as one JSON object per record)."""
    if not records:
        return []
    keys = {name.lower(): name for name in records[0]}

    def key(name: str) -> str:
        return keys.get(name.lower(), name)

    k_id, k_deleted, k_master = key("Id"), key("IsDeleted"), key("MasterRecordId")
    k_modified, k_stamp = key("LastModifiedDate"), key("SystemModstamp")
    k_email = key("Email") if sobject != "Account" else None
    k_account = key("AccountId") if sobject == "Contact" else None
    k_converted = key("IsConverted") if sobject == "Lead" else None
    k_converted_contact = key("ConvertedContactId") if sobject == "Lead" else None
    k_converted_account = key("ConvertedAccountId") if sobject == "Lead" else None
    values = [(m.store_field, key(m.salesforce_field)) for m in mapped]
    return [
        (
            record[k_id],
            bool(record.get(k_deleted)),
            record.get(k_master),
            record.get(k_email) if k_email else None,
            record.get(k_account) if k_account else None,
            bool(record.get(k_converted)) if k_converted else False,
            record.get(k_converted_contact) if k_converted_contact else None,
            record.get(k_converted_account) if k_converted_account else None,
            record.get(k_modified),
            record.get(k_stamp),
            json.dumps({store_field: record.get(sf_key) for store_field, sf_key in values}),
        )
        for record in records
    ]


def stage_records(conn: sa.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    """COPY one batch into the transaction's temp table _sf_records."""
    conn.exec_driver_sql(CREATE_STAGED_RECORDS_SQL)
    raw = conn.connection.dbapi_connection
    assert raw is not None
    with raw.cursor() as cursor, cursor.copy(COPY_STAGED_RECORDS_SQL) as copy:  # type: ignore[attr-defined]
        for row in rows:
            copy.write_row(row)
    conn.exec_driver_sql(ANALYZE_STAGED_RECORDS_SQL)


# -- field sync -------------------------------------------------------------------------------


@dataclass
class FieldSyncSql:
    """SQL pieces of one field-sync UPDATE: decisions over the current row `cur` and staged record `r`,
    SET clauses for the target `t` from decisions `d`, and the flags saying a field is written."""

    decisions: list[str] = field(default_factory=list)
    sets: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    reverts: list[str] = field(default_factory=list)
    """Per conversion_wins field: a jsonb object {field: Salesforce value} when Salesforce holds another value
    than the store's non-empty one (the push writes the store's back), else '{}'."""
    revert_flags: list[str] = field(default_factory=list)


def _applies_sql(preference: str, new: str, current: str, newer: str) -> str:
    """When a mapped field's Salesforce value `new` replaces the store's `current` one."""
    if preference == "salesforce_wins":
        return f"{current} IS DISTINCT FROM {new}"
    if preference == "conversion_wins":
        return f"{new} IS NOT NULL AND {current} IS NULL AND {newer}"
    return f"{new} IS NOT NULL AND {newer} AND {current} IS DISTINCT FROM {new}"


def field_sync_sql(mapped: Sequence[MappedField], *, bag: str) -> FieldSyncSql:
    """Per mapped field: the Salesforce value applies when the record's LastModifiedDate wins over the
    field's field_updated_at by the contacts' merge rule (most_recent; Salesforce nulls never clear a value),
    always when it differs (salesforce_wins), or only into an empty field (conversion_wins). `bag` is the
    jsonb column for fields that are not columns. Names are quoted: columns as identifiers, keys as literals."""
    sql = FieldSyncSql()
    bag_column = quote_ident(bag)
    bag_parts: list[str] = []
    stamp_parts: list[str] = []
    for i, m in enumerate(mapped):
        column, key = quote_ident(m.store_field), sql_literal(m.store_field)
        if m.is_column:
            new, current = f"(r.fields ->> {key})", f"cur.{column}"
        else:
            new, current = f"NULLIF(r.fields -> {key}, 'null'::jsonb)", f"(cur.{bag_column} -> {key})"
        newer = incoming_wins_sql(m.store_field, "r.last_modified", stamps="cur.field_updated_at")
        applies = _applies_sql(m.preference, new, current, newer)
        sql.decisions += [f"{new} AS new_{i}", f"coalesce({applies}, false) AS apply_{i}"]
        if m.preference == "conversion_wins":
            sql.decisions.append(
                f"({current} IS NOT NULL AND {current} IS DISTINCT FROM {new}) AS revert_{i}"
            )
            sql.revert_flags.append(f"d.revert_{i}")
            sql.reverts.append(
                f"CASE WHEN d.revert_{i} THEN jsonb_build_object({key}, to_jsonb(d.new_{i})) ELSE '{{}}' END"
            )
        sql.flags.append(f"d.apply_{i}")
        if m.is_column:
            sql.sets.append(f"{column} = CASE WHEN d.apply_{i} THEN d.new_{i} ELSE t.{column} END")
        else:
            bag_parts.append(
                f"CASE WHEN d.apply_{i} THEN jsonb_build_object({key}, d.new_{i}) ELSE '{{}}' END"
            )
        stamp_parts.append(
            f"CASE WHEN d.apply_{i} THEN jsonb_build_object({key}, to_jsonb(d.ts)) ELSE '{{}}' END"
        )
    if bag_parts:
        sql.sets.append(f"{bag_column} = t.{bag_column} || " + " || ".join(bag_parts))
    if stamp_parts:
        sql.sets.append("field_updated_at = t.field_updated_at || " + " || ".join(stamp_parts))
    return sql


# -- merging people (Leads, Contacts) -----------------------------------------------------------

LIVE_PERSON = "NOT is_deleted AND NOT is_converted"
"""A staged Lead or Contact that is neither deleted nor converted."""

UNLINK_DELETED_PEOPLE_SQL = """
    UPDATE contacts c SET salesforce_id = NULL, salesforce_type = NULL, updated_at = now()
    FROM _sf_records r WHERE r.is_deleted AND r.master_id IS NULL AND c.salesforce_id = r.sf_id"""

COUNT_PEOPLE_WITHOUT_EMAIL_SQL = (
    f"SELECT count(*) FROM _sf_records WHERE {LIVE_PERSON} AND {email_key_sql('email')} IS NULL"
)

STAGE_PERSON_IDENTITIES_SQL = f"""
    CREATE TEMP TABLE _sf_identities ON COMMIT DROP AS
    SELECT sf_id, %(type)s::text AS sf_type, {trimmed_email_sql("email")} AS email,
           NULL::bigint AS contact_id, NULL::text AS outcome
    FROM _sf_records WHERE {LIVE_PERSON} AND {email_key_sql("email")} IS NOT NULL"""

CREATE_CONTACT_COMPANIES_SQL = """
    INSERT INTO companies (salesforce_account_id)
    SELECT DISTINCT r.account_id FROM _sf_records r
    WHERE r.account_id IS NOT NULL AND NOT r.is_deleted
      AND NOT EXISTS (SELECT 1 FROM companies co WHERE co.salesforce_account_id = r.account_id)
    ON CONFLICT (salesforce_account_id) DO NOTHING"""
"""A company for each Account a staged Contact belongs to that the store does not know yet."""

CREATE_RELINKS_SQL = """
    CREATE TEMP TABLE _sf_relinks ON COMMIT DROP AS
    SELECT sf_id AS from_id, master_id AS to_id, %(type)s::text AS to_type, NULL::text AS to_account_id,
           'merged' AS kind
    FROM _sf_records WHERE is_deleted AND master_id IS NOT NULL
    UNION ALL
    SELECT sf_id, converted_contact_id, 'Contact', converted_account_id, 'converted'
    FROM _sf_records WHERE is_converted AND converted_contact_id IS NOT NULL"""

CREATE_RELINK_COMPANIES_SQL = """
    INSERT INTO companies (salesforce_account_id)
    SELECT DISTINCT l.to_account_id FROM _sf_relinks l
    WHERE l.to_account_id IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM companies co WHERE co.salesforce_account_id = l.to_account_id)
    ON CONFLICT (salesforce_account_id) DO NOTHING"""

PLAN_MOVES_SQL = """
    CREATE TEMP TABLE _sf_moves ON COMMIT DROP AS
    SELECT l.kind, l.from_id, l.to_id, l.to_type, l.to_account_id, moving.id AS contact_id,
           coalesce(kept.id, first_value(moving.id) OVER newest) AS kept_contact_id,
           kept.id IS NULL AND row_number() OVER newest = 1 AS takes_link
    FROM _sf_relinks l JOIN contacts moving ON moving.salesforce_id = l.from_id
    LEFT JOIN contacts kept ON kept.salesforce_id = l.to_id
    WINDOW newest AS (PARTITION BY l.to_id ORDER BY moving.updated_at DESC, moving.id DESC)"""
"""Per store contact linked to a merged or converted record: whether it takes the new link (the target has
no store contact yet and it is the most recently updated one moving there)."""

UNLINK_LOSING_MOVES_SQL = """
    UPDATE contacts c SET salesforce_id = NULL, salesforce_type = NULL, updated_at = now()
    FROM _sf_moves m WHERE c.id = m.contact_id AND NOT m.takes_link"""

RELINK_MOVES_SQL = """
    UPDATE contacts c SET salesforce_id = m.to_id, salesforce_type = m.to_type,
        company_id = CASE WHEN m.to_account_id IS NULL THEN c.company_id ELSE co.id END, updated_at = now()
    FROM _sf_moves m LEFT JOIN companies co ON co.salesforce_account_id = m.to_account_id
    WHERE c.id = m.contact_id AND m.takes_link"""

RELINK_CONFLICTS_SQL = f"""
    SELECT kind, from_id, to_id, contact_id, kept_contact_id FROM _sf_moves WHERE NOT takes_link
    ORDER BY contact_id LIMIT {CONFLICT_PREVIEW_LIMIT:d}"""


def pending_reverts_sql(sync: FieldSyncSql) -> str:
    """A data-modifying CTE `pending` (with a leading comma; empty without conversion_wins fields): for each
    contact whose conversion_wins field Salesforce holds with another value than the store's non-empty one,
    the push state's `synced` takes the value Salesforce holds, so the next push sees the field as changed and
    writes the store's value back. When Salesforce holds the store's value, nothing is marked."""
    if not sync.revert_flags:
        return ""
    return f"""
    , pending AS (
        INSERT INTO salesforce_push_state AS s (contact_id, synced, updated_at)
        SELECT d.contact_id, {" || ".join(sync.reverts)}, now()
        FROM d WHERE {" OR ".join(sync.revert_flags)}
        ON CONFLICT (contact_id) DO UPDATE SET synced = s.synced || EXCLUDED.synced, updated_at = now()
        WHERE s.synced IS DISTINCT FROM s.synced || EXCLUDED.synced
        RETURNING s.contact_id
    )"""


def people_fields_update_sql(sync: FieldSyncSql, *, with_company: bool) -> str:
    """The UPDATE of matched contacts' mapped fields (and, for Contacts, their company), marking for the push
    the contacts whose conversion_wins values Salesforce changed; it returns how many contacts matched by
    Salesforce id it changed, leaving out those whose email changed (counted there)."""
    company_join = "LEFT JOIN companies co ON co.salesforce_account_id = r.account_id" if with_company else ""
    return f"""
    WITH d AS (
        SELECT i.contact_id, i.outcome, r.last_modified AS ts, {", ".join(sync.decisions)}
        FROM _sf_identities i JOIN _sf_records r ON r.sf_id = i.sf_id
        JOIN contacts cur ON cur.id = i.contact_id {company_join}
    ), changed AS (
        UPDATE contacts t SET {", ".join([*sync.sets, "updated_at = now()"])}
        FROM d WHERE t.id = d.contact_id AND ({" OR ".join(sync.flags)})
        RETURNING d.contact_id, d.outcome
    ){pending_reverts_sql(sync)}
    SELECT count(*) FROM changed WHERE outcome = 'matched_by_salesforce_id'
      AND NOT EXISTS (SELECT 1 FROM _sf_email_changes e WHERE e.contact_id = changed.contact_id AND e.applied)"""


def merge_people(
    conn: sa.Connection,
    sobject: str,
    mapped: Sequence[MappedField],
    identity: IdentityMatcher,
    counts: RecordCounts,
    conflicts: list[dict[str, Any]],
    email_preference: str = "most_recent",
) -> None:
    """Merged/converted records re-link, deleted ones unlink, live ones with email are matched by the
    identity rules, a changed email reaches the linked contact, and mapped fields are synced; all set-based
    over _sf_records."""
    relink_people(conn, sobject, counts, conflicts)
    counts.unlinked += conn.exec_driver_sql(UNLINK_DELETED_PEOPLE_SQL).rowcount
    counts.skipped_no_email += conn.exec_driver_sql(COUNT_PEOPLE_WITHOUT_EMAIL_SQL).scalar_one()
    if not conn.exec_driver_sql(STAGE_PERSON_IDENTITIES_SQL, {"type": sobject}).rowcount:
        return
    matched = identity.resolve_table(
        conn,
        "_sf_identities",
        email_column="email",
        salesforce_id_column="sf_id",
        salesforce_type_column="sf_type",
        outcome_column="outcome",
    )
    counts.created += matched.created
    counts.linked += matched.linked_by_email
    email_changed = sync_people_emails(conn, email_preference, counts, conflicts)
    updated = sync_people_fields(conn, sobject, mapped)
    counts.email_changed += email_changed
    counts.updated += updated + email_changed
    counts.unchanged += matched.matched_by_salesforce_id - updated - email_changed


def _email_applies_sql(preference: str) -> str:
    """When a changed Salesforce email replaces the linked contact's (`cur`) email, by its preference."""
    newer = incoming_wins_sql("email", "r.last_modified", stamps="cur.field_updated_at")
    if preference == "salesforce_wins":
        return "true"
    if preference == "conversion_wins":
        return f"cur.email IS NULL AND {newer}"
    if preference == "do_not_sync":
        return "false"
    return newer


def plan_email_changes_sql(preference: str) -> str:
    """_sf_email_changes: contacts matched by Salesforce id whose record now has another email that the
    preference lets through, each with an unlinked store contact that already holds the new email (if any):
    such a change is held (two contacts may share an email only when each has its own Salesforce record)."""
    return f"""
    CREATE TEMP TABLE _sf_email_changes ON COMMIT DROP AS
    SELECT i.contact_id, i.sf_id, i.email AS new_email, {email_key_sql("i.email")} AS new_key,
           r.last_modified, holder.id AS holder_id, holder.id IS NULL AS applied
    FROM _sf_identities i JOIN _sf_records r ON r.sf_id = i.sf_id JOIN contacts cur ON cur.id = i.contact_id
    LEFT JOIN LATERAL (
        SELECT o.id FROM contacts o
        WHERE o.email_normalized = {email_key_sql("i.email")} AND o.id <> cur.id AND o.salesforce_id IS NULL
        ORDER BY o.updated_at DESC, o.id DESC LIMIT 1
    ) holder ON true
    WHERE i.outcome = 'matched_by_salesforce_id' AND {trimmed_email_sql("cur.email")} IS DISTINCT FROM i.email
      AND coalesce({_email_applies_sql(preference)}, false)"""


APPLY_EMAIL_CHANGES_SQL = """
    UPDATE contacts c SET email = e.new_email, email_normalized = e.new_key,
        field_updated_at = c.field_updated_at || jsonb_build_object('email', to_jsonb(e.last_modified)),
        updated_at = now()
    FROM _sf_email_changes e WHERE c.id = e.contact_id AND e.applied"""
"""The email and its key change together; the email's stamp becomes the record's LastModifiedDate."""

COUNT_HELD_EMAIL_CHANGES_SQL = "SELECT count(*) FROM _sf_email_changes WHERE NOT applied"

HELD_EMAIL_CHANGES_SQL = f"""
    SELECT sf_id, contact_id, holder_id FROM _sf_email_changes WHERE NOT applied
    ORDER BY contact_id LIMIT {CONFLICT_PREVIEW_LIMIT:d}"""


def sync_people_emails(
    conn: sa.Connection, preference: str, counts: RecordCounts, conflicts: list[dict[str, Any]]
) -> int:
    """Emails changed in Salesforce reach their linked contacts (by the email's preference, default newer
    wins); a change to an email an unlinked store contact holds is held: both contacts keep everything, the
    link stays, and the conflict is counted and reported. Returns how many emails changed."""
    run = conn.exec_driver_sql
    run(plan_email_changes_sql(preference))
    changed = run(APPLY_EMAIL_CHANGES_SQL).rowcount
    held = int(run(COUNT_HELD_EMAIL_CHANGES_SQL).scalar_one())
    if held:
        counts.conflicts += held
        conflicts.extend(
            {
                "kind": "email_in_use",
                "salesforce_id": sf_id,
                "kept_contact_id": contact_id,
                "other_contact_id": holder_id,
                "reason": f"the record's new email belongs to store contact {holder_id}, which has no Salesforce "
                f"record; contact {contact_id} keeps its email and its link (merge them, or change one email)",
            }
            for sf_id, contact_id, holder_id in run(HELD_EMAIL_CHANGES_SQL).all()
        )
    return changed


def sync_people_fields(conn: sa.Connection, sobject: str, mapped: Sequence[MappedField]) -> int:
    """Sync the matched contacts' mapped fields (Contacts: also their Account's company); returns how many
    contacts matched by Salesforce id changed."""
    is_contact = sobject == "Contact"
    if is_contact:
        conn.exec_driver_sql(CREATE_CONTACT_COMPANIES_SQL)
    sync = field_sync_sql(mapped, bag="custom_fields")
    if is_contact:
        sync.decisions += ["co.id AS company_id", "cur.company_id IS DISTINCT FROM co.id AS apply_company"]
        sync.sets.append("company_id = CASE WHEN d.apply_company THEN d.company_id ELSE t.company_id END")
        sync.flags.append("d.apply_company")
    if not sync.flags:
        return 0
    return int(conn.exec_driver_sql(people_fields_update_sql(sync, with_company=is_contact)).scalar_one())


def relink_people(
    conn: sa.Connection, sobject: str, counts: RecordCounts, conflicts: list[dict[str, Any]]
) -> None:
    """A merged record's store contact moves to the master; a converted Lead's to its Contact (and that
    Contact's Account's company). When the target already has a store contact, that one keeps the link,
    the other is unlinked and reported."""
    run = conn.exec_driver_sql
    if not run(CREATE_RELINKS_SQL, {"type": sobject}).rowcount:
        return
    run(CREATE_RELINK_COMPANIES_SQL)
    run(PLAN_MOVES_SQL)
    counts.conflicts += run(UNLINK_LOSING_MOVES_SQL).rowcount
    counts.relinked += run(RELINK_MOVES_SQL).rowcount
    conflicts.extend(
        {
            "kind": kind,
            "salesforce_id": from_id,
            "now_salesforce_id": to_id,
            "unlinked_contact_id": contact_id,
            "kept_contact_id": kept,
        }
        for kind, from_id, to_id, contact_id, kept in run(RELINK_CONFLICTS_SQL).all()
    )


# -- merging companies (Accounts) -------------------------------------------------------------

PLAN_COMPANY_MOVES_SQL = """
    CREATE TEMP TABLE _sf_company_moves ON COMMIT DROP AS
    SELECT r.master_id AS to_id, moving.id AS company_id,
           kept.id IS NULL AND row_number() OVER (
               PARTITION BY r.master_id ORDER BY moving.updated_at DESC, moving.id DESC) = 1 AS takes_link
    FROM _sf_records r JOIN companies moving ON moving.salesforce_account_id = r.sf_id
    LEFT JOIN companies kept ON kept.salesforce_account_id = r.master_id
    WHERE r.is_deleted AND r.master_id IS NOT NULL"""

UNLINK_LOSING_COMPANY_MOVES_SQL = """
    UPDATE companies c SET salesforce_account_id = NULL, updated_at = now()
    FROM _sf_company_moves m WHERE c.id = m.company_id AND NOT m.takes_link"""

RELINK_COMPANY_MOVES_SQL = """
    UPDATE companies c SET salesforce_account_id = m.to_id, updated_at = now()
    FROM _sf_company_moves m WHERE c.id = m.company_id AND m.takes_link"""

UNLINK_DELETED_COMPANIES_SQL = """
    UPDATE companies c SET salesforce_account_id = NULL, updated_at = now()
    FROM _sf_records r WHERE r.is_deleted AND r.master_id IS NULL AND c.salesforce_account_id = r.sf_id"""

CREATE_ACCOUNT_COMPANIES_SQL = """
    INSERT INTO companies (salesforce_account_id) SELECT sf_id FROM _sf_records WHERE NOT is_deleted
    ON CONFLICT (salesforce_account_id) DO NOTHING"""

COUNT_LIVE_ACCOUNTS_SQL = "SELECT count(*) FROM _sf_records WHERE NOT is_deleted"


def company_fields_update_sql(sync: FieldSyncSql) -> str:
    """The UPDATE of live Accounts' companies' mapped fields; it returns how many existing companies changed
    (not those this batch created)."""
    return f"""
    WITH d AS (
        SELECT cur.id AS company_id, cur.created_at = now() AS is_new, r.last_modified AS ts,
               {", ".join(sync.decisions)}
        FROM _sf_records r JOIN companies cur ON cur.salesforce_account_id = r.sf_id
        WHERE NOT r.is_deleted
    ), changed AS (
        UPDATE companies t SET {", ".join([*sync.sets, "updated_at = now()"])}
        FROM d WHERE t.id = d.company_id AND ({" OR ".join(sync.flags)})
        RETURNING d.is_new
    )
    SELECT count(*) FROM changed WHERE NOT is_new"""


def merge_accounts(conn: sa.Connection, mapped: Sequence[MappedField], counts: RecordCounts) -> None:
    """Accounts → companies by salesforce_account_id: a merged Account's company takes the master's id unless
    the master has one; a deleted Account's company is unlinked (it stays); live ones are upserted."""
    run = conn.exec_driver_sql
    run(PLAN_COMPANY_MOVES_SQL)
    counts.unlinked += run(UNLINK_LOSING_COMPANY_MOVES_SQL).rowcount
    counts.relinked += run(RELINK_COMPANY_MOVES_SQL).rowcount
    counts.unlinked += run(UNLINK_DELETED_COMPANIES_SQL).rowcount
    created = run(CREATE_ACCOUNT_COMPANIES_SQL).rowcount
    counts.created += created
    live = run(COUNT_LIVE_ACCOUNTS_SQL).scalar_one()
    sync = field_sync_sql(mapped, bag="fields")
    updated = run(company_fields_update_sql(sync)).scalar_one() if sync.flags else 0
    counts.updated += updated
    counts.unchanged += live - created - updated
