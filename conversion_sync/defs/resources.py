"""The code location's resources, and the one switch between local and production settings.

Every resource is a Dagster resource factory that holds settings and builds a plain engine object for each
run: `contact_store` → ContactStore, `identity` → IdentityMatcher, `salesforce` → SalesforceSettings.
Assets, ops and sensors ask for those engine objects (`dg.ResourceParam[ContactStore]`), so a test can pass
an engine object directly in place of a factory.

Which settings: `resources()` looks up `RESOURCE_DEFS[get_env()]`, where get_env() reads CONVERSION_SYNC_ENV
(conversion_sync.config.environment: `local` for make dev and the tests, `production` otherwise):

- local: the store is CONVERSION_STORE_URL when set, else the embedded Postgres that make dev starts;
- production: the store is CONVERSION_STORE_URL, required when the code location loads, and kept as an
  environment variable reference so the URL (with its password) never appears in run config.

Both read the Salesforce credentials from the SALESFORCE_* variables, as references as well.

Warehouses: each BigQuery warehouse without `api_endpoint` is also a resource, dagster-gcp's
`BigQueryResource` under `bigquery_<warehouse>` (`warehouse_resources()`, its settings as environment
variable references); the engine builds its BigQuery clients with a BigQueryResource of the same settings
(`BigQueryResource.get_client()`), in a run as in the CLI. With `api_endpoint` (an emulator, the test
stand-in) the engine builds the client itself, on that endpoint, and no resource is declared.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import dagster as dg
from pydantic import Field

from conversion_sync.config import ProjectConfig
from conversion_sync.config.environment import Environment, environment
from conversion_sync.config.secrets import EnvRef, Setting
from conversion_sync.config.warehouses import BigQueryWarehouseConfig
from conversion_sync.salesforce.client import (
    DEFAULT_API_VERSION,
    ENV_VARS,
    QUERY_PAGE_SIZE,
    SalesforceSettings,
)
from conversion_sync.store.connection import STORE_URL_ENV, check_store_configured
from conversion_sync.store.contact_store import ContactStore
from conversion_sync.store.identity import IdentityMatcher

CONTACT_STORE_KEY = "contact_store"
IDENTITY_KEY = "identity"
SALESFORCE_KEY = "salesforce"


class ContactStoreResource(dg.ConfigurableResource[ContactStore]):
    """The contact store's Postgres. `url` unset: CONVERSION_STORE_URL, else (locally) the embedded store."""

    url: str | None = Field(
        default=None, description="Postgres URL; unset means CONVERSION_STORE_URL (or, locally, embedded)"
    )

    def create_resource(self, context: dg.InitResourceContext) -> ContactStore:
        return ContactStore(url=self.url)


class IdentityMatcherResource(dg.ConfigurableResource[IdentityMatcher]):
    """Matches staged e-mails and Salesforce ids to contacts; it has no settings."""

    def create_resource(self, context: dg.InitResourceContext) -> IdentityMatcher:
        return IdentityMatcher()


class SalesforceResource(dg.ConfigurableResource[SalesforceSettings]):
    """The Salesforce org's credentials and call settings; builds the SalesforceSettings of a run.

    Build it with `from_env()`, which keeps each SALESFORCE_* variable as a reference (dg.EnvVar), so
    secrets never appear in run config.
    """

    instance_url: str | None = Field(default=None, description="with access_token: the org's instance URL")
    access_token: str | None = Field(default=None, description="an OAuth access token (session id)")
    username: str | None = Field(default=None, description="integration user for the SOAP login")
    password: str | None = Field(default=None, description="that user's password")
    security_token: str | None = Field(default=None, description="that user's security token")
    login_url: str | None = Field(default=None, description="login URL (sandbox / My Domain / stand-in)")
    ca_bundle: str | None = Field(default=None, description="CA bundle file for a private CA")
    api_version: str = Field(default=DEFAULT_API_VERSION, description="REST API version, e.g. 59.0")
    max_attempts: int = Field(default=5, ge=1, description="attempts per call on 503 and timeouts")
    backoff_seconds: float = Field(default=1.0, ge=0, description="first retry delay; doubles per attempt")
    max_backoff_seconds: float = Field(default=30.0, ge=0, description="longest delay between attempts")
    request_timeout_seconds: float = Field(default=120.0, gt=0, description="HTTP timeout per request")
    bulk_poll_seconds: float = Field(default=2.0, ge=0, description="first wait between Bulk job polls")
    query_batch_size: int = Field(
        default=QUERY_PAGE_SIZE, ge=200, le=QUERY_PAGE_SIZE, description="records per REST query page"
    )

    @classmethod
    def from_env(cls, **overrides: Any) -> SalesforceResource:
        """The resource for the SALESFORCE_* variables that are set, each as a dg.EnvVar."""
        settings: dict[str, Any] = {
            field: dg.EnvVar(var) for field, var in ENV_VARS.items() if (os.environ.get(var) or "").strip()
        }
        return cls(**{**settings, **overrides})

    def settings(self) -> SalesforceSettings:
        """The engine settings, environment variable references resolved (also before a run, at load)."""
        values: dict[str, Any] = {}
        for name in SalesforceSettings.model_fields:
            value = getattr(self, name)
            values[name] = value.get_value() if isinstance(value, dg.EnvVar) else value
        return SalesforceSettings(**values)

    def create_resource(self, context: dg.InitResourceContext) -> SalesforceSettings:
        return self.settings()


