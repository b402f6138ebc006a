"""Sync logs: append each run's summary and rejected rows to the customer's warehouse (`sync_logs: {schema: …}`)."""

from __future__ import annotations

import abc
import contextlib
import json
import logging
import re
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import IO, TYPE_CHECKING, Any, Protocol

import duckdb
import psycopg
import pyarrow as pa
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from conversion_sync.config import ProjectConfig
from conversion_sync.config.secrets import MissingEnvironmentVariable, resolve_setting
from conversion_sync.config.warehouses import (
    BigQueryWarehouseConfig,
    DuckDBWarehouseConfig,
    PostgresWarehouseConfig,
    SnowflakeWarehouseConfig,
)
from conversion_sync.store import sync_state
from conversion_sync.store.contact_store import ContactStore
from conversion_sync.warehouses.base import ClientSource

if TYPE_CHECKING:
    from google.cloud import bigquery

RUNS_TABLE = "sync_runs"
REJECTIONS_TABLE = "sync_rejections"
COUNT_COLUMNS = ("queried", "added", "changed", "unchanged", "removed", "rejected", "skipped")
CHUNK_ROWS = 5_000
"""Rejected rows are copied from the store to the warehouse in chunks of this many rows."""
SUPPORTED_KINDS = ("duckdb", "postgres", "snowflake", "bigquery")

_log = logging.getLogger(__name__)


class SyncLogError(Exception):
    """A run's log could not be written to the warehouse; the message is safe to show."""


class _Logger(Protocol):
    def info(self, msg: str) -> Any: ...

    def warning(self, msg: str) -> Any: ...


@dataclass(frozen=True)
class RunLog:
    """One run's summary as written to `<schema>.sync_runs`."""

    sync_name: str
    run_id: str
    status: str
    started_at: datetime | None
    finished_at: datetime | None
    counts: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    watermark_used: datetime | None = None
    next_watermark: datetime | None = None

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return round((self.finished_at - self.started_at).total_seconds(), 3)

    def values(self, logged_at: datetime) -> dict[str, Any]:
        """Column → value for the runs table."""
        counts = {k: v for k, v in self.counts.items() if isinstance(v, int | float)}
        return {
            "sync_name": self.sync_name,
            "run_id": self.run_id,
            "status": self.status,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "duration_s": self.duration_s,
            **{name: _int_or_none(self.counts.get(name)) for name in COUNT_COLUMNS},
            "counts": json.dumps(counts, sort_keys=True),
            "error": self.error,
            "watermark_used": self.watermark_used,
            "next_watermark": self.next_watermark,
            "logged_at": logged_at,
        }


@dataclass(frozen=True)
class FailureInfo:
    """What Dagster knows about a failed run, for when the store's run record is missing or never finished."""

    error: str
    started_at: datetime | None = None
    finished_at: datetime | None = None


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


# (column, DuckDB type, Postgres type) — one layout for both warehouses
RUN_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("sync_name", "VARCHAR", "text"),
    ("run_id", "VARCHAR", "text"),
    ("status", "VARCHAR", "text"),
    ("started_at", "TIMESTAMPTZ", "timestamptz"),
    ("finished_at", "TIMESTAMPTZ", "timestamptz"),
    ("duration_s", "DOUBLE", "double precision"),
    *((name, "BIGINT", "bigint") for name in COUNT_COLUMNS),
    ("counts", "JSON", "jsonb"),
    ("error", "VARCHAR", "text"),
    ("watermark_used", "TIMESTAMPTZ", "timestamptz"),
    ("next_watermark", "TIMESTAMPTZ", "timestamptz"),
    ("logged_at", "TIMESTAMPTZ", "timestamptz"),
)
REJECTION_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("sync_name", "VARCHAR", "text"),
    ("run_id", "VARCHAR", "text"),
    ("row_key", "VARCHAR", "text"),
    ("column_name", "VARCHAR", "text"),
    ("code", "VARCHAR", "text"),
    ("message", "VARCHAR", "text"),
    ("row_json", "JSON", "jsonb"),
    ("rejected_at", "TIMESTAMPTZ", "timestamptz"),
    ("logged_at", "TIMESTAMPTZ", "timestamptz"),
)
_ARROW_REJECTIONS = pa.schema(
    [
        ("sync_name", pa.string()),
        ("run_id", pa.string()),
        ("row_key", pa.string()),
        ("column_name", pa.string()),
        ("code", pa.string()),
        ("message", pa.string()),
        ("row_json", pa.string()),
        ("rejected_at", pa.timestamp("us", tz="UTC")),
        ("logged_at", pa.timestamp("us", tz="UTC")),
    ]
)

