"""Sync logs written back to Snowflake (fakesnow over the wire protocol) and BigQuery (the REST stand-in), and
read back through each warehouse's own client."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import snowflake.connector
from dagster_gcp import BigQueryResource
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery

from conversion_sync.config import ProjectConfig, load_project_config
from conversion_sync.config.warehouses import (
    BigQueryWarehouseConfig,
    SnowflakeWarehouseConfig,
    SyncLogsConfig,
)
from conversion_sync.definitions import build_definitions
from conversion_sync.store.contact_store import ContactStore
from conversion_sync.warehouses import sync_logs
from conversion_sync.warehouses.sync_logs import (
    BigQuerySyncLogWriter,
    RunLog,
    SyncLogError,
    sync_log_writer,
    write_sync_log,
)

from .bigquery_standin import ACCESS_TOKEN, StandIn
from .test_bigquery import PLANTED, _service_account_json

SCHEMA = "conversion_logs"


def _config(snowflake_config: SnowflakeWarehouseConfig) -> SnowflakeWarehouseConfig:
    return snowflake_config.model_copy(
        update={"sync_logs": SyncLogsConfig.model_validate({"schema": SCHEMA})}
    )


def _query(server: dict[str, Any], sql: str) -> list[tuple[Any, ...]]:
    with snowflake.connector.connect(**server, database="CS_TEST", schema="PUBLIC") as conn:
        return list(conn.cursor().execute(sql).fetchall())


def _run(run_id: str, status: str = "success", error: str | None = None) -> RunLog:
    started = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    return RunLog(
        sync_name="people",
        run_id=run_id,
        status=status,
        started_at=started,
        finished_at=started.replace(second=9),
        counts={"queried": 6, "added": 3, "rejected": 3, "duplicates_merged": 0},
        error=error,
        watermark_used=datetime(1970, 1, 1, tzinfo=UTC),
        next_watermark=started,
    )


def _rejected(n: int) -> list[tuple[Any, ...]]:
    at = datetime(2026, 1, 2, 3, 4, 6, tzinfo=UTC)
    return [
        (
            f"bad{i}",
            "email",
            "invalid_field_value",
            f"email: 'bad{i}' is not a valid e-mail address",
            json.dumps({"email": f"bad{i}", "first_name": "O'Brien", "_row_number": i}),
            at,
        )
        for i in range(n)
    ]


def test_snowflake_sync_logs_are_written_and_replaced_per_run(
    snowflake_config: SnowflakeWarehouseConfig, fakesnow_server: dict[str, Any]
) -> None:
    config = _config(snowflake_config)
    writer = sync_log_writer("analytics", config)
    assert writer is not None and writer.kind == "snowflake"
    # two chunks, and a run logged twice (a re-delivered log) is replaced, not duplicated
    assert writer.append(_run("run-1"), [_rejected(2), _rejected(1)]) == 3
    assert writer.append(_run("run-1"), [_rejected(2)]) == 2
    assert writer.append(_run("run-2", "failed", "SQL error"), []) == 0

    runs = _query(
        fakesnow_server,
        f'SELECT "run_id", "status", "queried", "added", "rejected", "duration_s", "error", "started_at", '
        f'"counts":duplicates_merged::INT FROM "{SCHEMA}"."sync_runs" ORDER BY "run_id"',
    )
    assert [r[:7] for r in runs] == [
        ("run-1", "success", 6, 3, 3, 4.0, None),
        ("run-2", "failed", 6, 3, 3, 4.0, "SQL error"),
    ]
    assert runs[0][7].astimezone(UTC) == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert runs[0][8] == 0  # counts is VARIANT: its fields are addressable
    rejections = _query(
        fakesnow_server,
        f'SELECT "run_id", "row_key", "code", "row_json":first_name::VARCHAR FROM "{SCHEMA}"."sync_rejections" '
        'ORDER BY "row_key"',
    )
    assert rejections == [
        ("run-1", "bad0", "invalid_field_value", "O'Brien"),
        ("run-1", "bad1", "invalid_field_value", "O'Brien"),
    ]


def test_snowflake_sync_log_errors_name_the_warehouse_without_the_password(
    snowflake_config: SnowflakeWarehouseConfig,
    fakesnow_server: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CS_TEST_SNOWFLAKE_PASSWORD", "pw-Zq81-unguessable")
    config = _config(snowflake_config).model_copy(update={"port": 1})  # nothing listens there
    writer = sync_log_writer("analytics", config)
    assert writer is not None
    with pytest.raises(SyncLogError) as failure:
        writer.append(_run("run-3"), [])
    message = str(failure.value)
    assert message.startswith(f"warehouse 'analytics' (snowflake) schema '{SCHEMA}':")
    assert "connection failed" in message and "pw-Zq81-unguessable" not in message


# --- BigQuery -----------------------------------------------------------------------------------------

_datasets = itertools.count()


@pytest.fixture
def dataset() -> str:
    """A fresh dataset name per test: the stand-in lives for the whole session."""
    return f"logs_{next(_datasets)}"


def _bigquery_config(server: StandIn, dataset: str, **settings: Any) -> BigQueryWarehouseConfig:
    return BigQueryWarehouseConfig.model_validate(
        {
            "type": "bigquery",
            "project": "cs-test",
            "location": "US",
            "api_endpoint": server.url,
            "sync_logs": {"schema": dataset},
            **settings,
        }
    )


@pytest.fixture
def client(bigquery_server: StandIn) -> Iterator[bigquery.Client]:
    """A google-cloud-bigquery client on the stand-in, to read the logs back as a customer would."""
    reader = bigquery.Client(
        project="cs-test",
        credentials=AnonymousCredentials(),
        client_options=ClientOptions(api_endpoint=bigquery_server.url),
    )
    yield reader
    reader.close()


def _rows(client: bigquery.Client, sql: str) -> list[dict[str, Any]]:
    return [dict(row.items()) for row in client.query(sql).result()]


def _tables(server: StandIn, dataset: str) -> list[str]:
    return [
        name
        for (name,) in server.fetchall(
            f"SELECT table_name FROM information_schema.tables WHERE table_schema = '{dataset}' ORDER BY 1"
        )
    ]


def _messy_rejected(n: int) -> list[tuple[Any, ...]]:
    at = datetime(2026, 1, 2, 3, 4, 6, 123456, tzinfo=UTC)
    return [
        (
            None if i == 0 else f"bad{i}",
            "email",
            "invalid_field_value",
            f"email: 'bad{i}' is not a valid e-mail address\nsecond line; \"quoted\" @not_a_parameter `tick`",
            json.dumps(
                {
                    "email": f"bad{i}",
                    "first_name": "O'Brien \u00e9\u00e8 \U0001f600",
                    "nested": {"list": [1, 2.5, None, True], "empty": {}},
                    "_row_number": i,
                }
            ),
            at,
        )
        for i in range(n)
    ]


def test_bigquery_sync_logs_are_written_read_back_and_replaced_per_run(
    bigquery_server: StandIn, client: bigquery.Client, dataset: str
) -> None:
    writer = sync_log_writer("lake", _bigquery_config(bigquery_server, dataset))
    assert isinstance(writer, BigQuerySyncLogWriter)
    # the dataset and tables are created; two chunks land in one load
    assert writer.append(_run("run-1"), [_messy_rejected(2), _messy_rejected(1)]) == 3
    # a re-delivered log replaces the run's summary and rows; creating the tables again is a no-op
    assert writer.append(_run("run-1"), [_messy_rejected(2)]) == 2
    assert writer.append(_run("run-2", "failed", "SQL error"), []) == 0

    runs = _rows(
        client,
        f"SELECT run_id, status, queried, added, rejected, changed, duration_s, error, started_at, "
        f"watermark_used, counts FROM {dataset}.sync_runs ORDER BY run_id",
    )
    assert [
        (r["run_id"], r["status"], r["queried"], r["added"], r["rejected"], r["changed"]) for r in runs
    ] == [
        ("run-1", "success", 6, 3, 3, None),
        ("run-2", "failed", 6, 3, 3, None),
    ]
    assert [(r["duration_s"], r["error"]) for r in runs] == [(4.0, None), (4.0, "SQL error")]
    assert runs[0]["started_at"] == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert runs[0]["watermark_used"] == datetime(1970, 1, 1, tzinfo=UTC)
    assert runs[0]["counts"] == {"queried": 6, "added": 3, "rejected": 3, "duplicates_merged": 0}

    rejections = _rows(client, f"SELECT * FROM {dataset}.sync_rejections ORDER BY row_key NULLS FIRST")
    expected = _messy_rejected(2)
    assert [(r["run_id"], r["row_key"], r["message"]) for r in rejections] == [
        ("run-1", row[0], row[3]) for row in expected
    ]
    # the row's JSON round-trips: nesting, unicode, quotes, nulls, booleans
    assert [r["row_json"] for r in rejections] == [json.loads(row[4]) for row in expected]
    assert rejections[0]["rejected_at"] == datetime(2026, 1, 2, 3, 4, 6, 123456, tzinfo=UTC)

    # the columns have the other warehouses' names, JSON as JSON and times as TIMESTAMP
    types = {f.name: f.field_type for f in client.get_table(f"{dataset}.sync_runs").schema}
    assert list(types) == [name for name, _, _ in sync_logs.RUN_COLUMNS]
    assert (types["counts"], types["started_at"], types["queried"], types["duration_s"]) == (
        "JSON",
        "TIMESTAMP",
        "INTEGER",
        "FLOAT",
    )
    rejection_types = {f.name: f.field_type for f in client.get_table(f"{dataset}.sync_rejections").schema}
    assert list(rejection_types) == [name for name, _, _ in sync_logs.REJECTION_COLUMNS]
    assert (rejection_types["row_json"], rejection_types["rejected_at"]) == ("JSON", "TIMESTAMP")
    # the staging tables are gone; each was created to expire in a day, in case the writer dies first
    assert _tables(bigquery_server, dataset) == ["sync_rejections", "sync_runs"]
    staged = [
        t
        for t in bigquery_server.inserted_tables
        if t["tableReference"]["datasetId"] == dataset and "staging" in t["tableReference"]["tableId"]
    ]
    assert len(staged) == 2, "one per append with rejected rows"
    for table in staged:
        expires_in = int(table["expirationTime"]) / 1000 - datetime.now(UTC).timestamp()
        assert 23 * 3600 < expires_in <= 24 * 3600


def test_bigquery_rejections_larger_than_a_multipart_upload_go_resumable(
    bigquery_server: StandIn, client: bigquery.Client, dataset: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import google.cloud.bigquery.client as bigquery_client

    # the client uploads ≥ 5 MB in resumable sessions of 100 MB chunks: scaled down, the same protocol
    monkeypatch.setattr(bigquery_client, "_MAX_MULTIPART_SIZE", 1024)
    monkeypatch.setattr(bigquery_client, "_DEFAULT_CHUNKSIZE", 256 * 1024)
    writer = sync_log_writer("lake", _bigquery_config(bigquery_server, dataset))
    assert writer is not None
    bigquery_server.requests.clear()
    chunks = [_messy_rejected(1_000) for _ in range(3)]
    assert writer.append(_run("run-big"), chunks) == 3_000
    puts = [path for method, path in bigquery_server.requests if method == "PUT"]
    assert len(puts) >= 3, "several chunks of one resumable upload"
    assert _rows(
        client, f"SELECT count(*) AS n, count(DISTINCT row_key) AS k FROM {dataset}.sync_rejections"
    ) == [
        {"n": 3_000, "k": 999}  # row_key NULL in the first row of each chunk
    ]


def test_bigquery_failed_transaction_keeps_the_earlier_log_and_drops_the_staging(
    bigquery_server: StandIn, client: bigquery.Client, dataset: str
) -> None:
    writer = sync_log_writer("lake", _bigquery_config(bigquery_server, dataset))
    assert writer is not None
    writer.append(_run("run-1"), [_messy_rejected(2)])
    bigquery_server.fail_next_jobs.append(("accessDenied", "Access Denied: Table cs-test:logs.sync_runs"))
    with pytest.raises(SyncLogError) as failure:
        writer.append(_run("run-1", "failed", "late failure"), [_messy_rejected(1)])
    assert str(failure.value) == (
        f"warehouse 'lake' (bigquery) schema '{dataset}': failed: Access Denied: Table cs-test:logs.sync_runs"
    )
    # nothing of the failed append is visible: the earlier entries stand, the staging table is dropped
    assert _rows(client, f"SELECT status FROM {dataset}.sync_runs") == [{"status": "success"}]
    assert _rows(client, f"SELECT count(*) AS n FROM {dataset}.sync_rejections") == [{"n": 2}]
    assert _tables(bigquery_server, dataset) == ["sync_rejections", "sync_runs"]

    # a statement failing inside the transaction, after the deletes (PARSE_JSON of text that is not JSON):
    # BigQuery rolls the whole transaction back
    broken = [(*_messy_rejected(1)[0][:4], "{not json", datetime(2026, 1, 2, tzinfo=UTC))]
    with pytest.raises(SyncLogError, match=rf"^warehouse 'lake' \(bigquery\) schema '{dataset}': failed: "):
        writer.append(_run("run-1", "failed", "late failure"), [broken])
    assert _rows(client, f"SELECT status FROM {dataset}.sync_runs") == [{"status": "success"}]
    assert _rows(client, f"SELECT count(*) AS n FROM {dataset}.sync_rejections") == [{"n": 2}]
    assert _tables(bigquery_server, dataset) == ["sync_rejections", "sync_runs"]


def test_bigquery_transaction_aborted_by_a_concurrent_update_is_retried(
    bigquery_server: StandIn, client: bigquery.Client, dataset: str
) -> None:
    writer = sync_log_writer("lake", _bigquery_config(bigquery_server, dataset))
    assert writer is not None
    bigquery_server.fail_next_jobs.append(
        (
            "invalidQuery",
            f"Transaction is aborted due to concurrent update against table cs-test.{dataset}.sync_runs",
        )
    )
    bigquery_server.requests.clear()
    assert writer.append(_run("run-1"), [_messy_rejected(2)]) == 2
    inserted = [
        path for method, path in bigquery_server.requests if method == "POST" and path.endswith("/jobs")
    ]
    assert len(inserted) == 3, "the load upload, the aborted transaction, its retry"
    assert _rows(client, f"SELECT count(*) AS n FROM {dataset}.sync_rejections") == [{"n": 2}]


def test_bigquery_sync_log_errors_name_the_warehouse_never_the_key(
    bigquery_server: StandIn, dataset: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = _service_account_json("http://127.0.0.1:1/token")  # nothing listens: the token request fails
    monkeypatch.setenv("CS_TEST_GCP_LOG_CREDENTIALS", key)
    config = _bigquery_config(bigquery_server, dataset, credentials={"env": "CS_TEST_GCP_LOG_CREDENTIALS"})
    writer = BigQuerySyncLogWriter("lake", config, retry_timeout=1)
    with pytest.raises(SyncLogError) as failure:
        writer.append(_run("run-1"), [_messy_rejected(1)])
    message = str(failure.value)
    assert message.startswith(f"warehouse 'lake' (bigquery) schema '{dataset}': connection failed: ")
    assert "Connection refused" in message
    private_key = json.loads(key)["private_key"]
    assert "PRIVATE KEY" not in message and private_key[40:80] not in message
    assert failure.value.__cause__ is None

    # a key that does not load: its planted secret is not repeated back
    monkeypatch.setenv(
        "CS_TEST_GCP_LOG_CREDENTIALS",
        json.dumps(
            {"type": "service_account", "private_key": PLANTED, "client_email": "a@b", "token_uri": "x"}
        ),
    )
    with pytest.raises(SyncLogError) as failure:
        BigQuerySyncLogWriter("lake", config, retry_timeout=1).append(_run("run-1"), [])
    assert str(failure.value).startswith(
        f"warehouse 'lake' (bigquery) schema '{dataset}': connection failed: credentials are not usable"
    )
    assert PLANTED not in str(failure.value)
    assert _tables(bigquery_server, dataset) == [], "nothing was written"


def test_bigquery_sync_logs_dataset_must_be_a_dataset_name(bigquery_server: StandIn) -> None:
    writer = sync_log_writer("lake", _bigquery_config(bigquery_server, "logs; DROP TABLE x"))
    assert writer is not None
    with pytest.raises(SyncLogError, match=r"^warehouse 'lake' \(bigquery\) schema 'logs; DROP TABLE x': a "):
        writer.append(_run("run-1"), [])


def test_bigquery_production_client_comes_from_dagster_gcp_resource(
    bigquery_server: StandIn, client: bigquery.Client, dataset: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No api_endpoint: the client is built by BigQueryResource.get_client() from the warehouse settings,
    with the service-account key; BIGQUERY_EMULATOR_HOST (read by google-cloud-bigquery itself) sends it to
    the stand-in instead of bigquery.googleapis.com."""
    monkeypatch.setenv("BIGQUERY_EMULATOR_HOST", bigquery_server.url)
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("CS_TEST_GCP_LOG_CREDENTIALS", _service_account_json(f"{bigquery_server.url}/token"))
    config = BigQueryWarehouseConfig.model_validate(
        {
            "type": "bigquery",
            "project": "cs-test",
            "location": "US",
            "credentials": {"env": "CS_TEST_GCP_LOG_CREDENTIALS"},
            "sync_logs": {"schema": dataset},
        }
    )
    built: list[BigQueryResource] = []
    original = BigQueryResource.get_client

    def spy(self: BigQueryResource) -> Any:
        built.append(self)
        return original(self)

    monkeypatch.setattr(BigQueryResource, "get_client", spy)
    bigquery_server.authorizations.clear()
    writer = sync_log_writer("lake", config)
    assert writer is not None and writer.append(_run("run-1"), [_messy_rejected(1)]) == 1
    assert [(r.project, r.location, r.gcp_credentials is not None) for r in built] == [
        ("cs-test", "US", True)
    ]
    assert bigquery_server.authorizations == {f"Bearer {ACCESS_TOKEN}"}, "the service account's token"
    assert "GOOGLE_APPLICATION_CREDENTIALS" not in __import__("os").environ, "the key file is not left behind"
    assert _rows(client, f"SELECT run_id FROM {dataset}.sync_runs") == [{"run_id": "run-1"}]


