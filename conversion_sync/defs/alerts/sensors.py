"""Sensors that report finished runs outward: webhook alerts, and failed runs' entries in the warehouse sync logs.

Why sensors, and not posting from the ops or from the `rejected_row_rate` check itself:

- A sensor runs in the daemon after the run has finished, so a slow, failing or misconfigured webhook can
  never fail, slow down or retry a sync. The check stays a pure evaluation that only says pass or fail.
- Run-status sensors see each finished run exactly once through Dagster's own cursor, also after a daemon
  restart (they catch up on runs that finished while it was down), so alerts are neither lost nor repeated.
- Delivery is visible where operators look: each tick is listed under the sensor in the UI, a delivery that
  failed after its retries fails the tick with the reason, and the run's log notes that the sensor acted on it.
- A failed `rejected_row_rate` check (severity WARN) does not fail the run, so its alert watches successful
  runs for failed check evaluations; a failed run gets the failure alert instead.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from typing import Any

import dagster as dg
import sqlalchemy as sa

from conversion_sync.alerts.webhook import WEBHOOK_URL_ENV, run_page_url, send_alert, webhook_url
from conversion_sync.config import ProjectConfig
from conversion_sync.config.secrets import EnvRef
from conversion_sync.defs.campaigns.assets import CAMPAIGNS_FAILED, FAILURE_KIND
from conversion_sync.defs.warehouse_syncs.assets import CHECK_NAME
from conversion_sync.defs.warehouse_syncs.jobs import SYNC_TAG
from conversion_sync.salesforce.campaigns.member_errors import CampaignFailures, campaign_failures_of_run
from conversion_sync.store import sync_state
from conversion_sync.store.connection import sqlalchemy_url
from conversion_sync.store.contact_store import ContactStore
from conversion_sync.warehouses.sync_logs import FailureInfo, write_sync_log

SENSOR_INTERVAL_S = 15
MAX_ERROR_CHARS = 4000
STORE_TIMEOUT_S = 5
SECRET_FIELDS = frozenset({"password", "private_key", "credentials", "url"})
"""Warehouse settings that are secrets; their `{env: VAR}` values are scrubbed from every alert."""


class SyncLogNotWritten(Exception):
    """A failed run's sync log could not be written to the warehouse."""


def alert_sensors(project: ProjectConfig) -> list[dg.SensorDefinition]:
    """The code location's reporting sensors: two alerts, plus sync logs on failure when any warehouse has them."""
    sensors = [run_failure_alert_sensor(project), rejected_rows_alert_sensor(project)]
    if any(getattr(config, "sync_logs", None) for config in project.warehouses.values()):
        sensors.append(sync_logs_failure_sensor(project))
    return sensors


# --- who and what a run is about ------------------------------------------------------------------------


def syncs_of_run(run: dg.DagsterRun) -> list[str]:
    """The syncs a run materialized: its sync job's tag, else its selected `sync_<name>` assets."""
    if run.tags.get(SYNC_TAG):
        return [run.tags[SYNC_TAG]]
    keys = sorted(key.to_user_string() for key in run.asset_selection or ())
    return [key.removeprefix("sync_") for key in keys if key.startswith("sync_")]


def secret_env_names(project: ProjectConfig) -> list[str]:
    """Environment variables that warehouses.yaml uses for secrets."""
    names = []
    for config in project.warehouses.values():
        for name in SECRET_FIELDS:
            value = getattr(config, name, None)
            if isinstance(value, EnvRef):
                names.append(value.env)
    return sorted(set(names))


def _short_lived_engine(store: ContactStore) -> sa.Engine:
    """A connection with a connect and statement timeout: a store that is down (maybe why the run failed) must
    not hang the sensor past Dagster's evaluation timeout; it raises instead."""
    return sa.create_engine(
        sqlalchemy_url(store.resolved_url()),
        poolclass=sa.pool.NullPool,
        connect_args={
            "connect_timeout": STORE_TIMEOUT_S,
            "options": f"-c statement_timeout={STORE_TIMEOUT_S * 1000}",
        },
    )


def _store_record(store: ContactStore, run_id: str, sync_name: str) -> sync_state.SyncRunRecord | None:
    """The store's record of this run of this sync, or None when it has none (raises when the store is down)."""
    engine = _short_lived_engine(store)
    try:
        with engine.connect() as conn:
            record = sync_state.get_run(conn, run_id)
    finally:
        engine.dispose()
    return record if record is not None and record.sync_name == sync_name else None


def _failure_kind(event: dg.DagsterEvent) -> str | None:
    """The `failure_kind` metadata of a failed step's dg.Failure, if it has one."""
    user_failure = event.step_failure_data.user_failure_data
    value = user_failure.metadata.get(FAILURE_KIND) if user_failure is not None else None
    text = getattr(value, "value", value)
    return text if isinstance(text, str) else None


