"""Upstream lineage of the syncs: the warehouse tables each query reads and the asset keys its `deps:` name,
as external assets keyed so that a dbt project's assets in the same deployment can be the same keys.

A table's key is the warehouse's `asset_key_prefix` (none by default), then the table's name as the query
writes it without the database: `analytics.users` → analytics/users, `users` → users. dagster-dbt's default
key for a source is [source name, table] and for a model [name], or [schema, name] when the model configures
its own schema; where these are the same keys, a dbt model's materializations are the table's updates and
start `run_on: upstream` syncs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import dagster as dg

from conversion_sync.config import ProjectConfig
from conversion_sync.config.syncs import SyncConfig
from conversion_sync.syncs.lineage import QueryTables, TableName, query_tables, table_key_path

TABLES_GROUP = "warehouse_tables"


def table_key(name: TableName, prefix: Sequence[str] = ()) -> dg.AssetKey:
    """A table's key: `prefix` (its warehouse's asset_key_prefix), then its name as the query writes it."""
    return dg.AssetKey(list(table_key_path(name, prefix)))


def deps_keys(sync: SyncConfig) -> list[dg.AssetKey]:
    """The keys a sync's `deps:` names (parts joined by `/`)."""
    return [dg.AssetKey.from_user_string(key) for key in sync.deps]


@dataclass
class _Upstream:
    """What is known about an upstream key that no asset of this code location defines."""

    read_by: list[str] = field(default_factory=list)
    named_by: list[str] = field(default_factory=list)
    warehouses: dict[str, str] = field(default_factory=dict)
    table: str | None = None


@dataclass(frozen=True)
class SyncLineage:
    """Per sync: the tables its query reads (or why they could not be read) and its `deps:` keys."""

    tables: dict[str, QueryTables]
    prefixes: dict[str, list[str]]
    """Per sync, its warehouse's asset_key_prefix."""

    @classmethod
    def of(cls, project: ProjectConfig) -> SyncLineage:
        warehouses = {name: project.warehouses[sync.warehouse] for name, sync in project.syncs.items()}
        return cls(
            {name: query_tables(sync.query, warehouses[name].type) for name, sync in project.syncs.items()},
            {name: list(warehouses[name].asset_key_prefix) for name in project.syncs},
        )

    def table_keys(self, sync_name: str) -> list[dg.AssetKey]:
        prefix = self.prefixes[sync_name]
        return [table_key(t, prefix) for t in self.tables[sync_name].tables]

    def upstream_keys(self, sync: SyncConfig) -> list[dg.AssetKey]:
        """The tables the query reads, then the `deps:` keys, each once."""
        return list(dict.fromkeys([*self.table_keys(sync.name), *deps_keys(sync)]))

    def external_specs(self, project: ProjectConfig, defined: Iterable[dg.AssetKey]) -> list[dg.AssetSpec]:
        """One external asset per upstream key that the code location does not define."""
        known = set(defined)
        upstream: dict[dg.AssetKey, _Upstream] = {}
        for name, sync in project.syncs.items():
            kind = project.warehouses[sync.warehouse].type
            for table in self.tables[name].tables:
                entry = upstream.setdefault(table_key(table, self.prefixes[name]), _Upstream())
                entry.read_by.append(name)
                entry.warehouses[sync.warehouse] = kind
                entry.table = ".".join(table)
            for key in deps_keys(sync):
                upstream.setdefault(key, _Upstream()).named_by.append(name)
        return [_external_spec(key, entry) for key, entry in upstream.items() if key not in known]


def _external_spec(key: dg.AssetKey, entry: _Upstream) -> dg.AssetSpec:
    lines = []
    if entry.read_by:
        where = ", ".join(f"{w} ({k})" for w, k in entry.warehouses.items())
        lines.append(
            f"Warehouse table `{entry.table}` in {where}, read by the syncs {_names(entry.read_by)}."
        )
    if entry.named_by:
        lines.append(f"Named in `deps:` of the syncs {_names(entry.named_by)}.")
    lines.append(
        "Defined outside this code location: an asset with the same key elsewhere in the deployment (a dbt "
        "model, for one) takes its place, and its materializations count as this table's updates."
    )
    metadata: dict[str, object] = {"read_by": ", ".join(entry.read_by)} if entry.read_by else {}
    if entry.table:
        metadata["dagster/table_name"] = entry.table
    return dg.AssetSpec(
        key,
        group_name=TABLES_GROUP,
        description="\n\n".join(lines),
        kinds=set(entry.warehouses.values()) or None,
        metadata=metadata,
    )


def _names(names: list[str]) -> str:
    return ", ".join(f"`{n}`" for n in names)


def defined_keys(defs: dg.Definitions) -> set[dg.AssetKey]:
    """The keys of the assets (and asset specs) a Definitions object holds."""
    keys: set[dg.AssetKey] = set()
    for asset in defs.assets or []:
        if isinstance(asset, dg.AssetsDefinition):
            keys.update(asset.keys)
        elif isinstance(asset, dg.AssetSpec):
            keys.add(asset.key)
    return keys
