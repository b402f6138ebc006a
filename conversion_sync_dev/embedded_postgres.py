"""The embedded contact store: a real PostgreSQL from the pgserver package, data under .data/."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import time
import warnings
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

DATA_DIR_ENV = "CONVERSION_SYNC_DATA_DIR"
STORE_DATABASE = "conversion"
DAGSTER_DATABASE = "dagster"

log = logging.getLogger(__name__)


def data_directory() -> Path:
    """Where local state lives: $CONVERSION_SYNC_DATA_DIR, else ./.data."""
    path = Path(os.environ.get(DATA_DIR_ENV, ".data")).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _pgdata(data_dir: Path | None) -> Path:
    base = data_dir or data_directory()
    base.mkdir(parents=True, exist_ok=True)
    return base / "postgres"


def _database_url(base_uri: str, database: str) -> str:
    # pgserver gives postgresql://postgres:@/postgres?host=/socket/dir
    prefix, _, query = base_uri.partition("?")
    root = prefix.rsplit("/", 1)[0]
    return f"{root}/{database}?{query}" if query else f"{root}/{database}"


def start_embedded_postgres(data_dir: Path | None = None) -> str:
    """Start (or join) the embedded server and return the contact store URL.

    Every process of `dagster dev` calls this; pgserver serialises starts with an inter-process
    lock, and the server is left running (cleanup_mode=None) until `stop_embedded_postgres`.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        import pgserver

    pgdata = _pgdata(data_dir)
    started_here = not embedded_postgres_running(data_dir)
    if started_here:
        # pgserver caches handles per process; a handle to a server stopped since is stale
        pgserver.PostgresServer._instances.pop(pgdata.resolve(), None)
    server = _get_server(pgserver, pgdata)
    base_uri = server.get_uri("postgres")
    if _tune(base_uri):
        if started_here:  # nobody else uses it yet
            _restart(pgserver, pgdata)
            server = _get_server(pgserver, pgdata)
            base_uri = server.get_uri("postgres")
        else:
            log.info("the embedded store applies its start-time settings at its next start (make stop)")
    for database in (STORE_DATABASE, DAGSTER_DATABASE):
        _ensure_database(base_uri, database)
    return _database_url(base_uri, STORE_DATABASE)


RECOVERY_TIMEOUT_S = 900
START_GRACE_S = 15


def _get_server(pgserver: Any, pgdata: Path) -> Any:
    """pgserver's server handle. Its pg_ctl gives up after 10 s, but the server goes on starting: after an
    unclean stop (a killed process, a lost machine) it first replays its WAL, which can take minutes."""
    from pgserver.utils import PostmasterInfo

    deadline = time.monotonic() + RECOVERY_TIMEOUT_S
    while True:
        try:
            return pgserver.get_server(pgdata, cleanup_mode=None)
        except subprocess.TimeoutExpired:
            if time.monotonic() > deadline:
                raise
            log.warning(
                "the embedded Postgres is still starting (recovering after an unclean stop?); waiting"
            )
            # pgserver caches the handle before starting; this one never saw the server ready
            pgserver.PostgresServer._instances.pop(pgdata.resolve(), None)
        except AssertionError:  # pgserver read postmaster.pid while the starting server rewrote it
            if time.monotonic() > deadline:
                raise
            pgserver.PostgresServer._instances.pop(pgdata.resolve(), None)
            time.sleep(0.5)
            continue
        # Wait until the postmaster pg_ctl launched is ready. Its postmaster.pid may not be written yet (or
        # still be the killed server's), so only after a grace period without a running postmaster is the
        # start taken as failed and asked again.
        grace = time.monotonic() + START_GRACE_S
        while time.monotonic() < deadline:
            try:
                info = PostmasterInfo.read_from_pgdata(pgdata)
            except AssertionError:  # postmaster.pid is being written
                info = None
            running = info is not None and info.is_running()
            ready = running and info is not None and info.status == "ready"
            if ready or (not running and time.monotonic() > grace):
                break
            time.sleep(0.5)