def get_env() -> Environment:
    """`local` or `production`, from CONVERSION_SYNC_ENV (unset means production)."""
    return environment()


def local_resources() -> dict[str, Any]:
    """make dev and the tests: the store from CONVERSION_STORE_URL or the embedded Postgres."""
    return {
        CONTACT_STORE_KEY: ContactStoreResource(),
        IDENTITY_KEY: IdentityMatcherResource(),
        SALESFORCE_KEY: SalesforceResource.from_env(),
    }


def production_resources() -> dict[str, Any]:
    """Production: CONVERSION_STORE_URL must be set (checked here, when the code location loads)."""
    check_store_configured()
    return {
        CONTACT_STORE_KEY: ContactStoreResource(url=dg.EnvVar(STORE_URL_ENV)),
        IDENTITY_KEY: IdentityMatcherResource(),
        SALESFORCE_KEY: SalesforceResource.from_env(),
    }


RESOURCE_DEFS: dict[Environment, Callable[[], dict[str, Any]]] = {
    "local": local_resources,
    "production": production_resources,
}
"""The resources of each environment, built when the code location loads (they read the environment)."""


def resources(env: Environment | None = None) -> dict[str, Any]:
    """The resources for `env`, by default this process's environment."""
    return RESOURCE_DEFS[env or get_env()]()


def warehouse_resource_key(project: ProjectConfig, warehouse: str) -> str | None:
    """The resource that gives a sync's warehouse its client in a run (`bigquery_<warehouse>` for a BigQuery
    warehouse without `api_endpoint`), or None: the warehouse builds its own."""
    config = project.warehouses.get(warehouse)
    if isinstance(config, BigQueryWarehouseConfig) and config.api_endpoint is None:
        return bigquery_resource_key(warehouse)
    return None


def warehouse_resources(project: ProjectConfig) -> dict[str, Any]:
    """dagster-gcp's BigQueryResource for each BigQuery warehouse that has no `api_endpoint`, keyed
    `bigquery_<warehouse>`; none when the project has no such warehouse (the Google libraries stay unloaded)."""
    return {
        key: bigquery_resource(config)  # type: ignore[arg-type]
        for name, config in project.warehouses.items()
        if (key := warehouse_resource_key(project, name))
    }


def bigquery_resource_key(warehouse_name: str) -> str:
    """The code location's resource key for a BigQuery warehouse: `bigquery_<warehouse>`."""
    return f"bigquery_{warehouse_name}"


def bigquery_resource(config: BigQueryWarehouseConfig) -> Any:
    """dagster-gcp's BigQueryResource for a warehouse, each `{env: VAR}` setting kept as `dg.EnvVar(VAR)` so
    that no value (above all the credentials) is written into run config or shown in the UI.

    dagster-gcp reads `gcp_credentials` as base64 of the key JSON; the engine itself also accepts the JSON.
    """
    from dagster_gcp import BigQueryResource  # the Google libraries load only for a BigQuery warehouse

    def env_or_literal(value: Setting | None) -> str | None:
        return dg.EnvVar(value.env) if isinstance(value, EnvRef) else value

    return BigQueryResource(
        project=env_or_literal(config.project),
        location=env_or_literal(config.location),
        gcp_credentials=env_or_literal(config.credentials),
    )
