"""The only place that wires config and resources into the Dagster code location."""

from __future__ import annotations

import dagster as dg

from conversion_sync.alerts import alert_sensors
from conversion_sync.config import ProjectConfig, load_project_config
from conversion_sync.config.loader import RESERVED_FILES
from conversion_sync.salesforce.assets import build_campaign_definitions, build_salesforce_definitions
from conversion_sync.salesforce.client import SalesforceResource
from conversion_sync.store.contact_store import ContactStore
from conversion_sync.store.identity import IdentityMatcher
from conversion_sync.syncs.broken import broken_sync_asset, config_problems_asset
from conversion_sync.syncs.factory import build_sync_definitions


def build_resources(salesforce: SalesforceResource | None = None) -> dict[str, object]:
    """Resources chosen by environment: CONVERSION_STORE_URL or the embedded store; SALESFORCE_* credentials."""
    return {
        "contact_store": ContactStore(),
        "identity": IdentityMatcher(),
        "salesforce": salesforce or SalesforceResource.from_env(),
    }


def build_definitions(project: ProjectConfig | None = None) -> dg.Definitions:
    """Definitions for a loaded config; broken syncs become explanatory placeholders."""
    project = project or load_project_config()
    syncs = build_sync_definitions(project)
    salesforce_resource = SalesforceResource.from_env()
    salesforce = build_salesforce_definitions(project.salesforce, salesforce_resource)
    campaigns = build_campaign_definitions(project.salesforce, salesforce_resource)
    assets = [
        *syncs.assets,
        *(broken_sync_asset(b) for b in project.broken_syncs.values()),
        *salesforce.assets,
        *campaigns.assets,
    ]
    shared_problems = [
        p for p in project.problems if p.file in RESERVED_FILES or p.file == str(project.directory)
    ]
    if shared_problems:
        assets.append(config_problems_asset(shared_problems))
    return dg.Definitions(
        assets=assets,
        asset_checks=syncs.checks,
        jobs=[*syncs.jobs, *salesforce.jobs, *campaigns.jobs],
        schedules=[*syncs.schedules, *salesforce.schedules, *campaigns.schedules],
        sensors=[*syncs.sensors, *alert_sensors(project)],
        resources=build_resources(salesforce_resource),
    )


defs = build_definitions()
