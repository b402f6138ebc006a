"""The poll's gaps closed: Salesforce email changes, the Id sweep, Bulk for large deltas, the run history, and
the on-demand poll from the CLI and the Dagster launchpad; over HTTPS against the stand-in, a real store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa
import yaml
from click.testing import CliRunner

from conversion_sync.cli import main
from conversion_sync.defs.salesforce import POLL_ASSET, POLL_JOB
from conversion_sync.defs.salesforce import build_defs as build_salesforce_definitions
from conversion_sync.salesforce.budget import ApiBudget
from conversion_sync.salesforce.client import ENV_VARS, SalesforceSettings
from conversion_sync.salesforce.clock import (
    parse_salesforce_datetime,
    salesforce_value_wins,
    store_value_wins,
    store_value_wins_sql,
)
from conversion_sync.salesforce.id_sweep import SWEEP_GUARD_MIN
from conversion_sync.salesforce.poller import (
    POLL_RUN_NAME,
    PollOptions,
    PollOutcome,
    SalesforceMappingError,
    SalesforcePoller,
    read_cursor,
)
from conversion_sync.store.contact_store import ContactStore
from conversion_sync.store.identity import IdentityMatcher
from conversion_sync.store.sync_state import latest_runs
from conversion_sync_dev.salesforce_standin import Org, StandinServer
from conversion_sync_tests.test_salesforce.test_poller import MAPPINGS, Harness, config, seed_contacts


@pytest.fixture
def harness(store_url: str, standin_org: Org, salesforce_resource: SalesforceSettings) -> Harness:
    return Harness(standin_org, ContactStore(url=store_url), salesforce_resource, config())


def poll(harness: Harness, options: PollOptions | None = None, **overrides: Any) -> PollOutcome:
    poll_config = harness.config.model_copy(update=overrides) if overrides else harness.config
    client = harness.resource.connect(ApiBudget(reserve=poll_config.api_reserve))
    try:
        return SalesforcePoller(
            poll_config, harness.store, IdentityMatcher(), client, now=harness.org.now, options=options
        ).run()
    finally:
        client.close()


def last_modified(org: Org, sobject: str, record_id: str) -> datetime:
    stamp = parse_salesforce_datetime(org.get(sobject, record_id, ["LastModifiedDate"])["LastModifiedDate"])
    assert stamp is not None
    return stamp


def poll_with(harness: Harness, mappings: dict[str, Any]) -> PollOutcome:
    harness.config = config(field_mappings=mappings)
    return poll(harness)


def write(harness: Harness, sql: str, **params: Any) -> None:
    with harness.store.begin() as conn:
        conn.execute(sa.text(sql), params)


def poll_run(harness: Harness) -> Any:
    with harness.store.begin() as conn:
        return latest_runs(conn)[POLL_RUN_NAME]


# -- the clock rule ----------------------------------------------------------------------------


def test_one_clock_rule_in_python_and_sql(harness: Harness) -> None:
    """The push's test (store strictly newer) is the exact negation of the poll's (Salesforce at least as new)."""
    t = datetime(2026, 1, 1, tzinfo=UTC)
    for salesforce_time, stamp in [(t, t), (t, t + timedelta(seconds=1)), (t + timedelta(1), t), (t, None)]:
        assert store_value_wins(stamp, salesforce_time) is not salesforce_value_wins(salesforce_time, stamp)
        stamps = "{}" if stamp is None else f'{{"email": "{stamp.isoformat()}"}}'
        sql = store_value_wins_sql("email", "CAST(:lm AS timestamptz)", stamps=f"CAST('{stamps}' AS jsonb)")
        assert harness.execute(f"SELECT {sql}", lm=salesforce_time) is store_value_wins(
            stamp, salesforce_time
        )
    assert salesforce_value_wins(t, t) and not store_value_wins(t, t)  # a tie goes to Salesforce


# -- email changes -----------------------------------------------------------------------------


def test_email_changed_in_salesforce_updates_the_contact(harness: Harness) -> None:
    org = harness.org
    [person, other] = seed_contacts(org, 2, FirstName="Ada")
    harness.settle()
    poll(harness)
    store_id = harness.contact(person)["id"]
    org.update("Contact", person, {"Email": "Ada.New@Example.com"})
    harness.settle()
    outcome = poll(harness)
    row = harness.contact(person)
    assert row["id"] == store_id and row["email"] == "Ada.New@Example.com"
    assert row["email_normalized"] == "ada.new@example.com" and row["first_name"] == "Ada"
    assert datetime.fromisoformat(row["field_updated_at"]["email"]) == last_modified(org, "Contact", person)
    counts = outcome.objects["Contact"].counts
    assert (counts.email_changed, counts.updated, counts.conflicts) == (1, 1, 0)
    assert counts.unchanged == 1  # the other contact
    assert harness.execute("SELECT count(*) FROM contacts") == 2
    # the run history says so
    run = poll_run(harness)
    assert run.status == "success" and run.run_id == outcome.run_id
    assert run.counts["email_changed"] == 1 and run.counts["read"] == 2 and run.counts["complete"] is True

    harness.settle()
    again = poll(harness).objects["Contact"].counts  # the overlap re-reads it: nothing more changes
    assert (again.email_changed, again.updated, again.unchanged) == (0, 0, 2)
    assert harness.contact(other)["email"] == "p1@example.com"


def test_email_newer_in_the_store_or_do_not_sync_is_kept(harness: Harness) -> None:
    org = harness.org
    [person] = seed_contacts(org, 1)
    harness.settle()
    poll(harness)
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    write(
        harness,
        "UPDATE contacts SET field_updated_at = jsonb_build_object('email', CAST(:f AS text)) "
        "WHERE salesforce_id = :id",
        f=future,
        id=person,
    )
    org.update("Contact", person, {"Email": "older@example.com"})
    harness.settle()
    assert poll(harness).objects["Contact"].counts.email_changed == 0
    assert harness.contact(person)["email"] == "p0@example.com"  # the store's email is newer

    write(harness, "UPDATE contacts SET field_updated_at = '{}'")
    mappings = {
        **MAPPINGS,
        "Contact": {**MAPPINGS["Contact"], "email": {"salesforce": "Email", "preference": "do_not_sync"}},
    }
    harness.settle()
    assert poll_with(harness, mappings).objects["Contact"].counts.email_changed == 0
    assert harness.contact(person)["email"] == "p0@example.com"
    mappings["Contact"]["email"] = {"salesforce": "Email", "preference": "salesforce_wins"}
    assert poll_with(harness, mappings).objects["Contact"].counts.email_changed == 1
    assert harness.contact(person)["email"] == "older@example.com"
    mappings["Contact"]["email"] = "Description"
    with pytest.raises(SalesforceMappingError, match="maps only to Salesforce's Email"):
        poll_with(harness, mappings)


def test_email_changed_to_one_an_unlinked_contact_holds_is_held(harness: Harness) -> None:
    org = harness.org
    [person, neighbour] = seed_contacts(org, 2, FirstName="Linked")
    harness.settle()
    poll(harness)
    write(
        harness,
        "INSERT INTO contacts (email, email_normalized, first_name, custom_fields) "
        "VALUES ('taken@example.com', 'taken@example.com', 'Unlinked', '{\"plan\": \"pro\"}')",
    )
    holder = harness.execute("SELECT id FROM contacts WHERE salesforce_id IS NULL")
    before = harness.rows("SELECT * FROM contacts ORDER BY id")
    org.update("Contact", person, {"Email": "TAKEN@example.com", "FirstName": "Renamed"})
    harness.settle()
    outcome = poll(harness)
    counts = outcome.objects["Contact"].counts
    assert (counts.email_changed, counts.conflicts, counts.updated) == (0, 1, 1)
    row = harness.contact(person)
    assert row["email"] == "p0@example.com" and row["first_name"] == "Renamed"  # link and other fields go on
    [kept] = harness.rows("SELECT * FROM contacts WHERE id = :i", i=holder)
    assert kept == next(r for r in before if r["id"] == holder)  # the unlinked contact is untouched
    assert harness.execute("SELECT count(*) FROM contacts") == 3
    [conflict] = outcome.conflicts
    assert conflict["kind"] == "email_in_use" and conflict["other_contact_id"] == holder
    assert conflict["kept_contact_id"] == row["id"] and f"store contact {holder}" in conflict["reason"]
    assert poll_run(harness).counts["conflicts"] == 1

    # an email another Salesforce record's contact holds may be shared: each has its own record
    org.update("Contact", neighbour, {"Email": "Taken@Example.com"})
    org.update("Contact", person, {"Email": "p1@example.com"})
    harness.settle()
    outcome = poll(harness)
    assert outcome.objects["Contact"].counts.email_changed == 1  # person -> p1@ (neighbour's change is held)
    assert harness.contact(person)["email"] == "p1@example.com"
    assert harness.contact(neighbour)["email"] == "p1@example.com"
    assert outcome.objects["Contact"].counts.conflicts == 1


# -- the Id sweep ------------------------------------------------------------------------------


def test_sweep_unlinks_records_purged_beyond_the_recycle_bin(harness: Harness) -> None:
    org = harness.org
    people = seed_contacts(org, 4)
    [lead] = org.seed("Lead", [{"LastName": "L", "Company": "C", "Email": "lead@example.com"}])
    [account] = org.seed("Account", [{"Name": "Gone Inc"}])
    harness.settle()
    org.reset_stats()
    first = poll(harness)
    assert first.sweeps == {} and "bulk2_query_create" not in org.stats()["requests"]  # first sweep scheduled
    purged, binned = people[0], people[1]
    for sobject, record_id in [
        ("Contact", purged),
        ("Contact", binned),
        ("Lead", lead),
        ("Account", account),
    ]:
        org.delete(sobject, record_id)
    org.empty_recycle_bin([purged, lead, account])  # gone before any poll saw them deleted
    harness.settle()
    second = poll(harness)
    assert second.objects["Contact"].counts.unlinked == 1  # the one still in the recycle bin
    assert harness.contact(purged)["email"] == "p0@example.com"  # the gap: the purged one stays linked

    org.reset_stats()
    harness.settle()
    swept = poll(harness, PollOptions(sweep=True))
    assert org.stats()["requests"]["bulk2_query_create"] == 3  # one cheap Id query per object
    assert {s: (r.salesforce_ids, r.unlinked) for s, r in swept.sweeps.items()} == {
        "Account": (0, 1),
        "Lead": (0, 1),
        "Contact": (3, 1),  # 3 Ids: two live and the one in the recycle bin
    }
    assert harness.rows(
        "SELECT email, salesforce_id FROM contacts WHERE email IN ('p0@example.com', 'lead@example.com') ORDER BY email"
    ) == [
        {"email": "lead@example.com", "salesforce_id": None},
        {"email": "p0@example.com", "salesforce_id": None},
    ]
    assert harness.execute("SELECT count(*) FROM contacts") == 5  # nothing deleted
    assert harness.execute("SELECT count(*) FROM companies WHERE salesforce_account_id IS NULL") == 1
    assert [harness.contact(p)["email"] for p in people[2:]] == ["p2@example.com", "p3@example.com"]
    run = poll_run(harness)
    assert (run.counts["sweep_unlinked"], run.counts["swept"]) == (3, 5)

    # scheduled: the next sweep is due a day (id_sweep_every) after this one; off with 0
    harness.settle()
    org.reset_stats()
    assert poll(harness).sweeps == {}
    org.advance_clock(24 * 3600)
    assert poll(harness, id_sweep_every=timedelta(0)).sweeps == {}
    assert set(poll(harness).sweeps) == {"Account", "Lead", "Contact"}
    assert set(poll(harness, PollOptions(objects=("Lead",), sweep=True)).sweeps) == {"Lead"}


def test_sweep_that_would_unlink_most_links_unlinks_nothing(harness: Harness) -> None:
    org = harness.org
    n = SWEEP_GUARD_MIN * 2
    people = seed_contacts(org, n)
    harness.settle()
    poll(harness)
    gone = people[: SWEEP_GUARD_MIN + 10]
    for record_id in gone:
        org.delete("Contact", record_id)
    org.empty_recycle_bin(gone)
    harness.settle()
    outcome = poll(harness, PollOptions(objects=("Contact",), sweep=True))
    result = outcome.sweeps["Contact"]
    assert result.unlinked == 0 and result.refused and "lost visibility" in result.refused
    assert harness.execute("SELECT count(*) FROM contacts WHERE salesforce_id IS NOT NULL") == n
    assert poll_run(harness).counts["sweep_refused"] == 1


# -- Bulk for any large delta ------------------------------------------------------------------


def test_large_delta_after_the_first_load_goes_through_bulk(harness: Harness) -> None:
    org = harness.org
    seed_contacts(org, 50)
    harness.settle()
    assert poll(harness, bulk_threshold=100).objects["Contact"].mode == "rest"
    org.advance_clock(11 * 60)
    poll(harness, bulk_threshold=100)  # the cursor moves past the first records' overlap
    seed_contacts(org, 150, prefix="late")
    harness.settle()
    org.reset_stats()
    outcome = poll(harness, bulk_threshold=100)
    requests = org.stats()["requests"]
    contact = outcome.objects["Contact"]
    assert contact.mode == "bulk" and contact.counts.created == 150 and contact.complete
    assert requests["bulk2_query_create"] == 1 and requests["bulk2_query_results"] == 1
    assert requests["queryAll"] == 3 and "query_more" not in requests  # one page per object decides
    with harness.store.begin() as conn:
        assert read_cursor(conn, "Contact") == outcome.upper_bound
    assert harness.execute("SELECT count(*) FROM contacts") == 200

    full = poll(harness, PollOptions(objects=("Contact",), full=True), bulk_threshold=100)
    assert full.objects["Contact"].mode == "bulk" and full.objects["Contact"].counts.unchanged == 200
    assert full.objects["Lead"].mode == "skipped" and full.objects["Lead"].counts.read == 0
    assert poll_run(harness).full_sync is True


def test_a_failed_poll_is_recorded_as_failed(harness: Harness) -> None:
    seed_contacts(harness.org, 3)
    harness.settle()
    harness.org.add_fault("unavailable_503", after=1, count=50)
    with pytest.raises(Exception, match="503"):
        poll(harness)
    run = poll_run(harness)
    assert run.status == "failed" and "503" in run.error and run.finished_at is not None


# -- on demand: the CLI and the Dagster launchpad ----------------------------------------------


@pytest.fixture
def standin_env(standin: StandinServer, standin_org: Org, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ENV_VARS.values():
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SALESFORCE_LOGIN_URL", standin.url)
    monkeypatch.setenv("SALESFORCE_USERNAME", standin.username)
    monkeypatch.setenv("SALESFORCE_PASSWORD", standin.password)
    monkeypatch.setenv("SALESFORCE_SECURITY_TOKEN", standin.security_token)
    monkeypatch.setenv("SALESFORCE_CA_BUNDLE", str(standin.ca_path))


def test_cli_poll_prints_counts(
    store_url: str, standin_org: Org, standin_env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "salesforce.yaml").write_text(
        yaml.safe_dump({"poll_upper_bound_lag": "0 seconds", "api_reserve": 0, "field_mappings": MAPPINGS})
    )
    seed_contacts(standin_org, 3)
    standin_org.seed("Lead", [{"LastName": "L", "Company": "C", "Email": "lead@example.com"}])
    runner = CliRunner()
    args = ["--config", str(tmp_path), "salesforce", "poll"]
    result = runner.invoke(main, [*args, "--object", "Contact", "--sweep"])
    assert result.exit_code == 0, result.output
    lines = {
        line.split()[0]: line.split()[-1] for line in result.output.splitlines() if line.startswith("  ")
    }
    assert (lines["read"], lines["created"], lines["email_changed"], lines["swept"]) == ("3", "3", "0", "3")
    assert "Contact: read 3 via rest" in result.output and "Lead:" not in result.output
    with ContactStore(url=store_url).begin() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM contacts")).scalar() == 3
        assert latest_runs(conn)[POLL_RUN_NAME].counts["created"] == 3

    everything = runner.invoke(main, [*args, "--full"])
    assert everything.exit_code == 0, everything.output
    assert "Lead: read 1 via rest" in everything.output and "(full re-read)" in everything.output

    wrong = runner.invoke(main, [*args, "--object", "Opportunity"])
    assert wrong.exit_code == 2 and "Opportunity" in wrong.output
    monkeypatch.delenv("SALESFORCE_PASSWORD")
    unconfigured = runner.invoke(main, args)
    assert unconfigured.exit_code == 1 and "SALESFORCE_PASSWORD" in unconfigured.output


def test_dagster_poll_job_takes_the_cli_choices_as_run_config(
    store_url: str, standin_org: Org, salesforce_resource: SalesforceSettings
) -> None:
    seed_contacts(standin_org, 4)
    standin_org.seed("Lead", [{"LastName": "L", "Company": "C", "Email": "lead@example.com"}])
    defs = build_salesforce_definitions(config(poll_upper_bound_lag=timedelta(0)), salesforce_resource)
    job = dg.Definitions(
        assets=defs.assets,
        jobs=defs.jobs,
        resources={
            "contact_store": ContactStore(),
            "identity": IdentityMatcher(),
            "salesforce": salesforce_resource,
        },
    ).resolve_job_def(POLL_JOB)
    choices = {"objects": ["Contact"], "full": True, "sweep": True}
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(
            run_config={"ops": {POLL_ASSET: {"config": choices}}}, instance=instance
        )
        assert result.success
        [materialization] = result.asset_materializations_for_node(POLL_ASSET)
        metadata = {k: v.value for k, v in materialization.metadata.items()}
        assert (metadata["read_Contact"], metadata["read_Lead"], metadata["mode_Lead"]) == (4, 0, "skipped")
        assert metadata["full_reread"] is True and metadata["swept_objects"] == "Contact"
        assert metadata["sweep_checked"] == 4 and metadata["sweep_unlinked"] == 0
        with ContactStore().begin() as conn:
            run = latest_runs(conn)[POLL_RUN_NAME]
        assert run.run_id == result.run_id and run.status == "success" and run.full_sync

        default = job.execute_in_process(instance=instance)  # the schedule's run: every object
        [materialization] = default.asset_materializations_for_node(POLL_ASSET)
        assert materialization.metadata["read_Lead"].value == 1

        bad = job.execute_in_process(
            run_config={"ops": {POLL_ASSET: {"config": {"objects": ["Opportunity"]}}}},
            instance=instance,
            raise_on_error=False,
        )
        assert not bad.success
        error = str(bad.get_step_failure_events()[0].event_specific_data.error)
        assert "Opportunity" in error and "Account, Lead, Contact" in error
