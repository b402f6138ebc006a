"""Snowflake warehouse: the Snowflake connector, streamed with `fetch_arrow_batches`."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Iterator
from contextlib import suppress
from typing import Any

import pyarrow as pa
import snowflake.connector
from cryptography.hazmat.primitives import serialization
from snowflake.connector.errors import NotSupportedError

from conversion_sync.config.warehouses import SnowflakeWarehouseConfig
from conversion_sync.warehouses.base import (
    DEFAULT_BATCH_ROWS,
    JSON_TEXT,
    Warehouse,
    WarehouseError,
    bounded_batches,
    check_batch_rows,
    mark_source_type,
    plain_arrow_types,
    utc_moment,
)


class SnowflakeWarehouse(Warehouse):
    """A Snowflake account, reached with the Snowflake connector (password or private key authentication).

    `host`, `port` and `protocol` (optional) point the connector at another endpoint, e.g. a
    PrivateLink host or a local fakesnow server.

    Read-only: Snowflake has no read-only session or transaction mode, so the real protection is a
    role with only SELECT privileges (`role:` in warehouses.yaml). As a second line, each query runs
    inside an explicit transaction that is always rolled back, which undoes DML (DELETE, UPDATE,
    INSERT, MERGE); DDL commits implicitly in Snowflake and is not undone. A statement that returns
    no result set is reported as a query error.

    Column names: Snowflake folds unquoted identifiers to upper case, so (like the Snowflake
    SQLAlchemy dialect) all-upper-case result columns are lower-cased: `SELECT email` yields
    `email`; quoted mixed- or lower-case names are kept. Timestamps come as microseconds.

    Time zone: the session parameter TIMEZONE is UTC (Snowflake's default is America/Los_Angeles), so
    TIMESTAMP_LTZ values and literals compare in UTC. `query_started_at` is CURRENT_TIMESTAMP() read in
    the query's transaction just before it runs.
    """

    kind = "snowflake"

    def __init__(self, name: str, config: SnowflakeWarehouseConfig) -> None:
        super().__init__(name)
        self.config = config
        self._conn: snowflake.connector.SnowflakeConnection | None = None

    def _connect_args(self) -> dict[str, Any]:
        """The connector's arguments: the settings, one way to authenticate, a UTC session tagged with the name."""
        c = self.config
        password = self._resolve(c.password, secret=True)
        private_key = self._resolve(c.private_key, secret=True)
        if private_key:
            self._add_secret(*(line for line in private_key.splitlines() if len(line.strip()) >= 16))
        if not (password or private_key):
            raise self._connection_error("neither password nor private_key is set")
        if password and private_key:
            raise self._connection_error("both password and private_key are set; use one")
        settings: dict[str, Any] = {
            "account": self._resolve(c.account),
            "user": self._resolve(c.user),
            "password": password,
            "private_key": _der_private_key(private_key) if private_key else None,
            "warehouse": self._resolve(c.warehouse),
            "database": self._resolve(c.database),
            "schema": self._resolve(c.schema_),
            "role": self._resolve(c.role),
            "host": self._resolve(c.host),
            "port": c.port,
            "protocol": c.protocol,
            "application": "conversion_sync",
            "session_parameters": {
                "QUERY_TAG": f"conversion_sync:{self.name}",
                "PYTHON_CONNECTOR_QUERY_RESULT_FORMAT": "ARROW",
                "TIMEZONE": "UTC",
            },
        }
        return {k: v for k, v in settings.items() if v is not None}

    def _connect(self) -> snowflake.connector.SnowflakeConnection:
        if self._conn is not None and self._conn.is_closed():
            self.close()
        if self._conn is None:
            try:
                args = self._connect_args()
            except WarehouseError:
                raise
            except Exception as exc:
                raise self._connection_error(exc) from None
            try:
                self._conn = snowflake.connector.connect(**args)
            except Exception as exc:
                raise self._connection_error(exc) from None
        return self._conn

    def stream(self, sql: str, batch_rows: int = DEFAULT_BATCH_ROWS) -> Iterator[pa.RecordBatch]:
        return self._batches(sql, check_batch_rows(batch_rows))

    def _batches(self, sql: str, batch_rows: int) -> Iterator[pa.RecordBatch]:
        conn = self._connect()
        cur = conn.cursor()
        try:
            cur.execute("BEGIN")
            cur.execute("SELECT CURRENT_TIMESTAMP()")
            self.query_started_at = utc_moment(cur.fetchone()[0])  # type: ignore[index]
            cur.execute(sql)
            chunks: Iterable[pa.Table]
            if cur.rowcount == 0:
                chunks = [cur.fetch_arrow_all(force_return_table=True, force_microsecond_precision=True)]
            else:
                chunks = cur.fetch_arrow_batches(force_microsecond_precision=True)
            names: list[str] | None = None
            for batch in bounded_batches(chunks, batch_rows):
                names = names or _unfold_names(batch.schema.names)
                yield plain_arrow_types(_mark_json(batch.rename_columns(names)))
        except NotSupportedError:
            raise self._query_error(
                "the statement returns no result set; a sync query must be a SELECT (its changes were rolled back)"
            ) from None
        except WarehouseError:
            raise
        except Exception as exc:
            raise self._query_error(exc) from None
        finally:
            self._rollback(cur)

    def _rollback(self, cur: Any) -> None:
        try:
            cur.execute("ROLLBACK")
            cur.close()
        except Exception:
            self.close()

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with suppress(Exception):
                conn.close()


def _der_private_key(pem: str) -> bytes:
    """An unencrypted PEM private key (or its base64 encoding) as the DER bytes the connector takes."""
    data = pem.encode()
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except ValueError:
        try:
            key = serialization.load_pem_private_key(base64.b64decode(data), password=None)
        except (ValueError, binascii.Error):
            raise ValueError(
                "unable to load the private key: it must be an unencrypted PEM private key (PKCS#8), "
                "or that PEM text base64-encoded"
            ) from None
    return key.private_bytes(
        encoding=serialization.Encoding.DER,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )


_JSON_LOGICAL_TYPES = (b"VARIANT", b"OBJECT", b"ARRAY")


def _mark_json(batch: pa.RecordBatch) -> pa.RecordBatch:
    """VARIANT, OBJECT and ARRAY columns (JSON text, `logicalType` in the field metadata) marked JSON_TEXT."""
    marks = [
        i
        for i, f in enumerate(batch.schema)
        if (f.metadata or {}).get(b"logicalType") in _JSON_LOGICAL_TYPES and pa.types.is_string(f.type)
    ]
    if not marks:
        return batch
    schema = batch.schema
    for i in marks:
        schema = schema.set(i, mark_source_type(schema.field(i), JSON_TEXT))
    return pa.RecordBatch.from_arrays(batch.columns, schema=schema)


def _unfold_names(names: list[str]) -> list[str]:
    """Lower-case the names Snowflake folded to upper case, unless that would clash with another column."""
    taken = set(names)
    result = []
    for name in names:
        lower = name.lower()
        if name == name.upper() and lower != name and lower not in taken:
            taken.add(lower)
            name = lower
        result.append(name)
    return result
