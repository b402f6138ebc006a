"""Reporting finished runs outward: the webhook alert sensors, and failed runs' entries in the warehouse sync
logs. The delivery itself (HTTP, retries, scrubbing secrets) is conversion_sync.alerts.webhook."""

from __future__ import annotations

import dagster as dg

from conversion_sync.config import ProjectConfig
from conversion_sync.defs.alerts.sensors import (
    alert_sensors,
    failure_alert,
    rejected_rows_alerts,
    syncs_of_run,
)

__all__ = ["alert_sensors", "build_defs", "failure_alert", "rejected_rows_alerts", "syncs_of_run"]


def build_defs(project: ProjectConfig) -> dg.Definitions:
    """The alert sensors, plus the sync-logs sensor when a warehouse configures sync_logs."""
    return dg.Definitions(sensors=alert_sensors(project))
