"""A worker process for crash and concurrency trials: imports everything, then runs one sync or poll.

Protocol (JSON lines): the worker prints `{"imported": true}`, reads one command from stdin
(`{"what": "sync", "config": …, "name": …, "store": …, "run_id": …}` or `{"what": "poll", "config": …,
"store": …}`), prints `{"ready": …}` when the work starts and `{"done": …}` when it is over.
Started ahead of time, a worker costs nothing but its command when a trial needs it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from conversion_sync.config import load_project_config
from conversion_sync.salesforce.budget import ApiBudget
from conversion_sync.salesforce.client import SalesforceSettings
from conversion_sync.salesforce.poller import SalesforcePoller
from conversion_sync.store.contact_store import ContactStore
from conversion_sync.store.identity import IdentityMatcher
from conversion_sync.syncs.runner import SyncRunner


def _say(message: dict[str, Any]) -> None:
    print(json.dumps(message, default=str), flush=True)


def run_sync(config_dir: str, sync_name: str, store_url: str, run_id: str | None) -> dict[str, Any]:
    project = load_project_config(config_dir)
    store = ContactStore(url=store_url)
    runner = SyncRunner(project.syncs[sync_name], project, store)
    with store.begin() as conn:  # connect before saying ready, so the run starts at once
        conn.exec_driver_sql("SELECT 1")
    _say({"ready": sync_name, "at": time.time()})
    outcome = runner.run(run_id)
    return {"run_id": outcome.run_id, "counts": outcome.counts, "durations": outcome.durations}


def run_poll(config_dir: str, store_url: str) -> dict[str, Any]:
    """One Salesforce poll with the SALESFORCE_* credentials of the environment."""
    config = load_project_config(config_dir).salesforce
    resource = SalesforceSettings.from_env(backoff_seconds=0.01, max_backoff_seconds=0.05)
    client = resource.connect(ApiBudget(reserve=config.api_reserve))
    _say({"ready": "salesforce_poll", "at": time.time()})
    try:
        outcome = SalesforcePoller(config, ContactStore(url=store_url), IdentityMatcher(), client).run()
    finally:
        client.close()
    return {"complete": outcome.complete, "read": {n: p.counts.read for n, p in outcome.objects.items()}}


def main() -> int:
    _say({"imported": True})
    line = sys.stdin.readline()
    if not line.strip():
        return 0  # dismissed unused
    command = json.loads(line)
    if command["what"] == "sync":
        result = run_sync(command["config"], command["name"], command["store"], command.get("run_id"))
    else:
        result = run_poll(command["config"], command["store"])
    _say({"done": result})
    return 0


if __name__ == "__main__":
    sys.stdout.flush()
    os._exit(main())  # skip the interpreter's slow teardown: the parent waits for the exit
