"""Alerts: webhook delivery (timeouts, retries, no secrets) and the sensors, against a local HTTP receiver."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from conversion_sync.alerts import webhook
from conversion_sync.alerts.webhook import (
    WEBHOOK_URL_ENV,
    WEBSERVER_URL_ENV,
    AlertNotDelivered,
    post_json,
    scrub,
    secret_values,
)
from conversion_sync.config import ProjectConfig, load_project_config
from conversion_sync.definitions import build_definitions
from conversion_sync.defs.alerts import alert_sensors
from conversion_sync.store.contact_store import ContactStore

from .test_e2e.webhook_receiver import WebhookReceiver

SECRET_IN_QUERY = "hunter2-very-secret-value"


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    webhook.forget_failed_endpoints()
    with WebhookReceiver() as server:
        yield server
    webhook.forget_failed_endpoints()


@pytest.fixture
def alerting(receiver: WebhookReceiver, monkeypatch: pytest.MonkeyPatch) -> WebhookReceiver:
    """Alerts go to the receiver; run links point at a made-up production UI; retries are quick."""
    monkeypatch.setenv(WEBHOOK_URL_ENV, receiver.url)
    monkeypatch.setenv(WEBSERVER_URL_ENV, "https://dagster.example.com/")
    monkeypatch.setattr(webhook, "BACKOFF_S", 0.01)
    monkeypatch.setattr(webhook, "READ_TIMEOUT_S", 1.0)
    return receiver


@pytest.fixture
def project(tmp_path: Path, store_url: str, monkeypatch: pytest.MonkeyPatch) -> ProjectConfig:
    """A DuckDB warehouse with `people` (1 of 4 rows is bad), and a sync whose query fails quoting a secret."""
    path = tmp_path / "warehouse.duckdb"
    with duckdb.connect(str(path)) as con:
        con.execute(
            """CREATE TABLE people AS SELECT * FROM (VALUES ('ada@example.com', 'Ada'),
               ('bo@example.com', 'Bo'), ('cy@example.com', 'Cy'), ('not-an-email', 'Bad')) t(email, first_name)"""
        )
    config = tmp_path / "config"
    config.mkdir()
    (config / "warehouses.yaml").write_text(f"warehouses:\n  wh: {{type: duckdb, path: '{path}'}}\n")
    (config / "people.yaml").write_text(
        "name: people\nwarehouse: wh\ndestination: {type: contacts}\nquery: SELECT email, first_name FROM people\n"
    )
    (config / "broken.yaml").write_text(
        "name: broken\nwarehouse: wh\ndestination: {type: contacts}\n"
        f"query: SELECT email FROM people WHERE first_name = CAST('{SECRET_IN_QUERY}' AS INTEGER)\n"
    )
    monkeypatch.setenv("CS_ALERT_TEST_TOKEN", SECRET_IN_QUERY)  # a secret-looking variable holding the value
    loaded = load_project_config(config)
    assert not loaded.problems, loaded.problems
    return loaded


class Location:
    """The code location for a config, an instance, and its alert sensors evaluated tick by tick."""

    def __init__(self, project: ProjectConfig, instance: dg.DagsterInstance, store_url: str) -> None:
        self.defs = build_definitions(project)
        self.instance = instance
        self.store_url = store_url
        self.sensors = {sensor.name: sensor for sensor in alert_sensors(project)}
        self.cursors: dict[str, str | None] = {}
        for name in self.sensors:
            self.tick(name)  # the first tick only places the cursor after existing runs

    def tick(self, name: str, store_url: str | None = None) -> dg.SensorExecutionData:
        context = dg.build_sensor_context(
            instance=self.instance,
            cursor=self.cursors.get(name),
            resources={"contact_store": ContactStore(url=store_url or self.store_url)},
        )
        data = self.sensors[name].evaluate_tick(context)
        self.cursors[name] = data.cursor
        return data

    def run_job(self, job: str) -> dg.ExecuteInProcessResult:
        return self.defs.resolve_job_def(job).execute_in_process(instance=self.instance, raise_on_error=False)

    def materialize(self, asset: str) -> dg.ExecuteInProcessResult:
        job = self.defs.resolve_implicit_global_asset_job_def()
        return job.execute_in_process(
            instance=self.instance, asset_selection=[dg.AssetKey(asset)], raise_on_error=False
        )


@pytest.fixture
def location(project: ProjectConfig, store_url: str) -> Iterator[Location]:
    with dg.instance_for_test() as instance:
        yield Location(project, instance, store_url)


def reaction_errors(data: dg.SensorExecutionData) -> list[str]:
    return [str(r.error.message) for r in data.dagster_run_reactions or [] if r.error is not None]


# --- delivery -------------------------------------------------------------------------------------------


def test_delivers_json(receiver: WebhookReceiver) -> None:
    delivery = post_json(receiver.url, {"event": "run_failed", "count": 3})
    assert delivery.delivered and delivery.attempts == 1 and delivery.status == 200
    (request,) = receiver.received
    assert request.json == {"event": "run_failed", "count": 3}
    assert request.headers["Content-Type"] == "application/json"
    assert request.path == f"/hooks/{receiver.token}"


def test_retries_server_errors_and_timeouts_with_backoff(receiver: WebhookReceiver) -> None:
    receiver.script(503, (200, 1.5))  # an overloaded server, then one slower than the read timeout
    slept: list[float] = []
    delivery = post_json(
        receiver.url, {"n": 1}, attempts=4, timeout=(1.0, 0.5), backoff_s=0.05, sleep=slept.append
    )
    assert delivery.delivered and delivery.attempts == 3
    assert slept == [0.05, 0.1]
    assert [r.status for r in receiver.received] == [503, 200, 200]


def test_client_errors_are_not_retried(receiver: WebhookReceiver) -> None:
    receiver.script(400)
    delivery = post_json(receiver.url, {"n": 1}, sleep=lambda s: None)
    assert not delivery.delivered
    assert delivery.attempts == 1 and delivery.status == 400
    assert len(receiver.received) == 1


def test_dead_endpoint_error_names_only_the_host_and_cools_down() -> None:
    webhook.forget_failed_endpoints()
    with WebhookReceiver() as closed:
        url = closed.url
    slept: list[float] = []
    first = post_json(url, {"n": 1}, sleep=slept.append)
    assert not first.delivered and first.attempts == 3 and first.status is None
    assert "T0KEN" not in (first.error or "") and "127.0.0.1" in (first.error or "")
    second = post_json(url, {"n": 2}, sleep=slept.append)
    assert second.attempts == 1, "a recently failed endpoint gets one attempt, not three"
    webhook.forget_failed_endpoints()


def test_scrub_removes_environment_secrets_and_url_passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SNOWFLAKE_PASSWORD", "s3cr3t-pass")
    monkeypatch.setenv("APP_DB_URL", "postgresql://app:db-pass-123@db.internal:5432/app")
    monkeypatch.setenv("CONVERSION_STORE_URL", "postgresql://store:store-pass-456@store:5432/c")
    secrets = secret_values(["APP_DB_URL"])
    payload = {
        "error": "login failed with s3cr3t-pass at postgresql://app:db-pass-123@db.internal:5432/app",
        "nested": [{"text": "postgresql://u:other-pass@h/db"}, 7, None],
        "store": "store-pass-456 leaked",
    }
    cleaned = scrub(payload, secrets)
    text = repr(cleaned)
    for secret in ("s3cr3t-pass", "db-pass-123", "other-pass", "store-pass-456"):
        assert secret not in text
    assert cleaned["nested"][1:] == [7, None]
    assert "postgresql://u:***@h/db" in text


# --- the sensors ----------------------------------------------------------------------------------------


def test_failed_sync_posts_alert_with_error_link_and_no_secrets(
    alerting: WebhookReceiver, location: Location
) -> None:
    result = location.run_job("sync_broken")
    assert not result.success
    data = location.tick("alert_on_run_failure")
    assert reaction_errors(data) == []
    (request,) = alerting.received
    alert = request.json
    run_id = result.run_id
    assert alert["event"] == "run_failed"
    assert alert["sync"] == "broken" and alert["syncs"] == ["broken"]
    assert alert["job"] == "sync_broken"
    assert alert["run_id"] == run_id
    assert alert["run_url"] == f"https://dagster.example.com/runs/{run_id}"
    assert alert["status"] == "FAILURE"
    assert "Conversion Error" in alert["error"] and "CAST('***' AS INTEGER)" in alert["error"]
    assert "warehouse 'wh' (duckdb): query failed" in alert["error"]
    assert alert["failed_steps"] == ["broken_steps.broken_query"]
    assert alert["started_at"] and alert["finished_at"]
    assert "broken failed" in alert["text"]
    assert SECRET_IN_QUERY not in request.raw.decode(), "the query's secret literal must be scrubbed"
    assert alerting.token not in request.raw.decode()
    assert location.tick("alert_on_run_failure").dagster_run_reactions in (None, []), "each run alerts once"
    assert len(alerting.received) == 1


def test_failure_alert_goes_out_without_counts_when_the_store_is_down(
    alerting: WebhookReceiver, location: Location
) -> None:
    result = location.run_job("sync_broken")
    with WebhookReceiver() as closed:  # a port nothing listens on any more
        down = f"postgresql://store:pw@127.0.0.1:{closed.url.split(':')[2].split('/')[0]}/store"
    started = time.monotonic()
    assert reaction_errors(location.tick("alert_on_run_failure", store_url=down)) == []
    assert time.monotonic() - started < 10
    (request,) = alerting.received
    assert request.json["run_id"] == result.run_id and request.json["counts"] is None
    assert "query failed" in request.json["error"], "the step's error stands in for the store's record"


def test_run_launched_from_the_asset_graph_names_its_sync(
    alerting: WebhookReceiver, location: Location
) -> None:
    result = location.materialize("sync_broken")
    assert not result.success and result.dagster_run.job_name == "__ASSET_JOB"
    location.tick("alert_on_run_failure")
    (request,) = alerting.received
    assert request.json["sync"] == "broken" and request.json["job"] == "__ASSET_JOB"


def test_rejected_rate_above_threshold_posts_alert(alerting: WebhookReceiver, location: Location) -> None:
    result = location.run_job("sync_people")
    assert result.success, "a failed rejected_row_rate check (WARN) does not fail the run"
    location.tick("alert_on_run_failure")
    assert alerting.received == []
    data = location.tick("alert_on_rejected_rows")
    assert reaction_errors(data) == []
    (request,) = alerting.received
    alert = request.json
    assert alert["event"] == "rejected_rows_above_threshold"
    assert alert["sync"] == "people" and alert["check"] == "rejected_row_rate"
    assert (alert["rejected"], alert["queried"], alert["rate"], alert["threshold"]) == (1, 4, 0.25, 0.1)
    assert alert["severity"] == "WARN"
    assert alert["counts"]["added"] == 3 and alert["counts"]["rejected"] == 1
    assert (
        alert["rejected_download"]
        == f"conversion-sync rejections people --run {result.run_id} > rejected.csv"
    )
    assert alert["run_url"] == f"https://dagster.example.com/runs/{result.run_id}"


def test_failing_webhook_fails_the_tick_not_the_run(alerting: WebhookReceiver, location: Location) -> None:
    alerting.default_status = 500
    result = location.run_job("sync_people")
    assert result.success
    data = location.tick("alert_on_rejected_rows")
    (error,) = reaction_errors(data)
    assert AlertNotDelivered.__name__ in error and "HTTP 500" in error and alerting.token not in error
    assert len(alerting.received) == 3, "three attempts"
    run = location.instance.get_run_by_id(result.run_id)
    assert run is not None and run.status == dg.DagsterRunStatus.SUCCESS
    location.tick("alert_on_rejected_rows")
    assert len(alerting.received) == 3, "the cursor moved on: a failed delivery is not retried forever"


def test_without_webhook_nothing_is_posted(
    receiver: WebhookReceiver, location: Location, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(WEBHOOK_URL_ENV, raising=False)
    assert not location.run_job("sync_broken").success
    assert location.run_job("sync_people").success
    for name in ("alert_on_run_failure", "alert_on_rejected_rows"):
        assert reaction_errors(location.tick(name)) == []
    assert receiver.received == []


def test_sensors_are_part_of_the_code_location(project: ProjectConfig) -> None:
    defs = build_definitions(project)
    sensors = {s.name: s for s in defs.sensors}
    for name in ("alert_on_run_failure", "alert_on_rejected_rows"):
        assert sensors[name].default_status == dg.DefaultSensorStatus.RUNNING
    assert "sync_logs_on_run_failure" not in sensors, "only when a warehouse configures sync_logs"