PEOPLE = [
    ("ada@example.com", "Ada"),
    ("bo@example.com", "Bo"),
    ("not-an-email", "Bad"),
    (None, "Nobody"),
]


def _bigquery_people_project(
    bigquery_server: StandIn, dataset: str, tmp_path: Path, *, endpoint: bool
) -> ProjectConfig:
    """A sync `bq_people` reading PEOPLE from the stand-in, its logs in `dataset`; without `endpoint` the warehouse
    is configured as in production (no api_endpoint)."""
    source = f"{dataset}_src"
    values = ", ".join(
        "(" + ", ".join("NULL" if v is None else f"'{v}'" for v in row) + ")" for row in PEOPLE
    )
    bigquery_server.execute(
        f"CREATE SCHEMA {source}; CREATE TABLE {source}.people (email VARCHAR, first_name VARCHAR); "
        f"INSERT INTO {source}.people VALUES {values}"
    )
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    api_endpoint = f"api_endpoint: '{bigquery_server.url}', " if endpoint else ""
    (config_dir / "warehouses.yaml").write_text(
        f"warehouses:\n  lake: {{type: bigquery, project: cs-test, location: US, {api_endpoint}"
        f"sync_logs: {{schema: {dataset}}}}}\n"
    )
    (config_dir / "people.yaml").write_text(
        f"name: bq_people\nwarehouse: lake\ndestination: {{type: contacts}}\n"
        f"query: SELECT email, first_name FROM {source}.people\n"
    )
    project = load_project_config(config_dir)
    assert not project.problems, project.problems
    return project


