"""Batched Salesforce writes: composite collections of 200 records, or one Bulk API 2.0 ingest job for a large
set; either way one result per record, in the records' order."""

from __future__ import annotations

import csv
import io
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from simple_salesforce import Salesforce
from simple_salesforce.bulk2 import Operation, _Bulk2Client

from conversion_sync.salesforce.client import SalesforceClient

COLLECTION_SIZE = 200
"""Records per composite/sobjects call: Salesforce's maximum."""

BULK_PUSH_THRESHOLD = 1000
"""A write of at least this many records (5 collections) goes through one Bulk API 2.0 ingest job instead,
which costs 4–6 calls whatever its size (create, upload, close, status polls, results)."""

FINISHED_JOB_STATES = ("JobComplete", "Failed", "Aborted")

WriteOperation = Literal["insert", "update"]
WrittenBatch = tuple[list[int], list["RecordResult"]]
"""(indexes of the records written, their results in the same order)."""


@dataclass
class RecordResult:
    """One record's outcome of a collection call or a Bulk API 2.0 job."""

    ok: bool
    id: str | None = None
    code: str | None = None
    message: str | None = None


def record_key(row: dict[str, Any], key_fields: tuple[str, ...]) -> str:
    """The first non-empty of `key_fields`: how a Bulk API 2.0 result row is matched back to its record."""
    return next((str(row[f]) for f in key_fields if row.get(f)), "")


def split_for_bulk(records: list[dict[str, Any]], key_fields: tuple[str, ...]) -> tuple[list[int], list[int]]:
    """(indexes that can go through a bulk job, the rest): a record whose key is missing or repeated could
    not be matched to its result row, so it goes through collections."""
    keys = [record_key(record, key_fields) for record in records]
    seen = Counter(k for k in keys if k)
    bulk = [i for i, k in enumerate(keys) if k and seen[k] == 1]
    rest = [i for i, k in enumerate(keys) if not (k and seen[k] == 1)]
    return bulk, rest


def collection_result(result: dict[str, Any]) -> RecordResult:
    """One entry of a composite/sobjects response."""
    if result.get("success"):
        return RecordResult(True, id=result.get("id"))
    errors = result.get("errors") or [{}]
    first = errors[0] if isinstance(errors[0], dict) else {}
    return RecordResult(
        False,
        code=first.get("statusCode") or "UNKNOWN_ERROR",
        message="; ".join(str(e.get("message")) for e in errors if isinstance(e, dict)) or "no message",
    )


def failed_row_result(row: dict[str, str]) -> RecordResult:
    """A row of a job's failedResults; its sf__Error reads "CODE:message:field,field --"."""
    code, _, rest = (row.get("sf__Error") or "").partition(":")
    message = rest.removesuffix("--").strip().rpartition(":")[0] or rest
    return RecordResult(False, code=code or "BULK_ROW_FAILED", message=message.strip())


def records_csv(records: list[dict[str, Any]]) -> str:
    """The upload of an ingest job: every field any record has, empty where a record has none."""
    columns = list(dict.fromkeys(name for record in records for name in record))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(["" if r.get(c) is None else str(r[c]) for c in columns] for r in records)
    return buffer.getvalue()


def _bulk2(sf: Salesforce, sobject: str) -> _Bulk2Client:
    """simple-salesforce's Bulk API 2.0 client for `sobject`, with the connection's current session."""
    return getattr(sf.bulk2, sobject)._client  # type: ignore[no-any-return]


def _processed_any(info: dict[str, Any]) -> bool:
    return int(info.get("numberRecordsProcessed") or 0) > int(info.get("numberRecordsFailed") or 0)