def embedded_url(database: str, data_dir: Path | None = None) -> str:
    """URL of one database on the embedded server, starting it if needed."""
    store_url = start_embedded_postgres(data_dir)
    return _database_url(store_url, database)


def dagster_storage_url(data_dir: Path | None = None) -> str:
    """URL for Dagster's run/event/schedule storage on the embedded server.

    dagster-postgres binds NOTIFY parameters client-side, which needs the psycopg2 driver;
    SQLAlchemy 2.1 would pick psycopg 3 for a bare postgresql:// URL.
    """
    return embedded_url(DAGSTER_DATABASE, data_dir).replace("postgresql://", "postgresql+psycopg2://", 1)


EMBEDDED_SETTINGS = {
    "max_wal_size": "4GB",
    "checkpoint_timeout": "15min",
    "checkpoint_completion_target": "0.9",
    "wal_buffers": "64MB",
}
"""Settings for bulk loads. Without the first three a million-row merge triggers a checkpoint every few seconds.
`wal_buffers` (read at start only) defaults to 4 MB with 128 MB of shared buffers: a merge and the trace written
beside it then each wrote WAL out themselves and waited on each other's writes (LWLock WALWrite); with 64 MB a 1M
contacts first load took 17-19 s instead of 19-24 s."""


def _tune(base_uri: str) -> bool:
    """Apply EMBEDDED_SETTINGS once (ALTER SYSTEM + reload); values are written as SHOW displays them. Returns
    whether a setting waits for a restart."""
    with psycopg.connect(base_uri, autocommit=True) as conn:
        stale = [
            name
            for name, value in EMBEDDED_SETTINGS.items()
            if conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone() != (value,)
        ]
        for name in stale:
            conn.execute(
                sql.SQL("ALTER SYSTEM SET {} = {}").format(
                    sql.Identifier(name), sql.Literal(EMBEDDED_SETTINGS[name])
                )
            )
        if stale:
            conn.execute("SELECT pg_reload_conf()")
        pending = conn.execute("SELECT count(*) FROM pg_settings WHERE pending_restart").fetchone()
        return bool(pending and pending[0])


def _restart(pgserver: Any, pgdata: Path) -> None:
    """Restart the server this process just started (under pgserver's inter-process lock, so another process
    starting meanwhile waits for it), for the settings read at start."""
    from pgserver._commands import pg_ctl  # type: ignore[attr-defined]  # pgserver generates its commands

    user = "pgserver" if os.geteuid() == 0 else None
    with pgserver.PostgresServer._lock:
        pg_ctl(["-w", "-m", "fast", "restart"], pgdata=pgdata, user=user)
    pgserver.PostgresServer._instances.pop(pgdata.resolve(), None)


def _ensure_database(base_uri: str, database: str) -> None:
    with psycopg.connect(base_uri, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone()
        if not exists:
            # another process may create it first
            with contextlib.suppress(psycopg.errors.DuplicateDatabase):
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))


def stop_embedded_postgres(data_dir: Path | None = None) -> bool:
    """Stop the embedded server if it runs; True when a server was stopped."""
    from pgserver._commands import pg_ctl  # type: ignore[attr-defined]  # pgserver generates its commands
    from pgserver.utils import PostmasterInfo

    pgdata = _pgdata(data_dir)
    info = PostmasterInfo.read_from_pgdata(pgdata) if pgdata.exists() else None
    if info is None or not info.is_running():
        return False
    user = "pgserver" if os.geteuid() == 0 else None
    try:
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user)
    except subprocess.CalledProcessError as exc:
        log.warning("pg_ctl stop failed (%s); terminating the server", exc)
        if info.process is not None:
            info.process.terminate()
    return True


def embedded_postgres_running(data_dir: Path | None = None) -> bool:
    """Whether the embedded server is up."""
    from pgserver.utils import PostmasterInfo

    pgdata = _pgdata(data_dir)
    info = PostmasterInfo.read_from_pgdata(pgdata) if pgdata.exists() else None
    return bool(info and info.is_running())