RejectedRow = tuple[str | None, str | None, str, str, str | None, datetime]
"""(row_key, column_name, code, message, row as JSON text, rejected_at), as read from the store."""


class SyncLogWriter(abc.ABC):
    """Appends run logs to one warehouse schema; creates the schema and both tables when missing.

    Each append replaces that run's earlier entries (so a re-delivered log never duplicates) and is one
    transaction: a reader sees a run with all of its rejected rows, or not at all.
    """

    kind: str

    def __init__(self, warehouse_name: str, schema: str) -> None:
        self.warehouse_name = warehouse_name
        self.schema = schema

    @property
    def label(self) -> str:
        return f"warehouse '{self.warehouse_name}' ({self.kind}) schema '{self.schema}'"

    @abc.abstractmethod
    def append(self, run: RunLog, rejected: Iterable[Sequence[RejectedRow]]) -> int:
        """Write the run's summary and its rejected rows (in chunks); returns how many rejected rows."""


class DuckDBSyncLogWriter(SyncLogWriter):
    """Sync logs in a DuckDB file, through a separate read-write connection.

    A DuckDB file has one writing process or many reading ones: while another process (a sync's query step)
    holds the file, opening it for writing fails, so the writer retries for `lock_timeout_s`.
    """

    kind = "duckdb"

    def __init__(
        self, warehouse_name: str, config: DuckDBWarehouseConfig, lock_timeout_s: float = 10.0
    ) -> None:
        super().__init__(warehouse_name, _schema_of(config))
        self.path = config.path
        self.lock_timeout_s = lock_timeout_s

    def _connect(self) -> duckdb.DuckDBPyConnection:
        deadline = time.monotonic() + self.lock_timeout_s
        delay = 0.1
        while True:
            try:
                return duckdb.connect(self.path)
            except duckdb.IOException as exc:
                if "lock" not in str(exc).lower() or time.monotonic() + delay > deadline:
                    raise SyncLogError(f"{self.label}: cannot open the file for writing: {exc}") from None
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    def append(self, run: RunLog, rejected: Iterable[Sequence[RejectedRow]]) -> int:
        con = self._connect()
        schema = _duckdb_identifier(self.schema)
        runs, rejections = f"{schema}.{RUNS_TABLE}", f"{schema}.{REJECTIONS_TABLE}"
        logged_at = datetime.now(UTC)
        written = 0
        try:
            con.execute("BEGIN TRANSACTION")
            con.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
            for table, columns in ((runs, RUN_COLUMNS), (rejections, REJECTION_COLUMNS)):
                body = ", ".join(f"{name} {duck}" for name, duck, _ in columns)
                con.execute(f"CREATE TABLE IF NOT EXISTS {table} ({body})")
            for table in (runs, rejections):
                con.execute(
                    f"DELETE FROM {table} WHERE sync_name = ? AND run_id = ?", [run.sync_name, run.run_id]
                )
            values = run.values(logged_at)
            names = [name for name, _, _ in RUN_COLUMNS]
            placeholders = ", ".join("?" for _ in names)
            con.execute(
                f"INSERT INTO {runs} ({', '.join(names)}) VALUES ({placeholders})", [values[n] for n in names]
            )
            for chunk in rejected:
                if not chunk:
                    continue
                table = _rejections_arrow(run, chunk, logged_at)
                con.register("conversion_sync_rejected_chunk", table)
                try:
                    con.execute(f"INSERT INTO {rejections} SELECT * FROM conversion_sync_rejected_chunk")
                finally:
                    con.unregister("conversion_sync_rejected_chunk")
                written += len(chunk)
            con.execute("COMMIT")
        except Exception as exc:
            _rollback_quietly(con)
            if isinstance(exc, SyncLogError):
                raise
            raise SyncLogError(f"{self.label}: {type(exc).__name__}: {exc}") from None
        finally:
            con.close()
        return written


