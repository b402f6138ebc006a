"""Warehouse syncs: query template, validation, per-destination writers, Dagster factory."""
