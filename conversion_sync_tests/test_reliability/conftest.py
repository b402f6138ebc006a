"""Reliability fixtures: throwaway stores, child processes running syncs or polls, and a figures log."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from conversion_sync_tests.conftest import REPO_ROOT, create_database, drop_database
from conversion_sync_tests.test_salesforce.conftest import (  # noqa: F401  (fixtures)
    salesforce_resource,
    standin,
    standin_org,
)
from conversion_sync_tests.test_syncs.conftest import SyncWorld, world  # noqa: F401  (fixtures)

CHILD_MODULE = "conversion_sync_tests.test_reliability.child"
CHILD_APP_NAME = "reliability_child"
"""application_name of every store/warehouse connection a child opens (PGAPPNAME), to wait for them."""
_store_numbers = itertools.count()

StoreFactory = Callable[[], str]


@pytest.fixture
def new_store(pg_base_uri: str) -> Iterator[StoreFactory]:
    """Make fresh migrated stores on demand; all are dropped after the test."""
    made: list[tuple[str, str]] = []

    def make() -> str:
        name = f"rel_store_{os.getpid()}_{next(_store_numbers)}"
        url = create_database(pg_base_uri, name)
        made.append((url, name))
        return url

    yield make
    for url, name in made:
        drop_database(pg_base_uri, url, name)


class Child:
    """A worker process (child.py): spawned ahead of time, then given one sync or poll to run."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        full_env = {**os.environ, "PGAPPNAME": CHILD_APP_NAME, **(env or {})}
        self.process = subprocess.Popen(
            [sys.executable, "-m", CHILD_MODULE],
            cwd=REPO_ROOT,
            env=full_env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.imported = False
        self.ready_at: float | None = None

    def _next_message(self, key: str, timeout: float) -> dict[str, Any]:
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                self.process.wait(timeout=30)
                assert self.process.stderr is not None
                raise AssertionError(
                    f"worker exited ({self.process.returncode}) before '{key}': {self.process.stderr.read()[-3000:]}"
                )
            message = json.loads(line)
            if key in message:
                return message
        raise AssertionError(f"worker sent no '{key}' in {timeout}s")

    def wait_imported(self, timeout: float = 120) -> Child:
        if not self.imported:
            self._next_message("imported", timeout)
            self.imported = True
        return self

    def send(self, command: dict[str, Any], timeout: float = 120) -> None:
        """Give the worker its work (once its imports are done)."""
        self.wait_imported(timeout)
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def start(self, command: dict[str, Any], timeout: float = 120) -> float:
        """Send the command; returns when the work starts (time.monotonic())."""
        self.send(command, timeout)
        self._next_message("ready", timeout)
        self.ready_at = time.monotonic()
        return self.ready_at

    def finish(self, timeout: float = 900) -> dict[str, Any]:
        """Wait for a normal exit and return the worker's result."""
        message = self._next_message("done", timeout)
        self.process.wait(timeout=60)
        assert self.process.returncode == 0
        return message["done"]

    def kill(self) -> bool:
        """SIGKILL the worker; False when it had already exited."""
        exited = self.process.poll() is not None
        if not exited:
            self.process.kill()
        self.process.wait(timeout=60)
        return not exited

    def dismiss(self) -> None:
        """An unused worker: let it exit."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=60)


class Workers:
    """Workers kept warm (imports done) so that a trial starts its run without waiting for them."""

    def __init__(self, warm: int = 2, env: dict[str, str] | None = None) -> None:
        self.env = env
        self.pool = [Child(env) for _ in range(warm)]

    def take(self) -> Child:
        child = self.pool.pop(0)
        self.pool.append(Child(self.env))
        return child.wait_imported()

    def close(self) -> None:
        for child in self.pool:
            child.dismiss()


@pytest.fixture
def workers() -> Iterator[Workers]:
    pool = Workers()
    yield pool
    pool.close()


def sync_command(
    config_dir: Path, sync_name: str, store_url: str, run_id: str | None = None
) -> dict[str, Any]:
    return {
        "what": "sync",
        "config": str(config_dir),
        "name": sync_name,
        "store": store_url,
        "run_id": run_id,
    }


def poll_command(config_dir: Path, store_url: str) -> dict[str, Any]:
    return {"what": "poll", "config": str(config_dir), "store": store_url}


def wait_for_child_sessions(store_url: str, timeout: float = 120) -> None:
    """Wait until the store has no session left from a (killed) child: its transactions are over."""
    from conversion_sync.store.connection import libpq_url

    deadline = time.monotonic() + timeout
    with psycopg.connect(libpq_url(store_url), autocommit=True) as conn:
        while time.monotonic() < deadline:
            left = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name = %s",
                (CHILD_APP_NAME,),
            ).fetchone()
            if left and left[0] == 0:
                return
            time.sleep(0.05)
    raise AssertionError("a killed child's store session did not end")


class Figures:
    """Measured figures of the reliability runs, merged into `reliability_figures.json` in the basetemp."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def add(self, section: str, **values: Any) -> None:
        data = json.loads(self.path.read_text()) if self.path.exists() else {}
        entry = data.setdefault(section, {})
        for key, value in values.items():
            if isinstance(value, int | float) and isinstance(entry.get(key), int | float):
                entry[key] += value
            elif isinstance(value, dict) and isinstance(entry.get(key), dict):
                for k, v in value.items():
                    entry[key][k] = entry[key].get(k, 0) + v
            else:
                entry[key] = value
        self.path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


@pytest.fixture(scope="session")
def figures(tmp_path_factory: pytest.TempPathFactory) -> Figures:
    return Figures(tmp_path_factory.getbasetemp() / "reliability_figures.json")


def new_world(tmp_path: Path, store_url: str, name: str) -> SyncWorld:
    """Another SyncWorld (config dir + DuckDB warehouse) in its own folder, on the given store."""
    folder = tmp_path / name
    folder.mkdir()
    return SyncWorld(folder, store_url)