def standing_campaign_failure(context: dg.RunFailureSensorContext, store: ContactStore) -> str | None:
    """Why no alert is due for this failed run, or None when one is.

    No alert is due when the run failed only because campaigns could not be reconciled and the store says
    each of their errors is standing: first found by an earlier run whose alert went out, and seen again by
    every run since with no successful reconciliation in between. A changed error text, or an error coming
    back after a success, is new, and alerted. When the store cannot be asked, the alert goes out.
    """
    events = context.get_step_failure_events()
    if not events or any(_failure_kind(event) != CAMPAIGNS_FAILED for event in events):
        return None
    run_id = context.dagster_run.run_id
    try:
        engine = _short_lived_engine(store)
        try:
            with engine.connect() as conn:
                failures: CampaignFailures = campaign_failures_of_run(conn, run_id)
        finally:
            engine.dispose()
    except Exception as exc:  # an alert too many beats one lost
        context.log.warning(f"could not read run {run_id}'s campaign errors ({type(exc).__name__}); alerting")
        return None
    if not failures.only_standing:
        return None
    return (
        f"run {run_id} failed only on {failures.standing} standing campaign error(s), alerted when first "
        "found: no alert"
    )


def _counts(values: dict[str, Any]) -> dict[str, int | float]:
    return {k: v for k, v in values.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def _step_errors(context: dg.RunFailureSensorContext) -> list[tuple[str, str]]:
    """(step key, message) of each failed step; a dg.Failure's description, else the error's message."""
    errors = []
    for event in context.get_step_failure_events():
        data = event.step_failure_data
        message = ""
        if data.user_failure_data is not None and data.user_failure_data.description:
            message = data.user_failure_data.description
        elif data.error is not None:
            message = data.error.message.strip()
        errors.append((event.step_key or "?", message))
    return errors


def _iso(timestamp: float | None) -> str | None:
    return datetime.fromtimestamp(timestamp, UTC).isoformat() if timestamp else None


def _run_times(instance: dg.DagsterInstance, run_id: str) -> tuple[float | None, float | None]:
    record = instance.get_run_record_by_id(run_id)
    if record is None:
        return None, None
    return record.start_time, record.end_time


# --- payloads -------------------------------------------------------------------------------------------


def failure_alert(context: dg.RunFailureSensorContext, store: ContactStore) -> dict[str, Any]:
    """The JSON alert for a failed run: which sync, which run, the error, counts so far, a link to the run."""
    run = context.dagster_run
    syncs = syncs_of_run(run)
    record = None
    if len(syncs) == 1:
        with contextlib.suppress(Exception):  # the alert goes out without counts when the store is down
            record = _store_record(store, run.run_id, syncs[0])
    step_errors = _step_errors(context)
    error = (
        (record.error if record is not None else None)
        or next((message for _, message in step_errors if message), None)
        or context.failure_event.message
        or "the run failed"
    )
    started, finished = _run_times(context.instance, run.run_id)
    subject = f"sync {syncs[0]}" if len(syncs) == 1 else f"job {run.job_name}"
    first_line = error.strip().splitlines()[0] if error.strip() else error
    return {
        "event": "run_failed",
        "source": "conversion_sync",
        "text": f"conversion_sync: {subject} failed (run {run.run_id[:8]}): {first_line}",
        "sync": syncs[0] if len(syncs) == 1 else None,
        "syncs": syncs,
        "job": run.job_name,
        "run_id": run.run_id,
        "run_url": run_page_url(run.run_id),
        "status": run.status.value,
        "error": error[:MAX_ERROR_CHARS],
        "failed_steps": [step for step, _ in step_errors],
        "counts": _counts(record.counts) if record is not None and record.counts else None,
        "started_at": _iso(started),
        "finished_at": _iso(finished),
    }


def rejected_rows_alerts(context: dg.RunStatusSensorContext) -> list[dict[str, Any]]:
    """One JSON alert per failed `rejected_row_rate` check evaluation in a finished run."""
    run = context.dagster_run
    instance = context.instance
    evaluations = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
    alerts = []
    for entry in evaluations:
        if entry.dagster_event is None:
            continue
        evaluation = entry.dagster_event.asset_check_evaluation_data
        if evaluation.check_name != CHECK_NAME or evaluation.passed:
            continue
        asset = evaluation.asset_key.to_user_string()
        sync = asset.removeprefix("sync_")
        values = {key: getattr(value, "value", value) for key, value in evaluation.metadata.items()}
        rejected, queried = values.get("rejected"), values.get("queried")
        rate, threshold = values.get("rate"), values.get("threshold")
        summary = f"{rejected} of {queried} rows rejected" + (
            f" ({rate:.1%}; threshold {threshold:.1%})"
            if isinstance(rate, float) and threshold is not None
            else ""
        )
        alerts.append(
            {
                "event": "rejected_rows_above_threshold",
                "source": "conversion_sync",
                "text": f"conversion_sync: sync {sync}: {summary} in run {run.run_id[:8]}",
                "sync": sync,
                "syncs": [sync],
                "asset": asset,
                "check": CHECK_NAME,
                "severity": evaluation.severity.value,
                "job": run.job_name,
                "run_id": run.run_id,
                "run_url": run_page_url(run.run_id),
                "rejected": rejected,
                "queried": queried,
                "rate": rate,
                "threshold": threshold,
                "description": evaluation.description,
                "counts": _materialization_counts(instance, run.run_id, evaluation.asset_key),
                "rejected_download": f"conversion-sync rejections {sync} --run {run.run_id} > rejected.csv",
            }
        )
    return alerts


def _materialization_counts(
    instance: dg.DagsterInstance, run_id: str, key: dg.AssetKey
) -> dict[str, int | float] | None:
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION):
        materialization = entry.asset_materialization
        if materialization is not None and materialization.asset_key == key:
            values = {k: getattr(v, "value", None) for k, v in materialization.metadata.items()}
            return _counts({k: v for k, v in values.items() if not k.startswith("duration_")})
    return None