def test_bigquery_sync_run_logs_through_dagster(
    bigquery_server: StandIn,
    client: bigquery.Client,
    dataset: str,
    tmp_path: Path,
    store_url: str,
) -> None:
    """A sync reading BigQuery logs its run (and, written again, replaces it) in the same BigQuery project."""
    project = _bigquery_people_project(bigquery_server, dataset, tmp_path, endpoint=True)
    with dg.instance_for_test() as instance:
        result = (
            build_definitions(project)
            .resolve_job_def("sync_bq_people")
            .execute_in_process(instance=instance, raise_on_error=False)
        )
    assert result.success
    runs = _rows(client, f"SELECT run_id, status, queried, added, rejected FROM {dataset}.sync_runs")
    assert runs == [{"run_id": result.run_id, "status": "success", "queried": 4, "added": 2, "rejected": 2}]
    rejected = _rows(client, f"SELECT row_key, code, row_json FROM {dataset}.sync_rejections ORDER BY code")
    assert [(r["code"], r["row_json"]["first_name"]) for r in rejected] == [
        ("invalid_field_value", "Bad"),
        ("missing_required_field", "Nobody"),
    ]
    assert write_sync_log(project, "bq_people", result.run_id, ContactStore())
    assert _rows(client, f"SELECT count(*) AS n FROM {dataset}.sync_runs") == [{"n": 1}]
    assert _rows(client, f"SELECT count(*) AS n FROM {dataset}.sync_rejections") == [{"n": 2}]


