"""dlt as the bench's peer, run by the Python of its own virtualenv: `python bench/dlt_peer.py '<json settings>'`.

The same DuckDB data, streamed as Arrow batches, into the same Postgres, with dlt's fastest path for Arrow items
into Postgres (parquet files loaded through ADBC). Settings: warehouse, query, table, key, disposition (`merge`,
or `insert-only`: append once per key), credentials (host, port, database, username, password), dataset,
pipelines_dir. Imports nothing of conversion_sync (it is not installed here).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from typing import Any

import dlt
import duckdb


def main() -> None:
    settings = json.loads(sys.argv[1])
    started = time.perf_counter()
    source = duckdb.connect(settings["warehouse"], read_only=True)
    counted = [0]

    def batches() -> Iterator[Any]:
        for batch in source.execute(settings["query"]).to_arrow_reader(50_000):  # type: ignore[union-attr]
            counted[0] += batch.num_rows
            yield batch

    strategy = "insert-only" if settings["disposition"] == "insert-only" else "delete-insert"
    resource = dlt.resource(
        batches,
        name=settings["table"],
        write_disposition={"disposition": "merge", "strategy": strategy},
        primary_key=settings["key"],
    )
    pipeline = dlt.pipeline(
        pipeline_name=settings["table"],
        destination=dlt.destinations.postgres(credentials=settings["credentials"]),
        dataset_name=settings["dataset"],
        pipelines_dir=settings["pipelines_dir"],
        progress=None,
    )
    pipeline.run(resource, loader_file_format=settings.get("format", "parquet"))
    print("BENCH-RESULT " + json.dumps({"rows": counted[0], "seconds": time.perf_counter() - started}))


if __name__ == "__main__":
    main()
