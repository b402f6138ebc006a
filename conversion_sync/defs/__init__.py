"""Everything Dagster: the assets, jobs, schedules, sensors and checks of each integration, and the resources.

Each integration module has a `build_defs(...)` that returns a dg.Definitions; conversion_sync.definitions
merges them. The engine packages (config, store, warehouses, syncs, salesforce, alerts) import no Dagster.
"""
