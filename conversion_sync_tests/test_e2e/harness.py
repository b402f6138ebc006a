"""Run the Dagster UI (`dg dev`) the way `make dev` does, in a temp dir on a free port, and drive it: GraphQL and Chromium."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from dagster_graphql import DagsterGraphQLClient

from conversion_sync.config.environment import ENV_VAR
from conversion_sync.store.migrate import migrate_store
from conversion_sync_dev.demo_warehouse import seed_demo_warehouse
from conversion_sync_dev.embedded_postgres import (
    dagster_storage_url,
    start_embedded_postgres,
    stop_embedded_postgres,
)
from conversion_sync_dev.launcher import dagster_ui_command

REPO_ROOT = Path(__file__).resolve().parents[2]
LOCATION = "conversion_sync"
REPOSITORY = "__repository__"
DAEMONS = ("SCHEDULER", "SENSOR", "QUEUED_RUN_COORDINATOR")
FINISHED = ("SUCCESS", "FAILURE", "CANCELED")
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)
UI_ERROR_TEXTS = (
    "An unexpected error",
    "Unexpected GraphQL error",
    "Something went wrong",
    "PythonError",
    "Error loading",
    "Could not load",
    "No run found",
    "does not exist or has been cleaned up",
)
"""Text the Dagster UI shows when a page failed; a rendered page containing any of them is an error page."""

_INHERITED_PREFIXES = ("CONVERSION_", "DAGSTER_", "SALESFORCE_")


class HarnessError(Exception):
    """Dagster did not start, or did not answer as expected; the message carries the log's tail."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class DagsterDev:
    """A running `dg dev` (webserver, daemon, code server) and what it runs on."""

    url: str
    port: int
    data_dir: Path
    home: Path
    config_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes]

    def client(self) -> DagsterGraphQLClient:
        return DagsterGraphQLClient("127.0.0.1", port_number=self.port, timeout=60)

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        """The `data` of a GraphQL answer; GraphQL errors raise with the server's messages."""
        response = requests.post(
            f"{self.url}/graphql", json={"query": query, "variables": variables or {}}, timeout=60
        )
        response.raise_for_status()
        answer = response.json()
        if answer.get("errors"):
            raise HarnessError(f"GraphQL errors: {answer['errors']}")
        return answer["data"]

    def log_tail(self, lines: int = 80) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def fail(self, message: str) -> HarnessError:
        return HarnessError(f"{message}\n--- dg dev log (tail) ---\n{self.log_tail()}")

    def wait_until_ready(self, timeout: float) -> None:
        """Until the webserver answers, the code location is loaded and the daemons are healthy."""
        deadline = time.monotonic() + timeout
        last = "not started"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise self.fail(f"dg dev exited with code {self.process.returncode}")
            try:
                last = self._readiness()
            except (requests.RequestException, HarnessError) as exc:
                last = str(exc)
            if last == "ready":
                return
            time.sleep(0.5)
        raise self.fail(f"dg dev was not ready after {timeout:.0f}s: {last}")

    def _readiness(self) -> str:
        data = self.graphql(
            """{ workspaceOrError { __typename ... on Workspace { locationEntries { name loadStatus
                   locationOrLoadError { __typename ... on PythonError { message } } } } }
                 instance { daemonHealth { allDaemonStatuses { daemonType healthy } } } }"""
        )
        entries = {e["name"]: e for e in data["workspaceOrError"].get("locationEntries", [])}
        entry = entries.get(LOCATION)
        if entry is None or entry["loadStatus"] != "LOADED":
            return f"code location {LOCATION} is {entry and entry['loadStatus']}"
        if entry["locationOrLoadError"]["__typename"] == "PythonError":
            raise self.fail(f"code location failed to load: {entry['locationOrLoadError']['message']}")
        healthy = {
            d["daemonType"] for d in data["instance"]["daemonHealth"]["allDaemonStatuses"] if d["healthy"]
        }
        missing = [d for d in DAEMONS if d not in healthy]
        return f"daemons not healthy yet: {missing}" if missing else "ready"

    def wait_for_runs(self, run_ids: list[str], timeout: float) -> dict[str, str]:
        """Run id → final status, once every run has finished."""
        deadline = time.monotonic() + timeout
        statuses: dict[str, str] = {}
        while time.monotonic() < deadline:
            for run_id in run_ids:
                if statuses.get(run_id) not in FINISHED:
                    statuses[run_id] = self.client().get_run_status(run_id).value
            if all(statuses.get(r) in FINISHED for r in run_ids):
                return statuses
            time.sleep(1)
        raise self.fail(f"runs did not finish in {timeout:.0f}s: {statuses}")

    def schedule_selector(self, name: str) -> dict[str, str]:
        return {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY, "scheduleName": name}

    def set_nux_seen(self) -> None:
        """Dismiss the first-visit "Join the Dagster community" dialog so it does not cover screenshots."""
        self.graphql("mutation { setNuxSeen }")


