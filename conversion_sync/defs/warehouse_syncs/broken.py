"""Broken sync files still appear in Dagster: a placeholder asset that explains what is wrong."""

from __future__ import annotations

import re

import dagster as dg

from conversion_sync.config import BrokenSync, ConfigProblem

SYNC_GROUP = "warehouse_syncs"


def dagster_safe_name(name: str) -> str:
    """A valid Dagster name from a sync name or file stem."""
    return re.sub(r"[^A-Za-z0-9_]", "_", name) or "unnamed"


def problems_markdown(problems: list[ConfigProblem]) -> str:
    return "\n".join(f"- `{p.file}` **{p.key or '(file)'}**: {p.message}" for p in problems)


def broken_sync_asset(broken: BrokenSync) -> dg.AssetsDefinition:
    """An asset named like the sync would be, whose description lists the problems; running it fails with them."""
    text = "\n".join(str(p) for p in broken.problems)

    @dg.asset(
        name=f"sync_{dagster_safe_name(broken.name)}",
        group_name=SYNC_GROUP,
        description=f"BROKEN CONFIG in {broken.file}: fix it and reload the code location.\n\n"
        + problems_markdown(broken.problems),
        tags={"conversion_sync/config": "broken"},
        metadata={
            "config_file": broken.file,
            "problems": dg.MetadataValue.md(problems_markdown(broken.problems)),
        },
    )
    def _broken() -> None:
        raise dg.Failure(
            description=f"sync config {broken.file} is broken:\n{text}",
            metadata={"problems": dg.MetadataValue.md(problems_markdown(broken.problems))},
        )

    return _broken
