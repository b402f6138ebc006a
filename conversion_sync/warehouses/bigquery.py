"""BigQuery warehouse: google-cloud-bigquery's client (built by dagster-gcp's BigQueryResource in production),
checked with a dry run, streamed page by page."""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import threading
from collections.abc import Iterator
from typing import Any

import google.auth
import google.auth.exceptions
import pyarrow as pa
import requests
from google.api_core import exceptions as api_exceptions
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials, Credentials
from google.cloud import bigquery
from google.cloud.bigquery.retry import DEFAULT_RETRY

from conversion_sync.config.warehouses import BigQueryWarehouseConfig
from conversion_sync.warehouses.base import (
    DEFAULT_BATCH_ROWS,
    JSON_TEXT,
    ClientSource,
    Warehouse,
    WarehouseError,
    bounded_batches,
    check_batch_rows,
    mark_source_type,
    plain_arrow_types,
    utc_moment,
)

_SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
_SECRET_KEYS = ("private_key", "private_key_id", "client_secret", "refresh_token")
_CONNECTION_ERRORS = (
    google.auth.exceptions.GoogleAuthError,
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    api_exceptions.Unauthorized,
)


class BigQueryWarehouse(Warehouse):
    """A BigQuery project, queried with `google.cloud.bigquery.Client`.

    Two ways to the client:
    - production (no `api_endpoint`): dagster-gcp's `BigQueryResource` (project, location, gcp_credentials)
      builds it, the same resource the code location exposes as `bigquery_<warehouse>`. Its credentials go
      through a temporary key file named by GOOGLE_APPLICATION_CREDENTIALS while the client is built; that
      is serialised by a process-wide lock (the client keeps the loaded credentials, not the file);
    - `api_endpoint` set (an emulator, the test stand-in): the client is built directly, with in-memory
      credentials (anonymous when none are configured) and that endpoint.

    Credentials: `credentials` is the service-account (or other Google credential) JSON text, or its
    base64; without it, Application Default Credentials are used.

    Read-only: BigQuery has no read-only jobs, so every query is first dry-run (free, runs nothing)
    and anything whose statement type is not SELECT is rejected before it runs.

    Results are read through the REST API (`RowIterator.to_arrow_iterable()`), one page of at most
    `batch_rows` rows at a time.

    Time zone: BigQuery runs in UTC. `query_started_at` is the query job's creation time on BigQuery's
    clock (it reads the tables as of its start, which is later).
    """

    kind = "bigquery"

    def __init__(
        self,
        name: str,
        config: BigQueryWarehouseConfig,
        *,
        retry_timeout: float = 120.0,
        client_source: ClientSource | None = None,
    ) -> None:
        super().__init__(name)
        self.config = config
        self.retry_timeout = retry_timeout
        self._client: bigquery.Client | None = None
        self._client_source = client_source
        """In a Dagster run, the code location's `bigquery_<warehouse>` resource's `get_client` (production)."""
        self._client_scope = contextlib.ExitStack()

    def _credentials_info(self) -> dict[str, Any] | None:
        """The configured credentials parsed (None when none are configured); their secrets remembered."""
        text = self._resolve(self.config.credentials, secret=True)
        if not text:
            return None
        info = _credentials_info(text)
        if info is None:
            raise self._connection_error(
                "credentials are not Google credentials JSON (service-account key file contents, or its base64)"
            )
        self._add_secret(*(str(info[k]) for k in _SECRET_KEYS if info.get(k)))
        return info

    def _credentials(self, endpoint: str | None) -> Credentials | None:
        info = self._credentials_info()
        if info is None:
            return AnonymousCredentials() if endpoint else None
        try:
            credentials, _ = google.auth.load_credentials_from_dict(info, scopes=_SCOPES)
        except Exception as exc:
            raise self._connection_error(f"credentials are not usable: {exc}") from None
        return credentials

    def _connect(self) -> bigquery.Client:
        if self._client is None:
            c = self.config
            project = self._resolve(c.project)
            location = self._resolve(c.location)
            endpoint = self._resolve(c.api_endpoint)
            if not endpoint and self._client_source is not None:
                try:
                    self._client = self._client_scope.enter_context(self._client_source())
                except Exception as exc:
                    raise self._connection_error(_api_message(exc)) from None
                return self._client
            if not endpoint:
                self._client = self._client_from_resource(project, location)
                return self._client
            credentials = self._credentials(endpoint)
            try:
                self._client = bigquery.Client(
                    project=project,
                    location=location,
                    credentials=credentials,
                    client_options=ClientOptions(api_endpoint=endpoint),
                )
            except Exception as exc:
                raise self._connection_error(_api_message(exc)) from None
        return self._client

    def _client_from_resource(self, project: str | None, location: str | None) -> bigquery.Client:
        """The production client, built by dagster-gcp's BigQueryResource from the resolved settings (imported
        here: the engine's modules load no Dagster code until a production BigQuery client is built)."""
        from dagster_gcp import BigQueryResource

        info = self._credentials_info()
        encoded = base64.b64encode(json.dumps(info).encode()).decode() if info is not None else None
        self._add_secret(encoded)
        resource = BigQueryResource(project=project, location=location, gcp_credentials=encoded)
        try:
            with _RESOURCE_CLIENT_LOCK, resource.get_client() as client:
                return client
        except Exception as exc:
            raise self._connection_error(_api_message(exc)) from None

    def stream(self, sql: str, batch_rows: int = DEFAULT_BATCH_ROWS) -> Iterator[pa.RecordBatch]:
        return self._batches(sql, check_batch_rows(batch_rows))

    def _batches(self, sql: str, batch_rows: int) -> Iterator[pa.RecordBatch]:
        client = self._connect()
        retry = DEFAULT_RETRY.with_timeout(self.retry_timeout)
        try:
            dry_run = client.query(
                sql,
                job_config=bigquery.QueryJobConfig(dry_run=True, use_query_cache=False),
                retry=retry,
                job_retry=None,
            )
            if dry_run.statement_type != "SELECT":
                raise self._query_error(
                    f"only SELECT statements can be synced; this is a {dry_run.statement_type} statement "
                    "(checked with a dry run, nothing was executed)"
                )
            job = client.query(sql, retry=retry)
            rows = job.result(page_size=batch_rows, retry=retry)
            self.query_started_at = utc_moment(job.created or job.started)
            for batch in bounded_batches(rows.to_arrow_iterable(), batch_rows):
                yield plain_arrow_types(_mark_json(batch))
        except WarehouseError:
            raise
        except Exception as exc:
            raise self.failure(exc) from None

    def failure(self, exc: BaseException) -> WarehouseError:
        """A client exception as this warehouse's error (raise it `from None`): a connection error when the
        API or the token endpoint could not be reached or refused the credentials (also after retries),
        else a query error; the message is the API's own text, scrubbed of the credentials."""
        if isinstance(exc, WarehouseError):
            return exc
        cause = (exc.cause or exc) if isinstance(exc, api_exceptions.RetryError) else exc
        if isinstance(cause, _CONNECTION_ERRORS):
            return self._connection_error(_api_message(cause))
        return self._query_error(_api_message(cause))

    def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            with contextlib.suppress(Exception):
                client.close()
        with contextlib.suppress(Exception):
            self._client_scope.close()


