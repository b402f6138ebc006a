"""A local BigQuery REST stand-in on 127.0.0.1, backed by DuckDB, for the real google-cloud-bigquery client."""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import re
import threading
import urllib.parse
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import duckdb
import pyarrow as pa

DEFAULT_PAGE_ROWS = 10_000
ACCESS_TOKEN = "standin-access-token"

_JOBS = re.compile(r"^/bigquery/v2/projects/(?P<project>[^/]+)/jobs$")
_JOB = re.compile(r"^/bigquery/v2/projects/(?P<project>[^/]+)/jobs/(?P<job>[^/]+)$")
_QUERY_RESULTS = re.compile(r"^/bigquery/v2/projects/(?P<project>[^/]+)/queries/(?P<job>[^/]+)$")
_TABLEDATA = re.compile(
    r"^/bigquery/v2/projects/(?P<project>[^/]+)/datasets/(?P<dataset>[^/]+)/tables/(?P<table>[^/]+)/data$"
)
_STATEMENT_TYPES = {
    "SELECT": "SELECT",
    "INSERT": "INSERT",
    "UPDATE": "UPDATE",
    "DELETE": "DELETE",
    "CREATE": "CREATE_TABLE",
    "DROP": "DROP_TABLE",
    "ALTER": "ALTER_TABLE",
}


@dataclass
class _Job:
    resource: dict[str, Any]
    schema: list[dict[str, str]]
    table: pa.Table


@dataclass
class StandIn:
    """The running stand-in: its URL, the DuckDB database behind it, and what it was asked."""

    url: str
    duck: duckdb.DuckDBPyConnection
    requests: list[tuple[str, str]] = field(default_factory=list)
    authorizations: set[str] = field(default_factory=set)
    jobs: dict[str, _Job] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def execute(self, sql: str) -> None:
        """Run setup SQL (CREATE SCHEMA/TABLE, INSERT) directly on the backing DuckDB."""
        with self.lock:
            self.duck.execute(sql)

    def fetchall(self, sql: str) -> list[tuple[Any, ...]]:
        """Query the backing DuckDB directly (for assertions)."""
        with self.lock:
            return self.duck.execute(sql).fetchall()


class _ApiError(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message


def _bq_type(duck_type: str, arrow_type: pa.DataType) -> str:
    if duck_type == "JSON":
        return "JSON"
    if pa.types.is_boolean(arrow_type):
        return "BOOLEAN"
    if pa.types.is_integer(arrow_type):
        return "INTEGER"
    if pa.types.is_floating(arrow_type):
        return "FLOAT"
    if pa.types.is_decimal(arrow_type):
        return "NUMERIC" if arrow_type.precision <= 38 and arrow_type.scale <= 9 else "BIGNUMERIC"
    if pa.types.is_date(arrow_type):
        return "DATE"
    if pa.types.is_timestamp(arrow_type):
        return "TIMESTAMP" if arrow_type.tz else "DATETIME"
    if pa.types.is_time(arrow_type):
        return "TIME"
    if pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type):
        return "BYTES"
    return "STRING"


def _cell(value: Any, bq_type: str) -> dict[str, Any]:
    if value is None:
        return {"v": None}
    if bq_type == "BOOLEAN":
        return {"v": "true" if value else "false"}
    if bq_type == "TIMESTAMP":
        micros = (value - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1)
        return {"v": str(micros)}
    if bq_type == "DATETIME":
        return {"v": value.isoformat(timespec="microseconds")}
    if bq_type in ("DATE", "TIME"):
        return {"v": value.isoformat()}
    if bq_type == "BYTES":
        return {"v": base64.b64encode(value).decode()}
    if isinstance(value, float):
        return {"v": repr(value)}
    if isinstance(value, decimal.Decimal):
        return {"v": format(value, "f")}
    return {"v": str(value)}


