"""The Id sweep: list every Id Salesforce still has (Bulk API 2.0 queryAll) and unlink store records whose
Salesforce record is gone for good (hard-deleted, or purged from the recycle bin past queryAll's reach)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa

from conversion_sync.salesforce.client import SalesforceClient
from conversion_sync.store.contact_store import ContactStore
from conversion_sync.store.contacts import lock_identities

SWEEP_STATE_PREFIX = "salesforce_poll:id_sweep:"
"""sync_state rows `salesforce_poll:id_sweep:Account|Lead|Contact`: watermark = Salesforce time of the last sweep."""

SWEEP_GUARD_MIN = 100
SWEEP_GUARD_FRACTION = 0.5
"""A sweep that would unlink more than this fraction of an object's links (and more than SWEEP_GUARD_MIN) unlinks
nothing and says so: Ids the integration user can no longer see (sharing, profile) look exactly like deleted ones."""

CREATE_SWEEP_IDS_SQL = "CREATE TEMP TABLE _sf_sweep_ids (sf_id text NOT NULL)"
COPY_SWEEP_IDS_SQL = "COPY _sf_sweep_ids (sf_id) FROM STDIN"
INDEX_SWEEP_IDS_SQL = "CREATE INDEX ON _sf_sweep_ids (sf_id); ANALYZE _sf_sweep_ids"
DROP_SWEEP_IDS_SQL = "DROP TABLE IF EXISTS _sf_sweep_ids"
STORE_NOW_SQL = "SELECT clock_timestamp()"

_GONE = "NOT EXISTS (SELECT 1 FROM _sf_sweep_ids s WHERE s.sf_id = {link})"

COUNT_CONTACT_LINKS_SQL = (
    "SELECT count(*) FROM contacts WHERE salesforce_type = %(type)s AND updated_at < %(started)s"
)
COUNT_GONE_CONTACTS_SQL = f"""
    SELECT count(*) FROM contacts c WHERE c.salesforce_type = %(type)s AND c.updated_at < %(started)s
      AND {_GONE.format(link="c.salesforce_id")}"""
UNLINK_GONE_CONTACTS_SQL = f"""
    UPDATE contacts c SET salesforce_id = NULL, salesforce_type = NULL, updated_at = now()
    WHERE c.salesforce_type = %(type)s AND c.updated_at < %(started)s
      AND {_GONE.format(link="c.salesforce_id")}"""
"""Only links older than the sweep's start: a contact linked since (to a record created after the Bulk job
listed the Ids) has a newer updated_at and waits for the next sweep."""

COUNT_COMPANY_LINKS_SQL = (
    "SELECT count(*) FROM companies WHERE salesforce_account_id IS NOT NULL AND updated_at < %(started)s"
)
COUNT_GONE_COMPANIES_SQL = f"""
    SELECT count(*) FROM companies c WHERE c.salesforce_account_id IS NOT NULL AND c.updated_at < %(started)s
      AND {_GONE.format(link="c.salesforce_account_id")}"""
UNLINK_GONE_COMPANIES_SQL = f"""
    UPDATE companies c SET salesforce_account_id = NULL, updated_at = now()
    WHERE c.salesforce_account_id IS NOT NULL AND c.updated_at < %(started)s
      AND {_GONE.format(link="c.salesforce_account_id")}"""

READ_SWEEP_SQL = "SELECT watermark FROM sync_state WHERE sync_name = %s"
SAVE_SWEEP_SQL = """
    INSERT INTO sync_state (sync_name, watermark, updated_at) VALUES (%(name)s, %(at)s, now())
    ON CONFLICT (sync_name) DO UPDATE SET watermark = EXCLUDED.watermark, updated_at = now()"""


@dataclass
class SweepResult:
    """One object's sweep: how many Ids Salesforce listed, store links checked, unlinked, or why none were."""

    sobject: str
    salesforce_ids: int = 0
    checked: int = 0
    unlinked: int = 0
    refused: str | None = None


def sweep_state_name(sobject: str) -> str:
    return f"{SWEEP_STATE_PREFIX}{sobject}"


