"""Bad rows of every kind (Hypothesis): no run crashes, every row lands or is rejected with a code."""

from __future__ import annotations

import decimal
import json
from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conversion_sync.store.staging import BatchTextifier
from conversion_sync_tests.test_syncs.conftest import SyncWorld

from .conftest import Figures

CODES = {"missing_required_field", "invalid_field_value", "duplicate_key_in_batch"}
LIGHT = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
HEAVY = settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck), database=None)

# -- values -------------------------------------------------------------------------------------------------

CONTROL = st.sampled_from(
    ["\x00", "\x01", "\x07", "\x1b", "\x7f", "\u200b", "\ufeff", "\u2028", "\r\n", "\t"]
)
HUGE = st.sampled_from([300, 3_000, 70_000, 1_100_000]).map(lambda n: ("é" if n % 2 else "x") * n)
EMAILS = st.sampled_from(
    [
        "ann@example.com",
        " Ann@Example.COM ",
        "bob@example.com",
        "ünïcödé@bücher.example",
        "用户@例子.广告",
        "not-an-email",
        "two@@example.com",
        "spaces in@example.com",
        "trailing-dot@example.",
        "@example.com",
        "nul\x00@example.com",
        "tab\t@example.com",
        "x" * 250 + "@example.com",
        "",
        "   ",
    ]
)
TIMESTAMPS = st.sampled_from(
    [
        "2026-01-01",
        "2026-01-01 10:00:00",
        "2026-01-01T10:00:00Z",
        "2026-01-01T10:00:00.123456+05:30",
        "2026-01-01 10:00:00 UTC",
        "2026-01-01T10:00:00-0800",
        "2026-13-45T99:99:99",
        "0000-01-01",
        "9999-12-31T23:59:59+14:00",
        "10000-01-01",
        "294277-01-01",
        "infinity",
        "-infinity",
        "now",
        "yesterday",
        "1/2/2026",
        "2026-02-30",
        "epoch",
    ]
)
JSON_TEXTS = st.sampled_from(
    [
        '{"role": "owner"}',
        '{"nested": {"a": [1, 2, {"b": null}]}}',
        "{}",
        "[1, 2]",
        '"just a string"',
        "42",
        "null",
        "{role: owner}",
        '{"a": 1',
        '{"a": "\\u0000"}',
        '{"a": NaN}',
        "",
        "{" * 10_000 + "}" * 10_000,
    ]
)
NUMBERS_AS_TEXT = st.sampled_from(
    ["12", " 7.0 ", "-3", "1e3", "1e400", "NaN", "inf", "ten", "0x1F", "9" * 30, "12.5", "+4", "", "1,000"]
)
BOOLEANS_AS_TEXT = st.sampled_from(["true", "FALSE", "yes", "n", "1", "0", "maybe", "", "T"])
TEXT = st.one_of(
    st.text(max_size=40),
    st.builds(lambda a, c, b: a + c + b, st.text(max_size=10), CONTROL, st.text(max_size=10)),
    HUGE,
    EMAILS,
    TIMESTAMPS,
    JSON_TEXTS,
    NUMBERS_AS_TEXT,
    BOOLEANS_AS_TEXT,
)


@dataclass(frozen=True)
class Kind:
    """A source column type: its Arrow type and a strategy for its values (None included)."""

    arrow: pa.DataType
    values: st.SearchStrategy[Any]


MICROS = st.one_of(
    st.integers(-62_135_596_800_000_000, 253_402_300_799_000_000),  # years 1–9999
    st.integers(-(2**62), 2**62),  # far outside what most databases hold, BC included
)
KINDS = {
    "text": Kind(pa.string(), TEXT),
    "bigint": Kind(pa.int64(), st.integers(-(2**63), 2**63 - 1)),
    "ubigint": Kind(pa.uint64(), st.integers(0, 2**64 - 1)),
    "double": Kind(pa.float64(), st.floats()),
    "decimal": Kind(
        pa.decimal128(38, 10),
        st.decimals(min_value=-(10**27), max_value=10**27, places=10, allow_nan=False, allow_infinity=False),
    ),
    "boolean": Kind(pa.bool_(), st.booleans()),
    "timestamp": Kind(pa.timestamp("us"), MICROS),
    "timestamptz": Kind(pa.timestamp("us", tz="America/New_York"), MICROS),
    "date": Kind(pa.date32(), st.integers(-1_000_000, 100_000_000)),
    "blob": Kind(pa.binary(), st.binary(max_size=20)),
    "list": Kind(pa.list_(pa.string()), st.lists(st.text(max_size=5), max_size=3)),
    "doubles": Kind(pa.list_(pa.float64()), st.lists(st.floats(), max_size=3)),
    "struct": Kind(
        pa.struct([("a", pa.int64()), ("b", pa.string())]),
        st.fixed_dictionaries({"a": st.integers(-5, 5), "b": st.text(max_size=5)}),
    ),
}


def column_values(kind: str) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), KINDS[kind].values)


# -- destinations ---------------------------------------------------------------------------------------

