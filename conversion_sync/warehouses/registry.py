"""Open a named warehouse from its warehouses.yaml config, choosing the adapter by `type`."""

from __future__ import annotations

import importlib

from conversion_sync.config.warehouses import WarehouseConfig
from conversion_sync.warehouses.base import ClientSource, Warehouse

ADAPTERS: dict[str, tuple[str, str]] = {
    "duckdb": ("conversion_sync.warehouses.duckdb", "DuckDBWarehouse"),
    "postgres": ("conversion_sync.warehouses.postgres", "PostgresWarehouse"),
    "snowflake": ("conversion_sync.warehouses.snowflake", "SnowflakeWarehouse"),
    "bigquery": ("conversion_sync.warehouses.bigquery", "BigQueryWarehouse"),
}
"""Warehouse type → (module, class). Modules are imported on first use: the Snowflake and BigQuery
client libraries are slow to import and only needed when such a warehouse is configured."""


def warehouse_class(kind: str) -> type[Warehouse]:
    """The adapter class for a warehouse type."""
    try:
        module_name, class_name = ADAPTERS[kind]
    except KeyError:
        raise ValueError(f"unknown warehouse type {kind!r}; expected one of {', '.join(ADAPTERS)}") from None
    adapter: type[Warehouse] = getattr(importlib.import_module(module_name), class_name)
    return adapter


def open_warehouse(
    name: str, config: WarehouseConfig, client_source: ClientSource | None = None
) -> Warehouse:
    """The warehouse `name` described by `config`; nothing connects until the first `stream`. `client_source`
    (BigQuery only) provides the client, as the code location's BigQuery resource does in a Dagster run.

    Use it as a context manager (or call `close()`) to release the connection.
    """
    adapter = warehouse_class(config.type)
    if client_source is not None:
        return adapter(name, config, client_source=client_source)  # type: ignore[call-arg]
    return adapter(name, config)  # type: ignore[call-arg]
