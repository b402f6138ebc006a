"""Identity matching: each rule, set-based, and no duplicates under a two-process race."""

from __future__ import annotations

import multiprocessing
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from conversion_sync.store.connection import store_engine
from conversion_sync.store.identity import IdentityMatcher


def insert_contact(
    conn: sa.Connection, email: str | None, salesforce_id: str | None = None, updated: str = "2026-01-01"
) -> int:
    return conn.exec_driver_sql(
        "INSERT INTO contacts (email, email_normalized, salesforce_id, salesforce_type, updated_at) "
        "VALUES (%(email)s, lower(%(email)s::text), %(sf)s::text, CASE WHEN %(sf)s::text IS NULL THEN NULL ELSE 'Contact' END, %(updated)s) "
        "RETURNING id",
        {"email": email, "sf": salesforce_id, "updated": datetime.fromisoformat(updated).replace(tzinfo=UTC)},
    ).scalar_one()


def contacts(conn: sa.Connection) -> list[tuple]:
    return conn.exec_driver_sql("SELECT id, email_normalized, salesforce_id FROM contacts ORDER BY id").all()


@pytest.fixture
def engine(store_url: str) -> sa.Engine:
    return store_engine(store_url)


def test_rule_1_salesforce_id_wins_over_email(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        linked = insert_contact(conn, "old@x.com", "003A")
        insert_contact(conn, "new@x.com", updated="2026-06-01")
        ids, counts = IdentityMatcher().resolve(conn, [("new@x.com", "003A", "Contact")])
    assert ids == [linked]
    assert counts.matched_by_salesforce_id == 1 and counts.created == 0


def test_rule_2_links_the_most_recently_updated_unlinked_contact(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        insert_contact(conn, "ann@x.com", updated="2026-01-01")
        newest = insert_contact(conn, "Ann@X.com", updated="2026-05-01")
        ids, counts = IdentityMatcher().resolve(conn, [(" ANN@x.com ", "003B", "Lead")])
        assert ids == [newest]
        assert counts.linked_by_email == 1
        row = conn.exec_driver_sql(
            "SELECT salesforce_id, salesforce_type FROM contacts WHERE id = %s", (newest,)
        ).one()
    assert tuple(row) == ("003B", "Lead")


def test_rule_2_email_of_a_contact_linked_to_another_salesforce_id_gives_a_new_contact(
    engine: sa.Engine,
) -> None:
    with engine.begin() as conn:
        other = insert_contact(conn, "bob@x.com", "003OTHER")
        ids, counts = IdentityMatcher().resolve(conn, [("bob@x.com", "003NEW", "Contact")])
        assert ids[0] != other
        assert counts.created == 1
        assert [(e, s) for _, e, s in contacts(conn)] == [("bob@x.com", "003OTHER"), ("bob@x.com", "003NEW")]


def test_two_salesforce_records_with_one_email_give_two_contacts(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        unlinked = insert_contact(conn, "dup@x.com")
        ids, counts = IdentityMatcher().resolve(
            conn, [("dup@x.com", "003AAA", "Contact"), ("dup@x.com", "003BBB", "Contact")]
        )
        assert ids[0] == unlinked and ids[1] != unlinked
        assert (counts.linked_by_email, counts.created) == (1, 1)
        assert len(contacts(conn)) == 2


def test_plain_email_matches_the_most_recent_contact_linked_or_not(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        insert_contact(conn, "cy@x.com", updated="2026-01-01")
        linked = insert_contact(conn, "cy@x.com", "003C", updated="2026-03-01")
        ids, counts = IdentityMatcher().resolve(conn, [("CY@x.com", None, None), ("cy@x.com", None, None)])
    assert ids == [linked, linked]
    assert counts.matched_by_email == 1


def test_rule_3_creates_one_contact_per_new_identity(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        ids, counts = IdentityMatcher().resolve(
            conn,
            [
                ("new@x.com", None, None),
                ("NEW@x.com", None, None),
                ("sf@x.com", "003S", "Lead"),
                ("sf@x.com", None, None),
            ],
        )
        assert ids[0] == ids[1]
        assert ids[2] == ids[3], (
            "a plain email resolves to the contact just created for the Salesforce record"
        )
        assert counts.created == 2
        assert len(contacts(conn)) == 2


def test_blank_emails_are_not_identities(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        ids, counts = IdentityMatcher().resolve(
            conn, [("", None, None), (None, None, None), ("  ", None, None)]
        )
    assert ids == [None, None, None]
    assert counts.created == 0


def test_create_false_never_creates(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        known = insert_contact(conn, "known@x.com")
        ids, counts = IdentityMatcher().resolve(
            conn, [("known@x.com", None, None), ("unknown@x.com", None, None)], create=False
        )
        assert ids == [known, None]
        assert counts.unresolved == 1
        assert len(contacts(conn)) == 1


@pytest.mark.timeout(60)
def test_resolution_is_set_based(engine: sa.Engine) -> None:
    """10,000 identities resolve with a fixed number of statements (no per-row queries), none of them quadratic:
    the caller's table is not analysed, and a nested loop scanning the keys once per row took over 100 s here
    (the timeout guards against that plan, not a speed)."""
    statements: list[str] = []
    sa.event.listen(engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    with engine.begin() as conn:
        ids, counts = IdentityMatcher().resolve(conn, [(f"user{i}@x.com", None, None) for i in range(10_000)])
    assert counts.created == 10_000 and len(set(ids)) == 10_000
    assert len(statements) < 25


def _resolve_in_process(
    url: str, emails: list[str], start: multiprocessing.synchronize.Event, out: multiprocessing.Queue
) -> None:
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.connect() as conn:
        conn.exec_driver_sql("SELECT 1")
        conn.commit()
        start.wait()
        with conn.begin():
            ids, counts = IdentityMatcher().resolve(conn, [(e, None, None) for e in emails])
    out.put((ids, counts.created))


def test_two_processes_racing_on_the_same_new_emails_create_each_contact_once(store_url: str) -> None:
    emails = [f"race{i}@example.com" for i in range(1000)]
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    workers = [
        ctx.Process(target=_resolve_in_process, args=(store_url, emails, start, out)) for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    start.set()
    results = [out.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
        assert worker.exitcode == 0
    with store_engine(store_url).connect() as conn:
        assert conn.exec_driver_sql(
            "SELECT count(*), count(DISTINCT email_normalized) FROM contacts"
        ).one() == (1000, 1000)
    (ids_a, created_a), (ids_b, created_b) = results
    assert ids_a == ids_b
    assert created_a + created_b == 1000


@pytest.mark.parametrize("create", [True, False])
def test_a_table_of_distinct_emails_is_matched_as_it_is_created(engine: sa.Engine, create: bool) -> None:
    """create_email_table (the writers' path for events and objects): rule 2 picks the most recently updated
    contact with the email, linked or not; rule 3 creates the rest only when asked."""
    with engine.begin() as conn:
        insert_contact(conn, "shared@x.com", "003A", updated="2026-01-01")
        recent = insert_contact(conn, "shared@x.com", "003B", updated="2026-06-01")
        single = insert_contact(conn, "single@x.com")
        counts = IdentityMatcher().create_email_table(
            conn,
            "_emails",
            "SELECT * FROM (VALUES ('Shared@x.com', 'shared@x.com'), ('single@x.com', 'single@x.com'), "
            "('new@x.com', 'new@x.com')) v(email, email_norm)",
            create=create,
        )
        rows = dict(conn.exec_driver_sql("SELECT email_norm, contact_id FROM _emails").all())
        created = (
            conn.exec_driver_sql("SELECT id FROM contacts WHERE email_normalized = 'new@x.com'")
            .scalars()
            .all()
        )
    assert rows["shared@x.com"] == recent and rows["single@x.com"] == single
    assert (counts.matched_by_email, counts.created, counts.unresolved) == (2, int(create), int(not create))
    assert rows["new@x.com"] == (created[0] if create else None) and len(created) == int(create)
