"""Crash anywhere, rerun converges: syncs SIGKILLed at random moments, then rerun, equal one clean run."""

from __future__ import annotations

import itertools
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pytest

from conversion_sync.config import load_project_config
from conversion_sync.store.connection import libpq_url, store_engine
from conversion_sync.store.contact_store import ContactStore
from conversion_sync.syncs.runner import SyncOutcome, SyncRunner
from conversion_sync_tests.test_syncs.conftest import store_snapshot

from .conftest import Child, Figures, StoreFactory, Workers, sync_command, wait_for_child_sessions

SCHEMA_YAML = "contact_fields: {plan: string, seats: integer}\n"
CONTACTS_YAML = """name: contacts
warehouse: wh
destination: {type: contacts}
query: |
  SELECT email, first_name, last_name, city, seats, plan, updated_at
  FROM users WHERE updated_at > '{{last_sync_time}}'
"""
EVENTS_YAML = """name: events
warehouse: wh
destination: {type: events}
lookback: 1 hour
query: |
  SELECT email, event_name, "timestamp", message_id, amount
  FROM events WHERE loaded_at > '{{last_sync_time}}'
"""
SYNCS = ("contacts", "events")
KILL_TARGETS = ("query", "validate", "write", "after the commit")
SIGNATURES = {
    # what only that sync writes: equal to the previous committed state or the new one, never between
    "contacts": """SELECT (SELECT count(*) FROM sync_fingerprints WHERE sync_name = 'contacts'),
                          count(*) FILTER (WHERE first_name IS NOT NULL), count(*) FILTER (WHERE city LIKE 'Moved%%'),
                          coalesce(sum((custom_fields ->> 'seats')::bigint), 0) FROM contacts""",
    "events": "SELECT count(*), count(*) FILTER (WHERE timestamp >= '2030-01-01') FROM events",
}


def build_warehouses(folder: Path, users: int, events: int) -> tuple[Path, Path]:
    """State A (first load) and state B (10% of users changed, 5% new; new events and re-sent ones)."""
    a, b = folder / "state_a.duckdb", folder / "state_b.duckdb"
    users_a = f"""SELECT 'user' || i || '@example.com' AS email, 'First' || i AS first_name,
        'Last' || (i % 977) AS last_name, 'City' || (i % 101) AS city, i % 50 AS seats,
        CASE WHEN i % 3 = 0 THEN 'pro' ELSE 'free' END AS plan,
        TIMESTAMP '2026-01-01' + i * INTERVAL 1 SECOND AS updated_at FROM range({users}) t(i)"""
    events_a = f"""SELECT CASE WHEN i % 4 = 0 THEN 'visitor' || i || '@example.com'
                   ELSE 'user' || (i * 7 % {users}) || '@example.com' END AS email,
        CASE i % 3 WHEN 0 THEN 'signup' WHEN 1 THEN 'page_view' ELSE 'purchase' END AS event_name,
        TIMESTAMPTZ '2026-02-01 00:00:00+00' + i * INTERVAL 1 SECOND AS "timestamp",
        CASE WHEN i % 2 = 0 THEN 'msg-' || i END AS message_id, (i % 1000) / 10.0 AS amount,
        TIMESTAMP '2026-02-01' + i * INTERVAL 1 SECOND AS loaded_at FROM range({events}) t(i)"""
    with duckdb.connect(str(a)) as conn:
        conn.execute(f"CREATE TABLE users AS {users_a}")
        conn.execute(f"CREATE TABLE events AS {events_a}")
    with duckdb.connect(str(b)) as conn:
        conn.execute(f"CREATE TABLE users AS {users_a}")
        conn.execute(
            """UPDATE users SET city = 'Moved' || split_part(email, '@', 1), seats = seats + 1,
                   updated_at = TIMESTAMP '2030-01-01' + (seats * INTERVAL 1 SECOND)
               WHERE hash(email) % 10 = 0"""
        )
        conn.execute(
            f"""INSERT INTO users SELECT 'new' || i || '@example.com', 'New' || i, 'Newer', 'Moved' || i, 1, 'pro',
                TIMESTAMP '2030-01-02' + i * INTERVAL 1 SECOND FROM range({users // 20}) t(i)"""
        )
        conn.execute(f"CREATE TABLE events AS {events_a}")
        conn.execute(
            f"""INSERT INTO events SELECT 'user' || i || '@example.com', 'renewal',
                TIMESTAMPTZ '2030-01-01 00:00:00+00' + i * INTERVAL 1 SECOND, NULL, 9.5,
                TIMESTAMP '2030-01-01' FROM range({events // 10}) t(i)"""
        )
        # re-sent: the same events again (with and without message_id), loaded later
        conn.execute(
            f"""INSERT INTO events SELECT email, event_name, "timestamp", message_id, amount,
                TIMESTAMP '2030-01-01' FROM events WHERE loaded_at < '2030-01-01' LIMIT {events // 20}"""
        )
    return a, b


