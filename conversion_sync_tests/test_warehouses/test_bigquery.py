"""BigQuery adapter: the real google-cloud-bigquery client against the local REST stand-in."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import dagster as dg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from dagster_gcp import BigQueryResource

from conversion_sync.config import load_project_config
from conversion_sync.config.warehouses import BigQueryWarehouseConfig
from conversion_sync.definitions import build_definitions
from conversion_sync.warehouses import WarehouseConnectionError, WarehouseQueryError, open_warehouse
from conversion_sync.warehouses.bigquery import BigQueryWarehouse

from .bigquery_standin import ACCESS_TOKEN, StandIn

PLANTED = "PLANTED-s3cret-key"


def _service_account_json(token_uri: str) -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return json.dumps(
        {
            "type": "service_account",
            "project_id": "cs-test",
            "private_key_id": "0123456789abcdef",
            "private_key": pem,
            "client_email": "reader@cs-test.iam.gserviceaccount.com",
            "client_id": "1",
            "token_uri": token_uri,
        }
    )


def _with_credentials(
    config: BigQueryWarehouseConfig, monkeypatch: pytest.MonkeyPatch, text: str
) -> BigQueryWarehouseConfig:
    monkeypatch.setenv("CS_TEST_GCP_CREDENTIALS_JSON", text)
    data = config.model_dump() | {"credentials": {"env": "CS_TEST_GCP_CREDENTIALS_JSON"}}
    return BigQueryWarehouseConfig.model_validate(data)


def _count(server: StandIn) -> int:
    return int(server.fetchall("SELECT count(*) FROM ds.people")[0][0])


@pytest.mark.parametrize(
    ("sql", "statement_type"),
    [
        ("DELETE FROM ds.people", "DELETE"),
        ("UPDATE ds.people SET name = 'x'", "UPDATE"),
        ("DROP TABLE ds.people", "DROP_TABLE"),
    ],
)
def test_non_select_is_rejected_by_a_dry_run(
    bigquery_config: BigQueryWarehouseConfig, bigquery_server: StandIn, sql: str, statement_type: str
) -> None:
    jobs_before = len(bigquery_server.jobs)
    with open_warehouse("lake", bigquery_config) as warehouse, pytest.raises(WarehouseQueryError) as err:
        list(warehouse.stream(sql))
    assert str(err.value) == (
        f"warehouse 'lake' (bigquery): query failed: only SELECT statements can be synced; this is a "
        f"{statement_type} statement (checked with a dry run, nothing was executed)"
    )
    assert len(bigquery_server.jobs) == jobs_before
    assert _count(bigquery_server) == 3


def test_syntax_error_is_a_query_error(bigquery_config: BigQueryWarehouseConfig) -> None:
    with open_warehouse("lake", bigquery_config) as warehouse, pytest.raises(WarehouseQueryError) as err:
        list(warehouse.stream("SELEC id FROM ds.people"))
    assert str(err.value).startswith("warehouse 'lake' (bigquery): query failed: Syntax error: ")
    assert "POST http" not in str(err.value)
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_pages_are_fetched_with_batch_rows_as_page_size(
    bigquery_config: BigQueryWarehouseConfig, bigquery_server: StandIn
) -> None:
    bigquery_server.requests.clear()
    with open_warehouse("lake", bigquery_config) as warehouse:
        sizes = [b.num_rows for b in warehouse.stream("SELECT id FROM ds.big", batch_rows=40_000)]
    assert sizes == [40_000, 40_000, 40_000]
    methods = [method for method, _ in bigquery_server.requests]
    assert methods == ["POST", "POST", "GET", "GET", "GET"]  # dry run, insert, 3 result pages


def test_error_while_paging_is_a_query_error(
    bigquery_config: BigQueryWarehouseConfig, bigquery_server: StandIn
) -> None:
    with open_warehouse("lake", bigquery_config) as warehouse:
        batches = warehouse.stream("SELECT id FROM ds.big", batch_rows=40_000)
        assert next(batches).num_rows == 40_000
        bigquery_server.jobs.clear()  # the result expires between pages
        with pytest.raises(
            WarehouseQueryError, match=r"^warehouse 'lake' \(bigquery\): query failed: Not found: Job"
        ):
            for _ in batches:
                pass


def test_standin_also_serves_jobs_get_and_tabledata_list(bigquery_server: StandIn) -> None:
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import bigquery

    client = bigquery.Client(
        project="cs-test",
        credentials=AnonymousCredentials(),
        client_options=ClientOptions(api_endpoint=bigquery_server.url),
    )
    job = client.query("SELECT id FROM ds.big")
    job.result()
    assert client.get_job(job.job_id).state == "DONE"
    rows = client.list_rows(job.destination, page_size=50_000, selected_fields=job.result().schema)
    assert [page.num_items for page in rows.pages] == [50_000, 50_000, 20_000]
    client.close()


def test_service_account_credentials_are_used(
    bigquery_config: BigQueryWarehouseConfig, bigquery_server: StandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    bigquery_server.authorizations.clear()
    config = _with_credentials(
        bigquery_config, monkeypatch, _service_account_json(f"{bigquery_server.url}/token")
    )
    with open_warehouse("lake", config) as warehouse:
        assert next(warehouse.stream("SELECT count(*) AS n FROM ds.people")).to_pylist() == [{"n": 3}]
    assert bigquery_server.authorizations == {f"Bearer {ACCESS_TOKEN}"}


def test_base64_credentials_are_accepted(
    bigquery_config: BigQueryWarehouseConfig, bigquery_server: StandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = _service_account_json(f"{bigquery_server.url}/token")
    config = _with_credentials(bigquery_config, monkeypatch, base64.b64encode(text.encode()).decode())
    with open_warehouse("lake", config) as warehouse:
        assert next(warehouse.stream("SELECT 1 AS one")).to_pylist() == [{"one": 1}]


@pytest.mark.parametrize(
    "text",
    [
        f"not json at all {PLANTED}",
        json.dumps({"type": "service_account", "private_key": PLANTED}),
        json.dumps(
            {"type": "service_account", "private_key": PLANTED, "client_email": "a@b", "token_uri": "x"}
        ),
    ],
)
def test_bad_credentials_are_a_connection_error_without_the_secret(
    bigquery_config: BigQueryWarehouseConfig, monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    config = _with_credentials(bigquery_config, monkeypatch, text)
    with open_warehouse("lake", config) as warehouse, pytest.raises(WarehouseConnectionError) as err:
        list(warehouse.stream("SELECT 1"))
    message = str(err.value)
    assert message.startswith("warehouse 'lake' (bigquery): connection failed: credentials are not")
    assert PLANTED not in message


def test_token_endpoint_refusing_is_a_connection_error(
    bigquery_config: BigQueryWarehouseConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _with_credentials(
        bigquery_config, monkeypatch, _service_account_json("http://127.0.0.1:1/token")
    )
    with (
        BigQueryWarehouse("lake", config, retry_timeout=1) as warehouse,
        pytest.raises(WarehouseConnectionError) as err,
    ):
        list(warehouse.stream("SELECT 1"))
    assert str(err.value).startswith("warehouse 'lake' (bigquery): connection failed: ")
    assert "Connection refused" in str(err.value)
    assert "BEGIN PRIVATE KEY" not in str(err.value)


def test_unreachable_endpoint_is_a_connection_error() -> None:
    config = BigQueryWarehouseConfig(type="bigquery", project="cs-test", api_endpoint="http://127.0.0.1:1")
    with (
        BigQueryWarehouse("lake", config, retry_timeout=1) as warehouse,
        pytest.raises(WarehouseConnectionError) as err,
    ):
        list(warehouse.stream("SELECT 1"))
    assert str(err.value).startswith("warehouse 'lake' (bigquery): connection failed: ")
    assert "Connection refused" in str(err.value)


def test_missing_environment_variable(
    bigquery_config: BigQueryWarehouseConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GCP_CREDENTIALS_JSON", raising=False)
    config = BigQueryWarehouseConfig.model_validate(
        bigquery_config.model_dump() | {"credentials": {"env": "GCP_CREDENTIALS_JSON"}}
    )
    with open_warehouse("lake", config) as warehouse, pytest.raises(WarehouseConnectionError) as err:
        list(warehouse.stream("SELECT 1"))
    assert (
        str(err.value) == "warehouse 'lake' (bigquery): environment variable GCP_CREDENTIALS_JSON is not set"
    )


def test_definitions_expose_a_bigquery_resource_per_production_warehouse(
    bigquery_server: StandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A BigQuery warehouse without api_endpoint is dagster-gcp's BigQueryResource `bigquery_<name>`, its
    settings kept as environment references; the resource as Dagster initializes it reaches BigQuery."""
    key = _service_account_json(f"{bigquery_server.url}/token")
    monkeypatch.setenv("CS_TEST_GCP_PROJECT", "cs-test")
    monkeypatch.setenv("CS_TEST_GCP_KEY_B64", base64.b64encode(key.encode()).decode())
    (tmp_path / "warehouses.yaml").write_text(
        "warehouses:\n"
        "  lake: {type: bigquery, project: {env: CS_TEST_GCP_PROJECT}, location: EU, "
        "credentials: {env: CS_TEST_GCP_KEY_B64}}\n"
        f"  emulated: {{type: bigquery, project: cs-test, api_endpoint: '{bigquery_server.url}'}}\n"
        "  local: {type: duckdb, path: ':memory:'}\n"
    )
    for name, warehouse in (("lake_people", "lake"), ("emulated_people", "emulated")):
        (tmp_path / f"{name}.yaml").write_text(
            f"name: {name}\nwarehouse: {warehouse}\ndestination: {{type: contacts}}\nquery: SELECT 1 AS email\n"
        )
    project = load_project_config(tmp_path)
    assert not project.problems, project.problems
    defs = build_definitions(project)
    resources = defs.resources or {}
    assert "bigquery_emulated" not in resources and "bigquery_local" not in resources
    resource = resources["bigquery_lake"]
    assert isinstance(resource, BigQueryResource)
    assert (resource.project, resource.location) == (dg.EnvVar("CS_TEST_GCP_PROJECT"), "EU")
    assert resource.gcp_credentials == dg.EnvVar("CS_TEST_GCP_KEY_B64")
    assert "PRIVATE KEY" not in repr(resources), "only the variable's name is in the definitions"
    dg.Definitions.validate_loadable(defs)

    # what a run gets from it: a client with the service account's token (sent to the stand-in here)
    monkeypatch.setenv("BIGQUERY_EMULATOR_HOST", bigquery_server.url)
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    bigquery_server.authorizations.clear()

    @dg.asset
    def people_count(bigquery: BigQueryResource) -> int:
        with bigquery.get_client() as client:
            assert client.project == "cs-test" and client.location == "EU"
            return int(next(iter(client.query("SELECT count(*) AS n FROM ds.people").result()))["n"])

    result = dg.materialize([people_count], resources={"bigquery": resource})
    assert result.output_for_node("people_count") == 3
    assert bigquery_server.authorizations == {f"Bearer {ACCESS_TOKEN}"}


