"""Four syncs and a Salesforce poll over overlapping emails at once, in separate processes: no duplicate
contacts, no deadlock, and the same store as running them one after the other."""

from __future__ import annotations

import os
from typing import Any

import pytest
import yaml

from conversion_sync.config import load_project_config
from conversion_sync.salesforce.budget import ApiBudget
from conversion_sync.salesforce.client import SalesforceSettings
from conversion_sync.salesforce.poller import SalesforcePoller
from conversion_sync.store.connection import store_engine
from conversion_sync.store.contact_store import ContactStore
from conversion_sync.store.identity import IdentityMatcher
from conversion_sync.syncs.runner import SyncRunner
from conversion_sync_dev.salesforce_standin import Org, StandinServer
from conversion_sync_tests.test_syncs.conftest import SyncWorld, store_snapshot

from .conftest import Child, Figures, StoreFactory, poll_command, sync_command
from .test_salesforce_faults import salesforce_snapshot

SYNCS = ("contacts", "contacts_crm", "objects", "events")
SALESFORCE_YAML = {
    "api_reserve": 0,
    "field_mappings": {
        "Contact": {"first_name": "FirstName", "last_name": "LastName"},
        "Lead": {"first_name": "FirstName", "last_name": "LastName"},
        "Account": {"name": "Name"},
    },
}