class PostgresSyncLogWriter(SyncLogWriter):
    """Sync logs in a Postgres database, through a separate read-write connection (the sync's is read-only).

    The warehouse user needs CREATE on the database (or an existing schema) and INSERT/DELETE on the tables.
    """

    kind = "postgres"

    def __init__(
        self, warehouse_name: str, config: PostgresWarehouseConfig, connect_timeout_s: int = 10
    ) -> None:
        super().__init__(warehouse_name, _schema_of(config))
        self.url_setting = config.url
        self.connect_timeout_s = connect_timeout_s

    def append(self, run: RunLog, rejected: Iterable[Sequence[RejectedRow]]) -> int:
        try:
            url = resolve_setting(self.url_setting, f"warehouse '{self.warehouse_name}'") or ""
        except MissingEnvironmentVariable as exc:
            raise SyncLogError(f"{self.label}: {exc}") from None
        password = _url_password(url)
        try:
            return self._append(url, run, rejected)
        except SyncLogError:
            raise
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}".strip()
            if password:
                message = message.replace(password, "***")
            raise SyncLogError(f"{self.label}: {message}") from None

    def _append(self, url: str, run: RunLog, rejected: Iterable[Sequence[RejectedRow]]) -> int:
        schema = sql.Identifier(self.schema)
        runs = sql.SQL("{}.{}").format(schema, sql.Identifier(RUNS_TABLE))
        rejections = sql.SQL("{}.{}").format(schema, sql.Identifier(REJECTIONS_TABLE))
        logged_at = datetime.now(UTC)
        written = 0
        with psycopg.connect(url, connect_timeout=self.connect_timeout_s, autocommit=False) as conn:
            conn.execute("SET TRANSACTION READ WRITE")
            conn.execute("SET LOCAL statement_timeout = '120s'")
            conn.execute("SET LOCAL lock_timeout = '15s'")
            # two runs finishing at once must not both try to create the tables
            conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext(%s))", (f"conversion_sync.sync_logs.{self.schema}",)
            )
            exists = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (self.schema,)).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE SCHEMA {}").format(schema))
            for table, columns in ((runs, RUN_COLUMNS), (rejections, REJECTION_COLUMNS)):
                body = sql.SQL(", ").join(
                    sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL(pg)) for name, _, pg in columns
                )
                conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(table, body))
            for table in (runs, rejections):
                conn.execute(
                    sql.SQL("DELETE FROM {} WHERE sync_name = %s AND run_id = %s").format(table),
                    (run.sync_name, run.run_id),
                )
            values = run.values(logged_at)
            names = [name for name, _, _ in RUN_COLUMNS]
            conn.execute(
                sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
                    runs,
                    sql.SQL(", ").join(map(sql.Identifier, names)),
                    sql.SQL(", ").join(sql.Placeholder() * len(names)),
                ),
                [values[n] for n in names],
            )
            copy_columns = sql.SQL(", ").join(sql.Identifier(name) for name, _, _ in REJECTION_COLUMNS)
            with (
                conn.cursor() as cur,
                cur.copy(sql.SQL("COPY {} ({}) FROM STDIN").format(rejections, copy_columns)) as copy,
            ):
                for chunk in rejected:
                    for row_key, column_name, code, message, row_json, rejected_at in chunk:
                        copy.write_row(
                            (
                                run.sync_name,
                                run.run_id,
                                row_key,
                                column_name,
                                code,
                                message,
                                row_json,
                                rejected_at,
                                logged_at,
                            )
                        )
                    written += len(chunk)
        return written


