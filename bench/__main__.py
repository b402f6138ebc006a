"""`make bench`: conversion_sync against dlt and the minimal floor on the same data and the same Postgres, every
path a whole process; prints rows/s, peak RSS and the ratios, and writes bench/RESULTS.md."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

warnings.filterwarnings("ignore")

from bench import data  # noqa: E402
from bench.dlt_env import DltPeer, dlt_python  # noqa: E402
from bench.paths import CONTACTS, EVENTS, OBJECTS, write_config  # noqa: E402
from bench.process import Measured, run_process  # noqa: E402
from conversion_sync.store.connection import libpq_url  # noqa: E402
from conversion_sync.store.migrate import migrate_store  # noqa: E402
from conversion_sync_dev.embedded_postgres import start_embedded_postgres  # noqa: E402

RESULTS_FILE = Path(__file__).parent / "RESULTS.md"
CLI = [sys.executable, "-m", "conversion_sync.cli"]
"""`conversion-sync` as the console script runs it (this tree's package, wherever the venv was installed from)."""


def fresh_database(base_url: str, name: str) -> str:
    prefix, _, query = base_url.partition("?")
    admin = f"{prefix.rsplit('/', 1)[0]}/postgres?{query}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = f"{prefix.rsplit('/', 1)[0]}/{name}?{query}"
    migrate_store(url)
    return url


def settle(store_url: str, analyze: bool = True) -> None:
    """Start each path on a quiet store, as pgbench does: vacuum (and analyze) what the previous path wrote and
    flush it to disk, so autovacuum and the checkpoint do not land in the middle of the next path's timing."""
    with psycopg.connect(libpq_url(store_url), autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE)" if analyze else "VACUUM")
        conn.execute("CHECKPOINT")
    os.sync()


def set_autovacuum(store_url: str, on: bool) -> None:
    """Server-wide: a store that must stay without statistics is not analysed behind the bench's back."""
    with psycopg.connect(libpq_url(store_url), autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET autovacuum = " + ("on" if on else "off"))
        conn.execute("SELECT pg_reload_conf()")


def sync_run(config: Path, name: str, store_url: str) -> Measured:
    """`conversion-sync run NAME` as a whole process (what a scheduled run is), then its step times."""
    measured = run_process(
        [*CLI, "run", name], {"CONVERSION_STORE_URL": store_url, "CONVERSION_SYNC_CONFIG": str(config)}
    )
    with psycopg.connect(libpq_url(store_url)) as conn:
        row = conn.execute(
            "SELECT counts FROM sync_runs WHERE sync_name = %s AND status = 'success' ORDER BY finished_at DESC LIMIT 1",
            (name,),
        ).fetchone()
    counts = row[0] if row else {}
    measured.result = {"rows": counts.get("queried", 0), "counts": counts}
    return measured


def floor_run(kind: str, table: str, warehouse: Path, query: str, store_url: str) -> Measured:
    settings = {
        "kind": kind,
        "table": table,
        "warehouse": str(warehouse),
        "query": query,
        "url": libpq_url(store_url),
    }
    return run_process([sys.executable, "-m", "bench.floor", json.dumps(settings)])


def shaped_floor_run(warehouse: Path, table: str, store_url: str) -> Measured:
    """Today's floor: a table shaped like contacts, with all its indexes (bench.paths floor)."""
    return run_process(
        [
            sys.executable,
            "-m",
            "bench.paths",
            "floor",
            json.dumps({"warehouse": str(warehouse), "table": table}),
        ],
        {"CONVERSION_STORE_URL": store_url},
    )


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    memory_kb = next(
        int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if "MemTotal" in line
    )
    return (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores ({cpu}), {memory_kb // 1024 // 1024} GiB "
        f"RAM, Python {platform.python_version()}, embedded PostgreSQL 16 (pgserver)"
    )


# --- the report ------------------------------------------------------------------------------------------------


@dataclass
class Line:
    path: str
    rows: int
    runs: list[Measured]
    dlt: list[Measured] | None = None
    floor: list[Measured] | None = None
    target: str = ""
    verdict: str = ""
    note: str = ""

    @staticmethod
    def _median(runs: list[Measured]) -> tuple[float, float]:
        return statistics.median(r.seconds for r in runs), statistics.median(r.peak_rss_mb for r in runs)

    @property
    def seconds(self) -> float:
        return self._median(self.runs)[0]

    @property
    def rss(self) -> float:
        return self._median(self.runs)[1]

    @property
    def rate(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0

    def peer_rate(self, peer: list[Measured] | None) -> float | None:
        return self.rows / self._median(peer)[0] if peer else None

    def ratio(self, peer: list[Measured] | None) -> float | None:
        rate = self.peer_rate(peer)
        return self.rate / rate if rate else None


HEADER = (
    "| path | rows | seconds | rows/s | peak RSS (MB) | dlt rows/s | × dlt | minimal floor rows/s | × floor | target | met |\n"
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"
)


def _num(value: float | None, pattern: str) -> str:
    return format(value, pattern) if value is not None else "—"


def render(line: Line) -> str:
    spread = ", ".join(f"{r.seconds:.1f}" for r in line.runs) if len(line.runs) > 1 else ""
    note = "; ".join(filter(None, [line.note, f"runs {spread} s" if spread else ""]))
    return (
        f"| {line.path} | {line.rows:,} | {line.seconds:.2f} | {line.rate:,.0f} | {line.rss:.0f} | "
        f"{_num(line.peer_rate(line.dlt), ',.0f')} | {_num(line.ratio(line.dlt), '.2f')} | "
        f"{_num(line.peer_rate(line.floor), ',.0f')} | {_num(line.ratio(line.floor), '.2f')} | {line.target} | "
        f"{line.verdict}{(' — ' + note) if note else ''} |"
    )


def verdict(ok: bool | None) -> str:
    return "—" if ok is None else ("yes" if ok else "**no**")


# --- the bench ---------------------------------------------------------------------------------------------------


@dataclass
class Sizes:
    contacts: int
    events: int
    objects: int
    new: int
    big: int
    quarter: int

    @classmethod
    def scaled(cls, scale: float) -> Sizes:
        def n(full: int) -> int:
            return max(100, int(full * scale))

        return cls(n(1_000_000), n(1_000_000), n(200_000), n(50_000), n(4_000_000), n(250_000))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--scale",
        type=float,
        default=float(os.environ.get("BENCH_SCALE", "1")),
        help="fraction of the full sizes (1M contacts, 1M events, 200k object rows, 50k new, 4M, 4 × 250k); "
        "env BENCH_SCALE",
    )
    parser.add_argument(
        "--repeat", type=int, default=int(os.environ.get("BENCH_REPEAT", "3")), help="rounds (medians shown)"
    )
    parser.add_argument("--no-dlt", action="store_true", help="skip dlt")
    parser.add_argument("--no-big", action="store_true", help="skip the 4× contacts load")
    parser.add_argument("--no-concurrent", action="store_true", help="skip the four syncs side by side")
    parser.add_argument("--salesforce", type=int, default=None, help="changed Contacts to poll (0 skips)")
    parser.add_argument(
        "--campaign-members", type=int, default=None, help="campaign members to push (0 skips)"
    )
    parser.add_argument("--results", type=Path, default=RESULTS_FILE, help="where the Markdown report goes")
    args = parser.parse_args(argv)
    sizes = Sizes.scaled(args.scale)
    salesforce = args.salesforce if args.salesforce is not None else int(100_000 * args.scale)
    members = args.campaign_members if args.campaign_members is not None else int(20_000 * args.scale)

    data_dir = Path(os.environ.get("CONVERSION_SYNC_DATA_DIR", ".data")).resolve() / "bench"
    data_dir.mkdir(parents=True, exist_ok=True)
    os.environ["CONVERSION_SYNC_DATA_DIR"] = str(data_dir)
    started = time.perf_counter()
    peer: DltPeer | None = None
    dlt_note = "dlt skipped (--no-dlt)"
    if not args.no_dlt:
        python, dlt_note = dlt_python(data_dir.parent / "bench-dlt-venv")
        print(dlt_note, flush=True)
        if python is not None:
            peer = DltPeer(python, data_dir / "dlt-pipelines")
    base_url = start_embedded_postgres(data_dir)
    print(f"building the warehouse in {data_dir} (scale {args.scale}) …", flush=True)
    warehouse = data.build_warehouse(
        data_dir / "warehouse.duckdb", sizes.contacts, sizes.events, sizes.objects
    )
    new = data.build_increments(warehouse, sizes.contacts, sizes.events, sizes.objects, sizes.new)
    queries = {
        "contacts": f"SELECT * FROM users_{sizes.contacts}",
        "events": f"SELECT * FROM events_{sizes.events}",
        "objects": f"SELECT * FROM owners_{sizes.objects}",
    }
    increments = {
        "contacts": f"SELECT * FROM {new['contacts']} WHERE updated_at > '{{{{last_sync_time}}}}'",
        "events": f"SELECT * FROM {new['events']} WHERE timestamp > '{{{{last_sync_time}}}}'",
        "objects": f"SELECT * FROM {new['objects']} WHERE updated_at > '{{{{last_sync_time}}}}'",
    }
    plain_increments = {k: f"SELECT * FROM {new[k]}" for k in new}
    destinations = {"contacts": CONTACTS, "events": EVENTS, "objects": OBJECTS}
    config = write_config(
        data_dir / "config", warehouse, {k: (destinations[k], q) for k, q in queries.items()}
    )
    config_new = write_config(
        data_dir / "config_new", warehouse, {k: (destinations[k], q) for k, q in increments.items()}
    )
    rows = {"contacts": sizes.contacts, "events": sizes.events, "objects": sizes.objects}
    keys = {
        "contacts": ("email", "merge"),
        "events": ("message_id", "insert-only"),
        "objects": ("id", "merge"),
    }

    runs: dict[str, list[Measured]] = {}

    def record(key: str, measured: Measured) -> Measured:
        runs.setdefault(key, []).append(measured)
        print(f"  {key}: {measured.seconds:.2f} s, {measured.peak_rss_mb:.0f} MB", flush=True)
        return measured

    for round_ in range(args.repeat):
        print(f"round {round_ + 1} of {args.repeat}", flush=True)
        store = fresh_database(base_url, "bench_store")
        settle(store)
        record("shaped_floor", shaped_floor_run(warehouse, f"users_{sizes.contacts}", store))
        for kind in ("contacts", "events", "objects"):
            settle(store)
            record(f"{kind}_floor", floor_run(kind, f"floor_{kind}", warehouse, queries[kind], store))
            if kind == "contacts":
                settle(store)
                record(
                    "contacts_floor_again", floor_run(kind, f"floor_{kind}", warehouse, queries[kind], store)
                )
            if peer is not None:
                key, disposition = keys[kind]
                peer.drop(store)
                settle(store)
                record(f"{kind}_dlt", peer.run(warehouse, queries[kind], kind, key, disposition, store))
                if kind == "contacts":
                    settle(store)
                    record(
                        "contacts_dlt_again",
                        peer.run(warehouse, queries[kind], kind, key, disposition, store),
                    )
            settle(store)
            record(f"{kind}_first", sync_run(config, kind, store))
            if kind == "contacts":
                settle(store)
                record("contacts_again", sync_run(config, kind, store))
        if peer is not None:
            peer.drop(store)
        # incremental: new rows into the store the first loads made, analysed, then into one never analysed
        for kind in ("contacts", "events", "objects"):
            settle(store)
            record(
                f"{kind}_new_floor",
                floor_run(kind, f"floor_{kind}", warehouse, plain_increments[kind], store),
            )
            settle(store)
            record(f"{kind}_new", sync_run(config_new, kind, store))
        bare = fresh_database(base_url, "bench_store_bare")
        set_autovacuum(bare, False)
        try:
            for kind in ("contacts", "events", "objects"):
                settle(bare, analyze=False)
                sync_run(config, kind, bare)
            for kind in ("contacts", "events", "objects"):
                settle(bare, analyze=False)
                record(f"{kind}_new_bare", sync_run(config_new, kind, bare))
        finally:
            set_autovacuum(bare, True)

    startup = [sync_run(*startup_project(data_dir, warehouse), fresh_database(base_url, "bench_store_tiny"))]
    startup += [sync_run(*startup_project(data_dir, warehouse), startup_store(base_url)) for _ in range(2)]

    big: tuple[Measured, Measured] | None = None
    if not args.no_big:
        data.build_warehouse(warehouse, sizes.big, 1, 1)
        big_config = write_config(
            data_dir / "config_big", warehouse, {"contacts": (CONTACTS, f"SELECT * FROM users_{sizes.big}")}
        )
        big_store = fresh_database(base_url, "bench_store_big")
        settle(big_store)
        big_floor = floor_run(
            "contacts", "floor_contacts", warehouse, f"SELECT * FROM users_{sizes.big}", big_store
        )
        settle(big_store)
        big = (sync_run(big_config, "contacts", big_store), big_floor)
        print(f"  contacts ×4: {big[0].seconds:.1f} s, {big[0].peak_rss_mb:.0f} MB", flush=True)

    concurrent: dict[str, Any] | None = None
    if not args.no_concurrent:
        concurrent = side_by_side(data_dir, warehouse, base_url, sizes.quarter)

    lines = report_lines(runs, rows, sizes, big, startup, concurrent, peer is not None)
    sf_lines = (
        salesforce_lines(data_dir, salesforce, members, base_url, warehouse, sizes) if salesforce else []
    )
    total = time.perf_counter() - started
    report = (
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {machine()}; scale {args.scale}, "
        f"{args.repeat} round(s), medians; total {total:.0f} s. {dlt_note}.\n\n{HEADER}\n"
        + "\n".join(render(line) for line in lines)
        + ("\n\n" + "\n".join(sf_lines) if sf_lines else "")
        + ("\n\n" + concurrent["text"] if concurrent else "")
        + "\n"
    )
    print("\n" + report)
    args.results.write_text("# make bench — latest results\n\n" + report)
    return 0


def startup_project(data_dir: Path, warehouse: Path) -> tuple[Path, str]:
    """A sync of ten contacts: its whole-process time is what any scheduled run pays before its rows."""
    data.build_warehouse(warehouse, 10, 1, 1)
    return write_config(
        data_dir / "config_tiny", warehouse, {"tiny": (CONTACTS, "SELECT * FROM users_10")}
    ), "tiny"


def startup_store(base_url: str) -> str:
    prefix, _, query = base_url.partition("?")
    return f"{prefix.rsplit('/', 1)[0]}/bench_store_tiny?{query}"


def report_lines(
    runs: dict[str, list[Measured]],
    rows: dict[str, int],
    sizes: Sizes,
    big: tuple[Measured, Measured] | None,
    startup: list[Measured],
    concurrent: dict[str, Any] | None,
    with_dlt: bool,
) -> list[Line]:
    def got(key: str) -> list[Measured] | None:
        return runs.get(key)

    lines = []
    shaped = Line(
        f"floor shaped like contacts (all its indexes), {rows['contacts']:,}",
        rows["contacts"],
        runs["shaped_floor"],
    )
    first = Line(
        f"contacts first load, {rows['contacts']:,}",
        rows["contacts"],
        runs["contacts_first"],
        got("contacts_dlt"),
        got("contacts_floor"),
        "≥ 1.3 × dlt, ≥ 0.8 × minimal floor",
    )
    first.verdict = verdict(
        (first.ratio(first.dlt) or 0) >= 1.3 and (first.ratio(first.floor) or 0) >= 0.8 if with_dlt else None
    )
    first.note = f"{first.rate / shaped.rate:.2f} × the contacts-shaped floor"
    again = Line(
        f"contacts rerun, no change, {rows['contacts']:,}",
        rows["contacts"],
        runs["contacts_again"],
        got("contacts_dlt_again"),
        got("contacts_floor_again"),
        "≥ 4 × dlt's rerun",
    )
    again.verdict = verdict((again.ratio(again.dlt) or 0) >= 4 if with_dlt else None)
    lines += [first, again]
    for kind, label in (
        ("events", "events first load (dedup on message_id)"),
        ("objects", "objects with relationships"),
    ):
        line = Line(
            f"{label}, {rows[kind]:,}",
            rows[kind],
            runs[f"{kind}_first"],
            got(f"{kind}_dlt"),
            got(f"{kind}_floor"),
            "≥ 1.3 × dlt",
        )
        line.verdict = verdict((line.ratio(line.dlt) or 0) >= 1.3 if with_dlt else None)
        lines.append(line)
    firsts = {"contacts": first, "events": lines[2], "objects": lines[3]}
    for kind in ("contacts", "events", "objects"):
        analysed = Line(
            f"{kind}: {sizes.new:,} new into {rows[kind]:,}, store analysed",
            sizes.new,
            runs[f"{kind}_new"],
            None,
            got(f"{kind}_new_floor"),
            "≥ 0.5 × first load's rows/s",
        )
        bare = Line(
            f"{kind}: {sizes.new:,} new into {rows[kind]:,}, no statistics",
            sizes.new,
            runs[f"{kind}_new_bare"],
        )
        share = analysed.rate / firsts[kind].rate
        bare_share = bare.rate / firsts[kind].rate
        analysed.verdict = verdict(share >= 0.5)
        analysed.note = f"{share:.2f} × first load"
        bare.target = "the same as analysed"
        bare.verdict = verdict(bare_share >= 0.5 and 0.67 <= bare.rate / analysed.rate <= 1.5)
        bare.note = f"{bare_share:.2f} × first load; {bare.rate / analysed.rate:.2f} × the analysed store's"
        lines += [analysed, bare]
    if big is not None:
        line = Line(
            f"contacts first load, {sizes.big:,}",
            sizes.big,
            [big[0]],
            None,
            [big[1]],
            "rows/s ≥ 0.9 × 1M, RSS ≤ 1.15 × 1M",
        )
        rate, rss = line.rate / first.rate, line.rss / first.rss
        line.verdict = verdict(rate >= 0.9 and rss <= 1.15)
        line.note = f"{rate:.2f} × the {rows['contacts']:,} rows/s, RSS {rss:.2f} ×"
        lines.append(line)
    start = Line(
        "process start-up: `conversion-sync run` of a 10-row sync",
        10,
        startup,
        target="paid by every scheduled run",
    )
    start.note = "whole process, wall time"
    lines.append(start)
    lines.insert(0, shaped)
    return lines


def side_by_side(data_dir: Path, warehouse: Path, base_url: str, quarter: int) -> dict[str, Any]:
    """Four contacts syncs of `quarter` rows (disjoint e-mails), first one after another, then started together
    (fresh stores): wall times, and each run's wait for the identity lock."""
    tables = data.build_quarters(warehouse, quarter)
    names = [f"q{k}" for k in range(4)]
    config = write_config(
        data_dir / "config_quarters",
        warehouse,
        {n: (CONTACTS, f"SELECT * FROM {t}") for n, t in zip(names, tables, strict=True)},
    )

    def one(name: str, store: str) -> dict[str, Any]:
        done = run_process(
            [sys.executable, "-m", "bench.paths", name, json.dumps({"config": str(config)})],
            {"CONVERSION_STORE_URL": store},
        )
        return {**done.result, "wall": done.seconds}

    store = fresh_database(base_url, "bench_store_quarters")
    settle(store)
    began = time.perf_counter()
    sequence = [one(n, store) for n in names]
    sequence_s = time.perf_counter() - began
    store = fresh_database(base_url, "bench_store_quarters")
    settle(store)
    together: list[dict[str, Any]] = [{} for _ in names]

    def start(i: int) -> None:
        together[i] = one(names[i], store)

    threads = [threading.Thread(target=start, args=(i,)) for i in range(4)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    together_s = time.perf_counter() - began
    waits = ", ".join(f"{r.get('identity_lock_wait_s', 0):.2f}" for r in together)
    waits_in_sequence = ", ".join(f"{r.get('identity_lock_wait_s', 0):.2f}" for r in sequence)
    steps = "; ".join(
        f"{n}: " + ", ".join(f"{k} {v:.1f}" for k, v in r.get("steps", {}).items())
        for n, r in zip(names, together, strict=True)
    )
    text = (
        f"Four contacts syncs of {quarter:,} rows (disjoint e-mails): in sequence {sequence_s:.1f} s "
        f"({4 * quarter / sequence_s:,.0f} rows/s), started together {together_s:.1f} s "
        f"({4 * quarter / together_s:,.0f} rows/s, {sequence_s / together_s:.2f} × the sequence). Identity-lock wait "
        f"per run when started together: {waits} s (in sequence: "
        f"{waits_in_sequence} s). Steps when together (s): {steps}."
    )
    print(text, flush=True)
    return {"sequence_s": sequence_s, "together_s": together_s, "text": text}


def salesforce_lines(
    data_dir: Path, contacts: int, members: int, base_url: str, warehouse: Path, sizes: Sizes
) -> list[str]:
    """The Salesforce poll and campaign push (paths of their own, not against dlt): into a store of the contacts."""
    from bench.salesforce import salesforce_paths

    store = fresh_database(base_url, "bench_store_salesforce")
    config = write_config(
        data_dir / "config", warehouse, {"contacts": (CONTACTS, f"SELECT * FROM users_{sizes.contacts}")}
    )
    sync_run(config, "contacts", store)
    poll, push = salesforce_paths(data_dir, contacts, members, store)
    out = [
        f"Salesforce poll: {poll['rows']:,} changed Contacts into a store of {sizes.contacts:,} in {poll['seconds']:.1f} s, "
        f"{poll['api_calls']} API calls (target ≤ 60), store {poll['store_seconds']:.1f} s (target ≤ 20 s)."
    ]
    if push:
        out.append(
            f"Campaign reconciliation: {push['rows']:,} members pushed in {push['seconds']:.1f} s, {push['api_calls']} API "
            f"calls (target ≤ 110), {push['leads_created']:,} Leads created first."
        )
    return out


if __name__ == "__main__":
    raise SystemExit(main())