DESTINATIONS: dict[str, dict[str, Any]] = {
    "contacts": {
        "destination": {"type": "contacts"},
        "required": ["email"],
        "optional": [
            "first_name",
            "seats",
            "score",
            "vip",
            "trial_ends_at",
            "born",
            "prefs",
            "plan",
            "updated_at",
        ],
    },
    "custom_objects": {
        "destination": {"type": "custom_objects", "object_type": "product"},
        "required": ["id"],
        "optional": ["email", "relationshipFields", "name", "sku", "price", "updated_at"],
    },
    "events": {
        "destination": {"type": "events"},
        "required": ["email", "event_name", "timestamp"],
        "optional": ["message_id", "properties", "updated_at", "page", "amount"],
    },
}
KEY_POOL = {
    # keys drawn from a small pool so that duplicates (identical or not) are common
    "email": st.one_of(EMAILS, st.emails()),
    "id": st.one_of(st.sampled_from(["p1", "p2", " p1 ", "", "   "]), TEXT),
    "message_id": st.one_of(st.sampled_from(["m1", "m2", " m1", ""]), TEXT),
}


@st.composite
def source_tables(draw: st.DrawFn) -> tuple[str, pa.Table]:
    destination = draw(st.sampled_from(sorted(DESTINATIONS)))
    spec = DESTINATIONS[destination]
    columns = list(spec["required"]) + draw(
        st.lists(st.sampled_from(spec["optional"]), unique=True, max_size=len(spec["optional"]))
    )
    kinds = {c: draw(st.sampled_from(sorted(KINDS))) for c in columns}
    for key in KEY_POOL:
        if key in kinds and draw(st.booleans()):
            kinds[key] = "text"
    rows = draw(st.integers(0, 30))
    arrays = []
    for column in columns:
        values = (
            KEY_POOL[column]
            if kinds[column] == "text" and column in KEY_POOL
            else KINDS[kinds[column]].values
        )
        drawn = draw(st.lists(st.one_of(st.none(), values), min_size=rows, max_size=rows))
        if draw(st.booleans()) and rows > 1:  # an exact copy of another row: identical duplicates too
            drawn[-1] = drawn[0]
        arrays.append(pa.array(drawn, type=KINDS[kinds[column]].arrow))
    if rows > 1 and draw(st.booleans()):
        arrays = [a.take(pa.array([*range(rows), 0])) for a in arrays]
    return destination, pa.Table.from_arrays(arrays, names=columns)


# -- the check ------------------------------------------------------------------------------------------------


def write_source(world: SyncWorld, table: pa.Table) -> None:
    with duckdb.connect(str(world.duckdb_path)) as conn:
        conn.register("source", table)
        conn.execute("CREATE OR REPLACE TABLE src AS SELECT * FROM source")


def as_staged(table: pa.Table) -> list[dict[str, Any]]:
    """The rows as text, the way staging renders them (nested values as JSON, NUL removed)."""
    textifier = BatchTextifier()
    try:
        rows = []
        for batch in table.to_batches():
            text = textifier.to_text(batch)
            rows += [dict(zip(table.column_names, r.values(), strict=False)) for r in text.to_pylist()]
        return rows
    finally:
        textifier.close()


def key_present(world: SyncWorld, destination: str, row: dict[str, Any]) -> bool:
    """The accepted row's key is in the store (normalised as the store does: btrim trims spaces only)."""
    if destination == "contacts":
        sql = "SELECT count(*) FROM contacts WHERE email_normalized = lower(btrim(%(email)s))"
    elif destination == "custom_objects":
        sql = (
            "SELECT count(*) FROM custom_objects WHERE object_type = 'product' AND object_id = btrim(%(id)s)"
        )
    elif (row.get("message_id") or "").strip(" "):
        sql = "SELECT count(*) FROM events WHERE message_id = btrim(%(message_id)s)"
    else:
        sql = """SELECT count(*) FROM events e JOIN contacts c ON c.id = e.contact_id
                 WHERE c.email_normalized = lower(btrim(%(email)s)) AND e.event_name = btrim(%(event_name)s)"""
    return bool(world.scalar(sql, row))


def check_run(world: SyncWorld, destination: str, table: pa.Table, figures: Figures) -> None:
    write_source(world, table)
    outcome = world.run(destination)  # must not raise: bad rows are rejected, never fatal
    counts = outcome.counts
    assert counts["queried"] == table.num_rows
    rejections = world.sql(
        "SELECT code, message, (row ->> '_row_number')::int FROM sync_rejections WHERE run_id = %(r)s",
        {"r": outcome.run_id},
    )
    assert counts["rejected"] == len(rejections)
    assert all(code in CODES and message for code, message, _ in rejections), rejections
    rejected_rows = {number for _, _, number in rejections}
    assert len(rejected_rows) == len(rejections), "a row was rejected twice"
    landed = counts["added"] + counts["changed"] + counts["unchanged"] + counts["skipped"]
    assert landed + counts.get("duplicates_merged", 0) + counts["rejected"] == counts["queried"], counts
    for number, row in enumerate(as_staged(table), start=1):
        if number not in rejected_rows:
            assert key_present(world, destination, row), f"row {number} was neither written nor rejected"
    figures.add(
        "bad_input",
        runs=1,
        rows=table.num_rows,
        rejected=len(rejections),
        rejected_by_code={code: sum(1 for c, _, _ in rejections if c == code) for code in CODES},
    )


