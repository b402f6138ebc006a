"""The stand-in's validation rules, duplicate rules, formula and read-only fields and audit stamps, driven over
HTTPS by the unmodified simple-salesforce exactly as a push would meet them in a real org."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import pytest
import requests
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import SalesforceMalformedRequest

from conversion_sync_dev.salesforce_standin import STANDARD_DUPLICATE_MESSAGE, Org, StandinServer

PHONE_RULE = {
    "object": "Lead",
    "name": "Phone_Format",
    "condition": {"field": "Phone", "not_matches": r"\+?[0-9 ()-]{7,20}"},
    "error_message": "Phone must be digits, spaces, dashes or parentheses",
    "error_field": "Phone",
}
PURCHASED_RULE = {  # a top-of-page error: no error field
    "object": "Lead",
    "name": "Purchased_Needs_Title",
    "condition": {
        "all": [{"field": "LeadSource", "equals": "Purchased List"}, {"field": "Title", "is_blank": True}]
    },
    "error_message": "Purchased leads need a title",
}
ALLOW_SAVE = {"Sforce-Duplicate-Rule-Header": "allowSave=true"}


def control(http: requests.Session, standin: StandinServer, action: str, body: dict | None = None) -> Any:
    response = http.post(f"{standin.url}/_standin/{action}", json=body or {})
    assert response.status_code == 200, response.text
    return response.json()


def collection(sf: Salesforce, method: str, records: list[dict], all_or_none: bool, **headers: str) -> Any:
    response = sf.session.request(
        method,
        f"{sf.base_url}composite/sobjects",
        headers={**sf.headers, **headers},
        json={"allOrNone": all_or_none, "records": records},
    )
    assert response.status_code == 200, response.text
    return response.json()


def failed_rows(sf: Salesforce, sobject: str, job_id: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(getattr(sf.bulk2, sobject).get_failed_records(job_id))))


def lead(n: int, **extra: Any) -> dict[str, Any]:
    return {"LastName": f"Lead {n}", "Company": "Acme", "Email": f"lead{n}@example.com", **extra}


# -- validation rules -----------------------------------------------------------------------------


def test_validation_rules_on_single_create_and_update(
    sf_client: Salesforce, standin: StandinServer, standin_org: Org, standin_http: requests.Session
) -> None:
    listed = control(standin_http, standin, "validation_rules", {"rules": [PHONE_RULE, PURCHASED_RULE]})
    assert [r["name"] for r in listed["rules"]] == ["Phone_Format", "Purchased_Needs_Title"]
    assert listed["rules"][0]["errorConditionFormula"] == (
        r'AND(NOT(ISBLANK(Phone)), NOT(REGEX(Phone, "\\+?[0-9 ()-]{7,20}")))'
    )
    assert standin_http.get(f"{standin.url}/_standin/validation_rules").json() == listed

    with pytest.raises(SalesforceMalformedRequest) as bad:
        sf_client.Lead.create(lead(1, Phone="call me"))
    assert bad.value.status == 400
    assert bad.value.content == [
        {
            "message": "Phone must be digits, spaces, dashes or parentheses",
            "errorCode": "FIELD_CUSTOM_VALIDATION_EXCEPTION",
            "fields": ["Phone"],
        }
    ]
    with pytest.raises(SalesforceMalformedRequest) as both:  # every failing rule is reported
        sf_client.Lead.create(lead(1, Phone="555-12x", LeadSource="Purchased List"))
    assert [(e["errorCode"], e["fields"]) for e in both.value.content] == [
        ("FIELD_CUSTOM_VALIDATION_EXCEPTION", ["Phone"]),
        ("FIELD_CUSTOM_VALIDATION_EXCEPTION", []),
    ]
    # REGEX matches the whole value, and a blank phone is left to ISBLANK rules
    with pytest.raises(SalesforceMalformedRequest):
        sf_client.Lead.create(lead(1, Phone="555 1234 ext. 9"))
    assert sf_client.Lead.create(lead(2))["success"] is True
    assert sf_client.query("SELECT COUNT() FROM Lead")["totalSize"] == 1

    standin_org.set_clock("2024-05-01T12:00:00Z", freeze=True)
    lead_id = sf_client.Lead.create(lead(3, Phone="+1 (555) 010-9999"))["id"]
    before = sf_client.Lead.get(lead_id)
    standin_org.advance_clock(60)
    with pytest.raises(SalesforceMalformedRequest) as refused:
        sf_client.Lead.update(lead_id, {"Phone": "nope", "Title": "CTO"})
    assert refused.value.content[0]["errorCode"] == "FIELD_CUSTOM_VALIDATION_EXCEPTION"
    after = sf_client.Lead.get(lead_id)
    assert after == before  # nothing written: values, LastModifiedDate and SystemModstamp unchanged
    assert after["LastModifiedDate"] == after["SystemModstamp"] == "2024-05-01T12:00:00.000+0000"

    standin_org.advance_clock(60)
    sf_client.Lead.update(lead_id, {"Phone": "555-0100"})
    moved = sf_client.Lead.get(lead_id)
    assert moved["LastModifiedDate"] == moved["SystemModstamp"] == "2024-05-01T12:02:00.000+0000"


def test_rule_on_insert_only_and_inactive_rules(
    sf_client: Salesforce, standin: StandinServer, standin_http: requests.Session
) -> None:
    control(
        standin_http,
        standin,
        "validation_rules",
        {
            "rules": [
                {**PHONE_RULE, "on": "insert"},
                {**PURCHASED_RULE, "active": False},
                {
                    "object": "Contact",
                    "name": "No_Test_Titles",
                    "condition": {"field": "Title", "equals": "test"},
                    "error_message": "No test titles",
                    "error_field": "title",
                },
            ]
        },
    )
    lead_id = sf_client.Lead.create(lead(1, LeadSource="Purchased List"))["id"]
    assert sf_client.Lead.update(lead_id, {"Phone": "not checked on update"}) == 204
    with pytest.raises(SalesforceMalformedRequest) as contact:
        sf_client.Contact.create({"LastName": "X", "Title": "test"})
    assert contact.value.content[0]["fields"] == ["Title"]
    assert sf_client.Contact.create({"LastName": "X", "Title": "Test"})["success"] is True  # "=" is exact

    response = standin_http.post(
        f"{standin.url}/_standin/validation_rules",
        json={"rules": [{**PHONE_RULE, "condition": {"field": "Fax", "is_blank": True}}]},
    )
    assert response.status_code == 400
    assert "No such column 'Fax' on sobject of type Lead" in response.json()[0]["message"]
    control(standin_http, standin, "validation_rules", {"clear": True})
    assert control(standin_http, standin, "validation_rules")["rules"] == []


def test_validation_rules_in_collections(
    sf_client: Salesforce, standin: StandinServer, standin_org: Org, standin_http: requests.Session
) -> None:
    standin_org.set_clock("2024-05-01T12:00:00Z", freeze=True)
    control(standin_http, standin, "validation_rules", {"rules": [PHONE_RULE]})
    records = [{"attributes": {"type": "Lead"}, **lead(i)} for i in range(3)]
    records[1]["Phone"] = "bad phone"

    results = collection(sf_client, "POST", records, all_or_none=True)
    assert [r["success"] for r in results] == [False, False, False]
    assert results[0]["errors"][0]["statusCode"] == "ALL_OR_NONE_OPERATION_ROLLED_BACK"
    assert results[1]["errors"] == [
        {
            "statusCode": "FIELD_CUSTOM_VALIDATION_EXCEPTION",
            "message": "Phone must be digits, spaces, dashes or parentheses",
            "fields": ["Phone"],
        }
    ]
    assert sf_client.query("SELECT COUNT() FROM Lead")["totalSize"] == 0

    results = collection(sf_client, "POST", records, all_or_none=False)
    assert [r["success"] for r in results] == [True, False, True]
    assert (
        "id" not in results[1]
        and results[1]["errors"][0]["statusCode"] == "FIELD_CUSTOM_VALIDATION_EXCEPTION"
    )
    created = [results[0]["id"], results[2]["id"]]

    updates = [
        {"attributes": {"type": "Lead"}, "Id": created[0], "Phone": "12345678"},
        {"attributes": {"type": "Lead"}, "Id": created[1], "Phone": "twelve"},
    ]
    standin_org.advance_clock(60)
    results = collection(sf_client, "PATCH", updates, all_or_none=False)
    assert results[0] == {"id": created[0], "success": True, "errors": []}
    assert results[1]["id"] == created[1] and results[1]["success"] is False
    rows = sf_client.query("SELECT Id, Phone, LastModifiedDate, SystemModstamp FROM Lead")["records"]
    assert {r["Id"]: (r["Phone"], r["LastModifiedDate"], r["SystemModstamp"]) for r in rows} == {
        created[0]: ("12345678", "2024-05-01T12:01:00.000+0000", "2024-05-01T12:01:00.000+0000"),
        created[1]: (None, "2024-05-01T12:00:00.000+0000", "2024-05-01T12:00:00.000+0000"),
    }


def test_validation_rules_in_bulk_ingest(
    sf_client: Salesforce, standin: StandinServer, standin_http: requests.Session
) -> None:
    control(standin_http, standin, "validation_rules", {"rules": [PHONE_RULE, PURCHASED_RULE]})
    rows = [lead(i) for i in range(250)]
    rows[7]["Phone"] = "n/a"
    rows[210]["LeadSource"] = "Purchased List"
    (result,) = sf_client.bulk2.Lead.insert(records=rows, wait=0)
    assert (result["numberRecordsProcessed"], result["numberRecordsFailed"]) == (250, 2)
    failed = failed_rows(sf_client, "Lead", result["job_id"])
    assert [(r["Email"], r["sf__Error"]) for r in failed] == [
        (
            "lead7@example.com",
            "FIELD_CUSTOM_VALIDATION_EXCEPTION:Phone must be digits, spaces, dashes or parentheses:Phone --",
        ),
        ("lead210@example.com", "FIELD_CUSTOM_VALIDATION_EXCEPTION:Purchased leads need a title:--"),
    ]
    assert sf_client.query("SELECT COUNT() FROM Lead")["totalSize"] == 248


# -- duplicate rules ------------------------------------------------------------------------------


def duplicate_rule(**overrides: Any) -> dict[str, Any]:
    return {
        "object": "Lead",
        "name": "Lead_Email_Duplicates",
        "match_fields": ["Email"],
        "compare_objects": ["Lead", "Contact"],
        "action_on_insert": "block",
        "action_on_update": "block",
        **overrides,
    }


def test_blocking_duplicate_rule_on_single_create(
    sf_client: Salesforce, standin: StandinServer, standin_org: Org, standin_http: requests.Session
) -> None:
    (contact_id,) = standin_org.seed("Contact", [{"LastName": "Known", "Email": "Known@Example.com"}])
    converted = sf_client.Lead.create(lead(9, Email="old@example.com"))["id"]
    standin_org.convert_lead(converted)
    listed = control(standin_http, standin, "duplicate_rules", {"rules": [duplicate_rule()]})
    assert listed["rules"][0]["matchRules"] == ["Lead_Email_Match_Rule", "Contact_Email_Match_Rule"]

    with pytest.raises(SalesforceMalformedRequest) as blocked:
        sf_client.Lead.create(
            lead(1, Email="known@example.COM"), headers=ALLOW_SAVE
        )  # block ignores allowSave
    (error,) = blocked.value.content
    assert error["errorCode"] == "DUPLICATES_DETECTED" and error["message"] == STANDARD_DUPLICATE_MESSAGE
    result = error["duplicateResut"]  # sic: Salesforce's REST body spells it so
    assert {k: result[k] for k in ("allowSave", "duplicateRule", "duplicateRuleEntityType")} == {
        "allowSave": False,
        "duplicateRule": "Lead_Email_Duplicates",
        "duplicateRuleEntityType": "Lead",
    }
    (match,) = result["matchResults"]
    assert (match["entityType"], match["rule"], match["size"], match["matchEngine"]) == (
        "Contact",
        "Contact_Email_Match_Rule",
        1,
        "ExactMatchEngine",
    )
    assert match["matchRecords"][0]["record"] == {
        "attributes": {"type": "Contact", "url": f"/services/data/v59.0/sobjects/Contact/{contact_id}"},
        "Id": contact_id,
    }
    assert match["matchRecords"][0]["matchConfidence"] == 100.0

    # a converted lead's email matches its new Contact, never the converted Lead itself
    with pytest.raises(SalesforceMalformedRequest) as converted_contact:
        sf_client.Lead.create(lead(2, Email="old@example.com"))
    matched = converted_contact.value.content[0]["duplicateResut"]["matchResults"]
    assert [m["entityType"] for m in matched] == ["Contact"]
    control(standin_http, standin, "duplicate_rules", {"rules": [duplicate_rule(compare_objects="Lead")]})
    assert len(control(standin_http, standin, "duplicate_rules")["rules"]) == 1  # same name: replaced
    assert sf_client.Lead.create(lead(2, Email="old@example.com"))["success"] is True
    assert sf_client.Lead.create(lead(3, Email=None))["success"] is True
    assert sf_client.Lead.create(lead(4, Email=None))["success"] is True
    with pytest.raises(SalesforceMalformedRequest) as against_lead:
        sf_client.Lead.create(lead(5, Email="old@example.com"))
    assert [m["entityType"] for m in against_lead.value.content[0]["duplicateResut"]["matchResults"]] == [
        "Lead"
    ]


def test_alert_rule_is_saved_only_with_allow_save(
    sf_client: Salesforce, standin: StandinServer, standin_org: Org, standin_http: requests.Session
) -> None:
    control(
        standin_http,
        standin,
        "duplicate_rules",
        {"rules": [duplicate_rule(action_on_insert="allow", alert_text="Use one of these records?")]},
    )
    first = sf_client.Lead.create(lead(1, Title="Original"))["id"]
    with pytest.raises(SalesforceMalformedRequest) as alerted:
        sf_client.Lead.create(lead(1))
    assert alerted.value.content[0]["duplicateResut"]["allowSave"] is True
    assert alerted.value.content[0]["message"] == "Use one of these records?"

    with_details = {"Sforce-Duplicate-Rule-Header": "allowSave=false; includeRecordDetails=true"}
    with pytest.raises(SalesforceMalformedRequest) as detailed:
        sf_client.Lead.create(lead(1), headers=with_details)
    record = detailed.value.content[0]["duplicateResut"]["matchResults"][0]["matchRecords"][0]["record"]
    assert record["Id"] == first and record["Title"] == "Original" and record["Email"] == "lead1@example.com"

    second = sf_client.Lead.create(lead(1), headers=ALLOW_SAVE)["id"]
    assert second != first
    assert sf_client.query("SELECT COUNT() FROM Lead WHERE Email = 'lead1@example.com'")["totalSize"] == 2

    control(
        standin_http,
        standin,
        "duplicate_rules",
        {"rules": [duplicate_rule(action_on_insert="allow", alert=False)]},
    )
    assert sf_client.Lead.create(lead(1))["success"] is True  # report only: saved


def test_duplicate_rule_on_update(
    sf_client: Salesforce, standin: StandinServer, standin_org: Org, standin_http: requests.Session
) -> None:
    standin_org.set_clock("2024-05-01T12:00:00Z", freeze=True)
    a, b, twin = (sf_client.Lead.create(lead(n))["id"] for n in (1, 2, 1))  # twin predates the rule
    control(standin_http, standin, "duplicate_rules", {"rules": [duplicate_rule(action_on_insert="allow")]})
    standin_org.advance_clock(60)
    with pytest.raises(SalesforceMalformedRequest) as moved:
        sf_client.Lead.update(b, {"Email": "LEAD1@example.com"})
    assert moved.value.content[0]["duplicateResut"]["allowSave"] is False
    # the rule runs on every edit: an existing duplicate cannot be edited while its twin exists
    with pytest.raises(SalesforceMalformedRequest):
        sf_client.Lead.update(twin, {"Title": "Any"})
    unchanged = sf_client.Lead.get(twin)
    assert unchanged["Title"] is None and unchanged["LastModifiedDate"] == "2024-05-01T12:00:00.000+0000"
    sf_client.Lead.delete(a)
    assert sf_client.Lead.update(twin, {"Title": "Any"}) == 204  # deleted records never match
    assert sf_client.Lead.get(twin)["LastModifiedDate"] == "2024-05-01T12:01:00.000+0000"


def test_duplicates_in_collections_and_bulk(
    sf_client: Salesforce, standin: StandinServer, standin_org: Org, standin_http: requests.Session
) -> None:
    standin_org.seed("Lead", [lead(0)])
    control(standin_http, standin, "duplicate_rules", {"rules": [duplicate_rule(action_on_insert="allow")]})
    records = [{"attributes": {"type": "Lead"}, **lead(n)} for n in (0, 5, 5)]
    results = collection(sf_client, "POST", records, all_or_none=False)
    # records saved in the same request are not matched against each other, like Salesforce
    assert [r["success"] for r in results] == [False, True, True]
    assert results[0] == {
        "success": False,
        "errors": [
            {"statusCode": "DUPLICATES_DETECTED", "message": STANDARD_DUPLICATE_MESSAGE, "fields": []}
        ],
    }
    results = collection(sf_client, "POST", records[:1], all_or_none=False, **ALLOW_SAVE)
    assert results[0]["success"] is True

    rows = [lead(n) for n in range(5, 405)]  # lead5 exists; 400 new rows, saved in chunks of 200
    rows[300]["Email"] = "lead10@example.com"  # duplicates row 5 (lead10) of the first chunk
    rows[100]["Email"] = "lead11@example.com"  # duplicates row 6 in the same chunk: not matched
    (result,) = sf_client.bulk2.Lead.insert(records=rows, wait=0)
    failed = failed_rows(sf_client, "Lead", result["job_id"])
    assert [(r["LastName"], r["sf__Error"]) for r in failed] == [
        ("Lead 5", f"DUPLICATES_DETECTED:{STANDARD_DUPLICATE_MESSAGE}:--"),
        ("Lead 305", f"DUPLICATES_DETECTED:{STANDARD_DUPLICATE_MESSAGE}:--"),
    ]
    assert result["numberRecordsFailed"] == 2


# -- formula and read-only fields -----------------------------------------------------------------


def test_formula_and_read_only_fields(sf_client: Salesforce, standin_org: Org) -> None:
    for sobject, read_only in (("Lead", "Lead_Score__c"), ("Contact", "Lifetime_Value__c")):
        fields = {f["name"]: f for f in getattr(sf_client, sobject).describe()["fields"]}
        formula = fields["Email_Domain__c"]
        assert (formula["calculated"], formula["createable"], formula["updateable"], formula["custom"]) == (
            True,
            False,
            False,
            True,
        )
        assert formula["calculatedFormula"].startswith("IF(ISBLANK(Email)")
        assert (fields[read_only]["calculated"], fields[read_only]["updateable"]) == (False, False)
        assert fields["CreatedDate"]["updateable"] is False and fields["Email"]["calculatedFormula"] is None

    lead_id = sf_client.Lead.create(lead(1))["id"]
    assert sf_client.Lead.get(lead_id)["Email_Domain__c"] == "example.com"
    sf_client.Lead.update(lead_id, {"Email": "x@other.org"})
    found = sf_client.query("SELECT Id FROM Lead WHERE Email_Domain__c = 'other.org'")["records"]
    assert [r["Id"] for r in found] == [lead_id]

    for values in (
        {"Email_Domain__c": "a.com"},
        {"Lead_Score__c": 5},
        {"LastModifiedDate": "2024-01-01T00:00:00Z"},
    ):
        field = next(iter(values))
        with pytest.raises(SalesforceMalformedRequest) as create:
            sf_client.Lead.create({**lead(2), **values})
        with pytest.raises(SalesforceMalformedRequest) as update:
            sf_client.Lead.update(lead_id, values)
        for error in (create, update):
            assert error.value.content[0]["errorCode"] == "INVALID_FIELD_FOR_INSERT_UPDATE"
            assert error.value.content[0]["fields"] == [field]
            assert error.value.content[0]["message"].startswith(f"Unable to create/update fields: {field}.")

    results = collection(
        sf_client,
        "PATCH",
        [
            {"attributes": {"type": "Lead"}, "Id": lead_id, "Email_Domain__c": "x"},
            {"attributes": {"type": "Lead"}, "Id": lead_id, "Title": "Fine"},
        ],
        all_or_none=False,
    )
    assert results[0]["errors"][0]["statusCode"] == "INVALID_FIELD_FOR_INSERT_UPDATE"
    assert results[1]["success"] is True
    (job,) = sf_client.bulk2.Contact.insert(records=[{"LastName": "B", "Lifetime_Value__c": "10"}], wait=0)
    (row,) = failed_rows(sf_client, "Contact", job["job_id"])
    assert row["sf__Error"].startswith(
        "INVALID_FIELD_FOR_INSERT_UPDATE:Unable to create/update fields: Lifetime_Value__c."
    )
    assert row["sf__Error"].endswith(":Lifetime_Value__c --")

    # fixtures may seed FLS read-only values, never formulas (computed)
    (seeded,) = standin_org.seed("Lead", [{**lead(3), "Lead_Score__c": 42.0}])
    assert sf_client.Lead.get(seeded)["Lead_Score__c"] == 42.0
    with pytest.raises(Exception, match="INVALID_FIELD_FOR_INSERT_UPDATE"):
        standin_org.seed("Lead", [{**lead(4), "Email_Domain__c": "forged.com"}])


def test_reset_forgets_rules(
    standin: StandinServer, standin_org: Org, standin_http: requests.Session
) -> None:
    control(standin_http, standin, "validation_rules", {"rules": [PHONE_RULE]})
    control(standin_http, standin, "duplicate_rules", {"rules": [duplicate_rule()]})
    control(standin_http, standin, "reset")
    assert control(standin_http, standin, "validation_rules")["rules"] == []
    assert control(standin_http, standin, "duplicate_rules")["rules"] == []


def test_rules_survive_save_and_load(tmp_path: Path) -> None:
    org = Org()
    org.set_validation_rules([PHONE_RULE])
    org.set_duplicate_rules([duplicate_rule(), duplicate_rule(name="Contact_Rule", object="Contact")])
    org.set_duplicate_rules([duplicate_rule(name="Contact_Rule", object="Contact", alert=False)])  # replaces
    org.save(tmp_path / "state.json")
    loaded = Org()
    loaded.load(tmp_path / "state.json")
    assert loaded.validation_rules() == org.validation_rules()
    assert loaded.duplicate_rules() == org.duplicate_rules()
    assert [r["operations"] for r in loaded.duplicate_rules()] == [["Alert"], ["Report"]]
    loaded.create("Lead", lead(1))
    with pytest.raises(Exception, match="DUPLICATES_DETECTED"):
        loaded.create("Lead", lead(1))