class _Handler(BaseHTTPRequestHandler):
    standin: StandIn

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        parsed = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(parsed.query))
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.standin.requests.append((method, parsed.path))
        if auth := self.headers.get("Authorization"):
            self.standin.authorizations.add(auth)
        try:
            if method == "POST" and parsed.path == "/token":
                self._send(200, {"access_token": ACCESS_TOKEN, "expires_in": 3600, "token_type": "Bearer"})
            elif method == "POST" and (m := _JOBS.match(parsed.path)):
                self._send(200, self._insert_job(m["project"], json.loads(body or b"{}")))
            elif method == "GET" and (m := _JOB.match(parsed.path)):
                self._send(200, self._job(m["job"]).resource)
            elif method == "GET" and (m := _QUERY_RESULTS.match(parsed.path)):
                self._send(200, self._query_results(m["job"], query))
            elif method == "GET" and (m := _TABLEDATA.match(parsed.path)):
                self._send(200, self._tabledata(m["table"], query))
            else:
                raise _ApiError(404, "notFound", f"Not found: {method} {parsed.path}")
        except _ApiError as exc:
            self._send(
                exc.status,
                {
                    "error": {
                        "code": exc.status,
                        "message": exc.message,
                        "errors": [{"reason": exc.reason, "message": exc.message, "domain": "global"}],
                        "status": "INVALID_ARGUMENT" if exc.status == 400 else "NOT_FOUND",
                    }
                },
            )

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _job(self, job_id: str) -> _Job:
        job = self.standin.jobs.get(job_id)
        if job is None:
            raise _ApiError(404, "notFound", f"Not found: Job {job_id}")
        return job

    def _insert_job(self, project: str, resource: dict[str, Any]) -> dict[str, Any]:
        config = resource.get("configuration", {})
        sql = config.get("query", {}).get("query", "")
        reference = dict(resource.get("jobReference") or {})
        reference.setdefault("projectId", project)
        reference.setdefault("jobId", uuid.uuid4().hex)
        reference.setdefault("location", "US")
        duck = self.standin.duck
        with self.standin.lock:
            try:
                statements = duck.extract_statements(sql)
            except duckdb.Error as exc:
                raise _ApiError(400, "invalidQuery", f"Syntax error: {exc}") from None
            if len(statements) != 1:
                raise _ApiError(400, "invalidQuery", "Exactly one statement is supported here")
            kind = statements[0].type.name
            statement_type = _STATEMENT_TYPES.get(kind, kind)
            if statement_type != "SELECT":
                if config.get("dryRun"):
                    return self._job_resource(reference, config, statement_type, None)
                raise _ApiError(
                    400, "invalidQuery", f"{statement_type} statements are not run by the stand-in"
                )
            try:
                relation = duck.sql(sql)
                duck_types = [str(t) for t in relation.types]
                table = relation.to_arrow_table() if not config.get("dryRun") else None
                arrow_schema = (
                    table.schema if table is not None else relation.limit(0).to_arrow_table().schema
                )
            except duckdb.Error as exc:
                raise _ApiError(400, "invalidQuery", str(exc).splitlines()[0]) from None
        schema = [
            {"name": f.name, "type": _bq_type(d, f.type), "mode": "NULLABLE"}
            for f, d in zip(arrow_schema, duck_types, strict=True)
        ]
        job_resource = self._job_resource(reference, config, statement_type, schema)
        if table is not None:
            self.standin.jobs[reference["jobId"]] = _Job(job_resource, schema, table)
        return job_resource

    def _job_resource(
        self,
        reference: dict[str, Any],
        config: dict[str, Any],
        statement_type: str,
        schema: list[dict[str, str]] | None,
    ) -> dict[str, Any]:
        now_ms = str(int(dt.datetime.now(dt.UTC).timestamp() * 1000))
        query_config = dict(config.get("query", {}))
        if not config.get("dryRun"):
            query_config["destinationTable"] = {
                "projectId": reference["projectId"],
                "datasetId": "_standin_anonymous",
                "tableId": reference["jobId"],
            }
        return {
            "kind": "bigquery#job",
            "id": f"{reference['projectId']}:{reference['location']}.{reference['jobId']}",
            "jobReference": reference,
            "configuration": {**config, "query": query_config, "jobType": "QUERY"},
            "status": {"state": "DONE"},
            "statistics": {
                "creationTime": now_ms,
                "startTime": now_ms,
                "endTime": now_ms,
                "totalBytesProcessed": "0",
                "query": {
                    "statementType": statement_type,
                    "totalBytesProcessed": "0",
                    **({"schema": {"fields": schema}} if schema is not None else {}),
                },
            },
        }

    def _page(self, job: _Job, query: dict[str, str]) -> dict[str, Any]:
        start = int(query.get("pageToken") or query.get("startIndex") or 0)
        size = int(query.get("maxResults", DEFAULT_PAGE_ROWS))
        page = job.table.slice(start, size)
        types = [f["type"] for f in job.schema]
        rows = [
            {"f": [_cell(v, t) for v, t in zip(row.values(), types, strict=True)]} for row in page.to_pylist()
        ]
        payload: dict[str, Any] = {"totalRows": str(job.table.num_rows), "rows": rows}
        if start + page.num_rows < job.table.num_rows and size > 0:
            payload["pageToken"] = str(start + page.num_rows)
        return payload

    def _query_results(self, job_id: str, query: dict[str, str]) -> dict[str, Any]:
        job = self._job(job_id)
        return {
            "kind": "bigquery#getQueryResultsResponse",
            "jobReference": job.resource["jobReference"],
            "jobComplete": True,
            "schema": {"fields": job.schema},
            "totalBytesProcessed": "0",
            "cacheHit": False,
            **self._page(job, query),
        }

    def _tabledata(self, table_id: str, query: dict[str, str]) -> dict[str, Any]:
        return {"kind": "bigquery#tableDataList", **self._page(self._job(table_id), query)}


@contextmanager
def bigquery_standin() -> Iterator[StandIn]:
    """Serve the stand-in on a free port of 127.0.0.1 for the duration of the block."""
    duck = duckdb.connect()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    standin = StandIn(url=f"http://127.0.0.1:{server.server_address[1]}", duck=duck)
    server.RequestHandlerClass = type("Handler", (_Handler,), {"standin": standin})
    thread = threading.Thread(target=server.serve_forever, name="bigquery stand-in", daemon=True)
    thread.start()
    try:
        yield standin
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
        duck.close()
