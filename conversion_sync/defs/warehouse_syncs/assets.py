"""A sync as a graph-backed asset (query → validate → write) with its materialization metadata and the
`rejected_row_rate` check.

No `from __future__ import annotations` here: Dagster reads the ops' resource annotations at runtime.
"""

import re
from typing import Any, Literal

import dagster as dg
from pydantic import Field

from conversion_sync.config import ProjectConfig
from conversion_sync.config.syncs import SyncConfig
from conversion_sync.defs.automation import STORE_POOL
from conversion_sync.defs.destinations import row_count_observation
from conversion_sync.defs.resources import CONTACT_STORE_KEY, IDENTITY_KEY, warehouse_resource_key
from conversion_sync.defs.warehouse_syncs.broken import SYNC_GROUP
from conversion_sync.store import sync_state
from conversion_sync.store.contact_store import ContactStore
from conversion_sync.store.identity import IdentityMatcher
from conversion_sync.syncs.lineage import sync_key_path
from conversion_sync.syncs.runner import SyncFailed, SyncOutcome, SyncRunner
from conversion_sync.syncs.template import format_timestamp
from conversion_sync.warehouses.base import ClientSource
from conversion_sync.warehouses.sync_logs import write_sync_log

COUNT_KEYS = ("queried", "added", "changed", "unchanged", "removed", "rejected", "skipped")
CHECK_NAME = "rejected_row_rate"
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
Store = dg.ResourceParam[ContactStore]
Matcher = dg.ResourceParam[IdentityMatcher]


def asset_key(sync_name: str) -> dg.AssetKey:
    return dg.AssetKey(list(sync_key_path(sync_name)))


class SyncRunConfig(dg.Config):
    """A sync run's launchpad choices, as the CLI offers them (`run`, `retry-rejected`, `resync` + `run`)."""

    mode: Literal["normal", "retry_rejected", "full_resync"] = Field(
        default="normal",
        description="normal: the sync's run; retry_rejected: only the keys earlier runs rejected, re-read from "
        "the epoch (the watermark stays); full_resync: reset the watermark and fingerprints, then read everything",
    )


def _runner(
    sync: SyncConfig,
    project: ProjectConfig,
    store: ContactStore,
    identity: IdentityMatcher,
    mode: Literal["normal", "retry_rejected", "full_resync"] = "normal",
    warehouse_client: ClientSource | None = None,
) -> SyncRunner:
    try:
        return SyncRunner(sync, project, store, identity, mode=mode, warehouse_client=warehouse_client)
    except SyncFailed as exc:
        raise dg.Failure(description=str(exc)) from None


def outcome_metadata(outcome: SyncOutcome) -> dict[str, Any]:
    """Materialization metadata: counts (plotted over time), watermarks, step durations, rejected preview."""
    metadata: dict[str, Any] = {key: dg.MetadataValue.int(outcome.counts.get(key, 0)) for key in COUNT_KEYS}
    for key, value in outcome.counts.items():
        if key not in COUNT_KEYS and isinstance(value, int):
            metadata[key] = dg.MetadataValue.int(value)
    metadata["watermark_used"] = dg.MetadataValue.text(format_timestamp(outcome.watermark_used))
    metadata["next_watermark"] = dg.MetadataValue.text(format_timestamp(outcome.next_watermark))
    metadata["full_sync"] = dg.MetadataValue.bool(outcome.full_sync)
    for step, seconds in outcome.durations.items():
        metadata[f"duration_{step}_s"] = dg.MetadataValue.float(float(seconds))
    if outcome.rejected_preview:
        columns = ["row_key", "column_name", "code", "message"]
        metadata["rejected_preview"] = dg.MetadataValue.table(
            records=[
                dg.TableRecord({c: str(r.get(c) or "") for c in columns}) for r in outcome.rejected_preview
            ],
            schema=dg.TableSchema(columns=[dg.TableColumn(c, "string") for c in columns]),
        )
        metadata["rejected_download"] = dg.MetadataValue.md(
            f"```\n{outcome.download_command} > rejected.csv\n```"
        )
    return metadata