SNOWFLAKE_TYPES = {
    "VARCHAR": "VARCHAR",
    "TIMESTAMPTZ": "TIMESTAMP_TZ",
    "DOUBLE": "FLOAT",
    "BIGINT": "NUMBER(38, 0)",
    "JSON": "VARIANT",
}
"""The runs and rejections tables' DuckDB column types in Snowflake (JSON columns are VARIANT)."""


class SnowflakeSyncLogWriter(SyncLogWriter):
    """Sync logs in a Snowflake schema, through the Snowflake connector with the warehouse's own settings.

    One transaction per append: the run's earlier entries deleted, its summary inserted, its rejected rows
    inserted one chunk per statement (`INSERT … SELECT … FROM VALUES`, JSON text parsed into VARIANT by
    `PARSE_JSON`). The role needs CREATE SCHEMA (or an existing schema) and INSERT/DELETE on the tables.
    """

    kind = "snowflake"

    def __init__(self, warehouse_name: str, config: SnowflakeWarehouseConfig) -> None:
        super().__init__(warehouse_name, _schema_of(config))
        self.config = config

    def append(self, run: RunLog, rejected: Iterable[Sequence[RejectedRow]]) -> int:
        from conversion_sync.warehouses.snowflake import SnowflakeWarehouse

        warehouse = SnowflakeWarehouse(self.warehouse_name, self.config)
        try:
            conn = warehouse._connect()
            return self._append(conn, run, rejected)
        except SyncLogError:
            raise
        except Exception as exc:
            raise SyncLogError(f"{self.label}: {warehouse._scrub(f'{type(exc).__name__}: {exc}')}") from None
        finally:
            warehouse.close()

    def _append(self, conn: Any, run: RunLog, rejected: Iterable[Sequence[RejectedRow]]) -> int:
        schema = _duckdb_identifier(self.schema)
        runs, rejections = (
            f"{schema}.{_duckdb_identifier(RUNS_TABLE)}",
            f"{schema}.{_duckdb_identifier(REJECTIONS_TABLE)}",
        )
        logged_at = datetime.now(UTC)
        written = 0
        cur = conn.cursor()
        try:
            cur.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
            for table, columns in ((runs, RUN_COLUMNS), (rejections, REJECTION_COLUMNS)):
                body = ", ".join(
                    f"{_duckdb_identifier(name)} {SNOWFLAKE_TYPES[duck]}" for name, duck, _ in columns
                )
                cur.execute(f"CREATE TABLE IF NOT EXISTS {table} ({body})")
            cur.execute("BEGIN")
            for table in (runs, rejections):
                cur.execute(
                    f'DELETE FROM {table} WHERE "sync_name" = %s AND "run_id" = %s',
                    (run.sync_name, run.run_id),
                )
            cur.execute(*_snowflake_insert(runs, RUN_COLUMNS, [run.values(logged_at)]))
            for chunk in rejected:
                if not chunk:
                    continue
                rows = [
                    dict(
                        zip(
                            [n for n, _, _ in REJECTION_COLUMNS],
                            (run.sync_name, run.run_id, *row, logged_at),
                            strict=True,
                        )
                    )
                    for row in chunk
                ]
                cur.execute(*_snowflake_insert(rejections, REJECTION_COLUMNS, rows))
                written += len(chunk)
            cur.execute("COMMIT")
        except Exception:
            with contextlib.suppress(Exception):
                cur.execute("ROLLBACK")
            raise
        finally:
            cur.close()
        return written


def _snowflake_insert(
    table: str, columns: tuple[tuple[str, str, str], ...], rows: list[dict[str, Any]]
) -> tuple[str, list[Any]]:
    """One INSERT … SELECT … FROM VALUES of every row (JSON columns through PARSE_JSON), with its parameters."""
    names = [name for name, _, _ in columns]
    row = "(" + ", ".join("%s" for _ in names) + ")"
    selected = ", ".join(
        f"PARSE_JSON(column{i + 1})" if duck == "JSON" else f"column{i + 1}"
        for i, (_, duck, _) in enumerate(columns)
    )
    statement = (
        f"INSERT INTO {table} ({', '.join(_duckdb_identifier(n) for n in names)}) "
        f"SELECT {selected} FROM VALUES {', '.join(row for _ in rows)}"
    )
    return statement, [r[n] for r in rows for n in names]


