"""The code location: assembles the definitions of each integration under conversion_sync/defs/.

One ProjectConfig (the sync YAML in CONVERSION_SYNC_CONFIG) is loaded once and handed to every integration's
`build_defs`, so they all see the same config, and tests can build the location from any config directory.
The resources, and with them the Salesforce credentials that decide whether its schedules start, come from
the local/production switch in conversion_sync.defs.resources.
"""

from __future__ import annotations

from typing import Any

import dagster as dg

from conversion_sync.config import ProjectConfig, load_project_config
from conversion_sync.defs import alerts, campaigns, config_problems, salesforce, warehouse_syncs
from conversion_sync.defs.location import with_lineage_and_freshness
from conversion_sync.defs.resources import SALESFORCE_KEY, SalesforceResource, resources, warehouse_resources


def build_definitions(
    project: ProjectConfig | None = None, resource_defs: dict[str, Any] | None = None
) -> dg.Definitions:
    """The code location for a loaded config (default: CONVERSION_SYNC_CONFIG's) and resources (default: the
    environment's); broken sync files become explanatory placeholders."""
    project = project or load_project_config()
    resource_defs = resource_defs if resource_defs is not None else resources()
    salesforce_resource = resource_defs[SALESFORCE_KEY]
    settings = (
        salesforce_resource.settings()
        if isinstance(salesforce_resource, SalesforceResource)
        else salesforce_resource
    )
    merged = dg.Definitions.merge(
        warehouse_syncs.build_defs(project),
        salesforce.build_defs(project.salesforce, settings),
        campaigns.build_defs(project.salesforce, settings),
        config_problems.build_defs(project),
        alerts.build_defs(project),
        dg.Definitions(resources={**warehouse_resources(project), **resource_defs}),
    )
    return with_lineage_and_freshness(merged, project)


defs = build_definitions()
