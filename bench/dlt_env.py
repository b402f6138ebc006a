"""dlt for `make bench`: installed once into a virtualenv of its own (cached between runs), run as a process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psycopg
from psycopg import sql

from bench.process import Measured, run_process
from conversion_sync.store.connection import libpq_url

PACKAGES = ["dlt[postgres]", "duckdb", "pyarrow", "adbc-driver-postgresql"]
"""dlt with its Postgres destination; pyarrow and ADBC give it its fast path for Arrow data (parquet via ADBC)."""
DATASET = "dlt_bench"


def dlt_python(venv: Path) -> tuple[Path | None, str]:
    """The virtualenv's Python with dlt installed (installing it on first use), or None and why not."""
    python = venv / "bin" / "python"
    stamp = venv / ".installed"
    if not stamp.exists():
        print(f"installing dlt into {venv} (once; cached for later runs) …", flush=True)
        try:
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
            subprocess.run(
                [str(python), "-m", "pip", "install", "--quiet", *PACKAGES],
                check=True,
                capture_output=True,
                text=True,
            )
        except (subprocess.CalledProcessError, OSError) as exc:
            detail = getattr(exc, "stderr", "") or str(exc)
            lines = [line for line in str(detail).splitlines() if line.strip() and "is ignored" not in line]
            return (
                None,
                f"dlt skipped: it could not be installed ({(lines or ['unknown error'])[-1].strip()})",
            )
        stamp.touch()
    try:
        version = subprocess.run(
            [str(python), "-c", "import dlt; print(dlt.__version__)"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (subprocess.CalledProcessError, OSError) as exc:
        return None, f"dlt skipped: its virtualenv {venv} does not import dlt ({exc}); delete it to reinstall"
    return python, f"dlt {version} from {venv}"


class DltPeer:
    """Runs bench/dlt_peer.py with the dlt virtualenv's Python against the store's Postgres."""

    def __init__(self, python: Path, pipelines_dir: Path) -> None:
        self.python = python
        self.pipelines_dir = pipelines_dir

    def drop(self, store_url: str) -> None:
        """Forget dlt's dataset and pipeline state: its next run is a first load."""
        import shutil

        shutil.rmtree(self.pipelines_dir, ignore_errors=True)
        with psycopg.connect(libpq_url(store_url), autocommit=True) as conn:
            for schema in conn.execute(
                "SELECT nspname FROM pg_namespace WHERE nspname LIKE %s", (DATASET + "%",)
            ).fetchall():
                conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema[0])))

    def run(
        self, warehouse: Path, query: str, table: str, key: str, disposition: str, store_url: str
    ) -> Measured:
        info = psycopg.conninfo.conninfo_to_dict(libpq_url(store_url))
        # a socket directory rides as the `host` parameter, which libpq (and dlt's ADBC loader) honour
        credentials = (
            f"postgresql://{info.get('user', 'postgres')}:{info.get('password', '') or ''}@localhost:"
            f"{info.get('port', 5432) or 5432}/{info.get('dbname')}?host={info.get('host', 'localhost')}"
        )
        settings = {
            "warehouse": str(warehouse),
            "query": query,
            "table": table,
            "key": key,
            "disposition": disposition,
            "credentials": credentials,
            "dataset": DATASET,
            "pipelines_dir": str(self.pipelines_dir),
        }
        return run_process(
            [str(self.python), str(Path(__file__).parent / "dlt_peer.py"), json.dumps(settings)]
        )
