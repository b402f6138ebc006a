"""Salesforce fixtures: one HTTPS stand-in per session, a clean org and a logged-in simple-salesforce per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests
from simple_salesforce import Salesforce

from conversion_sync.salesforce.client import SalesforceSettings
from conversion_sync_dev.salesforce_standin import Org, StandinServer


@pytest.fixture(scope="session")
def standin() -> Iterator[StandinServer]:
    """The Salesforce stand-in on a free 127.0.0.1 port (``standin.url``, ``standin.ca_path``, ``standin.org``)."""
    with StandinServer() as server:
        yield server


@pytest.fixture
def standin_org(standin: StandinServer) -> Org:
    """The stand-in's org, reset to empty (records, clock, limits, faults, stats) for this test."""
    standin.org.reset()
    return standin.org


@pytest.fixture
def standin_http(standin: StandinServer) -> Iterator[requests.Session]:
    """A plain ``requests`` session trusting the stand-in CA (for raw REST and ``/_standin`` calls)."""
    session = standin.requests_session()
    yield session
    session.close()


@pytest.fixture
def sf_client(standin: StandinServer, standin_org: Org) -> Salesforce:
    """``simple_salesforce.Salesforce`` logged in over SOAP against a freshly reset org."""
    return standin.login()


@pytest.fixture
def salesforce_resource(standin: StandinServer, standin_org: Org) -> SalesforceSettings:
    """The product's SalesforceSettings logging in to a freshly reset stand-in org, with fast retries."""
    return SalesforceSettings(
        username=standin.username,
        password=standin.password,
        security_token=standin.security_token,
        login_url=standin.url,
        ca_bundle=str(standin.ca_path),
        backoff_seconds=0.01,
        max_backoff_seconds=0.05,
        bulk_poll_seconds=0.01,
    )
