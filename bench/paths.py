"""One benchmark path per call, run in its own process so its peak RSS is its own: `python -m bench.paths NAME`."""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

warnings.filterwarnings("ignore")

from conversion_sync.config import load_project_config  # noqa: E402
from conversion_sync.config.warehouses import DuckDBWarehouseConfig  # noqa: E402
from conversion_sync.store.connection import store_engine  # noqa: E402
from conversion_sync.store.contact_store import ContactStore  # noqa: E402
from conversion_sync.store.staging import adbc_connection  # noqa: E402
from conversion_sync.syncs.runner import SyncRunner  # noqa: E402
from conversion_sync.warehouses import open_warehouse  # noqa: E402

SCHEMA_YAML = """contact_fields: {plan: string, seats: integer}
object_types:
  product: {fields: {name: string, sku: string}}
"""


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


CONTACTS = "{type: contacts}"
EVENTS = "{type: events}"
OBJECTS = "{type: custom_objects, object_type: product}"


def write_config(directory: Path, warehouse: Path, syncs: dict[str, tuple[str, str]]) -> Path:
    """A project directory: the DuckDB warehouse, the store schema and one file per sync (name → (destination,
    query))."""
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("*.yaml"):
        old.unlink()
    (directory / "warehouses.yaml").write_text(
        f"warehouses:\n  bench: {{type: duckdb, path: '{warehouse}'}}\n"
    )
    (directory / "schema.yaml").write_text(SCHEMA_YAML)
    for name, (destination, query) in syncs.items():
        (directory / f"sync_{name}.yaml").write_text(
            f'name: {name}\nwarehouse: bench\ndestination: {destination}\nquery: "{query}"\n'
        )
    return directory


def run_sync(config_dir: Path, name: str, store_url: str) -> dict[str, Any]:
    """The real path: the same query → validate → write steps the Dagster ops run."""
    project = load_project_config(config_dir)
    runner = SyncRunner(project.syncs[name], project, ContactStore(url=store_url))
    lock_wait = _time_identity_lock(store_url)
    started = time.perf_counter()
    outcome = runner.run(run_id=f"bench-{uuid.uuid4()}")
    seconds = time.perf_counter() - started
    return {
        "rows": outcome.counts["queried"],
        "seconds": seconds,
        "counts": outcome.counts,
        "steps": outcome.durations,
        "identity_lock_wait_s": lock_wait[0],
    }


def _time_identity_lock(store_url: str) -> list[float]:
    """Sum the time this process's statements spend taking the identity lock (pg_advisory_xact_lock)."""
    import sqlalchemy as sa

    engine = store_engine(store_url)
    waited = [0.0]

    @sa.event.listens_for(engine, "before_cursor_execute")
    def _before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "pg_advisory_xact_lock" in statement:
            conn.info["bench_lock_started"] = time.perf_counter()

    @sa.event.listens_for(engine, "after_cursor_execute")
    def _after(conn: Any, *args: Any) -> None:
        began = conn.info.pop("bench_lock_started", None)
        if began is not None:
            waited[0] += time.perf_counter() - began

    return waited


FLOOR_TABLE = "bench_floor_contacts"