def test_a_bigquery_sync_run_takes_its_client_from_the_code_locations_resource(
    bigquery_server: StandIn,
    client: bigquery.Client,
    dataset: str,
    tmp_path: Path,
    store_url: str,
) -> None:
    """In a Dagster run, a production BigQuery warehouse's client comes from the `bigquery_<warehouse>` resource
    the code location holds (here replaced, as a deployment may): the query step and the sync log use it, and
    the warehouse builds no client of its own."""
    from conversion_sync.defs.resources import resources

    project = _bigquery_people_project(bigquery_server, dataset, tmp_path, endpoint=False)
    handed_out: list[str] = []

    class StandInBigQuery(dg.ConfigurableResource):  # type: ignore[type-arg]
        """What a deployment could put in place of dagster-gcp's resource: clients to the stand-in."""

        def get_client(self) -> Any:
            from contextlib import contextmanager

            @contextmanager
            def scope() -> Iterator[bigquery.Client]:
                handed_out.append("client")
                yield bigquery.Client(
                    project="cs-test",
                    location="US",
                    credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
                    client_options=ClientOptions(api_endpoint=bigquery_server.url),
                )

            return scope()

    defs = build_definitions(project, {**resources(), "bigquery_lake": StandInBigQuery()})
    with dg.instance_for_test() as instance:
        result = defs.resolve_job_def("sync_bq_people").execute_in_process(
            instance=instance, raise_on_error=False
        )
    assert result.success
    assert handed_out == ["client", "client"], "the query step's client, then the sync log's"
    runs = _rows(client, f"SELECT run_id, status, added, rejected FROM {dataset}.sync_runs")
    assert runs == [{"run_id": result.run_id, "status": "success", "added": 2, "rejected": 2}]
