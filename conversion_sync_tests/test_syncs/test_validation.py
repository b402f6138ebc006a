"""Each row error code and each whole-run error, with the exact message a user sees; good rows still land."""

from __future__ import annotations

import pytest

from conversion_sync.syncs.runner import SyncFailed

from .conftest import SyncWorld

USERS = """
CREATE TABLE users (email VARCHAR, first_name VARCHAR, seats VARCHAR, score VARCHAR, vip VARCHAR,
                    trial_ends_at VARCHAR, born VARCHAR, prefs VARCHAR, updated_at TIMESTAMP);
INSERT INTO users VALUES
  ('good@example.com', 'Good', '12', '1.5', 'true', '2026-01-01T10:00:00Z', '1990-02-03', '{"a": 1}', '2026-01-01'),
  (NULL, 'NoEmail', '1', NULL, NULL, NULL, NULL, NULL, '2026-01-01'),
  ('   ', 'Blank', '1', NULL, NULL, NULL, NULL, NULL, '2026-01-01'),
  ('not-an-email', 'Bad', '1', NULL, NULL, NULL, NULL, NULL, '2026-01-01'),
  ('ten@example.com', 'Ten', 'ten', NULL, NULL, NULL, NULL, NULL, '2026-01-01'),
  ('float@example.com', 'Float', '1.5', NULL, NULL, NULL, NULL, NULL, '2026-01-01'),
  ('score@example.com', 'Score', NULL, 'lots', NULL, NULL, NULL, NULL, '2026-01-01'),
  ('vip@example.com', 'Vip', NULL, NULL, 'maybe', NULL, NULL, NULL, '2026-01-01'),
  ('ts@example.com', 'Ts', NULL, NULL, NULL, 'tomorrow', NULL, NULL, '2026-01-01'),
  ('date@example.com', 'Date', NULL, NULL, NULL, NULL, '2024-02-30', NULL, '2026-01-01'),
  ('json@example.com', 'Json', NULL, NULL, NULL, NULL, NULL, '{not json', '2026-01-01'),
  ('dup@example.com', 'Older', '1', NULL, NULL, NULL, NULL, NULL, '2026-01-01'),
  ('DUP@example.com', 'Newer', '2', NULL, NULL, NULL, NULL, NULL, '2026-02-01'),
  ('same@example.com', 'Same', '1', NULL, NULL, NULL, NULL, NULL, '2026-01-01'),
  ('same@example.com', 'Same', '1', NULL, NULL, NULL, NULL, NULL, '2026-01-01'),
  ('coerce@example.com', 'Coerce', ' 7.0 ', '-2e3', 'YES', '2026-03-04 05:06:07', '2026-05-06 00:00:00', '[1]', '2026-01-01');
"""


@pytest.fixture
def rejected(world: SyncWorld) -> dict[str, tuple[str, str, str]]:
    world.warehouse(USERS)
    world.add_sync("users", "SELECT * FROM users")
    outcome = world.run("users")
    assert outcome.counts["queried"] == 16
    rows = world.sql(
        "SELECT row_key, column_name, code, message FROM sync_rejections WHERE run_id = %(r)s",
        {"r": outcome.run_id},
    )
    world.outcome = outcome  # type: ignore[attr-defined]
    return {(key or "").strip() or "<blank>": (column, code, message) for key, column, code, message in rows}


def test_each_row_error_code_and_message(rejected: dict[str, tuple[str, str, str]]) -> None:
    assert rejected == {
        "<blank>": ("email", "missing_required_field", "email is missing (null or empty)"),
        "not-an-email": (
            "email",
            "invalid_field_value",
            "email: 'not-an-email' is not a valid email address",
        ),
        "ten@example.com": ("seats", "invalid_field_value", "seats: 'ten' is not an integer"),
        "float@example.com": ("seats", "invalid_field_value", "seats: '1.5' is not an integer"),
        "score@example.com": ("score", "invalid_field_value", "score: 'lots' is not a number"),
        "vip@example.com": ("vip", "invalid_field_value", "vip: 'maybe' is not a boolean (true/false)"),
        "ts@example.com": (
            "trial_ends_at",
            "invalid_field_value",
            "trial_ends_at: 'tomorrow' is not a timestamp (ISO 8601)",
        ),
        "date@example.com": ("born", "invalid_field_value", "born: '2024-02-30' is not a date (YYYY-MM-DD)"),
        "json@example.com": ("prefs", "invalid_field_value", "prefs: '{not json' is not valid JSON"),
        "dup@example.com": (
            None,
            "duplicate_key_in_batch",
            "duplicate key 'dup@example.com' in this run: row 13 has the same key and a later updated_at, so it wins",
        ),
    } | {k: v for k, v in rejected.items() if k == "<blank>"}


