"""The push's remaining promises: conversion_wins reverts Salesforce-only edits (marked by the poll, no echo), a
Contact created under the Account its company name matches, and Salesforce's own stamp kept after each write."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta

import dagster as dg
import pytest
from dagster._core.remote_origin import InProcessCodeLocationOrigin, RemoteJobOrigin, RemoteRepositoryOrigin
from dagster._core.storage.dagster_run import DagsterRun
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

from conversion_sync.config.salesforce import SalesforceConfig
from conversion_sync.defs.salesforce import POLL_JOB, PUSH_JOB, PUSH_SCHEDULE, PUSH_SENSOR
from conversion_sync.defs.salesforce import build_defs as build_salesforce_definitions
from conversion_sync.salesforce.budget import ApiBudget
from conversion_sync.salesforce.clock import parse_salesforce_datetime
from conversion_sync.salesforce.push import PushInProgress, SalesforcePusher, state
from conversion_sync.store.identity import IdentityMatcher
from conversion_sync_dev.salesforce_standin import Org
from conversion_sync_tests.test_salesforce.test_push import Harness, config, harness, writes

__all__ = ["harness"]  # the fixture, shared with test_push


def push_state(harness: Harness, email: str) -> dict[str, object]:
    [row] = harness.rows(
        "SELECT s.synced, s.updated_at, s.salesforce_modified FROM salesforce_push_state s "
        "JOIN contacts c ON c.id = s.contact_id WHERE c.email = :email",
        email=email,
    )
    return row


def lead(org: Org, email: str) -> dict[str, object]:
    [record] = org.query(f"SELECT Id, Title, Phone, LastModifiedDate FROM Lead WHERE Email = '{email}'")
    return record


# -- conversion_wins: the store wins both ways -------------------------------------------------------------


def test_conversion_wins_reverts_salesforce_only_edits_and_clears_and_then_marks_nothing(
    harness: Harness,
) -> None:
    """Title and Phone with conversion_wins: Salesforce changes one Lead's Title and clears its Phone; the poll
    leaves the store alone but marks the contact (in the same UPDATE), the push writes the store's values back,
    and the following poll and push change and mark nothing. A Lead whose store field is empty fills it."""
    org = harness.org
    harness.config = config(
        field_mappings={
            "Lead": {
                "last_name": "LastName",
                "job_title": {"salesforce": "Title", "preference": "conversion_wins"},
                "phone": {"salesforce": "Phone", "preference": "conversion_wins"},
            },
            "Contact": {},
            "Account": {},
        }
    )
    edited, empty = org.seed(
        "Lead",
        [
            {
                "LastName": "E",
                "Company": "Acme",
                "Email": "edited@example.com",
                "Title": "CEO",
                "Phone": "+1 555 1",
            },
            {"LastName": "F", "Company": "Acme", "Email": "empty@example.com"},
        ],
    )
    harness.settle()
    harness.poll()
    harness.push()  # baseline: both sides agree, the push state says so
    assert push_state(harness, "edited@example.com")["synced"] == {
        "last_name": "E",
        "job_title": "CEO",
        "phone": "+1 555 1",
    }

    org.advance_clock(5)
    org.update("Lead", edited, {"Title": "Intern", "Phone": None})
    org.update("Lead", empty, {"Title": "CTO"})
    harness.settle()
    polled = harness.poll()
    store = harness.contact("edited@example.com")
    assert (store["job_title"], store["phone"]) == ("CEO", "+1 555 1")  # the store keeps its values
    assert harness.contact("empty@example.com")["job_title"] == "CTO"  # an empty field takes Salesforce's
    assert polled.objects["Lead"].counts.updated == 1
    marked = push_state(harness, "edited@example.com")["synced"]
    assert marked == {"last_name": "E", "job_title": "Intern", "phone": None}  # what Salesforce holds now

    org.reset_stats()
    pushed = harness.push()
    assert (pushed.counts.updated, writes(org)) == (1, 1)
    record = lead(org, "edited@example.com")
    assert (record["Title"], record["Phone"]) == ("CEO", "+1 555 1")
    assert lead(org, "empty@example.com")["Title"] == "CTO"

    # read back: nothing changes, nothing is marked, nothing is written
    state_before = push_state(harness, "edited@example.com")
    store_before = harness.rows(
        "SELECT id, updated_at, field_updated_at, job_title, phone FROM contacts ORDER BY id"
    )
    harness.settle()
    org.reset_stats()
    again = harness.poll()
    assert again.objects["Lead"].counts.updated == 0
    assert push_state(harness, "edited@example.com") == state_before
    assert harness.push().counts.updated == 0 and writes(org) == 0
    assert (
        harness.rows("SELECT id, updated_at, field_updated_at, job_title, phone FROM contacts ORDER BY id")
        == store_before
    )
    assert lead(org, "edited@example.com")["LastModifiedDate"] == record["LastModifiedDate"]


def test_a_most_recent_field_edited_only_in_salesforce_is_not_marked(harness: Harness) -> None:
    """Marking is for conversion_wins only: a most_recent field edited in Salesforce is read into the store."""
    org = harness.org
    [edited] = org.seed(
        "Lead", [{"LastName": "M", "Company": "Acme", "Email": "m@example.com", "Title": "A"}]
    )
    harness.settle()
    harness.poll()
    harness.push()
    before = push_state(harness, "m@example.com")
    org.advance_clock(5)
    org.update("Lead", edited, {"Title": "B"})
    harness.settle()
    harness.poll()
    assert harness.contact("m@example.com")["job_title"] == "B"
    assert push_state(harness, "m@example.com") == before
    org.reset_stats()
    assert harness.push().counts.updated == 0 and writes(org) == 0


# -- Contacts under their Account ----------------------------------------------------------------------------


def test_contacts_created_under_the_account_their_company_name_matches(harness: Harness) -> None:
    """`as: Contact`: one Account query for the batch; a name matching one Account (any case, spaces trimmed)
    sets AccountId, a name two Accounts share or none has leaves it unset; the poll then links the company."""
    org = harness.org
    harness.config = config(push={"as": "Contact"})
    acme, _, _ = org.seed("Account", [{"Name": "Acme Corp"}, {"Name": "Twin"}, {"Name": "Twin"}])
    harness.add_contacts(
        [
            {"email": "a@example.com", "last_name": "A", "company_name": "  acme corp "},
            {"email": "t@example.com", "last_name": "T", "company_name": "Twin"},
            {"email": "n@example.com", "last_name": "N", "company_name": "Nowhere Ltd"},
            {"email": "x@example.com", "last_name": "X"},
            {"email": "q@example.com", "last_name": "Q", "company_name": "O'Brien \\ Sons"},
        ]
    )
    org.reset_stats()
    outcome = harness.push()
    assert (outcome.counts.created, outcome.counts.accounts_set, outcome.counts.failed) == (5, 1, 0)
    # two email searches, one Account lookup, one create, one read of the new LastModifiedDates
    assert org.stats()["requests"]["query"] == 4 and writes(org) == 1
    accounts = {
        r["Email"]: r["AccountId"]
        for r in org.query("SELECT Email, AccountId FROM Contact WHERE Email != null")
    }
    assert accounts == {
        "a@example.com": acme,
        "t@example.com": None,
        "n@example.com": None,
        "x@example.com": None,
        "q@example.com": None,
    }
    harness.settle()
    harness.poll()
    [company] = harness.rows(
        "SELECT co.salesforce_account_id FROM contacts c JOIN companies co ON co.id = c.company_id "
        "WHERE c.email = 'a@example.com'"
    )
    assert company["salesforce_account_id"] == acme
    assert harness.contact("t@example.com")["company_id"] is None


# -- Salesforce's own stamp after a write ----------------------------------------------------------------------


def test_after_a_write_the_store_keeps_salesforces_stamp_so_a_later_salesforce_edit_wins(
    harness: Harness,
) -> None:
    """The store's clock runs an hour ahead of Salesforce's. A store edit is pushed; the push reads the record's
    LastModifiedDate back and stamps the written field with it, so a Salesforce edit a few seconds after the
    push (earlier than the store's own clock says) still wins the next poll, as newer-wins on Salesforce's
    clock says it should. A field the push did not write keeps its own stamp."""
    org = harness.org
    [record_id] = org.seed(
        "Lead",
        [{"LastName": "S", "Company": "Acme", "Email": "s@example.com", "Title": "Old", "Phone": "+1 5"}],
    )
    harness.settle()
    harness.poll()
    harness.push()
    phone_stamp = harness.contact("s@example.com")["field_updated_at"]["phone"]

    ahead = org.now() + timedelta(hours=1)
    harness.edit_contact("s@example.com", stamp=ahead, job_title="Store")
    org.advance_clock(5)
    assert harness.push().counts.updated == 1
    record = lead(org, "s@example.com")
    assert record["Title"] == "Store"
    modified = parse_salesforce_datetime(str(record["LastModifiedDate"]))
    assert modified is not None and modified < ahead
    stamps = harness.contact("s@example.com")["field_updated_at"]
    assert parse_salesforce_datetime(stamps["job_title"]) == modified
    assert stamps["phone"] == phone_stamp
    assert push_state(harness, "s@example.com")["salesforce_modified"] == modified

    org.advance_clock(5)
    org.update("Lead", record_id, {"Title": "SF later"})
    harness.settle()
    harness.poll()
    assert harness.contact("s@example.com")["job_title"] == "SF later"
    org.reset_stats()
    harness.push()
    assert writes(org) == 0 and lead(org, "s@example.com")["Title"] == "SF later"


def test_a_store_edit_during_the_push_keeps_its_own_stamp(harness: Harness) -> None:
    """Restamping only touches a field whose stamp is still the one the push read: an edit committed between
    the push's read and its write keeps its stamp (and is pushed next time)."""
    org = harness.org
    org.seed("Lead", [{"LastName": "R", "Company": "Acme", "Email": "r@example.com", "Title": "Old"}])
    harness.settle()
    harness.poll()
    harness.push()
    harness.edit_contact("r@example.com", job_title="First")
    org.advance_clock(5)
    pusher_rows = harness.rows("SELECT id, field_updated_at FROM contacts WHERE email = 'r@example.com'")
    later = org.now() + timedelta(seconds=30)
    harness.edit_contact("r@example.com", stamp=later, job_title="Second")
    with harness.store.begin() as conn:
        state.restamp_written(
            conn,
            [
                (
                    pusher_rows[0]["id"],
                    {"job_title": pusher_rows[0]["field_updated_at"]["job_title"]},
                    org.now(),
                )
            ],
        )
    stamps = harness.contact("r@example.com")["field_updated_at"]
    assert parse_salesforce_datetime(stamps["job_title"]) == later
    org.reset_stats()
    assert harness.push().counts.updated == 1
    assert lead(org, "r@example.com")["Title"] == "Second"


# -- when a push may start ----------------------------------------------------------------------------------


def test_push_schedule_and_after_poll_sensor_never_start_a_push_beside_a_poll_or_a_push(
    harness: Harness,
) -> None:
    """With a real instance: the push schedule (default every 15 minutes) and the after-poll sensor request a
    push only while no poll and no push run is queued or running; the pool `salesforce_api` would not stop
    them (it limits ops, two or three at once), so both look at the instance's runs. `manual` drops the
    schedule; a bad phrase is refused."""
    defs = build_salesforce_definitions(harness.config, harness.resource)
    [schedule] = [s for s in defs.schedules or [] if s.name == PUSH_SCHEDULE]
    [sensor] = [s for s in defs.sensors or [] if s.name == PUSH_SENSOR]
    assert schedule.cron_schedule == "*/15 * * * *"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    definitions = dg.Definitions(
        assets=defs.assets,
        jobs=defs.jobs,
        resources={
            "contact_store": harness.store,
            "identity": IdentityMatcher(),
            "salesforce": harness.resource,
        },
    )
    with dg.instance_for_test() as instance:

        def tick() -> dg.ScheduleExecutionData:
            return schedule.evaluate_tick(dg.build_schedule_context(instance=instance))

        def hold(job: str, status: dg.DagsterRunStatus) -> str:
            """A run of `job` in `status` (a queued run needs the origin the daemon would launch it from)."""
            run_id = str(uuid.uuid4())
            location = InProcessCodeLocationOrigin(LoadableTargetOrigin(python_file=__file__))
            origin = RemoteJobOrigin(RemoteRepositoryOrigin(location, "__repository__"), job)
            instance.add_run(DagsterRun(job_name=job, run_id=run_id, status=status, remote_job_origin=origin))
            return run_id

        assert len(tick().run_requests or []) == 1
        for job, status in (
            (POLL_JOB, dg.DagsterRunStatus.QUEUED),
            (POLL_JOB, dg.DagsterRunStatus.STARTED),
            (PUSH_JOB, dg.DagsterRunStatus.QUEUED),
            (PUSH_JOB, dg.DagsterRunStatus.STARTING),
        ):
            run_id = hold(job, status)
            data = tick()
            assert not data.run_requests and data.skip_message and run_id in data.skip_message, (job, status)
            instance.delete_run(run_id)
        hold(POLL_JOB, dg.DagsterRunStatus.SUCCESS)
        hold(PUSH_JOB, dg.DagsterRunStatus.FAILURE)
        assert len(tick().run_requests or []) == 1  # finished runs do not hold it back

        # the sensor, on a real poll run's success
        harness.settle()
        poll = definitions.resolve_job_def(POLL_JOB).execute_in_process(instance=instance)
        assert poll.success
        [success] = instance.all_logs(poll.run_id, of_type=dg.DagsterEventType.RUN_SUCCESS)
        assert success.dagster_event is not None
        poll_run = instance.get_run_by_id(poll.run_id)
        assert poll_run is not None

        def after_poll() -> object:
            context = dg.build_run_status_sensor_context(
                sensor_name=PUSH_SENSOR,
                dagster_event=success.dagster_event,
                dagster_instance=instance,
                dagster_run=poll_run,
            )
            return sensor(context)  # type: ignore[call-arg]

        request = after_poll()
        assert isinstance(request, dg.RunRequest) and request.run_key == f"after_poll_{poll.run_id}"
        for job in (POLL_JOB, PUSH_JOB):
            run_id = hold(job, dg.DagsterRunStatus.QUEUED)
            skipped = after_poll()
            assert isinstance(skipped, dg.SkipReason) and run_id in str(skipped.skip_message)
            instance.delete_run(run_id)

    manual = build_salesforce_definitions(config(push={"schedule": "manual"}), harness.resource)
    assert PUSH_SCHEDULE not in {s.name for s in manual.schedules or []}
    with pytest.raises(ValueError, match="not a schedule"):
        SalesforceConfig.model_validate({"push": {"schedule": "whenever"}})


def test_a_push_launched_beside_a_running_push_does_nothing(harness: Harness) -> None:
    """Launched anyway (from the launchpad, or a sensor and a schedule in the same second), a second push finds
    the first one's lock in the store and does nothing: no Salesforce call, no second Lead."""
    harness.add_contacts([{"email": "solo@example.com", "last_name": "Solo"}])
    holding, release = threading.Event(), threading.Event()
    client = harness.resource.connect(ApiBudget(reserve=0))
    first = SalesforcePusher(harness.config, harness.store, client)
    original = first._create_contacts

    def slow_create() -> None:
        holding.set()
        release.wait(30)
        original()

    first._create_contacts = slow_create  # type: ignore[method-assign]
    thread = threading.Thread(target=first.run)
    thread.start()
    try:
        assert holding.wait(30)
        harness.org.reset_stats()
        with pytest.raises(PushInProgress, match="another Salesforce push is running"):
            harness.push()
        assert harness.org.stats()["requests"].get("query", 0) == 0 and writes(harness.org) == 0
    finally:
        release.set()
        thread.join(30)
        client.close()
    assert first.outcome.counts.created == 1
    assert len(harness.salesforce("Lead", "solo@example.com")) == 1
