"""Warehouses: stream a SQL query's result as bounded Arrow record batches (DuckDB, Postgres, Snowflake, BigQuery)."""

from conversion_sync.warehouses.base import (
    DEFAULT_BATCH_ROWS,
    Warehouse,
    WarehouseConnectionError,
    WarehouseError,
    WarehouseQueryError,
)
from conversion_sync.warehouses.registry import open_warehouse, warehouse_class

__all__ = [
    "DEFAULT_BATCH_ROWS",
    "Warehouse",
    "WarehouseConnectionError",
    "WarehouseError",
    "WarehouseQueryError",
    "open_warehouse",
    "warehouse_class",
]