def test_two_missing_emails_are_both_rejected(world: SyncWorld, rejected: dict) -> None:
    assert world.scalar("SELECT count(*) FROM sync_rejections WHERE code = 'missing_required_field'") == 2
    assert world.outcome.counts["rejected"] == 11  # type: ignore[attr-defined]


def test_good_and_coerced_rows_land(world: SyncWorld, rejected: dict) -> None:
    rows = dict(
        world.sql(
            "SELECT email_normalized, custom_fields FROM contacts WHERE email_normalized IN "
            "('good@example.com', 'coerce@example.com')"
        )
    )
    assert rows["good@example.com"] == {
        "born": "1990-02-03",
        "vip": True,
        "prefs": {"a": 1},
        "score": 1.5,
        "seats": 12,
        "trial_ends_at": "2026-01-01T10:00:00+00:00",
    }
    assert rows["coerce@example.com"] == {
        "born": "2026-05-06",
        "vip": True,
        "prefs": [1],
        "score": -2000,
        "seats": 7,
        "trial_ends_at": "2026-03-04T05:06:07+00:00",
    }
    assert (
        world.scalar("SELECT first_name FROM contacts WHERE email_normalized = 'dup@example.com'") == "Newer"
    )
    assert world.scalar("SELECT count(*) FROM contacts WHERE email_normalized = 'same@example.com'") == 1
    assert world.scalar("SELECT count(*) FROM contacts") == 4  # good, coerce, dup, same


def test_rejected_row_is_kept_as_json(world: SyncWorld, rejected: dict) -> None:
    row = world.scalar("SELECT row FROM sync_rejections WHERE row_key = 'ten@example.com'")
    assert row["seats"] == "ten" and row["first_name"] == "Ten"


WHOLE_RUN_ERRORS = {
    "missing required column": (
        "SELECT first_name FROM users",
        {},
        "sync 'broken': required column 'email' missing from the query result (columns: first_name)",
    ),
    "unknown column": (
        "SELECT email, 1 AS shoe_size FROM users",
        {},
        "sync 'broken': column 'shoe_size' is not a field of contacts; known fields: email, updated_at, first_name, "
        "last_name, job_title, phone, city, company_name, plan, seats, score, vip, trial_ends_at, born, prefs",
    ),
    "sql error": ("SELEC email FROM users", {}, "warehouse 'wh' (duckdb): query failed: "),
    "missing table": ("SELECT email FROM nowhere", {}, "warehouse 'wh' (duckdb): query failed: "),
    "max_rows": (
        "SELECT email FROM users",
        {"max_rows": 3},
        "sync 'broken': the query returned more than max_rows=3 rows; nothing was written",
    ),
    "same column twice": (
        "SELECT email, first_name AS EMAIL FROM users",
        {},
        "sync 'broken': the query returns column 'EMAIL' twice ('email')",
    ),
}


@pytest.mark.parametrize("case", WHOLE_RUN_ERRORS.values(), ids=list(WHOLE_RUN_ERRORS))
def test_whole_run_errors_change_nothing(world: SyncWorld, case: tuple) -> None:
    query, settings, message = case
    world.warehouse(USERS)
    world.add_sync("broken", query, **settings)
    with pytest.raises(SyncFailed) as failure:
        world.run("broken")
    assert str(failure.value).startswith(message), str(failure.value)
    assert world.scalar("SELECT count(*) FROM contacts") == 0
    assert world.scalar("SELECT count(*) FROM sync_state") == 0
    status, error = world.sql("SELECT status, error FROM sync_runs")[0]
    assert status == "failed" and error.startswith(message)


def test_connection_failure_names_the_warehouse(world: SyncWorld) -> None:
    world.warehouses["wh"] = "{type: postgres, url: {env: NOWHERE_URL}}"
    world.add_sync("broken", "SELECT email FROM users")
    with pytest.raises(
        SyncFailed, match=r"^warehouse 'wh' \(postgres\): environment variable NOWHERE_URL is not set"
    ):
        world.run("broken")


def test_unknown_object_type_at_run_time(world: SyncWorld) -> None:
    world.add_sync(
        "objs", "SELECT 'x' AS id", destination={"type": "custom_objects", "object_type": "product"}
    )
    project = world.project()
    del project.store_schema.object_types["product"]
    from conversion_sync.store.contact_store import ContactStore
    from conversion_sync.syncs.runner import SyncRunner

    with pytest.raises(
        SyncFailed, match=r"object type 'product' not found; defined in schema\.yaml: subscription"
    ):
        SyncRunner(project.syncs["objs"], project, ContactStore(url=world.store_url))
