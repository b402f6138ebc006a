"""The query template renders timestamps every warehouse compares correctly and rejects unknown names."""

from datetime import UTC, datetime, timedelta, timezone

import pytest

from conversion_sync.syncs.template import EPOCH, is_incremental, render_query, unknown_template_names


def test_renders_utc_literal_and_unix_seconds() -> None:
    moment = datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=UTC)
    query = "SELECT * FROM t WHERE a > '{{last_sync_time}}' OR b > {{ last_sync_time_unix }}"
    assert render_query(query, moment) == (
        f"SELECT * FROM t WHERE a > '2026-03-04 05:06:07.890123' OR b > {int(moment.timestamp())}"
    )


def test_first_run_is_the_epoch() -> None:
    assert (
        render_query("'{{last_sync_time}}' {{last_sync_time_unix}}", EPOCH)
        == "'1970-01-01 00:00:00.000000' 0"
    )


def test_other_time_zones_are_converted_to_utc() -> None:
    moment = datetime(2026, 1, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    assert render_query("{{last_sync_time}}", moment) == "2026-01-01 10:00:00.000000"


def test_unknown_names_are_found_and_refused() -> None:
    assert unknown_template_names("{{last_sync_time}} {{ table }}") == ["table"]
    with pytest.raises(ValueError, match="unknown template name"):
        render_query("{{table}}", EPOCH)


def test_full_sync_has_no_watermark() -> None:
    assert not is_incremental("SELECT * FROM users")
    assert is_incremental("SELECT * FROM users WHERE u > {{last_sync_time_unix}}")
