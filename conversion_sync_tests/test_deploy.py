"""Every shipped Dagster instance config loads against a real Postgres; the Helm values hold together."""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import dagster as dg
import pytest
import yaml
from dagster._config import validate_config
from dagster._core.definitions.run_request import InstigatorType
from dagster._core.instance.config import dagster_instance_config, dagster_instance_config_schema
from dagster._core.run_coordinator import QueuedRunCoordinator
from dagster._core.scheduler.instigation import TickStatus

from .conftest import REPO_ROOT, create_database, drop_database

SHIPPED_INSTANCE_CONFIGS = sorted(
    [REPO_ROOT / "dagster.yaml", *(REPO_ROOT / "deploy").rglob("dagster.yaml")], key=str
)
HELM_VALUES = REPO_ROOT / "deploy" / "helm" / "values.yaml"
SECRET_NAME = "conversion-sync-secrets"
_databases = itertools.count()


class UnixSocketForwarder:
    """127.0.0.1:<port> → a Unix socket, so a host/port Postgres config can reach the socket-only test server."""

    def __init__(self, unix_path: str) -> None:
        self.unix_path = unix_path
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._sockets: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(self.unix_path)
            self._sockets += [client, upstream]
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                target.sendall(data)
        with contextlib.suppress(OSError):
            target.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()


@pytest.fixture
def dagster_database(pg_base_uri: str) -> Iterator[tuple[str, str]]:
    """(name, URL) of an empty database for Dagster's storage on the session's Postgres."""
    name = f"dagster_deploy_{next(_databases)}"
    url = create_database(pg_base_uri, name, template=None)
    yield name, url
    drop_database(pg_base_uri, url, name)


@pytest.fixture
def tcp_postgres(pg_base_uri: str) -> Iterator[int]:
    """A 127.0.0.1 TCP port that reaches the session's Postgres (it listens on a Unix socket only)."""
    socket_dir = parse_qs(urlsplit(pg_base_uri).query)["host"][0]
    (socket_file,) = [p for p in Path(socket_dir).glob(".s.PGSQL.*") if not p.name.endswith(".lock")]
    forwarder = UnixSocketForwarder(str(socket_file))
    yield forwarder.port
    forwarder.close()


def test_shipped_instance_configs_are_found() -> None:
    assert REPO_ROOT / "dagster.yaml" in SHIPPED_INSTANCE_CONFIGS
    assert REPO_ROOT / "deploy" / "dagster.yaml" in SHIPPED_INSTANCE_CONFIGS