_RESOURCE_CLIENT_LOCK = threading.Lock()
"""BigQueryResource points the process's GOOGLE_APPLICATION_CREDENTIALS at a temporary key file while it
builds a client: one client at a time per process."""


_EXTENSION_NAME = b"ARROW:extension:name"
_JSON_SQL_TYPE = b"google:sqlType:json"


def _mark_json(batch: pa.RecordBatch) -> pa.RecordBatch:
    """JSON columns (text the client tags `google:sqlType:json` in the field metadata) marked JSON_TEXT."""
    marks = [
        i for i, f in enumerate(batch.schema) if (f.metadata or {}).get(_EXTENSION_NAME) == _JSON_SQL_TYPE
    ]
    if not marks:
        return batch
    schema = batch.schema
    for i in marks:
        schema = schema.set(i, mark_source_type(schema.field(i), JSON_TEXT))
    return pa.RecordBatch.from_arrays(batch.columns, schema=schema)


def _credentials_info(text: str) -> dict[str, Any] | None:
    """Parse credentials JSON text, or base64 of it; None if it is neither."""
    candidates = [text]
    with contextlib.suppress(binascii.Error, UnicodeDecodeError, ValueError):
        candidates.append(base64.b64decode(text, validate=False).decode("utf-8"))
    for candidate in candidates:
        try:
            info = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(info, dict):
            return info
    return None


def _api_message(exc: BaseException) -> str:
    """The API's own error text, without the request line the client prepends."""
    if isinstance(exc, api_exceptions.GoogleAPICallError):
        errors = [
            str(e.get("message")) for e in (exc.errors or []) if isinstance(e, dict) and e.get("message")
        ]
        return "; ".join(dict.fromkeys(errors)) if errors else str(exc.message)
    return str(exc)