def build_world(world: SyncWorld, org: Org, people: int) -> None:
    """Every source touches the emails p0…p{people}: each overlaps the others by about half.

    No email belongs to two Salesforce records: for such an email the identity rules let a warehouse row update the
    most recently updated of its contacts, which depends on the order the runs happened to commit in.
    """
    n = people
    world.warehouse(
        f"""CREATE TABLE users AS SELECT 'p' || i || '@example.com' AS email, 'User' || i AS first_name,
               CASE WHEN i % 2 = 0 THEN 'pro' ELSE 'free' END AS plan, TIMESTAMP '2026-01-01' AS updated_at
            FROM range({n}) t(i)"""
    )
    world.warehouse(
        f"""CREATE TABLE crm AS SELECT ' P' || i || '@Example.com ' AS email, 'Crm' || i AS first_name,
               'City' || (i % 9) AS city, TIMESTAMP '2026-02-01' AS updated_at FROM range({n // 2}, {n + n // 2}) t(i)"""
    )
    world.warehouse(
        f"""CREATE TABLE owners AS SELECT 'prod' || (i % 50) AS id, 'Widget ' || (i % 50) AS name,
               'p' || (i * 3 % {2 * n}) || '@example.com' AS email FROM range({n}) t(i)"""
    )
    world.warehouse(
        f"""CREATE TABLE clicks AS SELECT 'p' || (i * 7 % {2 * n}) || '@example.com' AS email, 'click' AS event_name,
               TIMESTAMP '2026-03-01' + i * INTERVAL 1 SECOND AS "timestamp", i % 5 AS page FROM range({n}) t(i)"""
    )
    world.add_sync("contacts", "SELECT * FROM users")
    world.add_sync("contacts_crm", "SELECT * FROM crm")  # its name starts like `contacts`
    world.add_sync(
        "objects", "SELECT * FROM owners", destination={"type": "custom_objects", "object_type": "product"}
    )
    world.add_sync("events", "SELECT * FROM clicks", destination={"type": "events"})
    (world.dir / "salesforce.yaml").write_text(yaml.safe_dump(SALESFORCE_YAML))
    org.set_limits(max=10_000_000, used=0)
    org.advance_clock(-600)  # records older than the poll's upper bound (now − 1 minute) in real time
    accounts = org.seed("Account", [{"Name": f"Account {i}"} for i in range(20)])
    org.seed(
        "Contact",
        [
            {
                "FirstName": f"Sf{i}",
                "LastName": f"Person {i}",
                "Email": f"p{i}@example.com",
                "AccountId": accounts[i % 20],
            }
            for i in range(n // 4, n + n // 4, 2)
        ],
    )
    org.seed(
        "Lead",
        [{"LastName": f"Lead {i}", "Company": "Co", "Email": f"p{i}@example.com"} for i in range(1, n, 10)],
    )
    world.project()


def salesforce_env(standin: StandinServer) -> dict[str, str]:
    return {
        "SALESFORCE_USERNAME": standin.username,
        "SALESFORCE_PASSWORD": standin.password,
        "SALESFORCE_SECURITY_TOKEN": standin.security_token,
        "SALESFORCE_LOGIN_URL": standin.url,
        "SALESFORCE_CA_BUNDLE": str(standin.ca_path),
    }


def run_in_sequence(
    world: SyncWorld, store_url: str, standin: StandinServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = load_project_config(world.dir)
    for name in SYNCS:
        SyncRunner(project.syncs[name], project, ContactStore(url=store_url)).run()
    for key, value in salesforce_env(standin).items():
        monkeypatch.setenv(key, value)
    client = SalesforceSettings.from_env().connect(ApiBudget(reserve=0))
    try:
        assert (
            SalesforcePoller(project.salesforce, ContactStore(url=store_url), IdentityMatcher(), client)
            .run()
            .complete
        )
    finally:
        client.close()


def run_at_once(world: SyncWorld, store_url: str, standin: StandinServer) -> list[dict[str, Any]]:
    """Five warm worker processes, started together."""
    env = salesforce_env(standin)
    workers = [Child(env) for _ in range(len(SYNCS) + 1)]
    try:
        for worker in workers:
            worker.wait_imported()
        commands = [sync_command(world.dir, name, store_url) for name in SYNCS] + [
            poll_command(world.dir, store_url)
        ]
        for worker, command in zip(workers, commands, strict=True):
            worker.send(command)
        return [worker.finish() for worker in workers]  # a worker that failed (deadlock, …) fails here
    finally:
        for worker in workers:
            worker.dismiss()


def concurrency_rounds(
    world: SyncWorld,
    standin: StandinServer,
    org: Org,
    new_store: StoreFactory,
    figures: Figures,
    monkeypatch: pytest.MonkeyPatch,
    *,
    people: int,
    rounds: int,
) -> None:
    build_world(world, org, people)
    sequential = new_store()
    run_in_sequence(world, sequential, standin, monkeypatch)
    expected = (store_snapshot(sequential), salesforce_snapshot(sequential))
    for round_ in range(rounds):
        store = new_store()
        results = run_at_once(world, store, standin)
        assert results[-1]["complete"], results[-1]
        duplicates = world_sql(store, "SELECT email_normalized FROM contacts GROUP BY 1 HAVING count(*) > 1")
        assert duplicates == [], f"round {round_}: duplicate contacts {duplicates[:5]}"
        found = (store_snapshot(store), salesforce_snapshot(store))
        assert found == expected, (
            f"round {round_} differs from the sequential run: {snapshot_diff(found, expected)}"
        )
        figures.add("concurrency", rounds=1, processes=len(results), failed_processes=0, duplicate_contacts=0)


def snapshot_diff(found: Any, expected: Any, limit: int = 5) -> dict[str, Any]:
    """Per table: rows only in the concurrent run's store, and rows only in the sequential run's."""
    out = {}
    for got, want in zip(found, expected, strict=True):
        for table in want:
            extra, missing = set(got[table]) - set(want[table]), set(want[table]) - set(got[table])
            if extra or missing:
                out[table] = {
                    "only_concurrent": sorted(extra, key=repr)[:limit],
                    "only_sequential": sorted(missing, key=repr)[:limit],
                }
    return out


def world_sql(url: str, sql: str) -> list[tuple[Any, ...]]:
    with store_engine(url).connect() as conn:
        return [tuple(r) for r in conn.exec_driver_sql(sql).all()]


def test_four_syncs_and_a_poll_at_once(
    world: SyncWorld,
    standin: StandinServer,
    standin_org: Org,
    new_store: StoreFactory,
    figures: Figures,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    concurrency_rounds(world, standin, standin_org, new_store, figures, monkeypatch, people=2_000, rounds=1)


@pytest.mark.reliability
@pytest.mark.timeout(3600)
def test_four_syncs_and_a_poll_at_once_many_rounds(
    world: SyncWorld,
    standin: StandinServer,
    standin_org: Org,
    new_store: StoreFactory,
    figures: Figures,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rounds = int(os.environ.get("RELIABILITY_CONCURRENCY_ROUNDS", "10"))
    concurrency_rounds(
        world, standin, standin_org, new_store, figures, monkeypatch, people=40_000, rounds=rounds
    )
