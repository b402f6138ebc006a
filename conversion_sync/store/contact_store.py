"""ContactStore: where the store's Postgres is, and connections to it (a plain engine object)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import sqlalchemy as sa

from conversion_sync.store.connection import redact_url, resolve_store_url, store_engine


@dataclass(frozen=True)
class ContactStore:
    """The contact store. `url` unset → CONVERSION_STORE_URL, else the embedded Postgres (local runs only).

    Dagster jobs get one from the `contact_store` resource (conversion_sync.defs.resources); the CLI,
    the benchmarks and the tests build it directly.
    """

    url: str | None = None

    def resolved_url(self) -> str:
        return self.url or resolve_store_url()

    def engine(self) -> sa.Engine:
        return store_engine(self.resolved_url())

    @contextmanager
    def begin(self) -> Iterator[sa.Connection]:
        """A connection in a transaction that commits on success and rolls back on error."""
        with self.engine().begin() as conn:
            yield conn

    def describe(self) -> str:
        """Where the store is, safe to print."""
        return redact_url(self.resolved_url())
