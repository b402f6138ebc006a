"""Salesforce connection settings and client: login, retries with backoff, one re-login, API usage; secrets
never shown."""

from __future__ import annotations

import csv
import io
import logging
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar
from urllib.parse import urlparse

import requests
from pydantic import BaseModel, ConfigDict, Field
from requests.adapters import HTTPAdapter
from simple_salesforce import Salesforce, SalesforceLogin
from simple_salesforce.bulk2 import Operation, _Bulk2Client
from simple_salesforce.exceptions import SalesforceAuthenticationFailed, SalesforceError

from conversion_sync.salesforce.budget import ApiBudget

DEFAULT_LOGIN_URL = "https://login.salesforce.com"
DEFAULT_API_VERSION = "59.0"
QUERY_PAGE_SIZE = 2000
"""Records per REST query page: Salesforce's maximum (and default) batch size."""

ENV_VARS = {
    "instance_url": "SALESFORCE_INSTANCE_URL",
    "access_token": "SALESFORCE_ACCESS_TOKEN",
    "username": "SALESFORCE_USERNAME",
    "password": "SALESFORCE_PASSWORD",
    "security_token": "SALESFORCE_SECURITY_TOKEN",
    "login_url": "SALESFORCE_LOGIN_URL",
    "ca_bundle": "SALESFORCE_CA_BUNDLE",
}
"""Settings field → the environment variable it is read from."""

_RETRYABLE_CODES = frozenset({"QUERY_TIMEOUT", "SERVER_UNAVAILABLE", "UNABLE_TO_LOCK_ROW"})
_BULK_NUMBER_TYPES = frozenset({"double", "currency", "percent"})
T = TypeVar("T")
log = logging.getLogger(__name__)


class SalesforceApiError(Exception):
    """A Salesforce call failed for good. The message never contains a password, token or session id."""


class SalesforceNotConfigured(SalesforceApiError):
    """No Salesforce credentials in the environment."""


class SalesforceAuthenticationError(SalesforceApiError):
    """Login failed, or the session was refused again after one re-login."""


class SalesforceUnavailable(SalesforceApiError):
    """Salesforce kept answering 503 / timing out after every retry."""


def _value(setting: str | None) -> str | None:
    """A setting's value; blank is None."""
    return setting.strip() if setting and setting.strip() else None


