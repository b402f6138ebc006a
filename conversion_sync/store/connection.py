"""Where the contact store is (CONVERSION_STORE_URL; locally, else the embedded Postgres) and its engines."""

from __future__ import annotations

import os
from functools import cache

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from conversion_sync.config.environment import ENV_VAR, environment

STORE_URL_ENV = "CONVERSION_STORE_URL"

DEV_EXTRA_HINT = (
    "the embedded store comes with the dev extra: pip install 'conversion_sync[dev]' (make dev does)"
)


class StoreNotConfigured(RuntimeError):
    """No contact store to connect to: CONVERSION_STORE_URL unset in production, or no embedded store locally."""


def check_store_configured() -> None:
    """Raise StoreNotConfigured when this environment has no store: production without CONVERSION_STORE_URL.

    Starts nothing, so it suits a load-time check (the code location, a command's start).
    """
    if not os.environ.get(STORE_URL_ENV) and environment() != "local":
        raise StoreNotConfigured(
            f"{STORE_URL_ENV} is not set: in production ({ENV_VAR} unset or 'production') the contact store "
            f"is an external Postgres, so set {STORE_URL_ENV}=postgresql://USER:PASSWORD@HOST:5432/DATABASE. "
            f"To run locally with the embedded store, set {ENV_VAR}=local (make dev and make test do)."
        )


def resolve_store_url() -> str:
    """The contact store's Postgres URL: CONVERSION_STORE_URL; locally without it, the embedded server's
    (started if needed). In production without it: StoreNotConfigured, and nothing is started."""
    url = os.environ.get(STORE_URL_ENV)
    if url:
        return url
    check_store_configured()
    return _embedded_store_url()


def _embedded_store_url() -> str:
    """Start (or join) the embedded store from the conversion_sync_dev package, installed by the dev extra."""
    try:
        from conversion_sync_dev.embedded_postgres import start_embedded_postgres

        return start_embedded_postgres()
    except ModuleNotFoundError as exc:
        if exc.name not in _DEV_EXTRA_MODULES:
            raise
        raise StoreNotConfigured(f"{STORE_URL_ENV} is not set and {DEV_EXTRA_HINT}") from exc


_DEV_EXTRA_MODULES = ("conversion_sync_dev", "conversion_sync_dev.embedded_postgres", "pgserver")


def sqlalchemy_url(url: str) -> str:
    """Normalise a Postgres URL to the psycopg 3 driver."""
    parsed = make_url(url)
    if parsed.drivername in ("postgres", "postgresql", "postgresql+psycopg2"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def libpq_url(url: str) -> str:
    """The URL without a SQLAlchemy driver suffix, for psycopg/libpq and ADBC."""
    parsed = make_url(url).set(drivername="postgresql")
    return parsed.render_as_string(hide_password=False)


def redact_url(url: str) -> str:
    """The URL with its password hidden, for logs and errors."""
    return make_url(url).render_as_string(hide_password=True)


@cache
def store_engine(url: str) -> sa.Engine:
    """One engine per URL per process."""
    return sa.create_engine(sqlalchemy_url(url), pool_pre_ping=True, pool_size=5, max_overflow=5)


BULK_WORK_MEM_ENV = "CONVERSION_SYNC_WORK_MEM"


def prepare_bulk_transaction(conn: sa.Connection) -> None:
    """Settings for a transaction of set-based statements over whole runs: UTC, room for hash joins, and
    parallel workers for the scans that compute a value per row.

    The server default (4 MB work_mem) makes every large hash join or aggregate spill to disk (and 64 MB
    maintenance_work_mem the sort that builds a new sync's fingerprint index). With the
    default parallel costs, once a staged table is analyzed the planner judges that shipping a million wide
    rows from workers costs more than it saves, yet validating them in two processes halves the time.
    """
    work_mem = os.environ.get(BULK_WORK_MEM_ENV, "256MB")
    conn.exec_driver_sql(
        "SELECT set_config('work_mem', %s, true), set_config('maintenance_work_mem', %s, true), "
        "set_config('TimeZone', 'UTC', true), "
        "set_config('parallel_setup_cost', '100', true), set_config('parallel_tuple_cost', '0.001', true)",
        (work_mem, work_mem),
    )