def test_a_warehouse_without_endpoint_reads_through_the_resource_built_client(
    bigquery_server: StandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The production path of the adapter itself (as the CLI and the sync runs use it)."""
    calls: list[BigQueryResource] = []
    original = BigQueryResource.get_client

    def spy(self: BigQueryResource) -> object:
        calls.append(self)
        return original(self)

    monkeypatch.setattr(BigQueryResource, "get_client", spy)
    monkeypatch.setenv("BIGQUERY_EMULATOR_HOST", bigquery_server.url)
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    config = BigQueryWarehouseConfig(type="bigquery", project="cs-test", location="US")
    config = _with_credentials(config, monkeypatch, _service_account_json(f"{bigquery_server.url}/token"))
    with open_warehouse("lake", config) as warehouse:
        assert next(warehouse.stream("SELECT count(*) AS n FROM ds.people")).to_pylist() == [{"n": 3}]
    assert len(calls) == 1 and calls[0].project == "cs-test" and calls[0].location == "US"

    # the key file dagster-gcp needs cannot be made while GOOGLE_APPLICATION_CREDENTIALS names another one
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", "/nonexistent/other-key.json")
    with open_warehouse("lake", config) as warehouse, pytest.raises(WarehouseConnectionError) as err:
        list(warehouse.stream("SELECT 1"))
    assert str(err.value).startswith("warehouse 'lake' (bigquery): connection failed: ")
    assert "GOOGLE_APPLICATION_CREDENTIALS" in str(err.value) and "PRIVATE KEY" not in str(err.value)