class SalesforceSettings(BaseModel):
    """A Salesforce org reached with simple-salesforce: an access token, or a username/password login.

    `connect()` gives a `SalesforceClient` for one run. `SalesforceSettings.from_env()` reads the
    SALESFORCE_* variables; Dagster jobs get their settings from the `salesforce` resource
    (conversion_sync.defs.resources), which keeps the secrets as environment variable references.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    instance_url: str | None = Field(default=None, description="with access_token: the org's instance URL")
    access_token: str | None = Field(default=None, description="an OAuth access token (session id)")
    username: str | None = Field(default=None, description="integration user for the SOAP login")
    password: str | None = Field(default=None, description="that user's password")
    security_token: str | None = Field(default=None, description="that user's security token")
    login_url: str | None = Field(
        default=None, description=f"login URL (sandbox / My Domain / stand-in); default {DEFAULT_LOGIN_URL}"
    )
    ca_bundle: str | None = Field(default=None, description="CA bundle file for a private CA")
    api_version: str = Field(default=DEFAULT_API_VERSION, description="REST API version, e.g. 59.0")
    max_attempts: int = Field(default=5, ge=1, description="attempts per call on 503 and timeouts")
    backoff_seconds: float = Field(default=1.0, ge=0, description="first retry delay; doubles per attempt")
    max_backoff_seconds: float = Field(default=30.0, ge=0, description="longest delay between attempts")
    request_timeout_seconds: float = Field(default=120.0, gt=0, description="HTTP timeout per request")
    bulk_poll_seconds: float = Field(default=2.0, ge=0, description="first wait between Bulk job polls")
    query_batch_size: int = Field(
        default=QUERY_PAGE_SIZE, ge=200, le=QUERY_PAGE_SIZE, description="records per REST query page"
    )

    @classmethod
    def from_env(cls, **overrides: Any) -> SalesforceSettings:
        """The settings for the SALESFORCE_* variables that are set, with `overrides` on top."""
        settings: dict[str, Any] = {
            field: os.environ[var] for field, var in ENV_VARS.items() if (os.environ.get(var) or "").strip()
        }
        return cls(**{**settings, **overrides})

    @property
    def not_configured_reason(self) -> str | None:
        """Why these settings cannot connect (no credentials), or None when they can."""
        if _value(self.instance_url) and _value(self.access_token):
            return None
        if _value(self.username) and _value(self.password):
            return None
        if _value(self.access_token) and not _value(self.instance_url):
            return "SALESFORCE_ACCESS_TOKEN is set but SALESFORCE_INSTANCE_URL is not"
        if _value(self.username) and not _value(self.password):
            return "SALESFORCE_USERNAME is set but SALESFORCE_PASSWORD is not"
        return (
            "no Salesforce credentials: set SALESFORCE_INSTANCE_URL + SALESFORCE_ACCESS_TOKEN, or "
            "SALESFORCE_USERNAME, SALESFORCE_PASSWORD and SALESFORCE_SECURITY_TOKEN "
            "(with SALESFORCE_LOGIN_URL for a sandbox, My Domain or the local stand-in)"
        )

    @property
    def configured(self) -> bool:
        return self.not_configured_reason is None

    def describe(self) -> str:
        """Where and how these settings connect, safe to show."""
        if _value(self.instance_url) and _value(self.access_token):
            return f"{_value(self.instance_url)} (access token)"
        return f"{_value(self.login_url) or DEFAULT_LOGIN_URL} as {_value(self.username)}"

    def connect(
        self, budget: ApiBudget | None = None, logger: logging.Logger | None = None
    ) -> SalesforceClient:
        """A logged-in client for one run; raises SalesforceNotConfigured without credentials."""
        reason = self.not_configured_reason
        if reason:
            raise SalesforceNotConfigured(reason)
        client = SalesforceClient(self, budget or ApiBudget(), logger or log)
        client.login()
        return client


@dataclass
class QueryPage:
    """One page of a REST query: its records and where the next page is."""

    records: list[dict[str, Any]]
    total_size: int
    next_records_url: str | None


class _TimeoutAdapter(HTTPAdapter):
    """Gives every request a timeout (simple-salesforce's Bulk and login calls pass none)."""

    def __init__(self, timeout: float) -> None:
        super().__init__()
        self._timeout = timeout

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self._timeout
        return super().send(request, **kwargs)


class SalesforceClient:
    """One run's connection: every call is retried on 503/timeouts, re-logs in once on INVALID_SESSION_ID,
    is checked against the API budget first, and is counted (with the org's usage from Sforce-Limit-Info)."""

    def __init__(self, settings: SalesforceSettings, budget: ApiBudget, logger: logging.Logger) -> None:
        self.settings = settings
        self.budget = budget
        self.log = logger
        self.logins = 0
        self._secrets = [
            s
            for s in (
                _value(settings.password),
                _value(settings.security_token),
                _value(settings.access_token),
            )
            if s
        ]
        self._session = requests.Session()
        self._session.trust_env = False
        self._session.verify = _value(settings.ca_bundle) or True
        adapter = _TimeoutAdapter(settings.request_timeout_seconds)
        self._session.mount("https://", adapter)
        self._session.mount("http://", adapter)
        self._session.hooks["response"].append(self._count_call)
        self._sf: Salesforce | None = None

    # -- connection -------------------------------------------------------------------------

    def login(self, *, fresh: bool = False) -> None:
        """Connect with the access token, or log in with username/password (always when `fresh`)."""
        settings = self.settings
        version = settings.api_version
        instance_url, token = _value(settings.instance_url), _value(settings.access_token)
        if instance_url and token and not fresh:
            self._sf = Salesforce(
                session_id=token, instance_url=instance_url, session=self._session, version=version
            )
            return
        username, password = _value(settings.username), _value(settings.password)
        if not (username and password):
            raise SalesforceAuthenticationError(
                "Salesforce refused the access token (INVALID_SESSION_ID) and there is no username/password "
                "to log in again: set a fresh SALESFORCE_ACCESS_TOKEN or SALESFORCE_USERNAME/PASSWORD"
            )
        login_url = (_value(settings.login_url) or DEFAULT_LOGIN_URL).rstrip("/")

        def soap_login() -> tuple[str, str]:
            try:
                return SalesforceLogin(
                    username=username,
                    password=password,
                    security_token=_value(settings.security_token) or "",
                    scratch_url=login_url,
                    session=self._session,
                    sf_version=version,
                )
            except SalesforceAuthenticationFailed as exc:
                raise SalesforceAuthenticationError(
                    self.redact(f"Salesforce login at {login_url} as {username} failed: {exc}")
                ) from None

        session_id, host = self._with_retries(f"login at {login_url}", soap_login)
        self._secrets.append(session_id)
        self.logins += 1
        self._sf = Salesforce(
            session_id=session_id, instance_url=f"https://{host}", session=self._session, version=version
        )

    def close(self) -> None:
        self._session.close()

    def redact(self, text: str) -> str:
        """`text` with every password, token and session id of this client replaced."""
        for secret in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(secret, "[redacted]")
        return text

    def _count_call(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        if "/services/data/" in urlparse(response.url).path:
            self.budget.record_call(response.headers.get("Sforce-Limit-Info"))

    # -- the call wrapper -------------------------------------------------------------------

    def _backoff(self, attempt: int) -> float:
        base = self.settings.backoff_seconds * (2 ** (attempt - 1))
        return min(self.settings.max_backoff_seconds, base) * random.uniform(0.8, 1.2)

    def _with_retries(self, what: str, call: Callable[[], T]) -> T:
        """`call()`, retried with exponential backoff on 503, QUERY_TIMEOUT and network timeouts."""
        attempts = self.settings.max_attempts
        for attempt in range(1, attempts + 1):
            try:
                return call()
            except requests.exceptions.SSLError as exc:
                raise SalesforceApiError(
                    self.redact(
                        f"Salesforce {what}: TLS verification failed ({exc}); for a private CA set "
                        "SALESFORCE_CA_BUNDLE to its certificate file"
                    )
                ) from None
            except (requests.Timeout, requests.ConnectionError) as exc:
                problem = type(exc).__name__
            except SalesforceError as exc:
                code = _error_code(exc)
                if exc.status != 503 and code not in _RETRYABLE_CODES:
                    raise
                problem = f"HTTP {exc.status} {code or ''}".strip()
            if attempt == attempts:
                raise SalesforceUnavailable(
                    f"Salesforce {what}: {problem} on all {attempts} attempts; giving up"
                ) from None
            delay = self._backoff(attempt)
            self.log.warning(
                f"Salesforce {what}: {problem}; retrying in {delay:.1f}s (attempt {attempt} of {attempts})"
            )
            time.sleep(delay)
        raise AssertionError("unreachable")

    def call(self, what: str, request: Callable[[Salesforce], T]) -> T:
        """Run `request(sf)` as one API call: budget first, retries, one re-login, errors without secrets."""
        relogged = False
        while True:
            self.budget.ensure_can_call()
            assert self._sf is not None
            try:
                return self._with_retries(what, partial(request, self._sf))
            except SalesforceError as exc:
                code = _error_code(exc)
                if exc.status == 401 and code == "INVALID_SESSION_ID":
                    if relogged:
                        raise SalesforceAuthenticationError(
                            f"Salesforce {what}: the session was refused again (INVALID_SESSION_ID) right "
                            "after logging in anew; check the integration user's session settings"
                        ) from None
                    self.log.warning(
                        f"Salesforce {what}: session expired (INVALID_SESSION_ID); logging in again"
                    )
                    self.login(fresh=True)
                    relogged = True
                    continue
                if code == "REQUEST_LIMIT_EXCEEDED":
                    raise self.budget.limit_exceeded() from None
                raise SalesforceApiError(
                    self.redact(f"Salesforce {what} failed: HTTP {exc.status} {_error_text(exc)}")
                ) from None

    # -- REST queries -----------------------------------------------------------------------

    def _batch_size_header(self) -> dict[str, str]:
        return {"Sforce-Query-Options": f"batchSize={self.settings.query_batch_size}"}

    def query(self, soql: str, *, include_deleted: bool = False) -> QueryPage:
        """The first page (up to 2000 records) of a SOQL query; `include_deleted` uses queryAll."""
        result = self.call(
            "query",
            lambda sf: sf.query(soql, include_deleted=include_deleted, headers=self._batch_size_header()),
        )
        return _page(result)

    def query_more(self, next_records_url: str) -> QueryPage:
        """The page at a previous page's nextRecordsUrl."""
        result = self.call(
            "query_more",
            lambda sf: sf.query_more(
                next_records_url, identifier_is_url=True, headers=self._batch_size_header()
            ),
        )
        return _page(result)

    def field_types(self, sobject: str) -> dict[str, str]:
        """Field name → Salesforce type (string, boolean, int, double, datetime, reference, …)."""
        described = self.call(f"describe {sobject}", lambda sf: getattr(sf, sobject).describe())
        return {f["name"]: f["type"] for f in described["fields"]}

    # -- Bulk API 2.0 -----------------------------------------------------------------------

    def bulk_query(
        self,
        sobject: str,
        soql: str,
        *,
        include_deleted: bool,
        field_types: dict[str, str],
        max_records: int = 50_000,
    ) -> Iterator[list[dict[str, Any]]]:
        """Run a Bulk API 2.0 query job and yield its result chunks as REST-shaped records (typed values)."""
        operation = Operation.query_all if include_deleted else Operation.query
        job = self.call("Bulk API 2.0 query job", partial(_create_bulk_query, sobject, operation, soql))
        job_id = job["id"]
        delay = self.settings.bulk_poll_seconds
        while True:
            info = self.call("Bulk API 2.0 job status", partial(_bulk_job_info, sobject, job_id))
            state = info["state"]
            if state == "JobComplete":
                break
            if state in ("Failed", "Aborted"):
                raise SalesforceApiError(
                    self.redact(f"Bulk API 2.0 query job {job_id} {state}: {info.get('errorMessage') or ''}")
                )
            time.sleep(delay)
            delay = min(max(delay * 2, 0.05), self.settings.max_backoff_seconds)
        locator = ""
        types = {name.lower(): field_type for name, field_type in field_types.items()}
        while True:
            chunk = self.call(
                "Bulk API 2.0 results", partial(_bulk_results, sobject, job_id, locator, max_records)
            )
            yield _typed_csv_records(chunk["records"], types)
            locator = chunk["locator"]
            if not locator:
                return


def _bulk_client(sf: Salesforce, sobject: str) -> _Bulk2Client:
    """simple-salesforce's Bulk API 2.0 client for `sobject`, with the connection's current session."""
    return getattr(sf.bulk2, sobject)._client  # type: ignore[no-any-return]


def _create_bulk_query(sobject: str, operation: Operation, soql: str, sf: Salesforce) -> dict[str, Any]:
    return _bulk_client(sf, sobject).create_job(operation, soql)  # type: ignore[no-any-return]


def _bulk_job_info(sobject: str, job_id: str, sf: Salesforce) -> dict[str, Any]:
    return _bulk_client(sf, sobject).get_job(job_id, True)  # type: ignore[no-any-return]


def _bulk_results(sobject: str, job_id: str, locator: str, max_records: int, sf: Salesforce) -> Any:
    return _bulk_client(sf, sobject).get_query_results(job_id, locator, max_records)


def _page(result: dict[str, Any]) -> QueryPage:
    return QueryPage(
        records=list(result.get("records") or []),
        total_size=int(result.get("totalSize") or 0),
        next_records_url=None if result.get("done", True) else result.get("nextRecordsUrl"),
    )


def _error_code(exc: SalesforceError) -> str | None:
    content = exc.content
    if isinstance(content, list) and content and isinstance(content[0], dict):
        return content[0].get("errorCode")
    return None


def _error_text(exc: SalesforceError) -> str:
    content = exc.content
    if isinstance(content, list) and content and isinstance(content[0], dict):
        return "; ".join(f"{c.get('errorCode')}: {c.get('message')}" for c in content if isinstance(c, dict))
    return str(content)[:500]


def _typed_csv_records(text: str, field_types: dict[str, str]) -> list[dict[str, Any]]:
    """Bulk CSV (all text, empty = null) → records typed like the REST API's JSON (`field_types` keyed lower-case)."""
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if not header:
        return []
    converters = [_bulk_converter(field_types.get(name.lower(), "string")) for name in header]
    return [
        {name: convert(cell) for name, convert, cell in zip(header, converters, row, strict=False)}
        for row in reader
        if row
    ]


def _bulk_converter(field_type: str) -> Callable[[str], Any]:
    if field_type == "boolean":
        return lambda cell: None if cell == "" else cell.lower() == "true"
    if field_type == "int":
        return lambda cell: None if cell == "" else int(float(cell))
    if field_type in _BULK_NUMBER_TYPES:
        return lambda cell: None if cell == "" else float(cell)
    return lambda cell: cell or None
