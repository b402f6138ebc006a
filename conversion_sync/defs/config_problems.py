"""Problems in the shared config files (warehouses.yaml, schema.yaml, salesforce.yaml) as one failing asset."""

from __future__ import annotations

import dagster as dg

from conversion_sync.config import ConfigProblem, ProjectConfig
from conversion_sync.config.loader import RESERVED_FILES
from conversion_sync.defs.warehouse_syncs.broken import problems_markdown

CONFIG_GROUP = "config"


def shared_problems(project: ProjectConfig) -> list[ConfigProblem]:
    """The problems of the shared files and of the config directory itself (not those of one sync file)."""
    return [p for p in project.problems if p.file in RESERVED_FILES or p.file == str(project.directory)]


def config_problems_asset(problems: list[ConfigProblem]) -> dg.AssetsDefinition:
    """One asset whose description lists the problems; running it fails with them."""

    @dg.asset(
        name="config_problems",
        group_name=CONFIG_GROUP,
        description="The shared config files have problems:\n\n" + problems_markdown(problems),
        tags={"conversion_sync/config": "broken"},
    )
    def _config_problems() -> None:
        raise dg.Failure(description="\n".join(str(p) for p in problems))

    return _config_problems


def build_defs(project: ProjectConfig) -> dg.Definitions:
    """The `config_problems` asset when the shared files have problems; nothing otherwise."""
    problems = shared_problems(project)
    return dg.Definitions(assets=[config_problems_asset(problems)] if problems else [])
