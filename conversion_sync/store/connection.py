"""Where the contact store is: CONVERSION_STORE_URL, or the embedded Postgres; SQLAlchemy engines for it."""

from __future__ import annotations

import os
from functools import cache

import sqlalchemy as sa
from sqlalchemy.engine import make_url

STORE_URL_ENV = "CONVERSION_STORE_URL"


def resolve_store_url() -> str:
    """The contact store's Postgres URL: the environment's, else the embedded server's (started if needed)."""
    url = os.environ.get(STORE_URL_ENV)
    if url:
        return url
    from conversion_sync.dev.embedded_postgres import start_embedded_postgres

    return start_embedded_postgres()


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
