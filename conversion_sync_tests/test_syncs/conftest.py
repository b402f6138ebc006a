"""Fixtures for whole sync runs: a DuckDB warehouse, a config directory around it, a migrated store."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pytest
import sqlalchemy as sa

from conversion_sync.config import ProjectConfig, load_project_config
from conversion_sync.store.connection import store_engine
from conversion_sync.store.contact_store import ContactStore
from conversion_sync.syncs.runner import SyncOutcome, SyncRunner

SCHEMA_YAML = """
contact_fields: {plan: string, seats: integer, score: number, vip: boolean, trial_ends_at: datetime, born: date, prefs: json}
object_types:
  product: {fields: {name: string, sku: string, price: number}}
  subscription: {fields: {name: string, status: string, renewal_date: date}}
"""


class SyncWorld:
    """A warehouse, a config directory and a store, with helpers to run syncs and read the store."""

    def __init__(self, tmp_path: Path, store_url: str) -> None:
        self.dir = tmp_path / "config"
        self.dir.mkdir()
        self.duckdb_path = tmp_path / "warehouse.duckdb"
        self.store_url = store_url
        self.warehouses: dict[str, str] = {"wh": f"{{type: duckdb, path: '{self.duckdb_path}'}}"}
        (self.dir / "schema.yaml").write_text(SCHEMA_YAML)

    def warehouse(self, sql: str) -> None:
        with duckdb.connect(str(self.duckdb_path)) as conn:
            conn.execute(sql)

    def add_sync(self, name: str, query: str, **settings: Any) -> None:
        settings.setdefault("destination", {"type": "contacts"})
        settings.setdefault("warehouse", "wh")
        lines = [f"name: {name}", f"warehouse: {settings.pop('warehouse')}"]
        destination = settings.pop("destination")
        lines.append("destination: {" + ", ".join(f"{k}: {v}" for k, v in destination.items()) + "}")
        for key, value in settings.items():
            lines.append(f"{key}: {value}")
        lines.append("query: |\n" + textwrap.indent(textwrap.dedent(query).strip(), "  "))
        (self.dir / f"{name}.yaml").write_text("\n".join(lines) + "\n")

    def project(self) -> ProjectConfig:
        entries = "\n".join(f"  {name}: {spec}" for name, spec in self.warehouses.items())
        (self.dir / "warehouses.yaml").write_text(f"warehouses:\n{entries}\n")
        project = load_project_config(self.dir)
        assert not project.problems, project.problems
        return project

    def runner(self, name: str) -> SyncRunner:
        project = self.project()
        return SyncRunner(project.syncs[name], project, ContactStore(url=self.store_url))

    def run(self, name: str) -> SyncOutcome:
        return self.runner(name).run()

    def sql(self, query: str, params: dict[str, Any] | None = None) -> list[tuple]:
        with store_engine(self.store_url).begin() as conn:
            return [tuple(r) for r in conn.exec_driver_sql(query, params or {}).all()]

    def scalar(self, query: str, params: dict[str, Any] | None = None) -> Any:
        return self.sql(query, params)[0][0]


@pytest.fixture
def world(tmp_path: Path, store_url: str) -> SyncWorld:
    return SyncWorld(tmp_path, store_url)


def store_snapshot(url: str) -> dict[str, list[tuple]]:
    """Store contents without generated ids and timestamps, for comparing two stores."""
    queries = {
        "contacts": """SELECT email_normalized, first_name, last_name, job_title, phone, city, company_name,
                              custom_fields::text FROM contacts ORDER BY email_normalized""",
        "custom_objects": "SELECT object_type, object_id, fields::text FROM custom_objects ORDER BY 1, 2",
        "relationships": """SELECT r.object_type, r.object_id, c.email_normalized, r.fields::text
                            FROM object_relationships r JOIN contacts c ON c.id = r.contact_id ORDER BY 1, 2, 3""",
        "events": """SELECT e.message_id, c.email_normalized, e.event_name, e.timestamp, e.properties::text
                     FROM events e JOIN contacts c ON c.id = e.contact_id ORDER BY 1""",
    }
    with store_engine(url).connect() as conn:
        return {name: [tuple(r) for r in conn.exec_driver_sql(q).all()] for name, q in queries.items()}


SnapshotFn = Callable[[str], dict[str, list[tuple]]]


@pytest.fixture
def engine(store_url: str) -> sa.Engine:
    return store_engine(store_url)
