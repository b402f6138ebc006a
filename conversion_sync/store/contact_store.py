"""ContactStore: the Dagster resource every job uses to reach the store's Postgres."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
import sqlalchemy as sa
from pydantic import Field

from conversion_sync.store.connection import redact_url, resolve_store_url, store_engine


class ContactStore(dg.ConfigurableResource):
    """The contact store. `url` unset → CONVERSION_STORE_URL, else the embedded Postgres."""

    url: str | None = Field(
        default=None, description="Postgres URL; unset means CONVERSION_STORE_URL or embedded"
    )

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
