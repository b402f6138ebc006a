"""The shared interface: adapter choice, batch bounding, plain Arrow types, secret-free errors."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pyarrow as pa
import pytest
from pydantic import TypeAdapter

from conversion_sync.config.warehouses import WarehouseConfig
from conversion_sync.warehouses import (
    Warehouse,
    WarehouseConnectionError,
    WarehouseError,
    WarehouseQueryError,
    open_warehouse,
)
from conversion_sync.warehouses.base import bounded_batches, plain_arrow_types

CONFIGS = {
    "duckdb": {"type": "duckdb", "path": "warehouse.duckdb"},
    "postgres": {"type": "postgres", "url": {"env": "APP_DB_URL"}},
    "snowflake": {
        "type": "snowflake",
        "account": "acme",
        "user": "reader",
        "password": {"env": "SF_PASSWORD"},
    },
    "bigquery": {"type": "bigquery", "project": "my-proj", "credentials": {"env": "GCP_CREDENTIALS_JSON"}},
}


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_open_warehouse_chooses_the_adapter_by_type_without_connecting(kind: str) -> None:
    config = TypeAdapter(WarehouseConfig).validate_python(CONFIGS[kind])
    warehouse = open_warehouse("w", config)
    assert isinstance(warehouse, Warehouse)
    assert (warehouse.name, warehouse.kind) == ("w", kind)
    assert repr(warehouse).endswith("'w'>")
    warehouse.close()
    warehouse.close()


def test_errors_share_a_base() -> None:
    assert issubclass(WarehouseConnectionError, WarehouseError)
    assert issubclass(WarehouseQueryError, WarehouseError)


class _Echo(Warehouse):
    """A warehouse whose driver puts the password in its messages."""

    kind = "echo"

    def __init__(self) -> None:
        super().__init__("echo_wh")
        self._add_secret("hunter2", "hunter2-longer")
        self.closed = False

    def stream(self, sql: str, batch_rows: int = 10) -> Iterator[pa.RecordBatch]:
        try:
            raise RuntimeError(f"login as admin:hunter2-longer failed; retried with hunter2 ({sql})")
        except RuntimeError as exc:
            raise self._connection_error(exc) from None

    def close(self) -> None:
        self.closed = True


def test_secrets_are_scrubbed_and_the_driver_error_is_not_chained() -> None:
    with _Echo() as warehouse, pytest.raises(WarehouseConnectionError) as err:
        warehouse.stream("SELECT 1")
    assert str(err.value) == (
        "warehouse 'echo_wh' (echo): connection failed: login as admin:*** failed; retried with *** (SELECT 1)"
    )
    assert err.value.__cause__ is None and err.value.__suppress_context__
    assert warehouse.closed


def test_query_error_format() -> None:
    assert str(_Echo()._query_error("boom")) == "warehouse 'echo_wh' (echo): query failed: boom"


def test_bounded_batches_slices_large_chunks_and_skips_empty_ones() -> None:
    batch = pa.RecordBatch.from_pydict({"i": list(range(10))})
    chunks = [batch, batch.slice(0, 0), pa.Table.from_batches([batch, batch])]
    sizes = [b.num_rows for b in bounded_batches(chunks, 4)]
    assert sizes == [4, 4, 2, 4, 4, 2, 4, 4, 2]
    assert all(isinstance(b, pa.RecordBatch) for b in bounded_batches(chunks, 4))


def test_bounded_batches_yields_one_empty_batch_with_the_schema() -> None:
    schema = pa.schema([("a", pa.int64()), ("b", pa.string())])
    (only,) = list(bounded_batches([], 5, schema))
    assert only.num_rows == 0 and only.schema == schema
    (only,) = list(bounded_batches([pa.table({"a": pa.array([], pa.int8())})], 5))
    assert only.schema.names == ["a"]


def test_plain_arrow_types_turns_extension_columns_into_text() -> None:
    ids = [uuid.uuid4() for _ in range(5)]
    storage = [u.bytes for u in ids]
    storage[2] = None  # type: ignore[call-overload]
    batch = pa.RecordBatch.from_arrays(
        [
            pa.array(storage, pa.uuid()),
            pa.array(['{"a": 1}', None, "[]", "1", "2"], pa.json_()),
            pa.array(range(5)),
        ],
        names=["id", "doc", "n"],
    )
    for offset, length in [(0, 5), (1, 3), (3, 2), (0, 0)]:
        plain = plain_arrow_types(batch.slice(offset, length))
        assert plain.schema.types == [pa.string(), pa.string(), pa.int64()]
        expected = [None if i == 2 else str(u) for i, u in enumerate(ids)][offset : offset + length]
        assert plain.column("id").to_pylist() == expected
    untouched = pa.RecordBatch.from_pydict({"n": [1]})
    assert plain_arrow_types(untouched) is untouched
