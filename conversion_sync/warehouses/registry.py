"""Open a named warehouse from its warehouses.yaml config, choosing the adapter by `type`."""

from __future__ import annotations

import importlib

from conversion_sync.config.warehouses import WarehouseConfig
from conversion_sync.warehouses.base import Warehouse

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


def open_warehouse(name: str, config: WarehouseConfig) -> Warehouse:
    """The warehouse `name` described by `config`; nothing connects until the first `stream`.

    Use it as a context manager (or call `close()`) to release the connection.
    """
    return warehouse_class(config.type)(name, config)  # type: ignore[call-arg]
