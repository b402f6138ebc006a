"""`make dev`: embedded store, migrations, demo warehouse, Salesforce stand-in, then the Dagster UI (`dg dev`)."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from conversion_sync.config.environment import ENV_VAR
from conversion_sync.store.connection import STORE_URL_ENV, redact_url
from conversion_sync.store.migrate import migrate_store
from conversion_sync_dev.demo_runs import launch_first_runs_in_background, store_is_fresh
from conversion_sync_dev.embedded_postgres import (
    dagster_storage_url,
    data_directory,
    start_embedded_postgres,
    stop_embedded_postgres,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


def dagster_ui_command(host: str, port: int | str) -> list[str]:
    """`dg dev` on host:port, run from REPO_ROOT: the code location is the project [tool.dg] in pyproject.toml
    names; the webserver, the daemon and the code server run in the process group of the `dg` process."""
    return [str(Path(sys.executable).parent / "dg"), "dev", "-h", host, "-p", str(port)]


def prepare_dagster_home(data_dir: Path) -> Path:
    """DAGSTER_HOME: the repo root, whose dagster.yaml keeps run/event/schedule storage in Postgres."""
    os.environ.setdefault("CONVERSION_SYNC_DATA_DIR", str(data_dir))
    return Path(os.environ.get("DAGSTER_HOME") or REPO_ROOT).resolve()


def prepare_environment() -> dict[str, str]:
    """Start what the Dagster UI needs and return the environment its processes share."""
    env = dict(os.environ)
    env.setdefault(ENV_VAR, "local")  # what this launcher runs is local: the code location's resources follow
    data_dir = data_directory()
    env.setdefault("CONVERSION_SYNC_DATA_DIR", str(data_dir))
    env.setdefault("CONVERSION_SYNC_CONFIG", str(REPO_ROOT / "syncs"))
    if not env.get(STORE_URL_ENV):
        env[STORE_URL_ENV] = start_embedded_postgres(data_dir)
        env.setdefault("DAGSTER_PG_URL", dagster_storage_url(data_dir))
    if not env.get("DAGSTER_PG_URL"):
        sys.exit("DAGSTER_PG_URL must be set when CONVERSION_STORE_URL points at an external Postgres")
    before, after = migrate_store(env[STORE_URL_ENV])
    print(
        f"contact store {redact_url(env[STORE_URL_ENV])}: revision {before or 'empty'} -> {after}", flush=True
    )
    demo_env = _start_demo_services(env, data_dir)
    env.update(demo_env)
    if demo_env:  # the stand-in started here (never a real org): a demo store campaign linked to it
        from conversion_sync_dev.demo_campaigns import seed_demo_campaign_for_launcher

        seed_demo_campaign_for_launcher(env[STORE_URL_ENV], demo_env)
    env["DAGSTER_HOME"] = str(prepare_dagster_home(data_dir))
    return env


def _start_demo_services(env: dict[str, str], data_dir: Path) -> dict[str, str]:
    """Seed the demo warehouse and start the local Salesforce stand-in; returns env vars for Dagster."""
    from conversion_sync_dev import demo_warehouse

    path = demo_warehouse.seed_demo_warehouse(data_dir / "warehouse.duckdb")
    print(f"demo warehouse: {path}", flush=True)
    if env.get("SALESFORCE_USERNAME") or env.get("SALESFORCE_ACCESS_TOKEN"):
        print("Salesforce: using the SALESFORCE_* credentials from the environment", flush=True)
        return {}
    return _start_salesforce_standin(data_dir / "salesforce")


SALESFORCE_STANDIN_PORT = 8443


def _start_salesforce_standin(state_dir: Path, timeout_seconds: float = 60) -> dict[str, str]:
    """Run the stand-in as a subprocess (stopped when the launcher exits) and return its SALESFORCE_* vars.

    Without it (port taken, crash) Dagster still starts: the Salesforce schedules load stopped and say why.
    """
    import atexit
    import json
    import time

    import requests

    info_path = state_dir / "standin.json"
    info_path.unlink(missing_ok=True)  # a stale file from the last run must not be mistaken for this one
    command = [
        sys.executable,
        "-m",
        "conversion_sync_dev.salesforce_standin",
        "--port",
        str(SALESFORCE_STANDIN_PORT),
        "--state-dir",
        str(state_dir),
        "--seed-demo",
    ]
    # its own session: Ctrl-C reaches the launcher, which stops Dagster first and then the stand-in
    process = subprocess.Popen(command, cwd=REPO_ROOT, start_new_session=True)

    def stop_standin() -> None:
        if process.poll() is None:
            process.terminate()  # SIGTERM: the stand-in saves its state and exits
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
            print("Salesforce stand-in stopped", flush=True)

    atexit.register(stop_standin)
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            print(
                f"Salesforce stand-in exited (code {process.returncode}; is port {SALESFORCE_STANDIN_PORT} in "
                "use?); continuing without Salesforce",
                flush=True,
            )
            return {}
        try:
            info = json.loads(info_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            info = None
        if info and info.get("pid") == process.pid:
            session = requests.Session()
            session.trust_env = False
            try:
                if session.get(info["url"], verify=info["ca_bundle"], timeout=2).ok:
                    print(f"Salesforce stand-in: {info['url']} (state in {state_dir})", flush=True)
                    return {key: str(value) for key, value in info["env"].items()}
            except requests.RequestException:
                pass
            finally:
                session.close()
        time.sleep(0.2)
    print("Salesforce stand-in did not answer in time; continuing without Salesforce", flush=True)
    stop_standin()
    return {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", default="3000")
    parser.add_argument("--prepare-only", action="store_true", help="set everything up, do not start Dagster")
    parser.add_argument(
        "--no-demo-runs", action="store_true", help="do not launch the demo syncs on a fresh store"
    )
    args = parser.parse_args(argv)
    env = prepare_environment()
    if args.prepare_only:
        return 0
    command = dagster_ui_command(args.host, args.port)
    print(f"Dagster UI: http://{args.host}:{args.port}  (Ctrl-C stops everything)", flush=True)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _interrupt)
    process = subprocess.Popen(command, env=env, cwd=REPO_ROOT, start_new_session=True)
    if not args.no_demo_runs and store_is_fresh(env[STORE_URL_ENV]):
        launch_first_runs_in_background(args.host, int(args.port))
    try:
        return process.wait()
    except KeyboardInterrupt:
        print("stopping Dagster…", flush=True)
        _stop_process_group(process)
        return 0
    finally:
        if not os.environ.get(STORE_URL_ENV):
            stop_embedded_postgres()
            print("embedded Postgres stopped", flush=True)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _stop_process_group(process: subprocess.Popen[bytes], grace_seconds: float = 30) -> None:
    """SIGTERM dg dev's whole process group (webserver, daemon, code server), then SIGKILL stragglers."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace_seconds)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


if __name__ == "__main__":
    raise SystemExit(main())
