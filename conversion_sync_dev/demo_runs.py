"""On a fresh `make dev`, launch each demo sync once so the UI shows real runs within a minute."""

from __future__ import annotations

import threading
import time

import requests
import sqlalchemy as sa

from conversion_sync.store.connection import store_engine

FIRST_RUNS = (
    "sync_contacts_from_users",
    "sync_products",
    "sync_order_events",
    "salesforce_poll_job",
    "campaign_reconciliation_job",
)
"""Launched directly; product_owners and subscriptions follow through their after: sensors. Salesforce jobs fail
fast with a clear reason when no stand-in or org is configured."""


def store_is_fresh(store_url: str) -> bool:
    """No sync has ever run against this store."""
    with store_engine(store_url).connect() as conn:
        return conn.execute(sa.text("SELECT count(*) FROM sync_runs")).scalar_one() == 0


def launch_first_runs(
    host: str, port: int, jobs: tuple[str, ...] = FIRST_RUNS, timeout: float = 120
) -> list[str]:
    """Wait for the webserver, then submit each job through the GraphQL API; returns the run ids."""
    from dagster_graphql import DagsterGraphQLClient

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(f"http://{host}:{port}/server_info", timeout=2).ok:
                break
        except requests.RequestException:
            pass
        time.sleep(1)
    else:
        return []
    client = DagsterGraphQLClient(host, port_number=port)
    run_ids = []
    for job in jobs:
        for _ in range(30):  # the code location may still be loading
            try:
                run_ids.append(client.submit_job_execution(job))
                break
            except Exception:
                time.sleep(2)
    return run_ids


def launch_first_runs_in_background(host: str, port: int) -> threading.Thread:
    def announce() -> None:
        run_ids = launch_first_runs(host, port)
        if run_ids:
            print(f"launched {len(run_ids)} demo sync runs: http://{host}:{port}/runs", flush=True)

    thread = threading.Thread(target=announce, name="demo-runs", daemon=True)
    thread.start()
    return thread