BIGQUERY_TYPES = {
    "VARCHAR": ("STRING", "STRING"),
    "TIMESTAMPTZ": ("TIMESTAMP", "TIMESTAMP"),
    "DOUBLE": ("FLOAT", "FLOAT64"),
    "BIGINT": ("INTEGER", "INT64"),
    "JSON": ("JSON", "STRING"),
}
"""The runs and rejections tables' DuckDB column types in BigQuery: (column type, query parameter type).
JSON goes in as text and through PARSE_JSON."""
_BIGQUERY_DATASET = re.compile(r"^[A-Za-z0-9_]{1,1024}$")
_BIGQUERY_STAGING_HOURS = 24
"""A staging table left behind by a crash expires after this long."""
_BIGQUERY_ATTEMPTS = 4
"""Tries of the replace transaction when BigQuery aborts it for a concurrent update of the same table."""
_CONCURRENT_UPDATE = re.compile(r"concurrent update|could not serialize access", re.IGNORECASE)


class BigQuerySyncLogWriter(SyncLogWriter):
    """Sync logs in a BigQuery dataset, through google-cloud-bigquery with the warehouse's own client.

    The dataset and both tables are created when missing (clustered by sync_name, run_id; JSON columns are
    JSON, times TIMESTAMP). The rejected rows are spooled to a temporary file as newline-delimited JSON
    and loaded (a free load job) into a staging table that expires in a day; then one multi-statement
    transaction deletes the run's earlier entries, inserts its summary (query parameters) and copies the
    staged rows, so readers see the run whole or not at all. A transaction BigQuery aborts for a
    concurrent update of the same table (two runs logged at once) is retried. The staging table is
    dropped afterwards. The account needs bigquery.datasets.create (or an existing dataset),
    bigquery.tables.create/updateData/delete on it, and bigquery.jobs.create.
    """

    kind = "bigquery"

    def __init__(
        self,
        warehouse_name: str,
        config: BigQueryWarehouseConfig,
        *,
        retry_timeout: float = 120.0,
        client_source: ClientSource | None = None,
    ) -> None:
        super().__init__(warehouse_name, _schema_of(config))
        self.config = config
        self.retry_timeout = retry_timeout
        self.client_source = client_source

    def append(self, run: RunLog, rejected: Iterable[Sequence[RejectedRow]]) -> int:
        from conversion_sync.warehouses.bigquery import BigQueryWarehouse

        if not _BIGQUERY_DATASET.match(self.schema):
            raise SyncLogError(
                f"{self.label}: a BigQuery dataset name has only letters, digits and underscores"
            )
        warehouse = BigQueryWarehouse(
            self.warehouse_name,
            self.config,
            retry_timeout=self.retry_timeout,
            client_source=self.client_source,
        )
        try:
            client = warehouse._connect()
            return self._append(client, run, rejected)
        except SyncLogError:
            raise
        except Exception as exc:
            # "warehouse 'x' (bigquery): connection failed: …" → the label, then what failed
            reason = str(warehouse.failure(exc)).removeprefix(f"{warehouse._label}: ")
            raise SyncLogError(f"{self.label}: {reason.replace('query failed: ', 'failed: ', 1)}") from None
        finally:
            warehouse.close()

    def _append(self, client: bigquery.Client, run: RunLog, rejected: Iterable[Sequence[RejectedRow]]) -> int:
        from google.api_core import exceptions as api_exceptions
        from google.cloud import bigquery
        from google.cloud.bigquery.retry import DEFAULT_RETRY

        retry = DEFAULT_RETRY.with_timeout(self.retry_timeout)
        dataset = bigquery.Dataset(bigquery.DatasetReference(client.project, self.schema))
        dataset.location = client.location
        # looked up first: creating needs project-level permission, which an existing dataset does not
        try:
            client.get_dataset(dataset.reference, retry=retry)
        except api_exceptions.NotFound:
            client.create_dataset(dataset, exists_ok=True, retry=retry)
        for table, columns in ((RUNS_TABLE, RUN_COLUMNS), (REJECTIONS_TABLE, REJECTION_COLUMNS)):
            try:
                client.get_table(dataset.table(table), retry=retry)
            except api_exceptions.NotFound:
                created = bigquery.Table(dataset.table(table), schema=_bigquery_schema(columns))
                created.clustering_fields = ["sync_name", "run_id"]
                client.create_table(created, exists_ok=True, retry=retry)
        logged_at = datetime.now(UTC)
        with tempfile.SpooledTemporaryFile(max_size=8 * 1024 * 1024, mode="r+b") as spool:
            written = _spool_rejections(spool, run, rejected, logged_at)
            staging: str | None = None
            try:
                if written:
                    staging = self._stage(client, dataset, spool, retry)
                self._replace(client, run, logged_at, staging, retry)
            finally:
                if staging is not None:
                    with contextlib.suppress(Exception):
                        client.delete_table(dataset.table(staging), not_found_ok=True, retry=retry)
        return written

    def _stage(self, client: bigquery.Client, dataset: Any, spool: IO[bytes], retry: Any) -> str:
        """Load the spooled rows into a new staging table (row_json as text); returns its name."""
        from google.cloud import bigquery

        name = f"_{REJECTIONS_TABLE}_staging_{uuid.uuid4().hex}"
        staging = bigquery.Table(dataset.table(name), schema=_bigquery_schema(REJECTION_COLUMNS, staged=True))
        staging.expires = datetime.now(UTC) + timedelta(hours=_BIGQUERY_STAGING_HOURS)
        client.create_table(staging, retry=retry)
        size = spool.tell()
        spool.seek(0)
        job = client.load_table_from_file(
            spool,
            staging.reference,
            size=size,
            job_config=bigquery.LoadJobConfig(
                source_format=bigquery.SourceFormat.NEWLINE_DELIMITED_JSON,
                schema=staging.schema,
                write_disposition=bigquery.WriteDisposition.WRITE_APPEND,
                create_disposition=bigquery.CreateDisposition.CREATE_NEVER,
            ),
        )
        job.result(retry=retry, timeout=self.retry_timeout)
        return name

    def _replace(
        self, client: bigquery.Client, run: RunLog, logged_at: datetime, staging: str | None, retry: Any
    ) -> None:
        """The run's earlier entries replaced by its summary and staged rows, in one transaction."""
        from google.api_core import exceptions as api_exceptions
        from google.cloud import bigquery

        runs, rejections = (f"`{self.schema}.{t}`" for t in (RUNS_TABLE, REJECTIONS_TABLE))
        values = run.values(logged_at)
        run_names = [name for name, _, _ in RUN_COLUMNS]
        inserted = ", ".join(
            f"PARSE_JSON(@run_{name})" if duck == "JSON" else f"@run_{name}" for name, duck, _ in RUN_COLUMNS
        )
        statements = [
            "BEGIN TRANSACTION",
            f"DELETE FROM {runs} WHERE sync_name = @run_sync_name AND run_id = @run_run_id",
            f"DELETE FROM {rejections} WHERE sync_name = @run_sync_name AND run_id = @run_run_id",
            f"INSERT INTO {runs} ({', '.join(run_names)}) VALUES ({inserted})",
        ]
        if staging is not None:
            names = [name for name, _, _ in REJECTION_COLUMNS]
            selected = ", ".join(
                f"PARSE_JSON({name})" if duck == "JSON" else name for name, duck, _ in REJECTION_COLUMNS
            )
            statements.append(
                f"INSERT INTO {rejections} ({', '.join(names)}) SELECT {selected} FROM `{self.schema}.{staging}`"
            )
        statements.append("COMMIT TRANSACTION")
        parameters = [
            bigquery.ScalarQueryParameter(
                f"run_{name}", BIGQUERY_TYPES[duck][1], _bigquery_value(values[name])
            )
            for name, duck, _ in RUN_COLUMNS
        ]
        config = bigquery.QueryJobConfig(query_parameters=parameters)
        for attempt in range(1, _BIGQUERY_ATTEMPTS + 1):
            try:
                client.query(";\n".join(statements) + ";", job_config=config, retry=retry).result(
                    retry=retry, timeout=self.retry_timeout
                )
                return
            except api_exceptions.GoogleAPICallError as exc:
                if attempt == _BIGQUERY_ATTEMPTS or not _CONCURRENT_UPDATE.search(str(exc)):
                    raise
            time.sleep(0.5 * 2 ** (attempt - 1))


