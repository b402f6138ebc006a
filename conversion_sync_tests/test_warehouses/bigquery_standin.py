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

_PROJECT = r"^/bigquery/v2/projects/(?P<project>[^/]+)"
_JOBS = re.compile(_PROJECT + r"/jobs$")
_JOB = re.compile(_PROJECT + r"/jobs/(?P<job>[^/]+)$")
_QUERY_RESULTS = re.compile(_PROJECT + r"/queries/(?P<job>[^/]+)$")
_DATASETS = re.compile(_PROJECT + r"/datasets$")
_DATASET = re.compile(_PROJECT + r"/datasets/(?P<dataset>[^/]+)$")
_TABLES = re.compile(_PROJECT + r"/datasets/(?P<dataset>[^/]+)/tables$")
_TABLE = re.compile(_PROJECT + r"/datasets/(?P<dataset>[^/]+)/tables/(?P<table>[^/]+)$")
_TABLEDATA = re.compile(_PROJECT + r"/datasets/(?P<dataset>[^/]+)/tables/(?P<table>[^/]+)/data$")
_UPLOAD = re.compile(r"^/upload/bigquery/v2/projects/(?P<project>[^/]+)/jobs$")
_STATEMENT_TYPES = {
    "SELECT": "SELECT",
    "INSERT": "INSERT",
    "UPDATE": "UPDATE",
    "DELETE": "DELETE",
    "MERGE_INTO": "MERGE",
    "CREATE": "CREATE_TABLE",
    "DROP": "DROP_TABLE",
    "ALTER": "ALTER_TABLE",
}
_DML = {"INSERT": "insertedRowCount", "UPDATE": "updatedRowCount", "DELETE": "deletedRowCount", "MERGE": None}
_DUCKDB_TYPES = {
    "STRING": "VARCHAR",
    "INTEGER": "BIGINT",
    "INT64": "BIGINT",
    "FLOAT": "DOUBLE",
    "FLOAT64": "DOUBLE",
    "NUMERIC": "DECIMAL(38, 9)",
    "BOOLEAN": "BOOLEAN",
    "BOOL": "BOOLEAN",
    "TIMESTAMP": "TIMESTAMPTZ",
    "DATETIME": "TIMESTAMP",
    "DATE": "DATE",
    "TIME": "TIME",
    "JSON": "JSON",
    "BYTES": "BLOB",
}
"""BigQuery column types the stand-in can store, as DuckDB types."""
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass
class _Job:
    resource: dict[str, Any]
    schema: list[dict[str, str]]
    table: pa.Table
    dml_rows: int | None = None


@dataclass
class _Upload:
    project: str
    metadata: dict[str, Any]
    data: bytearray = field(default_factory=bytearray)


@dataclass
class StandIn:
    """The running stand-in: its URL, the DuckDB database behind it, and what it was asked.

    `fail_next_jobs` makes the next query jobs fail as BigQuery would report them: each entry is
    (reason, message) for one job, which ends DONE with that errorResult and runs nothing.
    """

    url: str
    duck: duckdb.DuckDBPyConnection
    requests: list[tuple[str, str]] = field(default_factory=list)
    authorizations: set[str] = field(default_factory=set)
    jobs: dict[str, _Job] = field(default_factory=dict)
    tables: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    """Table resources created by tables.insert (expirationTime, clustering, …), by (dataset, table)."""
    inserted_tables: list[dict[str, Any]] = field(default_factory=list)
    """Every tables.insert request body, in order."""
    uploads: dict[str, _Upload] = field(default_factory=dict)
    fail_next_jobs: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def execute(self, sql: str) -> None:
        """Run setup SQL (CREATE SCHEMA/TABLE, INSERT) directly on the backing DuckDB."""
        with self.lock:
            self.duck.execute(sql).fetchall()

    def fetchall(self, sql: str) -> list[tuple[Any, ...]]:
        """Query the backing DuckDB directly (for assertions)."""
        with self.lock:
            return self.duck.execute(sql).fetchall()


