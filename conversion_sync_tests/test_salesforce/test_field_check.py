"""Mapped Salesforce fields that can never be pushed (formula, read-only, missing), found from `describe` over
HTTPS against the stand-in, and how `conversion-sync validate` reports them."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from click.testing import CliRunner

from conversion_sync.cli import main
from conversion_sync.config.salesforce import SalesforceConfig
from conversion_sync.salesforce.budget import ApiBudget
from conversion_sync.salesforce.client import ENV_VARS, SalesforceSettings
from conversion_sync.salesforce.field_check import check_mapped_fields, unpushable_fields
from conversion_sync_dev.salesforce_standin import Org, StandinServer

MAPPINGS = {
    "Lead": {
        "first_name": "FirstName",
        "email_domain": "Email_Domain__c",  # formula
        "lead_score": {"salesforce": "Lead_Score__c", "preference": "salesforce_wins"},  # read-only (FLS)
        "converted": "isconverted",  # system field, any case
    },
    "Contact": {
        "last_name": "LastName",
        "full_name": "Name",  # compound name: read-only
        "lifetime_value": {"salesforce": "Lifetime_Value__c", "preference": "conversion_wins"},
        "shoe_size": "Shoe_Size__c",  # not in describe
        "domain_ignored": {"salesforce": "Email_Domain__c", "preference": "do_not_sync"},
    },
}
SALESFORCE_YAML = """\
field_mappings:
  Lead:
    first_name: FirstName
    email_domain: Email_Domain__c
    lead_score: {salesforce: Lead_Score__c, preference: salesforce_wins}
  Contact:
    last_name: LastName
    domain_ignored: {salesforce: Email_Domain__c, preference: do_not_sync}
"""


def test_unpushable_fields_from_describe(salesforce_resource: SalesforceSettings, standin_org: Org) -> None:
    config = SalesforceConfig(field_mappings=MAPPINGS)  # type: ignore[arg-type]
    budget = ApiBudget()
    client = salesforce_resource.connect(budget)
    try:
        found = unpushable_fields(client, config)
    finally:
        client.close()
    assert {obj: sorted(fields) for obj, fields in found.items()} == {
        "Lead": ["Email_Domain__c", "Lead_Score__c", "isconverted"],
        "Contact": ["Lifetime_Value__c", "Name", "Shoe_Size__c"],
    }
    assert found["Lead"]["Email_Domain__c"] == (
        "Lead.Email_Domain__c is a formula field (calculated); it is read from Salesforce but never pushed"
    )
    assert (
        "read-only for the integration user (updateable=false, createable=false)"
        in (found["Lead"]["Lead_Score__c"])
    )
    assert "not in describe" in found["Contact"]["Shoe_Size__c"]
    assert budget.calls_made == 2  # one describe per mapped object, nothing else


def test_only_do_not_sync_mappings_need_no_call(
    salesforce_resource: SalesforceSettings, standin_org: Org
) -> None:
    config = SalesforceConfig(
        field_mappings={"Lead": {"d": {"salesforce": "Email_Domain__c", "preference": "do_not_sync"}}}
    )  # type: ignore[dict-item]
    before = standin_org.stats()["requests"].get("api_requests", 0)
    report = check_mapped_fields(config, salesforce_resource)
    assert report.status == "skipped" and report.unpushable == []
    assert standin_org.stats()["requests"].get("api_requests", 0) == before
    assert standin_org.stats()["requests"].get("login", 0) == 0


# -- conversion-sync validate ----------------------------------------------------------------------------


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "syncs"
    directory.mkdir()
    (directory / "salesforce.yaml").write_text(SALESFORCE_YAML)
    return directory


@pytest.fixture
def no_salesforce_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for var in ENV_VARS.values():
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def use_standin(monkeypatch: pytest.MonkeyPatch, standin: StandinServer, password: str | None = None) -> None:
    monkeypatch.setenv("SALESFORCE_USERNAME", standin.username)
    monkeypatch.setenv("SALESFORCE_PASSWORD", password or standin.password)
    monkeypatch.setenv("SALESFORCE_SECURITY_TOKEN", standin.security_token)
    monkeypatch.setenv("SALESFORCE_LOGIN_URL", standin.url)
    monkeypatch.setenv("SALESFORCE_CA_BUNDLE", str(standin.ca_path))


def validate(config_dir: Path) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["--config", str(config_dir), "validate"])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout + result.stderr


def test_validate_warns_about_a_formula_mapping(
    config_dir: Path, no_salesforce_env: pytest.MonkeyPatch, standin: StandinServer, standin_org: Org
) -> None:
    use_standin(no_salesforce_env, standin)
    code, output = validate(config_dir)
    assert code == 0, output  # read-only fields are fine to poll: a warning, not an error
    assert (
        "warning: salesforce.yaml: field_mappings.Lead.email_domain: Lead.Email_Domain__c is a formula field "
        "(calculated); it is read from Salesforce but never pushed (preference most_recent; set preference: "
        "salesforce_wins to say so)"
    ) in output
    # salesforce_wins never pushes: still listed, without the hint; do_not_sync is not checked at all
    assert "field_mappings.Lead.lead_score: Lead.Lead_Score__c is read-only" in output
    assert "salesforce_wins to say so" not in output.split("lead_score")[1].splitlines()[0]
    assert "domain_ignored" not in output and "FirstName" not in output
    assert f"against Salesforce at {standin.url} as {standin.username}: 2 can never be pushed" in output
    assert "is valid: 0 sync(s)" in output
    assert standin.password not in output and standin.security_token not in output


def test_validate_without_credentials_does_not_contact_salesforce(
    config_dir: Path, no_salesforce_env: pytest.MonkeyPatch, standin_org: Org
) -> None:
    code, output = validate(config_dir)
    assert code == 0, output
    assert "salesforce: mapped fields not checked against Salesforce: no Salesforce credentials" in output
    assert "warning" not in output
    assert standin_org.stats()["requests"].get("login", 0) == 0


def test_validate_says_when_salesforce_is_unreachable_and_keeps_other_checks(
    config_dir: Path, no_salesforce_env: pytest.MonkeyPatch, standin: StandinServer, standin_org: Org
) -> None:
    (config_dir / "schema.yaml").write_text("contact_fields: {plan: strin}\n")  # an unrelated real error
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    use_standin(no_salesforce_env, standin)
    no_salesforce_env.setenv("SALESFORCE_LOGIN_URL", f"https://127.0.0.1:{closed}")
    code, output = validate(config_dir)
    assert code == 1  # from schema.yaml, not from Salesforce
    assert "error: schema.yaml: contact_fields.plan: must be one of" in output
    assert (
        f"warning: salesforce: could not check mapped fields against Salesforce at https://127.0.0.1:{closed}"
        in output
    )
    assert "the other checks are unaffected" in output and "Traceback" not in output

    (config_dir / "schema.yaml").unlink()
    wrong = "wrong-" + standin.password
    use_standin(no_salesforce_env, standin, password=wrong)
    code, output = validate(config_dir)
    assert code == 0, output
    assert "could not check mapped fields" in output and "INVALID_LOGIN" in output
    assert wrong not in output and standin.security_token not in output
