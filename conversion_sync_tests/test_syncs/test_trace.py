"""`conversion-sync trace`: every run that wrote, declined, rejected or removed a key, from which sync, with values."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from conversion_sync.cli import main
from conversion_sync.store.connection import store_engine
from conversion_sync.store.trace import key_history

from .conftest import SyncWorld


def _trace(world: SyncWorld, key: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["--config", str(world.dir), "trace", key])
    return result.exit_code, result.output


@pytest.fixture
def two_syncs(world: SyncWorld, monkeypatch: pytest.MonkeyPatch) -> SyncWorld:
    monkeypatch.setenv("CONVERSION_STORE_URL", world.store_url)
    world.warehouse(
        """CREATE TABLE users (email VARCHAR, first_name VARCHAR, seats VARCHAR, updated_at TIMESTAMP);
        INSERT INTO users VALUES ('Ann@Example.com', 'Ann', '2', TIMESTAMP '2024-01-01 10:00:00'),
                                 ('bob@example.com', 'Bob', '3', TIMESTAMP '2024-01-01 10:00:00');
        CREATE TABLE crm (email VARCHAR, first_name VARCHAR, updated_at TIMESTAMP);
        INSERT INTO crm VALUES ('ann@example.com', 'Annette', TIMESTAMP '2024-03-01 00:00:00');
        CREATE TABLE products (id VARCHAR, email VARCHAR, name VARCHAR, price VARCHAR);
        INSERT INTO products VALUES ('p-1', 'ann@example.com', 'Widget', '9.5')"""
    )
    world.add_sync("users", "SELECT * FROM users", delete_behavior="clear_fields", max_removed="100%")
    world.add_sync("crm", "SELECT * FROM crm")
    world.add_sync(
        "products", "SELECT * FROM products", destination={"type": "custom_objects", "object_type": "product"}
    )
    return world


def test_trace_shows_writes_rejections_and_removals_across_two_syncs(two_syncs: SyncWorld) -> None:
    world = two_syncs
    added = world.run("users")
    assert added.counts["added"] == 2
    # crm brings a newer first name: a change, from another sync
    assert world.run("crm").counts["changed"] == 1
    # users sends ann again with a bad seats value: rejected, nothing written
    world.warehouse(
        "UPDATE users SET seats = 'many', updated_at = TIMESTAMP '2024-02-01 00:00:00' WHERE first_name = 'Ann'"
    )
    rejected = world.run("users")
    assert rejected.counts["rejected"] == 1
    # then ann is sent with an older name than crm's: declined by the merge rule (seats still lands)
    world.warehouse("UPDATE users SET seats = '5' WHERE first_name = 'Ann'")
    declined = world.run("users")
    assert declined.counts["changed"] == 1
    # bob leaves the users table: removed (clear_fields)
    world.warehouse("DELETE FROM users WHERE first_name = 'Bob'")
    removed = world.run("users")
    assert removed.counts["removed"] == 1
    # a custom object related to ann, traced by its id and by her e-mail
    assert world.run("products").counts["added"] == 1

    with store_engine(world.store_url).connect() as conn:
        history = key_history(conn, "  ANN@example.com ")
        bob = key_history(conn, "bob@example.com")
    assert [(e.sync_name, e.run_id, e.action) for e in history] == [
        ("users", added.run_id, "added"),
        ("crm", history[1].run_id, "changed"),
        ("users", rejected.run_id, "rejected"),
        ("users", declined.run_id, "changed"),
        # a row with a declined value keeps no fingerprint, so the next run sends it again: declined again
        ("users", removed.run_id, "declined"),
        ("products", history[5].run_id, "added"),
    ]
    assert history[0].values == {"first_name": "Ann", "seats": 2}
    assert history[1].values == {"first_name": "Annette"}
    assert (
        history[2].code == "invalid_field_value" and history[2].message == "seats: 'many' is not an integer"
    )
    assert history[2].values is not None and history[2].values["seats"] == "many"
    assert history[3].values == {
        "first_name": "Ann",
        "seats": 5,
    }  # what the run brought (the name was declined)
    assert history[5].key == "p-1 / ann@example.com"
    assert history[5].values == {"name": "Widget", "price": 9.5}
    assert [(e.run_id, e.action, e.values) for e in bob] == [
        (added.run_id, "added", {"first_name": "Bob", "seats": 3}),
        (removed.run_id, "removed", {"delete_behavior": "clear_fields"}),
    ]

    code, out = _trace(world, "ann@example.com")
    assert code == 0, out
    lines = out.splitlines()
    assert f"users  run {added.run_id}  added     ann@example.com" in lines[0]
    assert lines[1] == '    {"first_name": "Ann", "seats": 2}'
    assert any(f"users  run {rejected.run_id}  rejected  Ann@Example.com" in line for line in lines)
    assert "    [invalid_field_value] seats: 'many' is not an integer" in lines

    code, out = _trace(world, "p-1")
    assert code == 0 and "products" in out and "Widget" in out and "users" not in out
    code, out = _trace(world, "bob@example.com")
    assert (
        code == 0 and "  added  " in out and f"run {removed.run_id}  removed" in out and "changed" not in out
    )


def test_a_declined_write_is_traced_as_declined(two_syncs: SyncWorld) -> None:
    world = two_syncs
    world.run("crm")
    world.run("users")  # ann's name from users (January) is older than crm's (March)
    world.warehouse("UPDATE users SET first_name = 'Anne', updated_at = TIMESTAMP '2024-01-02 00:00:00'")
    world.run("users")
    with store_engine(world.store_url).connect() as conn:
        actions = [(e.sync_name, e.action) for e in key_history(conn, "ann@example.com")]
    assert actions == [("crm", "added"), ("users", "changed"), ("users", "declined")]


def test_unknown_key_and_a_trace_turned_off(two_syncs: SyncWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    world = two_syncs
    code, out = _trace(world, "nobody@example.com")
    assert code == 1 and "no run wrote, rejected or removed 'nobody@example.com' in the last 90 days" in out
    monkeypatch.setenv("CONVERSION_TRACE_RETENTION_DAYS", "0")
    world.run("users")
    assert world.scalar("SELECT count(*) FROM sync_key_trace") == 0


def test_history_past_the_retention_is_pruned_by_the_next_run(two_syncs: SyncWorld) -> None:
    world = two_syncs
    world.run("users")
    world.sql("UPDATE sync_key_trace SET recorded_at = now() - interval '91 days' RETURNING 1")
    world.run("crm")  # another sync's run prunes only its own history
    assert world.scalar("SELECT count(*) FROM sync_key_trace WHERE sync_name = 'users'") == 2
    world.warehouse("UPDATE users SET seats = '9'")
    world.run("users")
    assert world.sql(
        "SELECT action, email_norm FROM sync_key_trace WHERE sync_name = 'users' ORDER BY 2"
    ) == [
        ("changed", "ann@example.com"),
        ("changed", "bob@example.com"),
    ]


def test_a_first_load_traced_aside_counts_only_once_its_run_succeeded(
    two_syncs: SyncWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A first load of new keys is traced on a second connection while the merge runs: the same history as
    inline, for contacts and objects; a run that fails after its trace was written shows nothing of it."""
    from conversion_sync.syncs import runner as runner_module
    from conversion_sync.syncs import writers

    world = two_syncs
    monkeypatch.setattr(writers, "CONCURRENT_BUILD_ROWS", 1)
    started: list[str] = []
    real_aside = writers.trace.trace_aside

    def spy(engine: object, ctx: writers.WriteContext, after: object = None) -> object:
        started.append(ctx.sync.name)
        assert after is not None, "the trace waits for the fingerprint partition"
        return real_aside(engine, ctx, after)  # type: ignore[arg-type]

    monkeypatch.setattr(writers.trace, "trace_aside", spy)

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the store went away after the merge")

    with monkeypatch.context() as failing:
        failing.setattr(runner_module, "remember_fingerprints", broken)
        with pytest.raises(RuntimeError):
            world.run("users")
    assert started == ["users"]
    assert world.scalar("SELECT count(*) FROM sync_key_trace") == 2  # written aside, its run never succeeded
    with store_engine(world.store_url).connect() as conn:
        assert key_history(conn, "ann@example.com") == []

    added = world.run("users")
    world.run("products")
    assert started == ["users", "users", "products"]
    with store_engine(world.store_url).connect() as conn:
        ann = key_history(conn, "ann@example.com")
    assert [(e.sync_name, e.run_id, e.action, e.values) for e in ann] == [
        ("users", added.run_id, "added", {"first_name": "Ann", "seats": 2}),
        ("products", ann[1].run_id, "added", {"name": "Widget", "price": 9.5}),
    ]
    assert ann[1].key == "p-1 / ann@example.com"


