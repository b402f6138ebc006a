"""The Salesforce paths of `make bench`: the HTTPS stand-in seeded with changed Contacts, one poll, one push."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def run_path(name: str, settings: dict[str, Any], store_url: str) -> dict[str, Any]:
    """One bench.paths path in its own process (its peak RSS is its own)."""
    env = {**os.environ, "CONVERSION_STORE_URL": store_url}
    done = subprocess.run(
        [sys.executable, "-m", "bench.paths", name, json.dumps(settings)],
        env=env,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    for line in done.stdout.splitlines():
        if line.startswith("BENCH-RESULT "):
            return dict(json.loads(line.removeprefix("BENCH-RESULT ")))
    raise RuntimeError(f"bench path {name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


def salesforce_paths(
    data_dir: Path, contacts: int, members: int, store_url: str
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Start the HTTPS stand-in in its own process, seed changed Contacts matching store emails, poll once;
    then push a store campaign of `members` members (contacts without a Salesforce record) to it."""
    import socket

    import requests

    state = data_dir / "salesforce"
    state.mkdir(exist_ok=True)
    (state / "standin.json").unlink(missing_ok=True)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    standin = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "conversion_sync_dev.salesforce_standin",
            "--port",
            str(port),
            "--state-dir",
            str(state),
            "--fresh",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not (state / "standin.json").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        info = json.loads((state / "standin.json").read_text())
        session = requests.Session()
        session.trust_env = False
        session.verify = info["ca_bundle"]
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000+0000", time.gmtime(time.time() - 1800))
        for start in range(0, contacts, 20_000):
            records = [
                {
                    "FirstName": f"Sf{i}",
                    "LastName": f"Person{i}",
                    "Email": f"user{i}@example.com",
                    "Title": "VP Data",
                    "SystemModstamp": stamp,
                    "LastModifiedDate": stamp,
                }
                for i in range(start, min(contacts, start + 20_000))
            ]
            session.post(
                f"{info['url']}/_standin/seed", json={"type": "Contact", "records": records}, timeout=120
            ).raise_for_status()
        settings = {
            "url": info["url"],
            "ca": info["ca_bundle"],
            "username": info["username"],
            "password": info["password"],
            "security_token": info["security_token"],
        }
        poll = run_path("salesforce_poll", settings, store_url)
        push = run_path("campaign_push", {**settings, "members": members}, store_url) if members else None
        return poll, push
    finally:
        standin.terminate()
        standin.wait(timeout=30)