# --- sensors --------------------------------------------------------------------------------------------


def run_failure_alert_sensor(project: ProjectConfig) -> dg.SensorDefinition:
    """POST an alert for every failed run of this code location (syncs, Salesforce jobs, anything)."""
    secret_env = secret_env_names(project)

    @dg.run_failure_sensor(
        name="alert_on_run_failure",
        minimum_interval_seconds=SENSOR_INTERVAL_S,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"POSTs a JSON alert to ${WEBHOOK_URL_ENV} (when set) for every failed run: sync, run, "
        "error, counts so far and a link to the run page; a campaign reconciliation failing again on the same "
        "campaign errors is alerted once",
    )
    def alert_on_run_failure(
        context: dg.RunFailureSensorContext, contact_store: dg.ResourceParam[ContactStore]
    ) -> None:
        run_id = context.dagster_run.run_id
        if webhook_url() is None:
            context.log.info(f"{WEBHOOK_URL_ENV} is not set: no alert for failed run {run_id}")
            return
        standing = standing_campaign_failure(context, contact_store)
        if standing is not None:
            context.log.info(standing)
            return
        delivery = send_alert(failure_alert(context, contact_store), extra_secret_env=secret_env)
        if delivery is not None:
            context.log.info(f"alert for failed run {run_id} delivered (HTTP {delivery.status})")

    return alert_on_run_failure


def rejected_rows_alert_sensor(project: ProjectConfig) -> dg.SensorDefinition:
    """POST an alert when a run's `rejected_row_rate` check failed (more rows rejected than the sync allows)."""
    secret_env = secret_env_names(project)

    @dg.run_status_sensor(
        name="alert_on_rejected_rows",
        run_status=dg.DagsterRunStatus.SUCCESS,
        minimum_interval_seconds=SENSOR_INTERVAL_S,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"POSTs a JSON alert to ${WEBHOOK_URL_ENV} (when set) when a sync's rejected_row_rate "
        "check fails: rejected and queried rows, the threshold, the download command, a link to the run",
    )
    def alert_on_rejected_rows(context: dg.RunStatusSensorContext) -> None:
        alerts = rejected_rows_alerts(context)
        if not alerts:
            return
        if webhook_url() is None:
            context.log.info(f"{WEBHOOK_URL_ENV} is not set: {len(alerts)} rejected-rows alert(s) not sent")
            return
        for alert in alerts:
            send_alert(alert, extra_secret_env=secret_env)
            context.log.info(f"rejected-rows alert for sync {alert['sync']} delivered")

    return alert_on_rejected_rows


def sync_logs_failure_sensor(project: ProjectConfig) -> dg.SensorDefinition:
    """Append failed sync runs to their warehouse's sync logs (successful runs are written by the write step)."""

    @dg.run_failure_sensor(
        name="sync_logs_on_run_failure",
        minimum_interval_seconds=SENSOR_INTERVAL_S,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Appends each failed sync run (error, counts so far, rejected rows) to the sync_logs "
        "schema of its warehouse, for warehouses that configure sync_logs",
    )
    def sync_logs_on_run_failure(
        context: dg.RunFailureSensorContext, contact_store: dg.ResourceParam[ContactStore]
    ) -> None:
        run = context.dagster_run
        started, finished = _run_times(context.instance, run.run_id)
        step_error = next((message for _, message in _step_errors(context) if message), None)
        failure = FailureInfo(
            error=(step_error or context.failure_event.message or "the run failed")[:MAX_ERROR_CHARS],
            started_at=datetime.fromtimestamp(started, UTC) if started else None,
            finished_at=datetime.fromtimestamp(finished, UTC) if finished else None,
        )
        not_written = []
        for sync_name in syncs_of_run(run):
            record = _store_record(contact_store, run.run_id, sync_name)
            if record is not None and record.status == "success":
                continue  # its write step succeeded and logged it; something later failed the run
            if not write_sync_log(
                project, sync_name, run.run_id, contact_store, failure=failure, log=context.log
            ):
                sync = project.syncs.get(sync_name)
                config = project.warehouses.get(sync.warehouse) if sync else None
                if getattr(config, "sync_logs", None) is not None:
                    not_written.append(sync_name)
        if not_written:
            raise SyncLogNotWritten(
                f"run {run.run_id}: the sync log of {', '.join(not_written)} could not be written (see the "
                "tick's log for the reason)"
            )

    return sync_logs_on_run_failure