def test_events_are_traced_by_message_id_and_e_mail_from_the_event_rows(
    world: SyncWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An event's history is its row (it names its run): by message id, by its contact's e-mail, once only
    (a second sync sending the same id adds nothing), nothing copied into the trace table."""
    monkeypatch.setenv("CONVERSION_STORE_URL", world.store_url)
    world.warehouse(
        """CREATE TABLE clicks (message_id VARCHAR, email VARCHAR, event_name VARCHAR, timestamp TIMESTAMP,
                                amount VARCHAR);
        INSERT INTO clicks VALUES ('m-1', ' Ann@Example.com', 'order', TIMESTAMP '2024-01-01 10:00:00', '9.5'),
                                  ('m-2', 'ann@example.com', 'refund', TIMESTAMP '2024-01-02 10:00:00', 'x'),
                                  ('m-3', 'bob@example.com', 'order', TIMESTAMP '2024-01-03 10:00:00', '1')"""
    )
    events = {"destination": {"type": "events"}}
    world.add_sync("clicks", "SELECT * FROM clicks", **events)
    world.add_sync("clicks_again", "SELECT * FROM clicks", **events)
    first = world.run("clicks")
    assert first.counts["added"] == 3
    assert world.run("clicks_again").counts["added"] == 0
    assert world.scalar("SELECT count(*) FROM sync_key_trace") == 0
    with store_engine(world.store_url).connect() as conn:
        by_id = key_history(conn, " m-1 ")
        by_email = key_history(conn, "ANN@example.com")
    assert [(e.sync_name, e.run_id, e.action, e.key) for e in by_id] == [
        ("clicks", first.run_id, "added", "m-1 / ann@example.com")
    ]
    assert by_id[0].values is not None and by_id[0].values["event_name"] == "order"
    assert by_id[0].values["properties"] == {"amount": "9.5"}
    assert sorted(e.key for e in by_email) == ["m-1 / ann@example.com", "m-2 / ann@example.com"]
    code, out = _trace(world, "m-3")
    assert code == 0 and f"clicks  run {first.run_id}  added" in out and "clicks_again" not in out


@pytest.mark.slow
def test_trace_cost_at_100k_rows(world: SyncWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    """The trace's share of a write at 100k contacts (first load, then every row changed), trace on vs off.
    Prints the numbers (measured on a shared 2-core machine: about +47%, half of it the e-mail index); asserts
    that the trace recorded every row and at most doubles the write."""
    import time
    import uuid

    world.warehouse(
        """CREATE TABLE users AS SELECT 'user' || i || '@example.com' AS email, 'First' || i AS first_name,
                  'Last' || i AS last_name, (i % 50)::VARCHAR AS seats, 'plan' || (i % 7) AS plan
           FROM range(100000) t(i)"""
    )
    results: dict[str, list[float]] = {}
    for label, days in (("off", "0"), ("on", "90"), ("off", "0"), ("on", "90")):
        monkeypatch.setenv("CONVERSION_TRACE_RETENTION_DAYS", days)
        name = f"users_{label}_{len(results.get(label, []))}"
        # each sync its own contacts, so every run adds or changes all 100k
        world.add_sync(
            name, f"SELECT '{name}.' || email AS email, first_name, last_name, seats, plan FROM users"
        )
        times = []
        for change in ("", "changed "):
            if change:
                world.warehouse("UPDATE users SET first_name = 'x' || first_name")
            runner = world.runner(name)
            table = runner.query(f"bench-{uuid.uuid4()}")
            runner.validate(table)
            started = time.monotonic()
            runner.write(table)
            times.append(time.monotonic() - started)
        results.setdefault(label, []).append(sum(times))
    traced = world.scalar("SELECT count(*) FROM sync_key_trace WHERE sync_name LIKE 'users_on_%%'")
    assert traced == 4 * 100_000
    off, on = min(results["off"]), min(results["on"])
    print(
        f"\nwrite of 100k added + 100k changed: trace off {off:.2f}s, on {on:.2f}s: +{(on - off) / off:.1%}"
    )
    assert on < off * 2


def test_values_are_named_by_their_runs_fields_and_older_objects_still_read(world: SyncWorld) -> None:
    """A run's rows hold their values as an array named by sync_runs.trace_fields (relationshipFields left out
    when the row had none); rows traced as objects before that (and removals) read as they are."""
    with store_engine(world.store_url).begin() as conn:
        conn.exec_driver_sql(
            """INSERT INTO sync_runs (run_id, sync_name, status, trace_fields) VALUES
                ('old', 'products', 'success', NULL),
                ('new', 'products', 'success', ARRAY['name', 'price', 'relationshipFields'])"""
        )
        conn.exec_driver_sql(
            """INSERT INTO sync_key_trace (run_id, sync_name, action, email_norm, object_id, fields, recorded_at) VALUES
                ('old', 'products', 'added', 'ann@example.com', 'p-1', '{"name": "Widget"}', now() - interval '2 s'),
                ('new', 'products', 'changed', 'ann@example.com', 'p-1', '["Gadget", 9.5, {"role": "owner"}]',
                 now() - interval '1 s'),
                ('new', 'products', 'added', 'bob@example.com', 'p-2', '["Gizmo", null, null]', now())"""
        )
        ann = key_history(conn, "p-1")
        bob = key_history(conn, "bob@example.com")
    assert [e.values for e in ann] == [
        {"name": "Widget"},
        {"name": "Gadget", "price": 9.5, "relationshipFields": {"role": "owner"}},
    ]
    assert [e.values for e in bob] == [{"name": "Gizmo", "price": None}]