class _ApiError(Exception):
    _STATUS = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 409: "ALREADY_EXISTS"}

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message

    def payload(self) -> dict[str, Any]:
        return {
            "error": {
                "code": self.status,
                "message": self.message,
                "errors": [{"reason": self.reason, "message": self.message, "domain": "global"}],
                "status": self._STATUS.get(self.status, "UNKNOWN"),
            }
        }


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


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _duckdb_sql(sql: str, project: str, parameters: bool) -> str:
    """BigQuery SQL → DuckDB: `project.dataset.table` (or `a`.`b`) as quoted identifiers without the
    project, and @name parameters as $name. Quoted literals are left alone."""
    out: list[str] = []
    i = 0
    while i < len(sql):
        char = sql[i]
        if char in "'\"":
            end = i + 1
            while end < len(sql) and sql[end] != char:
                end += 2 if sql[end] == "\\" else 1
            out.append(sql[i : end + 1])
            i = end + 1
        elif char == "`":
            end = sql.find("`", i + 1)
            if end < 0:
                raise _ApiError(
                    400, "invalidQuery", f"Syntax error: Unclosed identifier literal at [1:{i + 1}]"
                )
            parts = sql[i + 1 : end].split(".")
            if len(parts) == 3 and parts[0] == project:
                parts = parts[1:]
            out.append(".".join(_quoted(p) for p in parts))
            i = end + 1
        elif char == "@" and parameters and re.match(r"@[A-Za-z_]", sql[i : i + 2]):
            out.append("$")
            i += 1
        else:
            out.append(char)
            i += 1
    return "".join(out)


def _parameter_value(parameter: dict[str, Any]) -> Any:
    kind = parameter.get("parameterType", {}).get("type", "STRING")
    value = (parameter.get("parameterValue") or {}).get("value")
    if value is None:
        return None
    if kind == "INT64":
        return int(value)
    if kind == "FLOAT64":
        return float(value)
    if kind == "BOOL":
        return str(value).lower() == "true"
    if kind == "NUMERIC":
        return decimal.Decimal(value)
    if kind == "TIMESTAMP":
        moment = dt.datetime.fromisoformat(str(value).replace(" UTC", "+00:00"))
        return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
    if kind == "DATETIME":
        return dt.datetime.fromisoformat(str(value))
    if kind == "DATE":
        return dt.date.fromisoformat(str(value))
    return str(value)


def _load_value(value: Any, bq_type: str, name: str) -> Any:
    """A newline-delimited JSON value as BigQuery's load reads it into a column of `bq_type`."""
    if value is None:
        return None
    if bq_type == "JSON":
        return json.dumps(value)
    if isinstance(value, dict | list):
        raise ValueError(f"Array specified for non-repeated field: {name}.")
    if bq_type in ("TIMESTAMP", "DATETIME"):
        if isinstance(value, int | float) and bq_type == "TIMESTAMP":
            return dt.datetime.fromtimestamp(value, dt.UTC)
        text = str(value).replace(" UTC", "+00:00").replace("Z", "+00:00")
        try:
            moment = dt.datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(
                f"Couldn't convert value to timestamp: Could not parse '{value}' as a timestamp."
            ) from None
        if bq_type == "DATETIME":
            return moment.replace(tzinfo=None)
        return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
    if bq_type in ("INTEGER", "INT64"):
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"Could not convert value '{value}' to integer. Field: {name}")
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"Could not convert value '{value}' to integer. Field: {name}") from None
    if bq_type in ("FLOAT", "FLOAT64"):
        return float(value)
    if bq_type in ("BOOLEAN", "BOOL"):
        return value if isinstance(value, bool) else str(value).lower() == "true"
    if bq_type == "STRING" and not isinstance(value, str):
        return json.dumps(value)
    return value


