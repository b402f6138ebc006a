"""The `conversion-sync` command group, its `validate` command and the helpers its subcommands share."""

from __future__ import annotations

import sys
from typing import Any

import click

from conversion_sync.config import ProjectConfig, load_project_config
from conversion_sync.config.syncs import SyncConfig
from conversion_sync.store.contact_store import ContactStore


class _Main(click.Group):
    """The command group; a store or environment that is not set up is an error message, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        from conversion_sync.config.environment import UnknownEnvironment
        from conversion_sync.store.connection import StoreNotConfigured

        try:
            return super().invoke(ctx)
        except (StoreNotConfigured, UnknownEnvironment) as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=_Main)
@click.option(
    "--config",
    "config_dir",
    envvar="CONVERSION_SYNC_CONFIG",
    default="syncs",
    show_default=True,
    help="Config directory (also $CONVERSION_SYNC_CONFIG).",
)
@click.pass_context
def main(ctx: click.Context, config_dir: str) -> None:
    """conversion_sync: warehouse and Salesforce syncs into the contact store."""
    ctx.obj = {"config_dir": config_dir}


@main.command()
@click.pass_context
def validate(ctx: click.Context) -> None:
    """Check every config file; print each problem with file, key and what is allowed."""
    project = load_project_config(ctx.obj["config_dir"])
    for problem in project.problems:
        click.echo(f"error: {problem}", err=True)
    for name in sorted(project.syncs):
        click.echo(f"ok: {name} ({project.sync_files[name]})")
    for broken in sorted(project.broken_syncs.values(), key=lambda b: b.file):
        click.echo(f"broken: {broken.name} ({broken.file}): {len(broken.problems)} problem(s)")
    _check_salesforce_fields(project)
    if project.problems:
        click.echo(f"{len(project.problems)} problem(s) in {project.directory}", err=True)
        sys.exit(1)
    click.echo(f"config in {project.directory} is valid: {len(project.syncs)} sync(s)")


def _check_salesforce_fields(project: ProjectConfig) -> None:
    """Warn about mapped Salesforce fields that are formulas or read-only (contacts Salesforce only with
    credentials; never fails validate)."""
    from conversion_sync.salesforce.field_check import check_mapped_fields

    report = check_mapped_fields(project.salesforce)
    for item in report.unpushable:
        click.echo(f"warning: {item.warning()}", err=True)
    prefix = "warning: salesforce: " if report.status == "unreachable" else "salesforce: "
    click.echo(prefix + report.message, err=report.status == "unreachable")


def project_and_sync(ctx: click.Context, name: str) -> tuple[ProjectConfig, SyncConfig]:
    project = load_project_config(ctx.obj["config_dir"])
    if name in project.broken_syncs:
        lines = "\n".join(f"  {p}" for p in project.broken_syncs[name].problems)
        raise click.ClickException(f"sync '{name}' is broken:\n{lines}")
    if name not in project.syncs:
        known = ", ".join(sorted(project.syncs)) or "none"
        raise click.ClickException(f"unknown sync '{name}'; known syncs: {known}")
    return project, project.syncs[name]


def open_store() -> ContactStore:
    return ContactStore()


def print_counts(counts: dict[str, int]) -> None:
    width = max(len(k) for k in counts)
    for key, value in counts.items():
        click.echo(f"  {key:<{width}}  {value}")