def _dagster_env(
    data_dir: Path, home: Path, config_dir: Path, store_url: str, url: str, extra: dict[str, str]
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_INHERITED_PREFIXES)}
    env.update(
        {
            ENV_VAR: "local",
            "CONVERSION_SYNC_DATA_DIR": str(data_dir),
            "CONVERSION_SYNC_CONFIG": str(config_dir),
            "CONVERSION_STORE_URL": store_url,
            "DAGSTER_PG_URL": dagster_storage_url(data_dir),
            "DAGSTER_HOME": str(home),
            "DAGSTER_WEBSERVER_URL": url,
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


@contextlib.contextmanager
def dagster_dev(
    base_dir: Path,
    config_dir: Path,
    *,
    extra_env: dict[str, str] | None = None,
    startup_timeout: float = 120,
) -> Iterator[DagsterDev]:
    """`make dev` in `base_dir`: embedded store, migrations, demo warehouse, then `dg dev` on a free port.

    DAGSTER_HOME is `base_dir/home` holding a copy of the repo's dagster.yaml (Postgres storage, queued runs),
    so the repo's own folder is never written to. Everything stops on exit, also when the body raised:
    the whole `dg dev` process group, any process still carrying this DAGSTER_HOME, and the Postgres.
    """
    data_dir, home = base_dir / "data", base_dir / "home"
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
    log_path = base_dir / "dagster-dev.log"
    store_url = start_embedded_postgres(data_dir)
    try:
        migrate_store(store_url)
        seed_demo_warehouse(data_dir / "warehouse.duckdb")
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = _dagster_env(data_dir, home, config_dir, store_url, url, extra_env or {})
        command = dagster_ui_command("127.0.0.1", port)
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            dev = DagsterDev(url, port, data_dir, home, config_dir, log_path, process)
            dev.wait_until_ready(startup_timeout)
            yield dev
        finally:
            stop_process_group(process)
            stop_processes_with_home(home)
    finally:
        stop_embedded_postgres(data_dir)


def stop_process_group(process: subprocess.Popen[bytes], grace_seconds: float = 20) -> None:
    """SIGTERM the process group `process` leads (dg dev and its children), then SIGKILL what is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace_seconds)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)


def stop_processes_with_home(home: Path) -> list[int]:
    """SIGKILL processes whose environment has DAGSTER_HOME=home: run workers that left the process group."""
    marker = f"DAGSTER_HOME={home}".encode()
    killed = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker in environ.split(b"\0"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)
                killed.append(int(entry.name))
    return killed


# --- the browser ----------------------------------------------------------------------------------------


def chromium_path() -> str | None:
    """Debian's chromium (or another Chromium/Chrome on PATH), or None."""
    for candidate in CHROMIUM_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    return None


def render_page(
    url: str,
    *,
    screenshot: Path | None = None,
    window: tuple[int, int] = (1600, 1000),
    budget_ms: int = 15_000,
    timeout: float = 90,
) -> str:
    """Load `url` in headless Chromium, optionally save a PNG, and return the rendered DOM.

    `--virtual-time-budget` lets the React app fetch and render before the snapshot. A fresh profile per
    call; the browser runs in its own process group, killed whole if it hangs.
    """
    browser = chromium_path()
    if browser is None:
        raise HarnessError("no chromium found")
    profile = Path(tempfile.mkdtemp(prefix="cs-chromium-"))
    try:
        flags = [
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            f"--window-size={window[0]},{window[1]}",
            f"--virtual-time-budget={budget_ms}",
        ]
        if screenshot is not None:
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            screenshot.unlink(missing_ok=True)
            flags.append(f"--screenshot={screenshot}")
        dom = _run_browser([browser, *flags, "--dump-dom", url], timeout)
        if screenshot is not None and (not screenshot.exists() or screenshot.stat().st_size == 0):
            raise HarnessError(f"chromium wrote no screenshot of {url}")
        return dom
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def _run_browser(command: list[str], timeout: float) -> str:
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise HarnessError(f"chromium did not finish in {timeout:.0f}s: {' '.join(command[-1:])}") from None
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # helpers (zygote, GPU process) that outlived the browser
    if process.returncode != 0:
        raise HarnessError(
            f"chromium exited with {process.returncode}: {err.decode(errors='replace')[-2000:]}"
        )
    return out.decode(errors="replace")


def page_text(dom: str) -> str:
    """The visible text of a DOM dump: body only, without scripts and styles, whitespace collapsed."""
    body = dom[dom.find("<body") :] if "<body" in dom else dom
    body = re.sub(r"<(script|style)\b[^>]*>.*?</\1>", " ", body, flags=re.DOTALL | re.IGNORECASE)
    text = re.sub(r"<[^>]+>", " ", body)
    return re.sub(r"\s+", " ", text).strip()


def page_errors(text: str) -> list[str]:
    """The Dagster error texts a page shows (empty when it rendered normally)."""
    return [needle for needle in UI_ERROR_TEXTS if needle.lower() in text.lower()]