def _bigquery_schema(columns: tuple[tuple[str, str, str], ...], *, staged: bool = False) -> list[Any]:
    """The BigQuery columns of a log table; `staged`: JSON columns as STRING (the staging table's text)."""
    from google.cloud import bigquery

    return [
        bigquery.SchemaField(name, "STRING" if staged and duck == "JSON" else BIGQUERY_TYPES[duck][0])
        for name, duck, _ in columns
    ]


def _bigquery_value(value: Any) -> Any:
    """A value as BigQuery's loads and parameters take it: times as aware UTC datetimes."""
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _bigquery_time(value: datetime | None) -> str | None:
    if value is None:
        return None
    moment = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return moment.isoformat(sep=" ", timespec="microseconds")


def _spool_rejections(
    spool: IO[bytes], run: RunLog, rejected: Iterable[Sequence[RejectedRow]], logged_at: datetime
) -> int:
    """Write the rejected rows as newline-delimited JSON (one chunk at a time); returns how many."""
    written = 0
    logged = _bigquery_time(logged_at)
    for chunk in rejected:
        lines = [
            json.dumps(
                {
                    "sync_name": run.sync_name,
                    "run_id": run.run_id,
                    "row_key": row_key,
                    "column_name": column_name,
                    "code": code,
                    "message": message,
                    "row_json": row_json,
                    "rejected_at": _bigquery_time(rejected_at),
                    "logged_at": logged,
                },
                ensure_ascii=False,
            )
            for row_key, column_name, code, message, row_json, rejected_at in chunk
        ]
        if lines:
            spool.write(("\n".join(lines) + "\n").encode())
        written += len(chunk)
    return written