def run_floor(warehouse: Path, table: str, store_url: str) -> dict[str, Any]:
    """Raw floor: Arrow batches from DuckDB → ADBC COPY into a staging table → one INSERT … ON CONFLICT merge
    into a table shaped like contacts (same columns and indexes)."""
    engine = store_engine(store_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {FLOOR_TABLE}; DROP TABLE IF EXISTS bench_floor_stage")
        conn.exec_driver_sql(f"CREATE TABLE {FLOOR_TABLE} (LIKE contacts INCLUDING ALL)")
        conn.exec_driver_sql(f"CREATE UNIQUE INDEX ON {FLOOR_TABLE} (email_normalized)")
    started = time.perf_counter()
    config = DuckDBWarehouseConfig(type="duckdb", path=str(warehouse))
    rows = 0
    with open_warehouse("bench", config) as source, adbc_connection(store_url) as adbc:
        for batch in source.stream(f"SELECT * FROM {table}"):
            with adbc.cursor() as cursor:
                mode = "append" if rows else "create"
                cursor.adbc_ingest("bench_floor_stage", batch, mode=mode, temporary=False)
            adbc.commit()
            rows += batch.num_rows
    with engine.begin() as conn:
        conn.exec_driver_sql(
            f"""INSERT INTO {FLOOR_TABLE} (email, email_normalized, first_name, last_name, job_title, phone, city,
                                           custom_fields)
            SELECT email, lower(email), first_name, last_name, job_title, phone, city,
                   jsonb_build_object('plan', plan, 'seats', seats)
            FROM bench_floor_stage
            ON CONFLICT (email_normalized) DO UPDATE SET first_name = EXCLUDED.first_name,
                last_name = EXCLUDED.last_name, job_title = EXCLUDED.job_title, phone = EXCLUDED.phone,
                city = EXCLUDED.city, custom_fields = EXCLUDED.custom_fields, updated_at = now()"""
        )
    seconds = time.perf_counter() - started
    with engine.begin() as conn:
        conn.exec_driver_sql(f"DROP TABLE {FLOOR_TABLE}; DROP TABLE bench_floor_stage")
    return {"rows": rows, "seconds": seconds}


def standin_resource(settings: dict[str, Any]) -> Any:
    """The product's Salesforce settings pointed at the bench's stand-in (username/password login over HTTPS)."""
    from conversion_sync.salesforce.client import SalesforceSettings

    return SalesforceSettings(
        username=settings["username"],
        password=settings["password"],
        security_token=settings["security_token"],
        login_url=settings["url"],
        ca_bundle=settings["ca"],
    )


def run_salesforce_poll(settings: dict[str, Any], store_url: str) -> dict[str, Any]:
    """The real poller against the HTTPS stand-in; store time is the sum of its statements' durations."""
    import sqlalchemy as sa

    from conversion_sync.config.salesforce import SalesforceConfig
    from conversion_sync.salesforce.budget import ApiBudget
    from conversion_sync.salesforce.poller import SalesforcePoller
    from conversion_sync.store.identity import IdentityMatcher

    engine = store_engine(store_url)
    store_seconds = [0.0]

    @sa.event.listens_for(engine, "before_cursor_execute")
    def _before(conn: Any, *args: Any) -> None:
        conn.info["bench_started"] = time.perf_counter()

    @sa.event.listens_for(engine, "after_cursor_execute")
    def _after(conn: Any, *args: Any) -> None:
        store_seconds[0] += time.perf_counter() - conn.info.pop("bench_started", time.perf_counter())

    resource = standin_resource(settings)
    budget = ApiBudget(reserve=0)
    started = time.perf_counter()
    client = resource.connect(budget)
    # bulk_threshold above the load: the incremental REST path (pages of 2000) is what every 5-minute poll runs
    config = SalesforceConfig(bulk_threshold=10_000_000)
    outcome = SalesforcePoller(config, ContactStore(url=store_url), IdentityMatcher(), client).run()
    seconds = time.perf_counter() - started
    read = sum(o.counts.read for o in outcome.objects.values()) if outcome.objects else 0
    return {
        "rows": read,
        "seconds": seconds,
        "api_calls": budget.calls_made,
        "store_seconds": store_seconds[0],
        "complete": outcome.complete,
    }


def run_campaign_push(settings: dict[str, Any], store_url: str) -> dict[str, Any]:
    """A store campaign with `members` members, linked with mode `create`, reconciled once: every member pushed
    (Leads created first for contacts without a Salesforce record)."""
    from conversion_sync.salesforce.budget import ApiBudget
    from conversion_sync.salesforce.campaigns import create_campaign, create_campaign_type
    from conversion_sync.salesforce.reconcile import CampaignReconciler
    from conversion_sync.store.identity import IdentityMatcher

    store = ContactStore(url=store_url)
    name = f"bench-{uuid.uuid4().hex[:8]}"
    with store.begin() as conn:
        create_campaign_type(conn, name, ["Sent", "Responded"], "Sent")
        campaign = create_campaign(conn, name, name, "create")
        conn.exec_driver_sql(
            """INSERT INTO campaign_members (campaign_id, contact_id, status)
            SELECT %(campaign)s, id, 'Sent' FROM contacts WHERE salesforce_id IS NULL ORDER BY id LIMIT %(n)s""",
            {"campaign": campaign.id, "n": settings["members"]},
        )
    resource = standin_resource(settings)
    budget = ApiBudget(reserve=0)
    started = time.perf_counter()
    client = resource.connect(budget)
    outcome = CampaignReconciler(store, IdentityMatcher(), client, campaign_names=[name]).run()
    seconds = time.perf_counter() - started
    counts = outcome.campaigns[0].counts if outcome.campaigns else None
    return {
        "rows": counts.pushed if counts else 0,
        "seconds": seconds,
        "api_calls": budget.calls_made,
        "leads_created": counts.leads_created if counts else 0,
        "errors": counts.errors if counts else 0,
    }


def main() -> None:
    name, settings = sys.argv[1], json.loads(sys.argv[2])
    store_url = os.environ["CONVERSION_STORE_URL"]
    if name == "floor":
        result = run_floor(Path(settings["warehouse"]), settings["table"], store_url)
    elif name == "salesforce_poll":
        result = run_salesforce_poll(settings, store_url)
    elif name == "campaign_push":
        result = run_campaign_push(settings, store_url)
    else:
        result = run_sync(Path(settings["config"]), name, store_url)
    result["peak_rss_mb"] = peak_rss_mb()
    print("BENCH-RESULT " + json.dumps(result, default=str))


if __name__ == "__main__":
    main()