@pytest.mark.parametrize("path", SHIPPED_INSTANCE_CONFIGS, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_instance_config_matches_dagsters_schema(path: Path) -> None:
    config, custom_class = dagster_instance_config(str(path.parent), path.name)
    assert custom_class is None
    assert "postgres" in config["storage"], "run, event and schedule storage live in Postgres"
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert config["run_monitoring"]["enabled"] is True


@pytest.mark.parametrize("path", SHIPPED_INSTANCE_CONFIGS, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_instance_starts_against_postgres_from_environment(
    path: Path,
    dagster_database: tuple[str, str],
    tcp_postgres: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name, url = dagster_database
    monkeypatch.setenv("DAGSTER_PG_URL", url.replace("postgresql://", "postgresql+psycopg2://", 1))
    for variable, value in {
        "DAGSTER_PG_HOST": "127.0.0.1",
        "DAGSTER_PG_PORT": str(tcp_postgres),
        "DAGSTER_PG_USERNAME": "postgres",
        "DAGSTER_PG_PASSWORD": "",
        "DAGSTER_PG_DB": name,
        "CONVERSION_SYNC_DATA_DIR": str(tmp_path / "data"),
    }.items():
        monkeypatch.setenv(variable, value)
    with dg.DagsterInstance.from_config(str(path.parent), path.name) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert instance.get_runs() == []  # a real round trip: the storage's tables were created
        coordinator = instance.run_coordinator
        assert isinstance(coordinator, QueuedRunCoordinator)
        queue = instance.get_concurrency_config().run_queue_config
        assert queue is not None and queue.max_concurrent_runs >= 1
        assert instance.run_monitoring_enabled
        # crashed runs are retried, data failures are not; store and Salesforce ops queue in pools
        assert instance.run_retries_enabled and instance.run_retries_max_retries >= 1
        assert instance.run_retries_retry_on_asset_or_op_failure is False
        pools = instance.get_concurrency_config().pool_config
        assert pools.default_pool_limit is not None and pools.default_pool_limit >= 1
        assert pools.pool_granularity is not None and pools.pool_granularity.value == "op"
        if path.parent.name == "deploy":
            limits = queue.tag_concurrency_limits
            assert {
                "key": "conversion_sync/sync",
                "value": {"applyLimitPerUniqueValue": True},
                "limit": 1,
            } in limits
            sensor_retention = instance.get_tick_retention_settings(InstigatorType.SENSOR)
            assert sensor_retention[TickStatus.SKIPPED] == 7
            assert instance.run_launcher.__class__.__name__ == "DefaultRunLauncher"


# --- Helm ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def helm() -> dict[str, Any]:
    return yaml.safe_load(HELM_VALUES.read_text(encoding="utf-8"))


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def instance_config_from_helm(values: dict[str, Any]) -> dict[str, Any]:
    """The parts of dagster.yaml the chart renders from these values (as its configmap-instance template does)."""
    daemon = values["dagsterDaemon"]
    queued = daemon["runCoordinator"]["config"]["queuedRunCoordinator"]
    monitoring = daemon["runMonitoring"]
    concurrency = values["concurrency"]
    return {
        "run_coordinator": {
            "module": "dagster.core.run_coordinator",
            "class": "QueuedRunCoordinator",
            **({"config": {_snake(k): v for k, v in queued.items()}} if queued else {}),
        },
        "concurrency": {
            part: {_snake(k): v for k, v in concurrency[part].items()} for part in ("runs", "pools")
        },
        "run_retries": {_snake(k): v for k, v in daemon["runRetries"].items()},
        "run_monitoring": {_snake(k): v for k, v in monitoring.items()},
        "sensors": {_snake(k): v for k, v in daemon["sensors"].items()},
        "schedules": {_snake(k): v for k, v in daemon["schedules"].items()},
        "retention": {
            kind: {"purge_after_days": values["retention"][kind]["purgeAfterDays"]}
            for kind in ("schedule", "sensor")
        },
        "telemetry": values["telemetry"],
    }


def test_helm_instance_settings_are_valid_dagster_config(helm: dict[str, Any]) -> None:
    config = instance_config_from_helm(helm)
    result = validate_config(dagster_instance_config_schema(), config)
    assert result.success, [error.message for error in result.errors or []]
    queued = QueuedRunCoordinator.config_type()
    assert validate_config(queued, config["run_coordinator"].get("config", {})).success


def test_helm_and_vm_deployments_queue_runs_alike(helm: dict[str, Any]) -> None:
    vm = yaml.safe_load((REPO_ROOT / "deploy" / "dagster.yaml").read_text(encoding="utf-8"))
    k8s = instance_config_from_helm(helm)
    assert k8s["run_coordinator"] == vm["run_coordinator"]
    assert k8s["concurrency"] == vm["concurrency"]
    assert k8s["run_retries"] == vm["run_retries"]
    assert k8s["retention"] == vm["retention"]


def test_helm_runs_the_code_location_with_the_k8s_run_launcher(helm: dict[str, Any]) -> None:
    assert helm["runLauncher"]["type"] == "K8sRunLauncher"
    launcher = helm["runLauncher"]["config"]["k8sRunLauncher"]
    assert {"name": SECRET_NAME} in launcher["envSecrets"]
    (deployment,) = helm["dagster-user-deployments"]["deployments"]
    args = deployment["dagsterApiGrpcArgs"]
    module = args[args.index("--module-name") + 1]
    assert module == "conversion_sync.definitions" and importlib.util.find_spec(module) is not None
    assert {"name": SECRET_NAME} in deployment["envSecrets"]
    assert deployment["includeConfigInLaunchedRuns"]["enabled"] is True
    assert deployment["image"]["repository"] and deployment["image"]["tag"]
    assert helm["postgresql"]["enabled"] is False and helm["generatePostgresqlPasswordSecret"] is False


def test_helm_values_hold_no_secret(helm: dict[str, Any]) -> None:
    secret_key = re.compile(r"password|token|secret|private_?key|credential", re.IGNORECASE)
    allowed = {"postgresqlSecretName", "envSecrets", "generatePostgresqlPasswordSecret"}
    found = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            if "name" in node and "value" in node and secret_key.search(str(node["name"])):
                found.append(f"{path}: env {node['name']} has a literal value")
            for key, value in node.items():
                if key not in allowed and secret_key.search(str(key)) and value not in (None, "", [], {}):
                    found.append(f"{path}.{key}")
                walk(value, f"{path}.{key}")
        elif isinstance(node, list):
            for i, item in enumerate(node):
                walk(item, f"{path}[{i}]")

    walk(helm, "values")
    (deployment,) = helm["dagster-user-deployments"]["deployments"]
    plain_env = {e["name"] for e in deployment.get("env", [])}
    found += [f"{name} must come from the Secret" for name in ("CONVERSION_STORE_URL",) if name in plain_env]
    assert found == []
