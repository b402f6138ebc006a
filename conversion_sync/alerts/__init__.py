"""Alerts and outward run reports: webhook alerts on failed runs and rejected-row checks, failed runs' sync logs."""

from conversion_sync.alerts.sensors import alert_sensors, failure_alert, rejected_rows_alerts, syncs_of_run
from conversion_sync.alerts.webhook import (
    WEBHOOK_URL_ENV,
    WEBSERVER_URL_ENV,
    AlertNotDelivered,
    Delivery,
    post_json,
    run_page_url,
    scrub,
    send_alert,
)

__all__ = [
    "WEBHOOK_URL_ENV",
    "WEBSERVER_URL_ENV",
    "AlertNotDelivered",
    "Delivery",
    "alert_sensors",
    "failure_alert",
    "post_json",
    "rejected_rows_alerts",
    "run_page_url",
    "scrub",
    "send_alert",
    "syncs_of_run",
]