def write_config(folder: Path, warehouse: Path) -> Path:
    folder.mkdir(exist_ok=True)
    (folder / "schema.yaml").write_text(SCHEMA_YAML)
    (folder / "contacts.yaml").write_text(CONTACTS_YAML)
    (folder / "events.yaml").write_text(EVENTS_YAML)
    point_at(folder, warehouse)
    return folder


def point_at(config_dir: Path, warehouse: Path) -> None:
    (config_dir / "warehouses.yaml").write_text(f"warehouses:\n  wh: {{type: duckdb, path: '{warehouse}'}}\n")


def run_in_process(config_dir: Path, sync_name: str, store_url: str) -> SyncOutcome:
    project = load_project_config(config_dir)
    assert not project.problems, project.problems
    return SyncRunner(project.syncs[sync_name], project, ContactStore(url=store_url)).run()


def query(store_url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with store_engine(store_url).connect() as conn:
        return [tuple(r) for r in conn.exec_driver_sql(sql, params).all()]


def signature(store_url: str, sync_name: str) -> tuple[Any, ...]:
    return query(store_url, SIGNATURES[sync_name])[0]


def watermark(store_url: str, sync_name: str) -> Any:
    rows = query(store_url, "SELECT watermark FROM sync_state WHERE sync_name = %s", (sync_name,))
    return rows[0][0] if rows else None


@dataclass
class Reference:
    """The clean run's store after each step, its signatures, and how long each step took."""

    snapshots: list[dict[str, list[tuple[Any, ...]]]] = field(default_factory=list)
    signatures: list[dict[str, tuple[Any, ...]]] = field(default_factory=list)
    steps: dict[tuple[int, str], dict[str, float]] = field(default_factory=dict)
    """(step, sync) → seconds of the query, validate and write steps of the clean run."""

    def kill_delay(self, step: int, sync_name: str, target: str, rng: random.Random) -> float:
        """Seconds into the `target` step at which to kill the run (a clean run's step, randomly cut)."""
        if target == "after the commit":
            return rng.uniform(0.0, 0.05)
        return self.steps[(step, sync_name)][target] * rng.uniform(0.0, 0.95)


PHASE_NAMES = {
    "querying": "query",
    "preparing": "validate",
    "writing": "write",
    "success": "after the commit",
}
STEP_STARTED = {
    # the run's record as each step starts (every step commits the next phase as it ends)
    "query": "status = 'running'",
    "validate": "phase = 'preparing'",
    "write": "phase = 'writing'",
    "after the commit": "status = 'success'",
}


def wait_for_step(store_url: str, run_id: str, target: str, child: Child, timeout: float = 300) -> bool:
    """Poll the run's record until `target` has started; False when the worker exited first."""
    condition = STEP_STARTED[target]
    deadline = time.monotonic() + timeout
    with psycopg.connect(libpq_url(store_url), autocommit=True) as conn:
        while time.monotonic() < deadline:
            if child.process.poll() is not None:
                return False
            if conn.execute(
                f"SELECT 1 FROM sync_runs WHERE run_id = %s AND {condition}", (run_id,)
            ).fetchone():
                return True
            time.sleep(0.01)
    raise AssertionError(f"run {run_id} did not reach {target} in {timeout}s")


def clean_reference(config_dir: Path, states: tuple[Path, Path], store_url: str) -> Reference:
    """Each step run once, uninterrupted (which also times its steps)."""
    ref = Reference(signatures=[{name: signature(store_url, name) for name in SYNCS}])
    for step, state in enumerate(states):
        point_at(config_dir, state)
        for name in SYNCS:
            ref.steps[(step, name)] = run_in_process(config_dir, name, store_url).durations
        ref.snapshots.append(store_snapshot(store_url))
        ref.signatures.append({name: signature(store_url, name) for name in SYNCS})
    return ref


def crash_trials(
    tmp_path: Path,
    new_store: StoreFactory,
    figures: Figures,
    workers: Workers,
    *,
    trials: int,
    users: int,
    events: int,
    every_step: bool = True,
) -> None:
    """`trials` fresh stores, each taken through both warehouse states; every run of a sync is killed once
    and then rerun normally. Without `every_step`, trial t kills only in step t % 2 (a lighter run)."""
    seed = int(os.environ.get("RELIABILITY_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)
    states = build_warehouses(tmp_path, users, events)
    config_dir = write_config(tmp_path / "config", states[0])
    ref = clean_reference(config_dir, states, new_store())
    # every run is aimed at one of its steps, or just after its commit, in turn
    targets = itertools.cycle(KILL_TARGETS)
    phases: dict[str, int] = {}
    kills = 0
    for trial in range(trials):
        store = new_store()
        for step, state in enumerate(states):
            point_at(config_dir, state)
            for name in SYNCS if every_step or step == trial % len(states) else ():
                before_wm = watermark(store, name)
                before_sig = ref.signatures[step][name]
                target = next(targets)
                delay = ref.kill_delay(step, name, target, rng)
                run_id = f"crash-{trial}-{step}-{name}"
                child = workers.take()
                child.start(sync_command(config_dir, name, store, run_id))
                wait_for_step(store, run_id, target, child)
                time.sleep(delay)
                killed = child.kill()
                kills += killed
                wait_for_child_sessions(store)
                run = query(
                    store, "SELECT status, phase, next_watermark FROM sync_runs WHERE run_id = %s", (run_id,)
                )
                phase = "before the run started" if not run else PHASE_NAMES[run[0][1] or run[0][0]]
                phase = phase if killed else "finished before the kill"
                phases[phase] = phases.get(phase, 0) + 1
                where = (
                    f"seed {seed}, trial {trial}, step {step}, sync {name}, aimed at {target}, "
                    f"killed {delay:.2f}s into it ({phase})"
                )
                after_wm, after_sig = watermark(store, name), signature(store, name)
                if after_wm == before_wm:
                    assert after_sig == before_sig, f"half-written or lost data without a commit: {where}"
                else:
                    assert run and run[0][0] == "success" and run[0][2] == after_wm, (
                        f"the watermark moved without its run's commit: {where}"
                    )
                    assert after_sig == ref.signatures[step + 1][name], (
                        f"the watermark is ahead of the data: {where}"
                    )
            for name in SYNCS:
                run_in_process(config_dir, name, store)
            snapshot = store_snapshot(store)
            assert snapshot == ref.snapshots[step], (
                f"seed {seed}, trial {trial}: rerun differs after step {step}"
            )
            duplicates = query(store, "SELECT message_id FROM events GROUP BY 1 HAVING count(*) > 1")
            assert duplicates == []
        running = query(store, "SELECT run_id FROM sync_runs WHERE status = 'running'")
        assert running == [], f"seed {seed}, trial {trial}: runs still marked running: {running}"
        [(leftovers,)] = query(
            store, "SELECT count(*) FROM pg_tables WHERE schemaname = 'conversion_staging'"
        )
        assert leftovers == 0, f"seed {seed}, trial {trial}: {leftovers} staging tables left behind"
    figures.add(
        f"crash_{users}_rows",
        trials=trials,
        killed_runs=kills,
        runs_started=trials * (len(states) if every_step else 1) * len(SYNCS),
        kill_phases=phases,
        rows_per_trial=users + events,
    )


def test_crash_anywhere_then_rerun_converges_light(
    tmp_path: Path, new_store: StoreFactory, figures: Figures, workers: Workers
) -> None:
    crash_trials(
        tmp_path, new_store, figures, workers, trials=2, users=10_000, events=5_000, every_step=False
    )


@pytest.mark.reliability
@pytest.mark.timeout(3600)
def test_crash_anywhere_then_rerun_converges(
    tmp_path: Path, new_store: StoreFactory, figures: Figures, workers: Workers
) -> None:
    crash_trials(tmp_path, new_store, figures, workers, trials=20, users=200_000, events=100_000)