def standard_metadata(
    outcome: SyncOutcome, sync: SyncConfig, columns: list[dict[str, str]] | None
) -> dict[str, Any]:
    """Dagster's standard entries: the result's row count, the destination table, the result's columns."""
    metadata: dict[str, Any] = {
        "dagster/row_count": dg.MetadataValue.int(int(outcome.counts.get("queried", 0))),
        "dagster/table_name": dg.MetadataValue.text(sync.destination.type),
    }
    if columns:
        metadata["dagster/column_schema"] = dg.MetadataValue.table_schema(
            dg.TableSchema(columns=[dg.TableColumn(c["name"], c["type"]) for c in columns])
        )
    return metadata


def sync_asset(
    sync: SyncConfig,
    project: ProjectConfig,
    upstream: list[dg.AssetKey] | None = None,
    automation_condition: dg.AutomationCondition | None = None,
    extra_metadata: dict[str, Any] | None = None,
) -> dg.AssetsDefinition:
    """A graph-backed asset whose steps the UI shows as query → validate → write, each in the store's pool.

    Its upstream assets are its `after:` syncs and `upstream` (the tables its query reads, its `deps:`):
    inputs of the query step that carry no data, so the asset graph shows them.
    """
    warehouse_kind = project.warehouses[sync.warehouse].type
    own = asset_key(sync.name)
    upstream_keys = [
        key for key in dict.fromkeys([*(asset_key(n) for n in sync.after), *(upstream or [])]) if key != own
    ]
    upstream_inputs = {f"upstream_{i}": key for i, key in enumerate(upstream_keys)}
    # the steps that reach the warehouse name their resources as keys (Dagster takes them either as keys or as
    # typed parameters, not both, and a BigQuery warehouse's resource key is the warehouse's name)
    client_key = warehouse_resource_key(project, sync.warehouse)
    warehouse_step_keys = {CONTACT_STORE_KEY, IDENTITY_KEY, *([client_key] if client_key else [])}

    def warehouse_client(context: dg.OpExecutionContext) -> ClientSource | None:
        """The code location's resource for the sync's warehouse (dagster-gcp's BigQueryResource), if any."""
        return getattr(context.resources, client_key).get_client if client_key else None

    @dg.op(
        name=f"{sync.name}_query",
        ins={"upstream": dg.In(dg.Nothing)} if upstream_inputs else None,
        description=f"Querying {sync.warehouse} ({warehouse_kind}) and staging the rows in the store",
        tags={"step": "query"},
        pool=STORE_POOL,
        required_resource_keys=warehouse_step_keys,
    )
    def query(context: dg.OpExecutionContext, config: SyncRunConfig) -> str:
        contact_store, identity = context.resources.contact_store, context.resources.identity
        try:
            runner = _runner(sync, project, contact_store, identity, config.mode, warehouse_client(context))
            table = runner.query(context.run_id)
        except SyncFailed as exc:
            raise dg.Failure(description=str(exc)) from None
        context.log.info(f"staged the query result in {table}")
        return table

    @dg.op(
        name=f"{sync.name}_validate",
        description="Preparing: validating rows, rejecting bad ones with a reason",
        pool=STORE_POOL,
    )
    def validate(context: dg.OpExecutionContext, table: str, contact_store: Store, identity: Matcher) -> str:
        result = _runner(sync, project, contact_store, identity).validate(table)
        context.log.info(
            f"{result.accepted} rows accepted, {result.rejected} rejected of {result.queried} queried"
        )
        return table

    @dg.op(
        name=f"{sync.name}_write",
        description=f"Writing to {sync.destination.type} and moving the watermark",
        out=dg.Out(dg.Nothing),  # the data lives in the store; nothing goes through an IO manager
        pool=STORE_POOL,
        required_resource_keys=warehouse_step_keys,
    )
    def write(context: dg.OpExecutionContext, table: str) -> None:
        contact_store, identity = context.resources.contact_store, context.resources.identity
        with contact_store.begin() as conn:
            record = sync_state.get_run_by_staging_table(conn, table)
        outcome = _runner(sync, project, contact_store, identity).write(table)
        columns = record.source_columns if record else None
        context.add_output_metadata(
            {**outcome_metadata(outcome), **standard_metadata(outcome, sync, columns)}
        )
        context.log.info(", ".join(f"{k}={v}" for k, v in outcome.counts.items()))
        _observe_destination(context, contact_store, sync)
        write_sync_log(
            project,
            sync.name,
            outcome.run_id,
            contact_store,
            log=context.log,
            warehouse_client=warehouse_client(context),
        )

    @dg.graph(name=f"{sync.name}_steps", ins={name: dg.GraphIn() for name in upstream_inputs})
    def steps(**inputs: Any) -> Any:
        staged = query(upstream=list(inputs.values())) if inputs else query()
        return write(validate(staged))

    tags, owners = _tags_and_owners(sync, warehouse_kind)
    description = sync.description or f"{sync.warehouse} → {sync.destination.type}"
    return dg.AssetsDefinition.from_graph(
        steps,
        keys_by_input_name=upstream_inputs,
        keys_by_output_name={"result": asset_key(sync.name)},
        group_name=SYNC_GROUP,
        descriptions_by_output_name={"result": f"{description}\n\n```sql\n{sync.query.strip()}\n```"},
        tags_by_output_name={"result": tags},
        owners_by_output_name={"result": owners} if owners else None,
        automation_conditions_by_output_name={"result": automation_condition}
        if automation_condition
        else None,
        metadata_by_output_name={
            "result": {
                "schedule": sync.schedule,
                "warehouse": sync.warehouse,
                "destination": sync.destination.type,
                "incremental": sync.incremental,
                "run_on": sync.run_on,
                **(extra_metadata or {}),
            }
        },
    )