def _schema_of(
    config: DuckDBWarehouseConfig
    | PostgresWarehouseConfig
    | SnowflakeWarehouseConfig
    | BigQueryWarehouseConfig,
) -> str:
    if config.sync_logs is None:
        raise SyncLogError("sync_logs is not configured for this warehouse")
    return config.sync_logs.schema_


def _duckdb_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _url_password(url: str) -> str | None:
    try:
        password = conninfo_to_dict(url).get("password")
        return str(password) if password else None
    except psycopg.ProgrammingError:
        return None


def _rollback_quietly(con: duckdb.DuckDBPyConnection) -> None:
    with contextlib.suppress(duckdb.Error):
        con.execute("ROLLBACK")


def _rejections_arrow(run: RunLog, chunk: Sequence[RejectedRow], logged_at: datetime) -> pa.Table:
    columns = list(zip(*chunk, strict=True))
    n = len(chunk)
    return pa.Table.from_arrays(
        [
            pa.array([run.sync_name] * n, pa.string()),
            pa.array([run.run_id] * n, pa.string()),
            *(pa.array(column, pa.string()) for column in columns[:5]),
            pa.array(columns[5], pa.timestamp("us", tz="UTC")),
            pa.array([logged_at] * n, pa.timestamp("us", tz="UTC")),
        ],
        schema=_ARROW_REJECTIONS,
    )