@pytest.fixture
def bad_input_world(world: SyncWorld) -> SyncWorld:
    for name, spec in DESTINATIONS.items():
        world.add_sync(name, "SELECT * FROM src", destination=spec["destination"])
    world.warehouse("CREATE TABLE src AS SELECT 1 AS placeholder")
    world.project()
    return world


@LIGHT
@given(source=source_tables())
def test_bad_rows_are_rejected_with_a_code_and_nothing_else_is_lost(
    bad_input_world: SyncWorld, figures: Figures, source: tuple[str, pa.Table]
) -> None:
    check_run(bad_input_world, *source, figures)


@pytest.mark.reliability
@HEAVY
@given(source=source_tables())
def test_bad_rows_many_examples(
    bad_input_world: SyncWorld, figures: Figures, source: tuple[str, pa.Table]
) -> None:
    check_run(bad_input_world, *source, figures)


def test_every_kind_of_bad_value_in_one_run(bad_input_world: SyncWorld, figures: Figures) -> None:
    """A fixed table with one row per kind of trouble, so the default run always covers them all."""
    rows = [
        {"email": None},
        {"email": ""},
        {"email": "nul\x00@example.com"},
        {"email": "用户@例子.广告", "first_name": "x" * 1_100_000},
        {"email": "ann@example.com", "seats": "ten", "trial_ends_at": "2026-13-45"},
        {"email": "bob@example.com", "born": "10000-01-01", "prefs": "{bad json"},
        {
            "email": "cy@example.com",
            "trial_ends_at": "2026-01-01T10:00:00.5+05:30",
            "vip": "yes",
            "seats": " 7.0 ",
        },
        {"email": "dup@example.com", "first_name": "One", "updated_at": "2026-01-01"},
        {"email": " DUP@example.com", "first_name": "Two", "updated_at": "2026-01-02"},
        {"email": "same@example.com", "first_name": "Same"},
        {"email": "same@example.com", "first_name": "Same"},
        {"email": "ctrl@example.com", "first_name": "bell\x07 esc\x1b del\x7f zwsp\u200b"},
        {"email": "tz@example.com", "trial_ends_at": "294277-01-01"},
    ]
    columns = ["email", "first_name", "seats", "trial_ends_at", "born", "prefs", "vip", "updated_at"]
    table = pa.Table.from_pylist([{c: r.get(c) for c in columns} for r in rows])
    check_run(bad_input_world, "contacts", table, figures)
    timestamps = pa.Table.from_arrays(
        [
            pa.array(["far@example.com", "bc@example.com", "ok@example.com"]),
            pa.array([2**62, -(2**62), 0], type=pa.timestamp("us", tz="UTC")),
            pa.array([100_000_000, -1_000_000, 0], type=pa.date32()),
            pa.array([json.dumps({"a": 1}), None, "[]"]),
            pa.array([decimal.Decimal("1e20"), None, decimal.Decimal("-0.5")], type=pa.decimal128(38, 10)),
        ],
        names=["email", "trial_ends_at", "born", "prefs", "score"],
    )
    check_run(bad_input_world, "contacts", timestamps, figures)
    nested = pa.table(
        {
            "email": ["inf@example.com", "nul@example.com", "fine@example.com"],
            "prefs": pa.array(
                [{"a": float("inf"), "b": "x"}, {"a": 1.0, "b": "nul\x00inside"}, {"a": 2.5, "b": "ok"}],
                type=pa.struct([("a", pa.float64()), ("b", pa.string())]),
            ),
        }
    )
    check_run(bad_input_world, "contacts", nested, figures)
    huge_key = "k" * 1_100_000
    objects = pa.table(
        {
            "id": [huge_key, "p1", "   ", None, "q" * 256, "q" * 255],
            "email": ["a@example.com", "not an email", None, "b@example.com", None, None],
            "relationshipFields": ['{"role": "owner"}', "[1, 2]", None, "{bad", None, None],
        }
    )
    check_run(bad_input_world, "custom_objects", objects, figures)
    events = pa.table(
        {
            "email": ["a@example.com"] * 4,
            "event_name": ["click", "click", "", "view"],
            "timestamp": ["2026-01-01T00:00:00Z", "2026-01-01T00:00:00+01:00", "2026-01-01", "294277-01-01"],
            "message_id": [huge_key, None, "m1", "m2"],
            "properties": ['{"a": 1}', "[]", None, "{}"],
        }
    )
    check_run(bad_input_world, "events", events, figures)
    codes = dict(bad_input_world.sql("SELECT code, count(*) FROM sync_rejections GROUP BY 1"))
    assert codes.keys() == CODES, codes
