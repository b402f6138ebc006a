"""POST alert payloads as JSON to CONVERSION_ALERT_WEBHOOK_URL: timeouts, bounded retries, secrets scrubbed."""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests

WEBHOOK_URL_ENV = "CONVERSION_ALERT_WEBHOOK_URL"
WEBSERVER_URL_ENV = "DAGSTER_WEBSERVER_URL"
DEFAULT_WEBSERVER_URL = "http://127.0.0.1:3000"

CONNECT_TIMEOUT_S = 3.05
READ_TIMEOUT_S = 5.0
ATTEMPTS = 3
BACKOFF_S = 1.0
COOL_DOWN_S = 60.0
"""After a delivery to an endpoint has failed, further alerts to it within this window get one attempt only,
so a dead webhook cannot push a sensor tick past Dagster's evaluation timeout."""

RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
SECRET_ENV_NAMES = re.compile(r"PASSWORD|SECRET|TOKEN|PRIVATE_KEY|CREDENTIAL|API_KEY", re.IGNORECASE)
"""Environment variables whose values never leave the process in an alert."""
URL_ENV_NAMES = ("CONVERSION_STORE_URL", "DAGSTER_PG_URL", WEBHOOK_URL_ENV)
"""Environment variables holding URLs that may embed credentials (the webhook's path often is its token)."""
REDACTED = "***"

_URL_PASSWORD = re.compile(r"(?P<prefix>[A-Za-z][A-Za-z0-9+.\-]*://[^:/?#@\s]*:)(?P<password>[^@/?#\s]+)@")
_failed_endpoints: dict[str, float] = {}
_failed_lock = threading.Lock()


class AlertNotDelivered(Exception):
    """The webhook did not accept an alert after all attempts; the message names only its host."""


@dataclass(frozen=True)
class Delivery:
    """How posting one alert went."""

    delivered: bool
    attempts: int
    status: int | None = None
    error: str | None = None


def webhook_url() -> str | None:
    """The alert webhook, or None when alerts are not configured."""
    return os.environ.get(WEBHOOK_URL_ENV, "").strip() or None


def run_page_url(run_id: str) -> str:
    """Link to a run's page in the Dagster UI, from $DAGSTER_WEBSERVER_URL (default http://127.0.0.1:3000)."""
    base = os.environ.get(WEBSERVER_URL_ENV, "").strip() or DEFAULT_WEBSERVER_URL
    return f"{base.rstrip('/')}/runs/{run_id}"


def describe_endpoint(url: str) -> str:
    """scheme://host[:port] of a URL: safe to log (webhook paths and queries often carry tokens)."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


def secret_values(env_names: Iterable[str] = ()) -> list[str]:
    """Values that must not appear in an alert: secret-looking and named environment variables, URL passwords."""
    names = {name for name in os.environ if SECRET_ENV_NAMES.search(name)} | set(env_names)
    values = {os.environ[name] for name in names if os.environ.get(name)}
    for name in URL_ENV_NAMES:
        match = _URL_PASSWORD.search(os.environ.get(name, ""))
        if match:
            values.add(match.group("password"))
    webhook = webhook_url()
    if webhook:
        parts = urlsplit(webhook)
        values.update(p for p in (parts.path.strip("/"), parts.query) if len(p) >= 8)
    # longest first, so a secret containing another is replaced whole; very short values would mangle text
    return sorted((v for v in values if len(v) >= 4), key=len, reverse=True)


def scrub(value: Any, secrets: Sequence[str]) -> Any:
    """The value with every secret and every URL password replaced by ***, recursively through dicts and lists."""
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, REDACTED)
        return _URL_PASSWORD.sub(lambda m: f"{m.group('prefix')}{REDACTED}@", value)
    if isinstance(value, dict):
        return {key: scrub(item, secrets) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(item, secrets) for item in value]
    return value


def post_json(
    url: str,
    payload: dict[str, Any],
    *,
    attempts: int | None = None,
    timeout: tuple[float, float] | None = None,
    backoff_s: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Delivery:
    """POST the payload; retry timeouts, connection errors, 429 and 5xx with exponential backoff.

    Defaults: ATTEMPTS attempts, (CONNECT_TIMEOUT_S, READ_TIMEOUT_S) per attempt, BACKOFF_S doubling between them.
    Never raises for delivery problems: the caller decides what a failed delivery means. Other 4xx answers
    are not retried (the request itself is wrong). An endpoint that failed within COOL_DOWN_S gets one attempt.
    """
    attempts = ATTEMPTS if attempts is None else attempts
    timeout = timeout or (CONNECT_TIMEOUT_S, READ_TIMEOUT_S)
    backoff_s = BACKOFF_S if backoff_s is None else backoff_s
    endpoint = describe_endpoint(url)
    with _failed_lock:
        failed_at = _failed_endpoints.get(endpoint)
    if failed_at is not None and time.monotonic() - failed_at < COOL_DOWN_S:
        attempts = 1
    status: int | None = None
    error = "no attempt made"
    attempt = 0
    for attempt in range(1, max(1, attempts) + 1):
        try:
            response = requests.post(
                url,
                json=payload,
                timeout=timeout,
                headers={"User-Agent": "conversion-sync-alerts/1"},
                allow_redirects=False,
            )
        except requests.Timeout:
            status, error, retry = (
                None,
                f"timed out after {timeout[0]:g}s connect / {timeout[1]:g}s read",
                True,
            )
        except requests.RequestException as exc:
            status, error, retry = None, f"{type(exc).__name__}: could not reach {endpoint}", True
        else:
            status = response.status_code
            if 200 <= status < 300:
                with _failed_lock:
                    _failed_endpoints.pop(endpoint, None)
                return Delivery(True, attempt, status)
            error = f"{endpoint} answered HTTP {status}"
            retry = status in RETRY_STATUSES
        if not retry or attempt >= attempts:
            break
        sleep(backoff_s * 2 ** (attempt - 1))
    with _failed_lock:
        _failed_endpoints[endpoint] = time.monotonic()
    return Delivery(False, attempt, status, error)


def forget_failed_endpoints() -> None:
    """Clear the cool-down memory of failed endpoints (a new process starts with none)."""
    with _failed_lock:
        _failed_endpoints.clear()


def send_alert(payload: dict[str, Any], *, extra_secret_env: Iterable[str] = ()) -> Delivery | None:
    """Scrub and POST one alert to the configured webhook; None when no webhook is configured.

    Raises AlertNotDelivered when the webhook did not accept it, so the sensor tick shows the failure.
    """
    url = webhook_url()
    if url is None:
        return None
    delivery = post_json(url, scrub(payload, secret_values(extra_secret_env)))
    if not delivery.delivered:
        raise AlertNotDelivered(
            f"alert {payload.get('event')} for run {payload.get('run_id')} was not delivered to "
            f"{describe_endpoint(url)} after {delivery.attempts} attempt(s): {delivery.error}"
        )
    return delivery
