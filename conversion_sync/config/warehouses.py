"""warehouses.yaml: named warehouse connections, secrets only through {env: VAR}."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from conversion_sync.config.secrets import Secret, Setting


class SyncLogsConfig(BaseModel):
    """Optional: write each run's summary and rejected rows back to this warehouse schema."""

    model_config = ConfigDict(extra="forbid")
    schema_: str = Field(alias="schema")


class _WarehouseBase(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    sync_logs: SyncLogsConfig | None = None
    asset_key_prefix: list[str] = Field(default_factory=list)
    """Parts put before the asset key of every table the syncs of this warehouse read (`analytics.users` with
    [dbt] becomes dbt/analytics/users), so the keys can equal those another tool (a dbt project) gives them."""

    @field_validator("asset_key_prefix", mode="before")
    @classmethod
    def _asset_key_prefix(cls, value: object) -> object:
        if isinstance(value, str):
            raise ValueError("must be a list of key parts, such as [dbt] or [warehouse, analytics]")
        return value

    @field_validator("asset_key_prefix")
    @classmethod
    def _asset_key_parts(cls, parts: list[str]) -> list[str]:
        for part in parts:
            if not part.strip() or "/" in part:
                raise ValueError(f"{part!r} is not an asset key part: a non-empty name without '/'")
        return [part.strip() for part in parts]


class DuckDBWarehouseConfig(_WarehouseBase):
    type: Literal["duckdb"]
    path: str


class PostgresWarehouseConfig(_WarehouseBase):
    type: Literal["postgres"]
    url: Secret


class SnowflakeWarehouseConfig(_WarehouseBase):
    type: Literal["snowflake"]
    account: Setting
    user: Setting
    password: Secret | None = None
    private_key: Secret | None = None
    warehouse: Setting | None = None
    database: Setting | None = None
    schema_: Setting | None = Field(default=None, alias="schema")
    role: Setting | None = None
    host: Setting | None = None
    port: int | None = None
    protocol: Literal["https", "http"] | None = None


class BigQueryWarehouseConfig(_WarehouseBase):
    type: Literal["bigquery"]
    project: Setting
    location: Setting | None = None
    credentials: Secret | None = None
    api_endpoint: Setting | None = None


WarehouseConfig = Annotated[
    DuckDBWarehouseConfig | PostgresWarehouseConfig | SnowflakeWarehouseConfig | BigQueryWarehouseConfig,
    Field(discriminator="type"),
]
WAREHOUSE_TYPES = ("duckdb", "postgres", "snowflake", "bigquery")
