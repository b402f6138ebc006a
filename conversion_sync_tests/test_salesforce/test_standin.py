"""The local Salesforce stand-in, driven over HTTPS by the unmodified simple-salesforce client."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from simple_salesforce import Salesforce, SalesforceLogin
from simple_salesforce.exceptions import (
    SalesforceAuthenticationFailed,
    SalesforceError,
    SalesforceExpiredSession,
    SalesforceGeneralError,
    SalesforceMalformedRequest,
    SalesforceRefusedRequest,
    SalesforceResourceNotFound,
)

from conversion_sync_dev.salesforce_standin import Org, StandinServer, normalize_id

API = "/services/data/v59.0"


def error_code(exc: pytest.ExceptionInfo[SalesforceError]) -> str:
    return exc.value.content[0]["errorCode"]


def control(http: requests.Session, standin: StandinServer, action: str, body: dict | None = None) -> Any:
    response = http.post(f"{standin.url}/_standin/{action}", json=body or {})
    assert response.status_code == 200, response.text
    return response.json()


def seed_contacts(org: Org, n: int, **extra: Any) -> list[str]:
    return org.seed(
        "Contact", [{"LastName": f"Person {i:05d}", "Email": f"p{i}@example.com", **extra} for i in range(n)]
    )


# -- login --------------------------------------------------------------------------------------


def test_soap_login_as_the_product_does_it(standin: StandinServer, standin_org: Org) -> None:
    session = standin.requests_session()
    session_id, instance = SalesforceLogin(
        username=standin.username,
        password=standin.password,
        security_token=standin.security_token,
        scratch_url=standin.url,
        session=session,
    )
    assert instance == f"127.0.0.1:{standin.port}"
    assert session_id.startswith("00D")
    sf = Salesforce(session_id=session_id, instance_url=standin.url, session=session, version="59.0")
    assert sf.query("SELECT COUNT() FROM Contact")["totalSize"] == 0

    with pytest.raises(SalesforceAuthenticationFailed) as failed:
        SalesforceLogin(
            username=standin.username,
            password="wrong",
            security_token=standin.security_token,
            scratch_url=standin.url,
            session=session,
        )
    assert failed.value.code == "INVALID_LOGIN"
    assert "Invalid username" in failed.value.auth_message


def test_oauth_password_flow(
    standin: StandinServer, standin_org: Org, standin_http: requests.Session
) -> None:
    form = {
        "grant_type": "password",
        "client_id": standin_org.client_id,
        "client_secret": standin_org.client_secret,
        "username": standin.username,
        "password": standin.password + standin.security_token,
    }
    token = standin_http.post(f"{standin.url}/services/oauth2/token", data=form).json()
    assert token["instance_url"] == standin.url and token["token_type"] == "Bearer"
    assert {"access_token", "id", "issued_at", "signature"} <= token.keys()
    sf = Salesforce(
        session_id=token["access_token"],
        instance_url=token["instance_url"],
        session=standin_http,
        version="59.0",
    )
    assert sf.query("SELECT Id FROM Account")["done"] is True

    bad = standin_http.post(f"{standin.url}/services/oauth2/token", data={**form, "password": "nope"})
    assert bad.status_code == 400
    assert bad.json() == {"error": "invalid_grant", "error_description": "authentication failure"}
    bad_client = standin_http.post(f"{standin.url}/services/oauth2/token", data={**form, "client_id": "x"})
    assert bad_client.json()["error"] == "invalid_client_id"


def test_unknown_session_is_401_invalid_session_id(
    standin: StandinServer, standin_http: requests.Session
) -> None:
    response = standin_http.get(f"{standin.url}{API}/limits", headers={"Authorization": "Bearer nope"})
    assert response.status_code == 401
    assert response.json() == [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]
    assert response.headers["Sforce-Limit-Info"].startswith("api-usage=")


def test_only_loopback_addresses() -> None:
    with pytest.raises(ValueError, match="loopback"):
        StandinServer(host="0.0.0.0")


# -- queries --------------------------------------------------------------------------------------


def test_query_pages_through_a_server_side_cursor(sf_client: Salesforce, standin_org: Org) -> None:
    seed_contacts(standin_org, 4500)
    soql = "SELECT Id, LastName FROM Contact ORDER BY LastName"
    first = sf_client.query(soql)
    assert (first["totalSize"], first["done"], len(first["records"])) == (4500, False, 2000)
    assert first["nextRecordsUrl"].startswith(f"{API}/query/01g") and first["nextRecordsUrl"].endswith(
        "-2000"
    )
    assert first["records"][0]["attributes"]["type"] == "Contact"
    assert first["records"][0]["attributes"]["url"] == f"{API}/sobjects/Contact/{first['records'][0]['Id']}"
    second = sf_client.query_more(first["nextRecordsUrl"], identifier_is_url=True)
    third = sf_client.query_more(second["nextRecordsUrl"], identifier_is_url=True)
    assert (len(second["records"]), second["done"]) == (2000, False)
    assert (len(third["records"]), third["done"]) == (500, True)
    assert "nextRecordsUrl" not in third
    names = [r["LastName"] for page in (first, second, third) for r in page["records"]]
    assert names == sorted(names) and len(set(names)) == 4500

    everything = sf_client.query_all(soql)
    assert everything["totalSize"] == 4500

    small = sf_client.query(soql, headers={"Sforce-Query-Options": "batchSize=500"})
    assert len(small["records"]) == 500 and small["nextRecordsUrl"].endswith("-500")

    standin_org.configure(page_size=1000)
    assert len(sf_client.query(soql)["records"]) == 1000


def test_query_result_is_a_snapshot(sf_client: Salesforce, standin_org: Org) -> None:
    ids = seed_contacts(standin_org, 2500)
    first = sf_client.query("SELECT Id, LastName FROM Contact ORDER BY Id")
    last_id = first_unread = ids[-1]
    assert first_unread not in {r["Id"] for r in first["records"]}
    sf_client.Contact.update(last_id, {"LastName": "Changed"})
    sf_client.Contact.delete(ids[-2])
    rest = sf_client.query_more(first["nextRecordsUrl"], identifier_is_url=True)
    by_id = {r["Id"]: r for r in rest["records"]}
    assert by_id[last_id]["LastName"] == "Person 02499"
    assert ids[-2] in by_id

    with pytest.raises(SalesforceMalformedRequest) as bad:
        sf_client.query_more("01gKc0000000zzzIAA-2000")
    assert error_code(bad) == "INVALID_QUERY_LOCATOR"


def test_parent_relationship_fields(sf_client: Salesforce) -> None:
    account = sf_client.Account.create({"Name": "Acme"})["id"]
    sf_client.Contact.create({"LastName": "Linked", "AccountId": account})
    sf_client.Contact.create({"LastName": "Orphan"})
    rows = sf_client.query(
        "SELECT Id, LastName, Account.Name, Account.Owner.Name FROM Contact ORDER BY LastName"
    )
    linked, orphan = rows["records"]
    assert linked["Account"]["attributes"] == {"type": "Account", "url": f"{API}/sobjects/Account/{account}"}
    assert linked["Account"]["Name"] == "Acme"
    assert linked["Account"]["Owner"]["Name"] == "Integration User"
    assert orphan["Account"] is None
    filtered = sf_client.query("SELECT Id FROM Contact WHERE Account.Name = 'acme'")
    assert [r["Id"] for r in filtered["records"]] == [linked["Id"]]


def test_soql_operators(sf_client: Salesforce, standin_org: Org) -> None:
    rows = [
        {"LastName": "Alpha", "FirstName": "Ann", "Email": "a@x.com", "Title": "CTO"},
        {"LastName": "beta", "FirstName": "Bob", "Email": "b@y.com", "Title": None},
        {"LastName": "Gamma", "FirstName": "Cy", "Email": None, "Title": "CEO"},
        {"LastName": "Delta", "FirstName": "Di", "Email": "d@x.com", "Title": "Engineer"},
    ]
    ids = standin_org.seed("Contact", rows)

    def names(where_and_rest: str) -> list[str]:
        return [
            r["LastName"]
            for r in sf_client.query(f"SELECT LastName FROM Contact {where_and_rest}")["records"]
        ]

    assert names("ORDER BY LastName") == ["Alpha", "beta", "Delta", "Gamma"]  # case-insensitive sort
    assert names("ORDER BY LastName DESC LIMIT 2") == ["Gamma", "Delta"]
    assert names("ORDER BY LastName LIMIT 2 OFFSET 1") == ["beta", "Delta"]
    assert names("ORDER BY Title NULLS LAST, LastName")[-1] == "beta"
    assert names("ORDER BY Title, LastName")[0] == "beta"  # nulls first by default
    assert names("WHERE Email = null") == ["Gamma"]
    assert sorted(names("WHERE Email != null")) == ["Alpha", "Delta", "beta"]
    assert sorted(names("WHERE Title != 'CTO'")) == ["Delta", "Gamma", "beta"]  # != includes nulls
    assert names("WHERE LastName = 'BETA'") == ["beta"]  # text equality is case-insensitive
    assert sorted(names("WHERE Email LIKE '%@x.com'")) == ["Alpha", "Delta"]
    assert names("WHERE FirstName LIKE 'b_b'") == ["beta"]
    assert sorted(names("WHERE LastName IN ('alpha', 'Gamma')")) == ["Alpha", "Gamma"]
    assert sorted(names("WHERE LastName NOT IN ('Alpha', 'Gamma')")) == ["Delta", "beta"]
    assert sorted(names("WHERE NOT (Email LIKE '%@x.com' OR Email = null)")) == ["beta"]
    assert names("WHERE (Title = 'CTO' OR Title = 'CEO') AND Email != null") == ["Alpha"]
    assert names(f"WHERE Id = '{ids[3][:15]}'") == ["Delta"]  # 15-character ids are accepted
    assert names("WHERE LastName = 'O\\'Brien'") == []
    assert sf_client.query("SELECT COUNT() FROM Contact WHERE Email LIKE '%x.com'") == {
        "totalSize": 2,
        "done": True,
        "records": [],
    }
    stamp = standin_org.now().strftime("%Y-%m-%dT%H:%M:%S")
    later = (standin_org.now() + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S")
    for literal in (f"{later}Z", f"{later}.000+0000", f"{later}+00:00"):
        assert len(names(f"WHERE SystemModstamp < {literal}")) == 4
    assert names(f"WHERE CreatedDate > {stamp}Z") == []


@pytest.mark.parametrize(
    ("soql", "code"),
    [
        ("SELECT Id FROM Contact GROUP BY LastName", "MALFORMED_QUERY"),
        ("SELECT Id FROM Contact WHERE LastName = 'a' AND Email = 'b' OR Title = 'c'", "MALFORMED_QUERY"),
        ("SELECT Id, (SELECT Id FROM Contacts) FROM Account", "MALFORMED_QUERY"),
        ("SELECT Id FROM Contact WHERE Id IN (SELECT ContactId FROM CampaignMember)", "MALFORMED_QUERY"),
        ("SELECT FIELDS(ALL) FROM Contact", "MALFORMED_QUERY"),
        ("SELECT Id FROM Contact WHERE CreatedDate = LAST_N_DAYS:3", "MALFORMED_QUERY"),
        ("SELECT Id FROM Contact LIMIT", "MALFORMED_QUERY"),
        ("SELECT Id, Id FROM Contact", "MALFORMED_QUERY"),
        ("SELECT Nope FROM Contact", "INVALID_FIELD"),
        ("SELECT Account.Nope FROM Contact", "INVALID_FIELD"),
        ("SELECT Id FROM Opportunityish", "INVALID_TYPE"),
        ("SELECT Id FROM Contact WHERE IsDeleted = 'true'", "INVALID_QUERY_FILTER_OPERATOR"),
        ("SELECT Id FROM Contact WHERE CreatedDate > '2024-01-01'", "INVALID_QUERY_FILTER_OPERATOR"),
        ("SELECT Id FROM Contact WHERE Id = 'abc'", "INVALID_QUERY_FILTER_OPERATOR"),
        ("SELECT Id FROM Contact OFFSET 2001", "NUMBER_OUTSIDE_VALID_RANGE"),
    ],
)
def test_soql_outside_the_subset_is_refused(sf_client: Salesforce, soql: str, code: str) -> None:
    with pytest.raises(SalesforceMalformedRequest) as refused:
        sf_client.query(soql)
    assert error_code(refused) == code
    assert refused.value.content[0]["message"]


# -- records ----------------------------------------------------------------------------------------


def test_create_read_update_delete(sf_client: Salesforce, standin_org: Org) -> None:
    created = sf_client.Contact.create(
        {"FirstName": "Ada", "LastName": "Lovelace", "Email": "ada@example.com"}
    )
    assert created["success"] is True and created["errors"] == []
    contact_id = created["id"]
    assert (
        len(contact_id) == 18 and contact_id.startswith("003") and normalize_id(contact_id[:15]) == contact_id
    )
    record = sf_client.Contact.get(contact_id)
    assert record["Name"] == "Ada Lovelace" and record["IsDeleted"] is False
    assert record["CreatedDate"].endswith(".000+0000") and record["OwnerId"].startswith("005")
    assert sf_client.Contact.get(contact_id[:15])["Id"] == contact_id

    assert sf_client.Contact.update(contact_id, {"Title": "Countess", "email": "ADA@example.com"}) == 204
    assert sf_client.Contact.get(contact_id)["Email"] == "ADA@example.com"
    assert sf_client.Contact.delete(contact_id) == 204
    with pytest.raises(SalesforceResourceNotFound) as gone:
        sf_client.Contact.get(contact_id)
    assert error_code(gone) == "ENTITY_IS_DELETED"

    with pytest.raises(SalesforceMalformedRequest) as missing:
        sf_client.Lead.create({"LastName": "No Company"})
    assert error_code(missing) == "REQUIRED_FIELD_MISSING"
    assert missing.value.content[0]["fields"] == ["Company"]
    with pytest.raises(SalesforceMalformedRequest) as unknown:
        sf_client.Contact.create({"LastName": "x", "Shoe_Size__c": 44})
    assert error_code(unknown) == "INVALID_FIELD"
    with pytest.raises(SalesforceMalformedRequest) as read_only:
        sf_client.Contact.create({"LastName": "x", "SystemModstamp": "2020-01-01T00:00:00Z"})
    assert error_code(read_only) == "INVALID_FIELD_FOR_INSERT_UPDATE"
    with pytest.raises(SalesforceMalformedRequest) as bad_email:
        sf_client.Contact.create({"LastName": "x", "Email": "not-an-email"})
    assert error_code(bad_email) == "INVALID_EMAIL_ADDRESS"
    with pytest.raises(SalesforceMalformedRequest) as bad_ref:
        sf_client.Contact.create({"LastName": "x", "AccountId": "001Kc0000000zzz"})
    assert error_code(bad_ref) == "INSUFFICIENT_ACCESS_ON_CROSS_REFERENCE_ENTITY"
    with pytest.raises(SalesforceResourceNotFound) as malformed:
        sf_client.Contact.get("not-an-id")
    assert error_code(malformed) == "NOT_FOUND"
    with pytest.raises(SalesforceResourceNotFound):
        sf_client.Contact.get("003Kc0000000zzzIAA")

    describe = sf_client.Contact.describe()
    fields = {f["name"]: f for f in describe["fields"]}
    assert describe["keyPrefix"] == "003"
    assert fields["LastName"]["nillable"] is False and fields["SystemModstamp"]["updateable"] is False
    assert (
        fields["AccountId"]["referenceTo"] == ["Account"]
        and fields["AccountId"]["relationshipName"] == "Account"
    )


def test_deleted_records_only_in_query_all_and_deleted_resource(
    sf_client: Salesforce, standin_org: Org
) -> None:
    standin_org.freeze_clock()
    start = standin_org.now() - timedelta(minutes=5)
    keep, drop = seed_contacts(standin_org, 2)
    sf_client.Contact.delete(drop)
    assert [r["Id"] for r in sf_client.query("SELECT Id FROM Contact")["records"]] == [keep]
    everything = sf_client.query_all("SELECT Id, IsDeleted FROM Contact ORDER BY Id", include_deleted=True)
    assert [(r["Id"], r["IsDeleted"]) for r in everything["records"]] == [(keep, False), (drop, True)]

    standin_org.advance_clock(120)
    end = standin_org.now()
    deleted = sf_client.Contact.deleted(start, end)
    assert [r["id"] for r in deleted["deletedRecords"]] == [drop]
    assert deleted["deletedRecords"][0]["deletedDate"].endswith("+0000")
    assert deleted["latestDateCovered"] <= end.strftime("%Y-%m-%dT%H:%M:00.000+0000")
    assert sf_client.Contact.updated(start, end)["ids"] == [keep]


def test_system_modstamp_moves_on_every_write(sf_client: Salesforce, standin_org: Org) -> None:
    standin_org.set_clock("2024-05-01T12:00:00Z", freeze=True)
    contact_id = sf_client.Contact.create({"LastName": "Clocked"})["id"]
    created = sf_client.Contact.get(contact_id)
    assert created["SystemModstamp"] == created["LastModifiedDate"] == "2024-05-01T12:00:00.000+0000"

    standin_org.advance_clock(30)
    sf_client.Contact.update(contact_id, {"Title": "Later"})
    updated = sf_client.Contact.get(contact_id)
    assert updated["SystemModstamp"] == updated["LastModifiedDate"] == "2024-05-01T12:00:30.000+0000"
    assert updated["CreatedDate"] == "2024-05-01T12:00:00.000+0000"

    standin_org.advance_clock(30)
    sf_client.Contact.delete(contact_id)
    row = sf_client.query_all(
        f"SELECT SystemModstamp FROM Contact WHERE Id = '{contact_id}'", include_deleted=True
    )
    assert row["records"][0]["SystemModstamp"] == "2024-05-01T12:01:00.000+0000"


def test_backdate_simulates_a_late_commit(
    sf_client: Salesforce, standin: StandinServer, standin_org: Org, standin_http: requests.Session
) -> None:
    standin_org.set_clock("2024-05-01T12:00:00Z", freeze=True)
    contact_id = sf_client.Contact.create({"LastName": "Late"})["id"]
    control(standin_http, standin, "backdate", {"ids": [contact_id], "when": "2024-05-01T11:00:00Z"})
    soql = "SELECT Id, SystemModstamp, LastModifiedDate FROM Contact WHERE SystemModstamp <= 2024-05-01T11:30:00Z"
    (row,) = sf_client.query(soql)["records"]
    assert row["SystemModstamp"] == row["LastModifiedDate"] == "2024-05-01T11:00:00.000+0000"
    clock = control(standin_http, standin, "clock", {"advance_seconds": 60})
    assert clock == {"now": "2024-05-01T12:01:00.000+0000", "frozen": True}


def test_lead_conversion_and_converted_lead_refuses_updates(
    sf_client: Salesforce, standin: StandinServer, standin_org: Org, standin_http: requests.Session
) -> None:
    standin_org.set_clock("2024-05-01T12:00:00Z", freeze=True)
    lead_id = sf_client.Lead.create({"LastName": "Prospect", "Company": "Initech", "Email": "p@initech.com"})[
        "id"
    ]
    campaign_id = sf_client.Campaign.create({"Name": "Launch"})["id"]
    member_id = sf_client.CampaignMember.create({"CampaignId": campaign_id, "LeadId": lead_id})["id"]
    standin_org.advance_clock(60)

    result = control(standin_http, standin, "convert_lead", {"lead_id": lead_id})
    lead = sf_client.Lead.get(lead_id)
    assert lead["IsConverted"] is True and lead["ConvertedDate"] == "2024-05-01"
    assert (
        lead["ConvertedContactId"] == result["contactId"]
        and lead["ConvertedAccountId"] == result["accountId"]
    )
    assert lead["SystemModstamp"] == "2024-05-01T12:01:00.000+0000"
    contact = sf_client.Contact.get(result["contactId"])
    assert (contact["Email"], contact["AccountId"]) == ("p@initech.com", result["accountId"])
    assert sf_client.Account.get(result["accountId"])["Name"] == "Initech"
    member = sf_client.CampaignMember.get(member_id)
    assert (member["LeadId"], member["ContactId"]) == (lead_id, result["contactId"])

    with pytest.raises(SalesforceMalformedRequest) as refused:
        sf_client.Lead.update(lead_id, {"Title": "Too late"})
    assert refused.value.content[0]["errorCode"] == "CANNOT_UPDATE_CONVERTED_LEAD"
    assert refused.value.content[0]["message"] == "cannot reference converted lead"

    # Converting into an existing contact keeps that contact and its account.
    account_id = sf_client.Account.create({"Name": "Existing"})["id"]
    existing = sf_client.Contact.create({"LastName": "Known", "AccountId": account_id})["id"]
    other_lead = sf_client.Lead.create({"LastName": "Known", "Company": "X", "Email": "known@x.com"})["id"]
    again = standin_org.convert_lead(other_lead, contact_id=existing)
    assert (again["contactId"], again["accountId"]) == (existing, account_id)
    assert sf_client.Contact.get(existing)["Email"] == "known@x.com"


def test_merge_marks_duplicates_deleted_with_master_record_id(
    sf_client: Salesforce, standin: StandinServer, standin_org: Org, standin_http: requests.Session
) -> None:
    standin_org.set_clock("2024-05-01T12:00:00Z", freeze=True)
    master, duplicate = seed_contacts(standin_org, 2)
    campaign_id = sf_client.Campaign.create({"Name": "Merge me"})["id"]
    member_id = sf_client.CampaignMember.create({"CampaignId": campaign_id, "ContactId": duplicate})["id"]
    standin_org.advance_clock(60)
    control(standin_http, standin, "merge", {"master_id": master, "duplicate_ids": [duplicate]})

    assert [r["Id"] for r in sf_client.query("SELECT Id FROM Contact")["records"]] == [master]
    rows = sf_client.query_all(
        f"SELECT Id, IsDeleted, MasterRecordId FROM Contact WHERE Id = '{duplicate}'", include_deleted=True
    )["records"]
    assert rows[0]["IsDeleted"] is True and rows[0]["MasterRecordId"] == master
    assert sf_client.Contact.get(master)["SystemModstamp"] == "2024-05-01T12:01:00.000+0000"
    assert sf_client.CampaignMember.get(member_id)["ContactId"] == master


# -- campaigns ----------------------------------------------------------------------------------------


def test_campaign_statuses_and_member_rules(sf_client: Salesforce) -> None:
    campaign_id = sf_client.Campaign.create({"Name": "Webinar", "IsActive": True})["id"]
    statuses = sf_client.query(
        f"SELECT Label, IsDefault, HasResponded FROM CampaignMemberStatus WHERE CampaignId = '{campaign_id}' "
        "ORDER BY SortOrder"
    )["records"]
    assert [(s["Label"], s["IsDefault"], s["HasResponded"]) for s in statuses] == [
        ("Sent", True, False),
        ("Responded", False, True),
    ]
    lead_id = sf_client.Lead.create({"LastName": "L", "Company": "C"})["id"]
    contact_id = sf_client.Contact.create({"LastName": "C"})["id"]

    member_id = sf_client.CampaignMember.create({"CampaignId": campaign_id, "LeadId": lead_id})["id"]
    member = sf_client.CampaignMember.get(member_id)
    assert (member["Status"], member["HasResponded"], member["Type"]) == ("Sent", False, "Lead")

    with pytest.raises(SalesforceMalformedRequest) as duplicate:
        sf_client.CampaignMember.create({"CampaignId": campaign_id, "LeadId": lead_id, "Status": "Responded"})
    assert error_code(duplicate) == "DUPLICATE_VALUE"
    assert duplicate.value.content[0]["message"] == "Already a campaign member."

    with pytest.raises(SalesforceMalformedRequest) as bad_status:
        sf_client.CampaignMember.create(
            {"CampaignId": campaign_id, "ContactId": contact_id, "Status": "Attended"}
        )
    assert error_code(bad_status) == "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"

    for body in (
        {"CampaignId": campaign_id},
        {"CampaignId": campaign_id, "LeadId": lead_id, "ContactId": contact_id},
    ):
        with pytest.raises(SalesforceMalformedRequest) as neither_or_both:
            sf_client.CampaignMember.create(body)
        assert error_code(neither_or_both) == "REQUIRED_FIELD_MISSING"

    sf_client.CampaignMemberStatus.create(
        {"CampaignId": campaign_id, "Label": "Attended", "HasResponded": True}
    )
    attended = sf_client.CampaignMember.create(
        {"CampaignId": campaign_id, "ContactId": contact_id, "Status": "attended"}
    )["id"]
    row = sf_client.CampaignMember.get(attended)
    assert (row["Status"], row["HasResponded"], row["FirstRespondedDate"] is not None) == (
        "Attended",
        True,
        True,
    )

    sf_client.CampaignMember.update(member_id, {"Status": "Responded"})
    assert sf_client.CampaignMember.get(member_id)["HasResponded"] is True
    with pytest.raises(SalesforceMalformedRequest) as fixed:
        sf_client.CampaignMember.update(member_id, {"LeadId": None})
    assert error_code(fixed) == "INVALID_FIELD_FOR_INSERT_UPDATE"

    emails = sf_client.query(
        f"SELECT Id, Lead.Email, Contact.Email FROM CampaignMember WHERE CampaignId = '{campaign_id}' ORDER BY Id"
    )["records"]
    assert emails[0]["Contact"] is None and emails[1]["Lead"] is None


def test_composite_collections(sf_client: Salesforce, standin: StandinServer, standin_org: Org) -> None:
    campaign_id = sf_client.Campaign.create({"Name": "Batch"})["id"]
    contacts = seed_contacts(standin_org, 3)
    url = f"{sf_client.base_url}composite/sobjects"

    def call(method: str, path: str = "", **kwargs: Any) -> Any:
        response = sf_client.session.request(method, url + path, headers=sf_client.headers, **kwargs)
        return response.status_code, response.json()

    members = [
        {"attributes": {"type": "CampaignMember"}, "CampaignId": campaign_id, "ContactId": c}
        for c in contacts
    ]
    members[1]["Status"] = "Nope"
    status, results = call("POST", json={"allOrNone": False, "records": members})
    assert status == 200
    assert [r["success"] for r in results] == [True, False, True]
    assert results[1]["errors"][0]["statusCode"] == "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"
    assert results[0]["id"].startswith("00v") and results[0]["errors"] == []

    members[1]["Status"] = "Responded"
    members.append({"attributes": {"type": "Contact"}})  # LastName missing: everything is rolled back
    status, results = call("POST", json={"allOrNone": True, "records": members})
    assert [r["success"] for r in results] == [False, False, False, False]
    assert results[0]["errors"][0]["statusCode"] == "DUPLICATE_VALUE"
    assert results[1]["errors"][0]["statusCode"] == "ALL_OR_NONE_OPERATION_ROLLED_BACK"
    assert results[3]["errors"][0]["statusCode"] == "REQUIRED_FIELD_MISSING"
    assert sf_client.query("SELECT COUNT() FROM CampaignMember")["totalSize"] == 2

    too_many = [{"attributes": {"type": "Contact"}, "LastName": str(i)} for i in range(201)]
    status, body = call("POST", json={"allOrNone": False, "records": too_many})
    assert status == 400 and body[0]["errorCode"] == "EXCEEDED_ID_LIMIT"

    updates = [
        {"attributes": {"type": "Contact"}, "Id": contacts[0], "Title": "Boss"},
        {"attributes": {"type": "Contact"}, "Id": "003Kc0000000zzz", "Title": "Ghost"},
    ]
    status, results = call("PATCH", json={"allOrNone": False, "records": updates})
    assert results[0] == {"id": contacts[0], "success": True, "errors": []}
    assert results[1]["success"] is False

    status, rows = call("GET", "/Contact", params={"ids": ",".join(contacts[:2]), "fields": "Id,Title"})
    assert [r["Title"] for r in rows] == ["Boss", None]

    status, results = call("DELETE", params={"ids": f"{contacts[2]},{contacts[2]}", "allOrNone": "false"})
    assert [r["success"] for r in results] == [True, False]
    assert results[1]["errors"][0]["statusCode"] == "ENTITY_IS_DELETED"


# -- limits, faults, stats ----------------------------------------------------------------------------


def test_limits_header_and_request_limit_exceeded(sf_client: Salesforce, standin_org: Org) -> None:
    limits = sf_client.limits()
    assert limits["DailyApiRequests"]["Max"] == 100_000
    used = sf_client.api_usage["api-usage"].used
    assert used == 1  # login does not count
    standin_org.set_limits(max=used + 2)
    sf_client.query("SELECT Id FROM Account")
    sf_client.query("SELECT Id FROM Account")
    assert sf_client.api_usage["api-usage"] == (used + 2, used + 2)
    with pytest.raises(SalesforceRefusedRequest) as refused:
        sf_client.query("SELECT Id FROM Account")
    assert refused.value.content == [
        {"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}
    ]


def test_each_fault_kind(
    sf_client: Salesforce, standin: StandinServer, standin_org: Org, standin_http: requests.Session
) -> None:
    control(
        standin_http,
        standin,
        "faults",
        {"kind": "unavailable_503", "count": 1, "after": 1, "path_contains": "query"},
    )
    sf_client.limits()  # does not match the path
    sf_client.query("SELECT Id FROM Account")  # skipped (after=1)
    with pytest.raises(SalesforceGeneralError) as unavailable:
        sf_client.query("SELECT Id FROM Account")
    assert unavailable.value.status == 503
    sf_client.query("SELECT Id FROM Account")  # the fault is used up

    standin_org.add_fault("query_timeout")
    with pytest.raises(SalesforceMalformedRequest) as timeout:
        sf_client.query("SELECT Id FROM Account")
    assert timeout.value.content == [
        {"message": "Your query request was running for too long.", "errorCode": "QUERY_TIMEOUT"}
    ]

    standin_org.add_fault("request_limit")
    with pytest.raises(SalesforceRefusedRequest) as limited:
        sf_client.query("SELECT Id FROM Account")
    assert error_code(limited) == "REQUEST_LIMIT_EXCEEDED"

    standin_org.add_fault("invalid_session")
    with pytest.raises(SalesforceExpiredSession) as expired:
        sf_client.query("SELECT Id FROM Account")
    assert error_code(expired) == "INVALID_SESSION_ID"
    with pytest.raises(SalesforceExpiredSession):  # the session really is gone
        sf_client.query("SELECT Id FROM Account")
    assert standin.login().query("SELECT Id FROM Account")["done"] is True

    stats = control(standin_http, standin, "stats")["requests"]
    assert stats["fault:unavailable_503"] == stats["fault:invalid_session"] == 1


def test_stats_count_calls_per_kind(sf_client: Salesforce, standin: StandinServer, standin_org: Org) -> None:
    seed_contacts(standin_org, 2500)
    standin_org.reset_stats()
    sf_client.query_all("SELECT Id FROM Contact")
    sf_client.Contact.create({"LastName": "x"})
    stats = standin_org.stats()["requests"]
    assert (stats["query"], stats["query_more"], stats["sobject_create"], stats["api_requests"]) == (
        1,
        1,
        1,
        3,
    )


def test_bulk2_query_job_over_plain_requests(
    sf_client: Salesforce, standin: StandinServer, standin_org: Org, standin_http: requests.Session
) -> None:
    account = sf_client.Account.create({"Name": 'Acme "Quoted", Inc'})["id"]
    ids = seed_contacts(standin_org, 5, AccountId=account)
    standin_org.configure(bulk_polls_before_complete=1)
    headers = {"Authorization": f"Bearer {sf_client.session_id}", "Content-Type": "application/json"}
    jobs = f"{standin.url}{API}/jobs/query"
    soql = "SELECT Id, LastName, Account.Name, CreatedDate FROM Contact ORDER BY LastName"
    job = standin_http.post(jobs, headers=headers, json={"operation": "query", "query": soql}).json()
    assert job["state"] == "UploadComplete" and job["object"] == "Contact" and job["id"].startswith("750")
    assert standin_http.get(f"{jobs}/{job['id']}", headers=headers).json()["state"] == "InProgress"
    assert standin_http.get(f"{jobs}/{job['id']}", headers=headers).json()["state"] == "JobComplete"

    rows: list[dict[str, str]] = []
    locator = ""
    while True:
        params = {"maxRecords": 2, **({"locator": locator} if locator else {})}
        page = standin_http.get(f"{jobs}/{job['id']}/results", headers=headers, params=params)
        assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/csv")
        assert page.headers["Sforce-Limit-Info"].startswith("api-usage=")
        batch = list(csv.DictReader(io.StringIO(page.text)))
        assert int(page.headers["Sforce-NumberOfRecords"]) == len(batch)
        rows += batch
        locator = page.headers["Sforce-Locator"]
        if locator == "null":
            break
    assert [r["Id"] for r in rows] == ids
    assert rows[0]["Account.Name"] == 'Acme "Quoted", Inc'
    assert rows[0]["CreatedDate"].endswith(".000Z")
    assert page.text.startswith('"Id","LastName","Account.Name","CreatedDate"\n')

    standin_org.configure(bulk_polls_before_complete=0)
    csv_pages = list(sf_client.bulk2.Contact.query("SELECT Id FROM Contact", wait=0))
    assert sum(len(p.splitlines()) - 1 for p in csv_pages) == 5


def test_bulk2_ingest_job_with_simple_salesforce(sf_client: Salesforce, standin_org: Org) -> None:
    campaign_id = sf_client.Campaign.create({"Name": "Bulk"})["id"]
    contacts = seed_contacts(standin_org, 3)
    rows = [{"CampaignId": campaign_id, "ContactId": c, "Status": "Responded"} for c in contacts]
    rows[2]["Status"] = "Unknown"
    (result,) = sf_client.bulk2.CampaignMember.insert(records=rows, wait=0)
    assert (result["numberRecordsProcessed"], result["numberRecordsFailed"]) == (3, 1)
    ok = list(
        csv.DictReader(io.StringIO(sf_client.bulk2.CampaignMember.get_successful_records(result["job_id"])))
    )
    failed = list(
        csv.DictReader(io.StringIO(sf_client.bulk2.CampaignMember.get_failed_records(result["job_id"])))
    )
    assert [r["sf__Created"] for r in ok] == ["true", "true"] and ok[0]["sf__Id"].startswith("00v")
    assert failed[0]["sf__Error"].startswith("INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST:")
    responded = sf_client.query("SELECT COUNT() FROM CampaignMember WHERE HasResponded = true")
    assert responded["totalSize"] == 2

    (deleted,) = sf_client.bulk2.Contact.delete(records=[{"Id": contacts[0]}], wait=0)
    assert deleted["numberRecordsFailed"] == 0
    assert (
        sf_client.query("SELECT COUNT() FROM CampaignMember")["totalSize"] == 1
    )  # members go with the contact


# -- persistence and the CLI ----------------------------------------------------------------------------


def test_state_round_trips_through_a_file(tmp_path: Path) -> None:
    org = Org()
    org.set_clock("2024-05-01T12:00:00Z", freeze=True)
    (account,) = org.seed("Account", [{"Name": "Saved"}])
    org.seed("Contact", [{"LastName": "Kept", "AccountId": account}])
    org.save(tmp_path / "state.json")
    restored = Org()
    restored.load(tmp_path / "state.json")
    rows = restored.query("SELECT LastName, Account.Name, SystemModstamp FROM Contact")
    assert (
        rows[0]["Account"]["Name"] == "Saved" and rows[0]["SystemModstamp"] == "2024-05-01T12:00:00.000+0000"
    )
    new_id = restored.create("Contact", {"LastName": "After"})
    assert new_id not in {account} and restored.count("SELECT COUNT() FROM Contact") == 2


def test_cli_serves_demo_data_and_saves_state(tmp_path: Path) -> None:
    state_dir = tmp_path / "salesforce"
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    log_path = tmp_path / "standin.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "conversion_sync_dev.salesforce_standin",
                "--port",
                "0",
                "--state-dir",
                str(state_dir),
                "--seed-demo",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        info_path = state_dir / "standin.json"
        deadline = time.monotonic() + 30
        while not info_path.exists() or not (state_dir / "state.json").exists():
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "the stand-in CLI did not start"
            time.sleep(0.1)
        info = json.loads(info_path.read_text())
        assert info["url"].startswith("https://127.0.0.1:") and Path(info["ca_bundle"]).exists()
        session = requests.Session()
        session.trust_env = False
        session.verify = info["ca_bundle"]
        session_id, _ = SalesforceLogin(
            username=info["username"],
            password=info["password"],
            security_token=info["security_token"],
            scratch_url=info["login_url"],
            session=session,
        )
        sf = Salesforce(
            session_id=session_id, instance_url=info["instance_url"], session=session, version="59.0"
        )
        assert sf.query("SELECT COUNT() FROM Contact WHERE Email != null")["totalSize"] > 100
        sf.Account.create({"Name": "Created while running"})
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    assert "state saved" in log_path.read_text()
    saved = Org()
    saved.load(state_dir / "state.json")
    assert saved.count("SELECT COUNT() FROM Account WHERE Name = 'Created while running'") == 1


def test_clock_defaults_to_real_utc_time(standin_org: Org) -> None:
    assert abs(standin_org.now() - datetime.now(UTC)) < timedelta(seconds=5)
