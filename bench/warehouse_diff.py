"""In-warehouse diffing against a Postgres warehouse over TCP: bytes and time of reruns, diffed and read whole.

`python -m bench.warehouse_diff [ROWS]` starts two embedded Postgres servers (the warehouse and the store), puts
a counting TCP proxy in front of the warehouse, loads ROWS contacts (default 1,000,000) and times, in one
process, the contacts sync's reruns with `diff_in_warehouse: never` (today's full read) and `auto` (diffed): no
change, and 1% of the rows changed. Bytes are what crossed the proxy (both directions) during the run.
Prints a JSON document and a Markdown table.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import socket
import sys
import tempfile
import threading
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

warnings.filterwarnings("ignore")

import psycopg  # noqa: E402

from conversion_sync.config import load_project_config  # noqa: E402
from conversion_sync.store.contact_store import ContactStore  # noqa: E402
from conversion_sync.store.migrate import migrate_store  # noqa: E402
from conversion_sync.syncs.runner import SyncRunner  # noqa: E402

QUERY = "SELECT email, first_name, last_name, job_title, phone, city, updated_at FROM contacts_src"


class CountingProxy:
    """127.0.0.1:<port> → a Unix socket, counting the bytes each way."""

    def __init__(self, unix_path: str) -> None:
        self.unix_path = unix_path
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.to_client = 0
        self.to_server = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            server.connect(self.unix_path)
            threading.Thread(target=self._pipe, args=(client, server, "to_server"), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, "to_client"), daemon=True).start()

    def _pipe(self, source: socket.socket, target: socket.socket, counter: str) -> None:
        try:
            while data := source.recv(1 << 18):
                target.sendall(data)
                with self._lock:
                    setattr(self, counter, getattr(self, counter) + len(data))
        except OSError:
            pass
        finally:
            for s in (source, target):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def reset(self) -> tuple[int, int]:
        with self._lock:
            counts = (self.to_client, self.to_server)
            self.to_client = self.to_server = 0
        return counts


def _server(directory: Path) -> Any:
    import pgserver

    return pgserver.get_server(directory, cleanup_mode="stop")


def _socket_path(uri: str) -> str:
    host = uri.split("host=", 1)[1].split("&", 1)[0]
    return f"{host}/.s.PGSQL.5432"


def load_warehouse(url: str, rows: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS contacts_src")
        conn.execute(
            """CREATE TABLE contacts_src AS SELECT 'person' || i || '@example.com' AS email,
                'First' || i AS first_name, 'Last' || (i %% 5000) AS last_name, 'Job title ' || (i %% 300) AS job_title,
                '+1 555 ' || lpad((i %% 10000000)::text, 7, '0') AS phone, 'City ' || (i %% 2000) AS city,
                timestamptz '2026-01-01 00:00:00+00' + i * interval '1 second' AS updated_at
            FROM generate_series(1, %s) i""",
            (rows,),
        )
        conn.execute("ALTER TABLE contacts_src ADD PRIMARY KEY (email)")
        conn.execute("VACUUM ANALYZE contacts_src")


def change_share(url: str, share: float, round_: int) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(
            "UPDATE contacts_src SET city = city || ' r' || %s::text, updated_at = updated_at + interval '1 day' "
            "WHERE hashtext(email || %s::text) %% %s = 0",
            (round_, round_, round(1 / share)),
        )
        return cur.rowcount


def write_config(directory: Path, setting: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "schema.yaml").write_text("contact_fields: {}\n")
    (directory / "warehouses.yaml").write_text(
        "warehouses:\n  src: {type: postgres, url: {env: BENCH_DIFF_WAREHOUSE_URL}}\n"
    )
    (directory / "contacts.yaml").write_text(
        "name: contacts\nwarehouse: src\ndestination: {type: contacts}\n"
        f"diff_in_warehouse: {setting}\nquery: |\n  {QUERY}\n"
    )
    return directory


def run_once(config: Path, store: ContactStore, proxy: CountingProxy) -> dict[str, Any]:
    project = load_project_config(config)
    assert not project.problems, project.problems
    runner = SyncRunner(project.syncs["contacts"], project, store)
    proxy.reset()
    started = time.perf_counter()
    outcome = runner.run()
    seconds = time.perf_counter() - started
    received, sent = proxy.reset()
    with store.begin() as conn:
        note = conn.exec_driver_sql(
            "SELECT counts ->> 'diff' FROM sync_runs WHERE run_id = %s", (outcome.run_id,)
        ).scalar_one()
    return {
        "seconds": round(seconds, 2),
        "bytes_from_warehouse": received,
        "bytes_to_warehouse": sent,
        "diff": note,
        "durations": outcome.durations,
        "counts": {k: v for k, v in outcome.counts.items() if isinstance(v, int)},
    }


def main(rows: int) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="bench-diff-"))
    warehouse_server = _server(root / "warehouse")
    store_server = _server(root / "store")
    proxy = CountingProxy(_socket_path(warehouse_server.get_uri()))
    warehouse_url = f"postgresql://postgres@127.0.0.1:{proxy.port}/postgres"
    os.environ["BENCH_DIFF_WAREHOUSE_URL"] = warehouse_url
    store_url = store_server.get_uri()
    migrate_store(store_url)
    store = ContactStore(url=store_url)
    load_warehouse(warehouse_server.get_uri(), rows)
    never = write_config(root / "never", "never")
    auto = write_config(root / "auto", "auto")
    results: dict[str, Any] = {"rows": rows}
    results["first load (full read)"] = run_once(never, store, proxy)
    results["full read, no change"] = run_once(never, store, proxy)
    results["full read recording fingerprints"] = run_once(auto, store, proxy)
    results["diffed, no change"] = run_once(auto, store, proxy)
    results["changed_rows_diffed"] = change_share(warehouse_server.get_uri(), 0.01, 1)
    results["diffed, 1% changed"] = run_once(auto, store, proxy)
    results["changed_rows_full"] = change_share(warehouse_server.get_uri(), 0.01, 2)
    results["full read, 1% changed"] = run_once(never, store, proxy)
    results["machine"] = (
        f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"
    )
    results["date"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    warehouse_server.cleanup()
    store_server.cleanup()
    shutil.rmtree(root, ignore_errors=True)
    return results


def table(results: dict[str, Any]) -> str:
    lines = [
        f"{results['rows']:,} contacts, Postgres warehouse over TCP (counting proxy), embedded Postgres store; "
        f"{results['date']}, {results['machine']}",
        "",
        "| run | diff | seconds | bytes from warehouse | bytes to warehouse | fetched rows | added | changed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        if not isinstance(r, dict):
            continue
        c = r["counts"]
        lines.append(
            f"| {name} | {r['diff']} | {r['seconds']} | {r['bytes_from_warehouse']:,} | {r['bytes_to_warehouse']:,} "
            f"| {c.get('fetched_rows', '')} | {c.get('added', 0)} | {c.get('changed', 0)} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    result = main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)
    print(json.dumps(result, indent=2, default=str))
    print(table(result))