def sweep_due(
    conn: sa.Connection, sobject: str, salesforce_now: datetime, every: timedelta, *, forced: bool
) -> bool:
    """Whether `sobject` is swept now: when forced, or `every` (> 0) has passed since its last sweep. The first
    time, the sweep is only scheduled (the poll that starts it reads every record anyway)."""
    if forced:
        return True
    if every <= timedelta(0):
        return False
    last = conn.exec_driver_sql(READ_SWEEP_SQL, (sweep_state_name(sobject),)).scalar()
    if last is None:
        save_sweep(conn, sobject, salesforce_now)
        return False
    return bool(salesforce_now - last >= every)


def save_sweep(conn: sa.Connection, sobject: str, salesforce_now: datetime) -> None:
    conn.exec_driver_sql(SAVE_SWEEP_SQL, {"name": sweep_state_name(sobject), "at": salesforce_now})


def sweep_object(
    store: ContactStore,
    client: SalesforceClient,
    sobject: str,
    salesforce_now: datetime,
    *,
    max_records: int,
    log: logging.Logger,
) -> SweepResult:
    """List `sobject`'s Ids with one Bulk API 2.0 queryAll job (recycle-bin records count as present: the poll
    handles them) into a temp table, then unlink, in one transaction, the store links older than the sweep
    whose Id Salesforce no longer has. The contact or company stays."""
    result = SweepResult(sobject)
    with store.engine().connect() as conn:
        try:
            with conn.begin():
                started = conn.exec_driver_sql(STORE_NOW_SQL).scalar_one()
                conn.exec_driver_sql(DROP_SWEEP_IDS_SQL)
                conn.exec_driver_sql(CREATE_SWEEP_IDS_SQL)
            chunks = client.bulk_query(
                sobject,
                f"SELECT Id FROM {sobject}",
                include_deleted=True,
                field_types={"Id": "id"},
                max_records=max_records,
            )
            for chunk in chunks:
                with conn.begin():
                    _copy_ids(conn, "".join(f"{record['Id']}\n" for record in chunk))
                result.salesforce_ids += len(chunk)
            with conn.begin():
                conn.exec_driver_sql(INDEX_SWEEP_IDS_SQL)
                lock_identities(conn)
                _unlink_gone(conn, sobject, started, result)
                save_sweep(conn, sobject, salesforce_now)
        finally:
            with conn.begin():
                conn.exec_driver_sql(DROP_SWEEP_IDS_SQL)
    if result.refused:
        log.warning(f"Salesforce Id sweep of {sobject}: {result.refused}")
    else:
        log.info(
            f"Salesforce Id sweep of {sobject}: {result.salesforce_ids} Ids in Salesforce, {result.checked} store "
            f"links checked, {result.unlinked} unlinked (their record is gone beyond the recycle bin)"
        )
    return result


def _copy_ids(conn: sa.Connection, text: str) -> None:
    raw = conn.connection.dbapi_connection
    assert raw is not None
    with raw.cursor() as cursor, cursor.copy(COPY_SWEEP_IDS_SQL) as copy:  # type: ignore[attr-defined]
        copy.write(text)


def _unlink_gone(conn: sa.Connection, sobject: str, started: datetime, result: SweepResult) -> None:
    run = conn.exec_driver_sql
    if sobject == "Account":
        statements = (COUNT_COMPANY_LINKS_SQL, COUNT_GONE_COMPANIES_SQL, UNLINK_GONE_COMPANIES_SQL)
        what = "companies"
    else:
        statements = (COUNT_CONTACT_LINKS_SQL, COUNT_GONE_CONTACTS_SQL, UNLINK_GONE_CONTACTS_SQL)
        what = "contacts"
    count_links, count_gone, unlink = statements
    params = {"type": sobject, "started": started}
    result.checked = int(run(count_links, params).scalar_one())
    gone = int(run(count_gone, params).scalar_one())
    if gone > SWEEP_GUARD_MIN and gone > result.checked * SWEEP_GUARD_FRACTION:
        result.refused = (
            f"{gone} of {result.checked} linked {what} have an Id Salesforce did not list; unlinking more than "
            f"{SWEEP_GUARD_FRACTION:.0%} of them looks like lost visibility (sharing rules, the integration "
            "user's profile), not deletions, so nothing was unlinked. Check the user's access; a sweep asked "
            "for explicitly (`conversion-sync salesforce poll --sweep`) applies the same guard"
        )
        return
    result.unlinked = run(unlink, params).rowcount
