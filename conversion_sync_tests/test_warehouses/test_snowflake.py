"""Snowflake adapter through dagster-snowflake's SnowflakeResource against fakesnow's server."""

from __future__ import annotations

from typing import Any

import pytest
import snowflake.connector

from conversion_sync.config.warehouses import SnowflakeWarehouseConfig
from conversion_sync.warehouses import WarehouseConnectionError, WarehouseQueryError, open_warehouse

PLANTED = "PLANTED-s3cret-pw"


def _count(server: dict[str, Any]) -> int:
    with snowflake.connector.connect(**server, database="CS_TEST", schema="PUBLIC") as conn:
        return conn.cursor().execute("SELECT count(*) FROM people").fetchone()[0]  # type: ignore[index,union-attr]


@pytest.mark.parametrize(
    "sql", ["DELETE FROM people", "UPDATE people SET name = 'x'", "INSERT INTO people (id) VALUES (99)"]
)
def test_dml_is_rejected_and_rolled_back(
    snowflake_config: SnowflakeWarehouseConfig, fakesnow_server: dict[str, Any], sql: str
) -> None:
    with (
        open_warehouse("analytics", snowflake_config) as warehouse,
        pytest.raises(WarehouseQueryError) as err,
    ):
        list(warehouse.stream(sql))
    assert str(err.value) == (
        "warehouse 'analytics' (snowflake): query failed: the statement returns no result set; "
        "a sync query must be a SELECT (its changes were rolled back)"
    )
    assert _count(fakesnow_server) == 3


def test_syntax_error_is_a_query_error(snowflake_config: SnowflakeWarehouseConfig) -> None:
    with (
        open_warehouse("analytics", snowflake_config) as warehouse,
        pytest.raises(WarehouseQueryError) as err,
    ):
        list(warehouse.stream("SELEC id FROM people"))
    assert str(err.value).startswith("warehouse 'analytics' (snowflake): query failed: 001003 (42000): ")
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_unknown_table_is_a_query_error(snowflake_config: SnowflakeWarehouseConfig) -> None:
    with (
        open_warehouse("analytics", snowflake_config) as warehouse,
        pytest.raises(WarehouseQueryError) as err,
    ):
        list(warehouse.stream("SELECT * FROM no_such_table"))
    assert "NO_SUCH_TABLE" in str(err.value)


def test_upper_case_names_are_lower_cased_quoted_names_kept(
    snowflake_config: SnowflakeWarehouseConfig,
) -> None:
    sql = 'SELECT id, name AS "Display Name", id AS "id_lower", id AS "ID" FROM people WHERE id = 1'
    with open_warehouse("analytics", snowflake_config) as warehouse:
        (batch,) = list(warehouse.stream(sql))
    # "ID" clashes with the folded `id`, so it stays as it is
    assert batch.schema.names == ["id", "Display Name", "id_lower", "ID"]


def test_unreachable_host_is_a_connection_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CS_TEST_SF_PLANTED", PLANTED)
    config = SnowflakeWarehouseConfig.model_validate(
        {
            "type": "snowflake",
            "account": "acme",
            "user": "reader",
            "password": {"env": "CS_TEST_SF_PLANTED"},
            "host": "127.0.0.1",
            "port": 1,
            "protocol": "http",
        }
    )
    with open_warehouse("analytics", config) as warehouse, pytest.raises(WarehouseConnectionError) as err:
        list(warehouse.stream("SELECT 1"))
    message = str(err.value)
    assert message.startswith("warehouse 'analytics' (snowflake): connection failed: ")
    assert "Could not connect to Snowflake backend" in message
    assert PLANTED not in message


def test_missing_environment_variable(
    snowflake_config: SnowflakeWarehouseConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CS_TEST_SNOWFLAKE_PASSWORD")
    with (
        open_warehouse("analytics", snowflake_config) as warehouse,
        pytest.raises(WarehouseConnectionError) as err,
    ):
        list(warehouse.stream("SELECT 1"))
    assert str(err.value) == (
        "warehouse 'analytics' (snowflake): environment variable CS_TEST_SNOWFLAKE_PASSWORD is not set"
    )


def test_bad_private_key_is_a_connection_error_without_the_key(
    snowflake_config: SnowflakeWarehouseConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CS_TEST_SF_KEY", f"-----BEGIN PRIVATE KEY-----\n{PLANTED}\n-----END PRIVATE KEY-----")
    config = snowflake_config.model_copy(update={"password": None, "private_key": {"env": "CS_TEST_SF_KEY"}})
    config = SnowflakeWarehouseConfig.model_validate(config.model_dump(by_alias=True))
    with open_warehouse("analytics", config) as warehouse, pytest.raises(WarehouseConnectionError) as err:
        list(warehouse.stream("SELECT 1"))
    message = str(err.value)
    assert message.startswith("warehouse 'analytics' (snowflake): connection failed: ")
    assert "private key" in message
    assert PLANTED not in message
