"""SalesforceSettings / SalesforceClient against the HTTPS stand-in: login, retries, re-login, budget, secrets."""

from __future__ import annotations

import logging

import dagster as dg
import pytest

from conversion_sync.defs.resources import SalesforceResource
from conversion_sync.salesforce.budget import ApiBudget, ApiBudgetExhausted, parse_limit_info
from conversion_sync.salesforce.client import (
    ENV_VARS,
    SalesforceApiError,
    SalesforceAuthenticationError,
    SalesforceNotConfigured,
    SalesforceSettings,
    SalesforceUnavailable,
    _typed_csv_records,
)
from conversion_sync_dev.salesforce_standin import Org, StandinServer


def seed_contacts(org: Org, n: int) -> list[str]:
    return org.seed("Contact", [{"LastName": f"P{i}", "Email": f"p{i}@example.com"} for i in range(n)])


def test_login_and_query_counts_calls_and_reads_limit_info(
    salesforce_resource: SalesforceSettings, standin_org: Org
) -> None:
    seed_contacts(standin_org, 5)
    standin_org.set_limits(max=5000, used=100)
    budget = ApiBudget(reserve=10)
    client = salesforce_resource.connect(budget)
    page = client.query("SELECT Id, Email FROM Contact ORDER BY Id")
    assert page.total_size == 5 and len(page.records) == 5 and page.next_records_url is None
    assert budget.calls_made == 1
    assert (budget.used, budget.max, budget.remaining) == (101, 5000, 4899)
    assert client.logins == 1
    client.close()


def test_access_token_mode(standin: StandinServer, standin_org: Org) -> None:
    token = standin_org.login(standin.username, standin.password + standin.security_token)
    resource = SalesforceSettings(
        instance_url=standin.url, access_token=token, ca_bundle=str(standin.ca_path)
    )
    assert resource.configured
    client = resource.connect()
    assert client.query("SELECT Id FROM Account").total_size == 0
    assert client.logins == 0  # no SOAP login: the token was used as the session
    standin_org.invalidate_sessions()
    with pytest.raises(SalesforceAuthenticationError, match="no username/password") as failure:
        client.query("SELECT Id FROM Account")
    assert token not in str(failure.value)


def test_not_configured_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ENV_VARS.values():
        monkeypatch.delenv(var, raising=False)
    resource = SalesforceSettings.from_env()
    assert not resource.configured
    assert "SALESFORCE_INSTANCE_URL + SALESFORCE_ACCESS_TOKEN" in (resource.not_configured_reason or "")
    with pytest.raises(SalesforceNotConfigured):
        resource.connect()
    monkeypatch.setenv("SALESFORCE_ACCESS_TOKEN", "abc")
    assert "SALESFORCE_INSTANCE_URL is not" in (SalesforceSettings.from_env().not_configured_reason or "")


def test_from_env_keeps_secrets_as_env_var_references(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SALESFORCE_USERNAME", "someone@example.com")
    monkeypatch.setenv("SALESFORCE_PASSWORD", "from-env-password")
    monkeypatch.delenv("SALESFORCE_INSTANCE_URL", raising=False)
    monkeypatch.delenv("SALESFORCE_ACCESS_TOKEN", raising=False)
    resource = SalesforceResource.from_env()
    assert isinstance(resource.password, dg.EnvVar)
    assert resource.password.env_var_name == "SALESFORCE_PASSWORD"
    assert resource.settings().configured
    assert "from-env-password" not in resource.settings().describe()


def test_invalid_session_relogs_in_once(salesforce_resource: SalesforceSettings, standin_org: Org) -> None:
    seed_contacts(standin_org, 3)
    client = salesforce_resource.connect()
    standin_org.add_fault("invalid_session")
    assert client.query("SELECT Id FROM Contact").total_size == 3
    assert client.logins == 2
    standin_org.add_fault("invalid_session", count=2)
    with pytest.raises(SalesforceAuthenticationError, match="INVALID_SESSION_ID"):
        client.query("SELECT Id FROM Contact")


def test_503_and_query_timeout_are_retried_then_given_up(
    salesforce_resource: SalesforceSettings, standin_org: Org, caplog: pytest.LogCaptureFixture
) -> None:
    client = salesforce_resource.connect()
    standin_org.add_fault("unavailable_503", count=2)
    standin_org.add_fault("query_timeout", count=1, after=2)
    with caplog.at_level(logging.WARNING):
        assert client.query("SELECT Id FROM Contact").total_size == 0
    assert standin_org.stats()["requests"]["fault:unavailable_503"] == 2
    assert "retrying" in caplog.text
    standin_org.add_fault("unavailable_503", count=10)
    with pytest.raises(SalesforceUnavailable, match="all 5 attempts"):
        client.query("SELECT Id FROM Contact")


def test_request_limit_and_reserve_stop_the_budget(
    salesforce_resource: SalesforceSettings, standin_org: Org
) -> None:
    budget = ApiBudget(reserve=50)
    client = salesforce_resource.connect(budget)
    standin_org.add_fault("request_limit")
    with pytest.raises(ApiBudgetExhausted, match="REQUEST_LIMIT_EXCEEDED"):
        client.query("SELECT Id FROM Contact")
    standin_org.set_limits(max=1000, used=949)
    client.query("SELECT Id FROM Contact")  # leaves 50 = the reserve
    calls = budget.calls_made
    with pytest.raises(ApiBudgetExhausted, match="at or below the reserve of 50"):
        client.query("SELECT Id FROM Contact")
    assert budget.calls_made == calls  # refused before calling


def test_api_errors_are_clear_and_carry_no_secrets(
    salesforce_resource: SalesforceSettings, standin: StandinServer, standin_org: Org
) -> None:
    client = salesforce_resource.connect()
    with pytest.raises(SalesforceApiError, match="INVALID_FIELD") as failure:
        client.query("SELECT NoSuchField__c FROM Contact")
    assert standin.password not in str(failure.value)
    wrong = salesforce_resource.model_copy(update={"password": "Wr0ng-Planted-Secret"})
    with pytest.raises(SalesforceAuthenticationError, match="INVALID_LOGIN") as login_failure:
        wrong.connect()
    assert "Wr0ng-Planted-Secret" not in str(login_failure.value)


def test_limit_info_parsing_and_bulk_csv_typing() -> None:
    assert parse_limit_info("api-usage=18/5000") == (18, 5000)
    assert parse_limit_info("per-app-api-usage=2/250(appName=x); api-usage=25/5000") == (25, 5000)
    assert parse_limit_info(None) is None
    text = '"Id","IsDeleted","NumberOfEmployees","AnnualRevenue","Name"\n"001","false","12","1.5",""\n'
    types = {"id": "id", "isdeleted": "boolean", "numberofemployees": "int", "annualrevenue": "currency"}
    assert _typed_csv_records(text, types) == [
        {"Id": "001", "IsDeleted": False, "NumberOfEmployees": 12, "AnnualRevenue": 1.5, "Name": None}
    ]


def test_untrusted_certificate_fails_at_once_with_a_hint(salesforce_resource: SalesforceSettings) -> None:
    untrusting = salesforce_resource.model_copy(update={"ca_bundle": None})
    with pytest.raises(SalesforceApiError, match="SALESFORCE_CA_BUNDLE"):
        untrusting.connect()