class SalesforceWriter:
    """Writes records to Salesforce through a client (which counts each call against the API budget)."""

    def __init__(self, client: SalesforceClient, bulk_threshold: int = BULK_PUSH_THRESHOLD) -> None:
        self.client = client
        self.bulk_threshold = bulk_threshold
        self.bulk_jobs = 0
        """Bulk API 2.0 ingest jobs started by this writer."""

    def write(
        self,
        sobject: str,
        operation: WriteOperation,
        records: list[dict[str, Any]],
        key_fields: tuple[str, ...],
        remember_job: Callable[[str], object] | None = None,
    ) -> Iterator[WrittenBatch]:
        """Write `records` in batches, yielding (record indexes, results) per batch.

        At least `bulk_threshold` records go through one Bulk API 2.0 ingest job; its result rows are matched
        back by `key_fields`, so records whose key is missing or repeated go through collections instead.
        """
        rest = list(range(len(records)))
        if len(records) >= self.bulk_threshold:
            bulk, rest = split_for_bulk(records, key_fields)
            if bulk:
                self.bulk_jobs += 1
                chosen = [records[i] for i in bulk]
                yield bulk, self.bulk_ingest(sobject, operation, chosen, key_fields, remember_job)
        method = "POST" if operation == "insert" else "PATCH"
        for start in range(0, len(rest), COLLECTION_SIZE):
            chunk = rest[start : start + COLLECTION_SIZE]
            yield chunk, self.collection(method, sobject, [records[i] for i in chunk])

    def collection(self, method: str, sobject: str, records: list[dict[str, Any]]) -> list[RecordResult]:
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
        return [collection_result(r) for r in results or []]

    def delete(self, ids: list[str]) -> list[RecordResult]:
        """One composite/sobjects DELETE (≤ 200 ids, allOrNone false)."""
        params = {"ids": ",".join(ids), "allOrNone": "false"}
        results = self.client.call(
            f"delete {len(ids)} records (composite/sobjects)",
            lambda sf: sf.restful("composite/sobjects", method="DELETE", params=params),
        )
        return [collection_result(r) for r in results or []]

    def bulk_ingest(
        self,
        sobject: str,
        operation: WriteOperation,
        records: list[dict[str, Any]],
        key_fields: tuple[str, ...],
        remember_job: Callable[[str], object] | None = None,
    ) -> list[RecordResult]:
        """One Bulk API 2.0 ingest job: create, upload the CSV, close, wait, read the results.

        `remember_job` is told the job id as soon as the job exists (before any record can be written)."""
        data = records_csv(records)
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
        info = self.finished_job(sobject, job_id, info)
        by_key = self._job_results(sobject, job_id, info, key_fields)
        reason = info.get("errorMessage") or f"Bulk API 2.0 job {job_id} ended {info.get('state')}"
        return [
            by_key.get(record_key(record, key_fields))
            or RecordResult(False, code="BULK_NOT_PROCESSED", message=f"not processed: {reason}")
            for record in records
        ]

    def _job_results(
        self, sobject: str, job_id: str, info: dict[str, Any], key_fields: tuple[str, ...]
    ) -> dict[str, RecordResult]:
        """Key → result of a finished job's rows (successful, then failed ones; each read only if any)."""
        by_key: dict[str, RecordResult] = {}
        if _processed_any(info):
            for row in self._result_rows(sobject, job_id, "successfulResults"):
                by_key[record_key(row, key_fields)] = RecordResult(True, id=row.get("sf__Id") or None)
        if int(info.get("numberRecordsFailed") or 0):
            for row in self._result_rows(sobject, job_id, "failedResults"):
                by_key[record_key(row, key_fields)] = failed_row_result(row)
        return by_key

    def _result_rows(self, sobject: str, job_id: str, kind: str) -> csv.DictReader[str]:
        what = "successful" if kind == "successfulResults" else "failed"
        text = self.client.call(
            f"Bulk API 2.0 {what} results",
            lambda sf: _bulk2(sf, sobject).get_ingest_results(job_id, kind),
        )
        return csv.DictReader(io.StringIO(text))

    def finished_job(self, sobject: str, job_id: str, info: dict[str, Any]) -> dict[str, Any]:
        """Wait (polling with backoff) until the ingest job is over; returns its final info."""
        delay = self.client.settings.bulk_poll_seconds
        while info.get("state") not in FINISHED_JOB_STATES:
            time.sleep(delay)
            delay = min(max(delay * 2, 0.05), self.client.settings.max_backoff_seconds)
            info = self.client.call(
                "Bulk API 2.0 job status", lambda sf: _bulk2(sf, sobject).get_job(job_id, False)
            )
        return info

    def job_created(self, job_id: str, sobject: str, key_fields: tuple[str, ...]) -> dict[str, str]:
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
        info = self.finished_job(sobject, job_id, info)
        if not _processed_any(info):
            return {}
        return {
            record_key(row, key_fields): str(row["sf__Id"])
            for row in self._result_rows(sobject, job_id, "successfulResults")
            if row.get("sf__Id") and record_key(row, key_fields)
        }