def _observe_destination(context: dg.OpExecutionContext, store: ContactStore, sync: SyncConfig) -> None:
    """The destination table's row count as an observation of its asset; a count that fails only warns."""
    try:
        context.log_event(row_count_observation(store, sync.destination, context.run_id))
    except Exception as exc:  # the rows are written; a count must not fail the run
        context.log.warning(
            f"could not count the rows of {sync.destination.type}: {type(exc).__name__}: {exc}"
        )


def _tags_and_owners(sync: SyncConfig, warehouse_kind: str) -> tuple[dict[str, str], list[str]]:
    """The asset's tags (with its kinds) and owners; an owner that is neither an e-mail nor `team:…` is a tag."""
    tags = {
        "warehouse": sync.warehouse,
        "warehouse_kind": warehouse_kind,
        "destination": sync.destination.type
        + (f":{sync.destination.object_type}" if sync.destination.object_type else ""),
        "mode": sync.mode,
        f"dagster/kind/{warehouse_kind}": "",
        "dagster/kind/postgres": "",
        **sync.tags,
    }
    owners = (
        [sync.owner] if sync.owner and (_EMAIL.match(sync.owner) or sync.owner.startswith("team:")) else []
    )
    if sync.owner and not owners:
        tags["owner"] = sync.owner
    return {k: _tag_value(v) for k, v in tags.items()}, owners


def _tag_value(value: str) -> str:
    """Dagster tag values: at most 63 characters of letters, digits, "-", "_", "."."""
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", value)[:63]


def rejected_rate_check(sync: SyncConfig) -> dg.AssetChecksDefinition:
    key = asset_key(sync.name)
    threshold = sync.rejected_rate_threshold

    @dg.asset_check(
        asset=key,
        name=CHECK_NAME,
        description=f"Fails when more than {threshold:.0%} of the queried rows are rejected",
    )
    def _check(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        event = context.instance.get_latest_materialization_event(key)
        metadata = event.asset_materialization.metadata if event and event.asset_materialization else {}
        queried = int(getattr(metadata.get("queried"), "value", 0) or 0)
        rejected = int(getattr(metadata.get("rejected"), "value", 0) or 0)
        rate = rejected / queried if queried else 0.0
        return dg.AssetCheckResult(
            passed=rate <= threshold,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"rejected": rejected, "queried": queried, "rate": rate, "threshold": threshold},
            description=f"{rejected} of {queried} rows rejected ({rate:.1%}; threshold {threshold:.0%})",
        )

    return _check
