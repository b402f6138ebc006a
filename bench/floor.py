"""The minimal floor, a process of its own: Arrow from DuckDB → ADBC ingest → one INSERT … ON CONFLICT into a table
with one unique index. `python -m bench.floor '<json settings>'`; imports nothing of conversion_sync.

Settings: warehouse (DuckDB file), query, url (libpq), kind (contacts: upsert on email; events: insert once per
message_id; objects: upsert on id, the latest row of each id), table (the target, created if missing).
"""

from __future__ import annotations

import json
import sys
import time

import adbc_driver_postgresql.dbapi as adbc
import duckdb

TARGETS = {
    "contacts": (
        "email text NOT NULL, first_name text, last_name text, job_title text, phone text, city text, plan text, "
        "seats integer, updated_at timestamptz",
        "email",
    ),
    "events": (
        "message_id text NOT NULL, email text, event_name text, timestamp timestamptz, amount numeric",
        "message_id",
    ),
    "objects": (
        'id text NOT NULL, name text, sku text, email text, "relationshipFields" text, updated_at timestamptz',
        "id",
    ),
}


def merge_sql(kind: str, table: str, stage: str) -> str:
    columns, key = TARGETS[kind]
    names = [c.split()[0] for c in columns.split(", ")]
    listed = ", ".join(names)
    if kind == "events":
        return f"INSERT INTO {table} ({listed}) SELECT {listed} FROM {stage} ON CONFLICT ({key}) DO NOTHING"
    source = f"SELECT {listed} FROM {stage}"
    if kind == "objects":  # one row per id: the latest
        source = f"SELECT DISTINCT ON ({key}) {listed} FROM {stage} ORDER BY {key}, updated_at DESC"
    others = [n for n in names if n != key]
    sets = ", ".join(f"{n} = EXCLUDED.{n}" for n in others)
    old = ", ".join(f"{table}.{n}" for n in others)
    new = ", ".join(f"EXCLUDED.{n}" for n in others)
    return (
        f"INSERT INTO {table} ({listed}) {source} ON CONFLICT ({key}) DO UPDATE SET {sets} "
        f"WHERE ({old}) IS DISTINCT FROM ({new})"
    )


def main() -> None:
    settings = json.loads(sys.argv[1])
    kind, table = settings["kind"], settings["table"]
    stage = f"{table}_stage"
    started = time.perf_counter()
    rows = 0
    source = duckdb.connect(settings["warehouse"], read_only=True)
    with adbc.connect(settings["url"]) as conn:
        with conn.cursor() as cursor:
            columns, key = TARGETS[kind]
            cursor.execute(f"CREATE TABLE IF NOT EXISTS {table} ({columns})")
            cursor.execute(f"CREATE UNIQUE INDEX IF NOT EXISTS {table}_key ON {table} ({key})")
            cursor.execute(f"DROP TABLE IF EXISTS {stage}")
        conn.commit()
        reader = source.execute(settings["query"]).to_arrow_reader(50_000)
        for batch in reader:  # type: ignore[union-attr]
            with conn.cursor() as cursor:
                cursor.adbc_ingest(stage, batch, mode="append" if rows else "create")
            rows += batch.num_rows
        with conn.cursor() as cursor:
            cursor.execute(merge_sql(kind, table, stage))
            cursor.execute(f"DROP TABLE {stage}")
        conn.commit()
    print("BENCH-RESULT " + json.dumps({"rows": rows, "seconds": time.perf_counter() - started}))


if __name__ == "__main__":
    main()