def _multipart(body: bytes, content_type: str) -> tuple[dict[str, Any], bytes]:
    """The (metadata, data) parts of a multipart/related upload."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if match is None:
        raise _ApiError(400, "invalid", "Multipart upload without a boundary")
    delimiter = b"--" + match[1].encode()
    parts = [p for p in body.split(delimiter)[1:] if not p.startswith(b"--")]
    if len(parts) != 2:
        raise _ApiError(
            400, "invalid", f"Multipart upload with {len(parts)} parts; expected metadata and data"
        )
    contents = [p.removeprefix(b"\r\n").split(b"\r\n\r\n", 1)[1].removesuffix(b"\r\n") for p in parts]
    return json.loads(contents[0]), contents[1]


class _Handler(BaseHTTPRequestHandler):
    standin: StandIn

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        parsed = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(parsed.query))
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path = parsed.path
        self.standin.requests.append((method, path))
        if auth := self.headers.get("Authorization"):
            self.standin.authorizations.add(auth)
        try:
            if method == "POST" and path == "/token":
                self._send(200, {"access_token": ACCESS_TOKEN, "expires_in": 3600, "token_type": "Bearer"})
            elif method == "POST" and (m := _JOBS.match(path)):
                resource = json.loads(body or b"{}")
                if "load" in resource.get("configuration", {}):
                    raise _ApiError(400, "invalid", "The stand-in loads uploaded data only (no sourceUris)")
                self._send(200, self._insert_job(m["project"], resource))
            elif method == "POST" and (m := _UPLOAD.match(path)):
                self._upload_start(m["project"], query, body)
            elif method == "PUT" and _UPLOAD.match(path):
                self._upload_chunk(query, body)
            elif method == "GET" and (m := _JOB.match(path)):
                self._send(200, self._job(m["job"]).resource)
            elif method == "GET" and (m := _QUERY_RESULTS.match(path)):
                self._send(200, self._query_results(m["job"], query))
            elif method == "GET" and (m := _TABLEDATA.match(path)):
                self._send(200, self._tabledata(m["table"], query))
            elif method == "POST" and (m := _DATASETS.match(path)):
                self._send(200, self._insert_dataset(m["project"], json.loads(body or b"{}")))
            elif method == "GET" and (m := _DATASET.match(path)):
                self._send(200, self._get_dataset(m["project"], m["dataset"]))
            elif method == "POST" and (m := _TABLES.match(path)):
                self._send(200, self._insert_table(m["project"], m["dataset"], json.loads(body or b"{}")))
            elif method == "GET" and (m := _TABLE.match(path)):
                self._send(200, self._get_table(m["project"], m["dataset"], m["table"]))
            elif method == "DELETE" and (m := _TABLE.match(path)):
                self._delete_table(m["project"], m["dataset"], m["table"])
                self._send(204, None)
            else:
                raise _ApiError(404, "notFound", f"Not found: {method} {path}")
        except _ApiError as exc:
            self._send(exc.status, exc.payload())
        except Exception as exc:  # a stand-in bug: fail the call at once (a 5xx would be retried)
            self._send(
                400, _ApiError(400, "invalid", f"stand-in error: {type(exc).__name__}: {exc}").payload()
            )

    def _send(
        self, status: int, payload: dict[str, Any] | None, headers: dict[str, str] | None = None
    ) -> None:
        data = json.dumps(payload).encode() if payload is not None else b""
        self.send_response(status)
        if payload is not None:
            self.send_header("Content-Type", "application/json; charset=UTF-8")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _job(self, job_id: str) -> _Job:
        job = self.standin.jobs.get(job_id)
        if job is None:
            raise _ApiError(404, "notFound", f"Not found: Job {job_id}")
        return job

    # -- datasets and tables --------------------------------------------------------------------------

    def _dataset_exists(self, dataset: str) -> bool:
        rows = self.standin.duck.execute(
            "SELECT 1 FROM information_schema.schemata WHERE schema_name = ?", [dataset]
        ).fetchall()
        return bool(rows)

    def _table_exists(self, dataset: str, table: str) -> bool:
        rows = self.standin.duck.execute(
            "SELECT 1 FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
            [dataset, table],
        ).fetchall()
        return bool(rows)

    def _dataset_resource(self, project: str, dataset: str, location: str = "US") -> dict[str, Any]:
        return {
            "kind": "bigquery#dataset",
            "id": f"{project}:{dataset}",
            "datasetReference": {"projectId": project, "datasetId": dataset},
            "location": location,
        }

    def _insert_dataset(self, project: str, resource: dict[str, Any]) -> dict[str, Any]:
        dataset = resource.get("datasetReference", {}).get("datasetId", "")
        if not _IDENTIFIER.match(dataset):
            raise _ApiError(400, "invalid", f'Invalid dataset ID "{dataset}".')
        with self.standin.lock:
            if self._dataset_exists(dataset):
                raise _ApiError(409, "duplicate", f"Already Exists: Dataset {project}:{dataset}")
            self.standin.duck.execute(f"CREATE SCHEMA {_quoted(dataset)}").fetchall()
        return self._dataset_resource(project, dataset, resource.get("location") or "US")

    def _get_dataset(self, project: str, dataset: str) -> dict[str, Any]:
        with self.standin.lock:
            if not self._dataset_exists(dataset):
                raise _ApiError(404, "notFound", f"Not found: Dataset {project}:{dataset}")
        return self._dataset_resource(project, dataset)

    def _create_table(self, project: str, dataset: str, table: str, fields: list[dict[str, Any]]) -> None:
        """CREATE TABLE from a BigQuery schema; the caller holds the lock."""
        if not _IDENTIFIER.match(table):
            raise _ApiError(400, "invalid", f'Invalid table ID "{table}".')
        if not self._dataset_exists(dataset):
            raise _ApiError(404, "notFound", f"Not found: Dataset {project}:{dataset}")
        if self._table_exists(dataset, table):
            raise _ApiError(409, "duplicate", f"Already Exists: Table {project}:{dataset}.{table}")
        columns = []
        for f in fields:
            kind = str(f.get("type", "")).upper()
            if kind not in _DUCKDB_TYPES or f.get("mode") == "REPEATED":
                raise _ApiError(
                    400, "invalid", f"The stand-in cannot store field {f.get('name')} of type {kind}"
                )
            required = " NOT NULL" if f.get("mode") == "REQUIRED" else ""
            columns.append(f"{_quoted(f['name'])} {_DUCKDB_TYPES[kind]}{required}")
        if not columns:
            raise _ApiError(400, "invalid", "The stand-in cannot create a table without a schema")
        self.standin.duck.execute(
            f"CREATE TABLE {_quoted(dataset)}.{_quoted(table)} ({', '.join(columns)})"
        ).fetchall()

    def _insert_table(self, project: str, dataset: str, resource: dict[str, Any]) -> dict[str, Any]:
        table = resource.get("tableReference", {}).get("tableId", "")
        self.standin.inserted_tables.append(resource)
        with self.standin.lock:
            self._create_table(project, dataset, table, resource.get("schema", {}).get("fields", []))
            kept = {
                k: v
                for k, v in resource.items()
                if k in ("expirationTime", "clustering", "labels", "description")
            }
            self.standin.tables[(dataset, table)] = kept
            return self._table_resource(project, dataset, table)

    def _table_fields(self, dataset: str, table: str) -> list[dict[str, str]]:
        relation = self.standin.duck.sql(f"SELECT * FROM {_quoted(dataset)}.{_quoted(table)}")
        arrow_schema = relation.limit(0).to_arrow_table().schema
        return [
            {"name": f.name, "type": _bq_type(str(d), f.type), "mode": "NULLABLE"}
            for f, d in zip(arrow_schema, relation.types, strict=True)
        ]

    def _table_resource(self, project: str, dataset: str, table: str) -> dict[str, Any]:
        """The table's resource; the caller holds the lock."""
        if not self._table_exists(dataset, table):
            raise _ApiError(404, "notFound", f"Not found: Table {project}:{dataset}.{table}")
        rows = self.standin.duck.execute(
            f"SELECT count(*) FROM {_quoted(dataset)}.{_quoted(table)}"
        ).fetchall()
        return {
            "kind": "bigquery#table",
            "id": f"{project}:{dataset}.{table}",
            "tableReference": {"projectId": project, "datasetId": dataset, "tableId": table},
            "type": "TABLE",
            "schema": {"fields": self._table_fields(dataset, table)},
            "numRows": str(rows[0][0] if rows else 0),
            **self.standin.tables.get((dataset, table), {}),
        }

    def _get_table(self, project: str, dataset: str, table: str) -> dict[str, Any]:
        with self.standin.lock:
            return self._table_resource(project, dataset, table)

    def _delete_table(self, project: str, dataset: str, table: str) -> None:
        with self.standin.lock:
            if not self._table_exists(dataset, table):
                raise _ApiError(404, "notFound", f"Not found: Table {project}:{dataset}.{table}")
            self.standin.duck.execute(f"DROP TABLE {_quoted(dataset)}.{_quoted(table)}").fetchall()
            self.standin.tables.pop((dataset, table), None)

    # -- load jobs from uploads -----------------------------------------------------------------------

    def _upload_start(self, project: str, query: dict[str, str], body: bytes) -> None:
        upload_type = query.get("uploadType")
        if upload_type == "multipart":
            metadata, data = _multipart(body, self.headers.get("Content-Type", ""))
            self._send(200, self._load_job(project, metadata, bytes(data)))
        elif upload_type == "resumable":
            upload_id = uuid.uuid4().hex
            self.standin.uploads[upload_id] = _Upload(project, json.loads(body or b"{}"))
            location = f"{self.standin.url}/upload/bigquery/v2/projects/{project}/jobs?uploadType=resumable&upload_id={upload_id}"
            self._send(200, None, {"Location": location})
        else:
            raise _ApiError(400, "invalid", f"Unsupported uploadType {upload_type!r}")

    def _upload_chunk(self, query: dict[str, str], body: bytes) -> None:
        upload = self.standin.uploads.get(query.get("upload_id", ""))
        if upload is None:
            raise _ApiError(404, "notFound", "Not found: upload session")
        match = re.match(r"bytes (?:(\d+)-(\d+)|\*)/(\d+|\*)", self.headers.get("Content-Range", ""))
        if match is None:
            raise _ApiError(400, "invalid", "Content-Range is missing or malformed")
        if match[1] is not None:
            if int(match[1]) != len(upload.data) or int(match[2]) - int(match[1]) + 1 != len(body):
                raise _ApiError(400, "invalid", "Content-Range does not continue the upload")
            upload.data.extend(body)
        if match[3] == "*" or int(match[3]) > len(upload.data):
            self._send(308, None, {"Range": f"bytes=0-{len(upload.data) - 1}"} if upload.data else {})
            return
        del self.standin.uploads[query["upload_id"]]
        self._send(200, self._load_job(upload.project, upload.metadata, bytes(upload.data)))

    def _load_job(self, project: str, resource: dict[str, Any], data: bytes) -> dict[str, Any]:
        config = resource.get("configuration", {})
        load = config.get("load")
        if load is None:
            raise _ApiError(400, "invalid", "An upload must carry a load job configuration")
        reference = self._reference(project, resource)
        destination = load.get("destinationTable") or {}
        dataset, table = destination.get("datasetId", ""), destination.get("tableId", "")
        statistics: dict[str, Any] = {"inputFiles": "1", "inputFileBytes": str(len(data)), "badRecords": "0"}
        error: dict[str, Any] | None = None
        try:
            if load.get("sourceFormat", "CSV") != "NEWLINE_DELIMITED_JSON":
                raise _ApiError(400, "invalid", "The stand-in loads NEWLINE_DELIMITED_JSON only")
            rows = self._load(project, dataset, table, load, data)
            statistics |= {"outputRows": str(rows), "outputBytes": str(len(data))}
        except _ApiError as exc:
            error = {"reason": exc.reason, "message": exc.message}
        now_ms = str(int(dt.datetime.now(dt.UTC).timestamp() * 1000))
        job_resource = {
            "kind": "bigquery#job",
            "id": f"{reference['projectId']}:{reference['location']}.{reference['jobId']}",
            "jobReference": reference,
            "configuration": {**config, "jobType": "LOAD"},
            "status": {"state": "DONE", **({"errorResult": error, "errors": [error]} if error else {})},
            "statistics": {
                "creationTime": now_ms,
                "startTime": now_ms,
                "endTime": now_ms,
                "load": statistics,
            },
        }
        self.standin.jobs[reference["jobId"]] = _Job(job_resource, [], pa.table({}))
        return job_resource

    def _load(self, project: str, dataset: str, table: str, load: dict[str, Any], data: bytes) -> int:
        """Parse newline-delimited JSON against the table's schema and append it, in one transaction."""
        duck = self.standin.duck
        with self.standin.lock:
            if not self._table_exists(dataset, table):
                if load.get("createDisposition") == "CREATE_NEVER":
                    raise _ApiError(404, "notFound", f"Not found: Table {project}:{dataset}.{table}")
                self._create_table(project, dataset, table, load.get("schema", {}).get("fields", []))
            fields = self._table_fields(dataset, table)
            given = [f["name"] for f in load.get("schema", {}).get("fields", [])]
            if given and given != [f["name"] for f in fields]:
                raise _ApiError(
                    400, "invalid", f"Provided Schema does not match Table {project}:{dataset}.{table}."
                )
            types = {f["name"]: f["type"] for f in fields}
            columns: dict[str, list[Any]] = {name: [] for name in types}
            position = 0
            for line in data.splitlines(keepends=True):
                try:
                    if line.strip():
                        record = json.loads(line)
                        if not isinstance(record, dict):
                            raise ValueError("Top-level JSON value is not an object.")
                        unknown = [k for k in record if k not in types]
                        if unknown and not load.get("ignoreUnknownValues"):
                            raise ValueError(f"No such field: {unknown[0]}.")
                        for name, kind in types.items():
                            columns[name].append(_load_value(record.get(name), kind, name))
                except ValueError as exc:
                    raise _ApiError(
                        400,
                        "invalid",
                        f"Error while reading data, error message: JSON parsing error in row starting at "
                        f"position {position}: {exc}",
                    ) from None
                position += len(line)
            quoted = f"{_quoted(dataset)}.{_quoted(table)}"
            names = ", ".join(_quoted(n) for n in types)
            casts = ", ".join(f"{_quoted(n)}::{_DUCKDB_TYPES.get(t, 'VARCHAR')}" for n, t in types.items())
            arrays = {
                n: pa.array(v, pa.string() if types[n] in ("JSON", "STRING") else None)
                for n, v in columns.items()
            }
            batch = pa.table(arrays) if arrays else pa.table({})
            disposition = load.get("writeDisposition", "WRITE_APPEND")
            duck.execute("BEGIN TRANSACTION").fetchall()
            try:
                if (
                    disposition == "WRITE_EMPTY"
                    and duck.execute(f"SELECT count(*) FROM {quoted}").fetchall()[0][0]
                ):
                    raise _ApiError(400, "invalid", f"Already Exists: Table {project}:{dataset}.{table}")
                if disposition == "WRITE_TRUNCATE":
                    duck.execute(f"DELETE FROM {quoted}").fetchall()
                if batch.num_rows:
                    duck.register("standin_load", batch)
                    try:
                        duck.execute(
                            f"INSERT INTO {quoted} ({names}) SELECT {casts} FROM standin_load"
                        ).fetchall()
                    finally:
                        duck.unregister("standin_load")
                duck.execute("COMMIT").fetchall()
            except duckdb.Error as exc:
                duck.execute("ROLLBACK").fetchall()
                raise _ApiError(400, "invalid", f"Error while reading data, error message: {exc}") from None
            except BaseException:
                duck.execute("ROLLBACK").fetchall()
                raise
            return batch.num_rows

    # -- query jobs -----------------------------------------------------------------------------------

    def _reference(self, project: str, resource: dict[str, Any]) -> dict[str, Any]:
        reference = dict(resource.get("jobReference") or {})
        reference.setdefault("projectId", project)
        reference.setdefault("jobId", uuid.uuid4().hex)
        reference.setdefault("location", "US")
        return reference

    def _insert_job(self, project: str, resource: dict[str, Any]) -> dict[str, Any]:
        config = resource.get("configuration", {})
        query_config = config.get("query", {})
        parameters = query_config.get("queryParameters") or []
        reference = self._reference(project, resource)
        dry_run = bool(config.get("dryRun"))
        if not dry_run and self.standin.fail_next_jobs:
            reason, message = self.standin.fail_next_jobs.pop(0)
            job_resource = self._job_resource(reference, config, "SCRIPT", None)
            error = {"reason": reason, "message": message}
            job_resource["status"] |= {"errorResult": error, "errors": [error]}
            self.standin.jobs[reference["jobId"]] = _Job(job_resource, [], pa.table({}))
            return job_resource
        sql = _duckdb_sql(query_config.get("query", ""), project, bool(parameters))
        values = {p["name"]: _parameter_value(p) for p in parameters}
        duck = self.standin.duck
        with self.standin.lock:
            try:
                statements = duck.extract_statements(sql)
            except duckdb.Error as exc:
                raise _ApiError(400, "invalidQuery", f"Syntax error: {exc}") from None
            if not statements:
                raise _ApiError(400, "invalidQuery", "Syntax error: Unexpected end of script")
            if len(statements) > 1:
                statement_type = "SCRIPT"
            else:
                kind = statements[0].type.name
                statement_type = _STATEMENT_TYPES.get(kind, kind)
            if statement_type != "SELECT":
                if dry_run:
                    return self._job_resource(reference, config, statement_type, None)
                dml_rows = self._run_statements(statements, values)
                job_resource = self._job_resource(reference, config, statement_type, None, dml_rows)
                self.standin.jobs[reference["jobId"]] = _Job(job_resource, [], pa.table({}), dml_rows)
                return job_resource
            try:
                relation = duck.sql(statements[0].query, params=self._bound(statements[0], values))
                duck_types = [str(t) for t in relation.types]
                table = relation.to_arrow_table() if not dry_run else None
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

    @staticmethod
    def _bound(statement: Any, values: dict[str, Any]) -> dict[str, Any] | None:
        missing = sorted(set(statement.named_parameters) - set(values))
        if missing:
            raise _ApiError(400, "invalidQuery", f"Query parameter '{missing[0]}' not found")
        return {name: values[name] for name in statement.named_parameters} or None

    def _run_statements(self, statements: list[Any], values: dict[str, Any]) -> int | None:
        """Run DML, DDL or a script; an error rolls back an open transaction, as BigQuery does.

        Returns the rows a single DML statement affected (None for anything else). The caller holds the lock.
        """
        duck = self.standin.duck
        in_transaction = False
        affected: int | None = None
        try:
            for statement in statements:
                text = statement.query.strip().upper()
                if statement.type.name == "TRANSACTION":
                    in_transaction = text.startswith("BEGIN")
                rows = duck.execute(statement, self._bound(statement, values)).fetchall()
                if len(statements) == 1 and _STATEMENT_TYPES.get(statement.type.name) in _DML:
                    affected = int(rows[0][0]) if rows else 0
        except duckdb.Error as exc:
            if in_transaction:
                duck.execute("ROLLBACK").fetchall()
            raise _ApiError(400, "invalidQuery", str(exc).splitlines()[0]) from None
        except _ApiError:
            if in_transaction:
                duck.execute("ROLLBACK").fetchall()
            raise
        if in_transaction:
            duck.execute("ROLLBACK").fetchall()
            raise _ApiError(400, "invalidQuery", "Transaction was never committed")
        return affected

    def _job_resource(
        self,
        reference: dict[str, Any],
        config: dict[str, Any],
        statement_type: str,
        schema: list[dict[str, str]] | None,
        dml_rows: int | None = None,
    ) -> dict[str, Any]:
        now_ms = str(int(dt.datetime.now(dt.UTC).timestamp() * 1000))
        query_config = dict(config.get("query", {}))
        if not config.get("dryRun") and statement_type == "SELECT":
            query_config["destinationTable"] = {
                "projectId": reference["projectId"],
                "datasetId": "_standin_anonymous",
                "tableId": reference["jobId"],
            }
        query_statistics: dict[str, Any] = {
            "statementType": statement_type,
            "totalBytesProcessed": "0",
            **({"schema": {"fields": schema}} if schema is not None else {}),
        }
        if dml_rows is not None:
            query_statistics["numDmlAffectedRows"] = str(dml_rows)
            if count_key := _DML.get(statement_type):
                query_statistics["dmlStats"] = {count_key: str(dml_rows)}
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
                "query": query_statistics,
                **({"numChildJobs": "0"} if statement_type == "SCRIPT" else {}),
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
        payload: dict[str, Any] = {"totalRows": str(job.table.num_rows)}
        if size > 0:  # maxResults=0 only waits for the job: no rows, no page token
            payload["rows"] = rows
        if start + page.num_rows < job.table.num_rows and size > 0:
            payload["pageToken"] = str(start + page.num_rows)
        return payload

    def _query_results(self, job_id: str, query: dict[str, str]) -> dict[str, Any]:
        job = self._job(job_id)
        if error := job.resource["status"].get("errorResult"):
            raise _ApiError(400, error["reason"], error["message"])
        payload: dict[str, Any] = {
            "kind": "bigquery#getQueryResultsResponse",
            "jobReference": job.resource["jobReference"],
            "jobComplete": True,
            "totalBytesProcessed": "0",
            "cacheHit": False,
        }
        if job.resource["statistics"].get("query", {}).get("statementType") != "SELECT":
            # DML, DDL and scripts have no result rows (no totalRows); DML reports what it changed
            if job.dml_rows is not None:
                payload["numDmlAffectedRows"] = str(job.dml_rows)
            return payload
        return {**payload, "schema": {"fields": job.schema}, **self._page(job, query)}

    def _tabledata(self, table_id: str, query: dict[str, str]) -> dict[str, Any]:
        return {"kind": "bigquery#tableDataList", **self._page(self._job(table_id), query)}


@contextmanager
def bigquery_standin() -> Iterator[StandIn]:
    """Serve the stand-in on a free port of 127.0.0.1 for the duration of the block."""
    duck = duckdb.connect()
    duck.execute("CREATE TEMP MACRO parse_json(text) AS json(text)").fetchall()  # BigQuery's PARSE_JSON
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