def sync_log_writer(
    warehouse_name: str, config: Any, client_source: ClientSource | None = None
) -> SyncLogWriter | None:
    """The writer for a warehouse's `sync_logs`, or None when it has none (`client_source`: a BigQuery
    warehouse's client from the orchestrator).

    Raises SyncLogError for a warehouse kind that cannot hold sync logs.
    """
    if getattr(config, "sync_logs", None) is None:
        return None
    if isinstance(config, DuckDBWarehouseConfig):
        return DuckDBSyncLogWriter(warehouse_name, config)
    if isinstance(config, PostgresWarehouseConfig):
        return PostgresSyncLogWriter(warehouse_name, config)
    if isinstance(config, SnowflakeWarehouseConfig):
        return SnowflakeSyncLogWriter(warehouse_name, config)
    if isinstance(config, BigQueryWarehouseConfig):
        return BigQuerySyncLogWriter(warehouse_name, config, client_source=client_source)
    raise SyncLogError(
        f"warehouse '{warehouse_name}' ({config.type}): sync_logs is supported on "
        f"{', '.join(SUPPORTED_KINDS)} warehouses only"
    )


def run_log(store: ContactStore, sync_name: str, run_id: str, failure: FailureInfo | None = None) -> RunLog:
    """The run's summary from the store's run record; `failure` fills in what a crashed run never recorded."""
    with store.begin() as conn:
        record = sync_state.get_run(conn, run_id)
    if record is not None and record.sync_name != sync_name:
        record = None
    if record is None:
        if failure is None:
            raise SyncLogError(f"the store has no record of run {run_id} of sync '{sync_name}'")
        return RunLog(sync_name, run_id, "failed", failure.started_at, failure.finished_at, {}, failure.error)
    status, error, finished_at = record.status, record.error, record.finished_at
    if failure is not None and status != "success":
        status = "failed"
        error = error or failure.error
        finished_at = finished_at or failure.finished_at
    return RunLog(
        sync_name=sync_name,
        run_id=run_id,
        status=status,
        started_at=record.started_at,
        finished_at=finished_at,
        counts=dict(record.counts or {}),
        error=error,
        watermark_used=record.watermark_used,
        next_watermark=record.next_watermark,
    )


def rejected_rows(store: ContactStore, sync_name: str, run_id: str) -> Iterator[list[RejectedRow]]:
    """The run's rejected rows from the store, streamed in chunks (a server-side cursor, flat memory)."""
    with store.engine().connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=CHUNK_ROWS).exec_driver_sql(
            """SELECT row_key, column_name, code, message, row::text, created_at FROM sync_rejections
            WHERE sync_name = %s AND run_id = %s ORDER BY id""",
            (sync_name, run_id),
        )
        for partition in result.partitions(CHUNK_ROWS):
            yield [tuple(row) for row in partition]  # type: ignore[misc]


def write_sync_log(
    project: ProjectConfig,
    sync_name: str,
    run_id: str,
    store: ContactStore,
    *,
    failure: FailureInfo | None = None,
    log: _Logger | None = None,
    warehouse_client: ClientSource | None = None,
) -> bool:
    """Append one run's log to its warehouse's `sync_logs` schema, when the warehouse has one.

    Returns True when written. Never raises: a log that cannot be written is a warning, never a failed sync.
    """
    log = log or _log
    sync = project.syncs.get(sync_name)
    config = project.warehouses.get(sync.warehouse) if sync else None
    if sync is None or config is None or getattr(config, "sync_logs", None) is None:
        return False
    try:
        writer = sync_log_writer(sync.warehouse, config, warehouse_client)
        if writer is None:
            return False
        summary = run_log(store, sync_name, run_id, failure)
        written = writer.append(summary, rejected_rows(store, sync_name, run_id))
    except Exception as exc:
        reason = str(exc) if isinstance(exc, SyncLogError) else f"{type(exc).__name__}: {exc}"
        log.warning(f"sync logs: run {run_id} of sync '{sync_name}' was not written: {reason}")
        return False
    log.info(
        f"sync logs: run {run_id} ({summary.status}) and {written} rejected row(s) appended to {writer.label}"
    )
    return True
