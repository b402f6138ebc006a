"""Which mapped Salesforce fields can never be written (formula, read-only, missing), from `describe`."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import requests

from conversion_sync.config.salesforce import SalesforceConfig
from conversion_sync.salesforce.budget import ApiBudget, ApiBudgetExhausted
from conversion_sync.salesforce.client import SalesforceApiError, SalesforceClient, SalesforceSettings

log = logging.getLogger(__name__)

PUSHING_PREFERENCES = frozenset({"most_recent", "conversion_wins"})
"""Preferences under which a store value is written to Salesforce."""


@dataclass(frozen=True)
class UnpushableMapping:
    """One field mapping whose Salesforce field cannot be written, with where it is configured and why."""

    sobject: str
    store_field: str
    salesforce_field: str
    preference: str
    reason: str

    @property
    def where(self) -> str:
        return f"salesforce.yaml: field_mappings.{self.sobject}.{self.store_field}"

    @property
    def would_push(self) -> bool:
        """Whether the preference asks for pushes (so the mapping silently loses them)."""
        return self.preference in PUSHING_PREFERENCES

    def warning(self) -> str:
        text = f"{self.where}: {self.reason}"
        if self.would_push:
            text += f" (preference {self.preference}; set preference: salesforce_wins to say so)"
        return text


def unpushable_reason(sobject: str, field_name: str, described: Mapping[str, Any] | None) -> str | None:
    """Why `sobject.field_name` can never be pushed, from its describe entry (None: missing); None if it can."""
    label = f"{sobject}.{field_name}"
    if described is None:
        return (
            f"{label} is not a field of {sobject} for the integration user (not in describe): it does not "
            "exist or field-level security hides it; it is never pushed"
        )
    if described.get("calculated"):
        return f"{label} is a formula field (calculated); it is read from Salesforce but never pushed"
    if not described.get("updateable"):
        if described.get("createable"):
            why = "can be set only when the record is created (updateable=false)"
        else:
            why = "is read-only for the integration user (updateable=false, createable=false)"
        return f"{label} {why}; it is read from Salesforce but never pushed"
    return None


def describe_fields(client: SalesforceClient, sobject: str) -> dict[str, dict[str, Any]]:
    """`sobject`'s describe field entries keyed by lower-case field name (one API call)."""
    described = client.call(f"describe {sobject}", lambda sf: getattr(sf, sobject).describe())
    return {str(f["name"]).lower(): f for f in described["fields"]}


def unpushable_mappings(client: SalesforceClient, config: SalesforceConfig) -> list[UnpushableMapping]:
    """Every synced (not do_not_sync) mapping whose Salesforce field cannot be written; one describe per object."""
    out = []
    for sobject, mappings in config.field_mappings.items():
        synced = {store: m for store, m in mappings.items() if m.preference != "do_not_sync"}
        if not synced:
            continue
        fields = describe_fields(client, sobject)
        for store_field, mapping in synced.items():
            reason = unpushable_reason(sobject, mapping.salesforce, fields.get(mapping.salesforce.lower()))
            if reason is not None:
                out.append(
                    UnpushableMapping(sobject, store_field, mapping.salesforce, mapping.preference, reason)
                )
    return out


def unpushable_fields(client: SalesforceClient, config: SalesforceConfig) -> dict[str, dict[str, str]]:
    """Salesforce object -> {Salesforce field as mapped -> reason} for mapped fields a push must never write."""
    out: dict[str, dict[str, str]] = {}
    for item in unpushable_mappings(client, config):
        out.setdefault(item.sobject, {})[item.salesforce_field] = item.reason
    return out


@dataclass
class FieldCheckReport:
    """What `conversion-sync validate` says about mapped Salesforce fields."""

    status: str
    """`checked`, `skipped` (no credentials or no mappings) or `unreachable`."""
    message: str
    unpushable: list[UnpushableMapping]


def check_mapped_fields(
    config: SalesforceConfig, settings: SalesforceSettings | None = None
) -> FieldCheckReport:
    """Describe each mapped object (only when credentials are configured) and list the unpushable mappings.

    Never raises for Salesforce trouble: a login or network failure is an `unreachable` report whose message
    names where it tried (never a secret). One login attempt, no retries: validate should answer quickly.
    """
    objects = sorted(
        obj
        for obj, maps in config.field_mappings.items()
        if any(m.preference != "do_not_sync" for m in maps.values())
    )
    if not objects:
        return FieldCheckReport("skipped", "no synced field mappings to check against Salesforce", [])
    if settings is None:
        settings = SalesforceSettings.from_env(max_attempts=1, request_timeout_seconds=30)
    reason = settings.not_configured_reason
    if reason:
        return FieldCheckReport("skipped", f"mapped fields not checked against Salesforce: {reason}", [])
    where = settings.describe()
    client = SalesforceClient(settings, ApiBudget(reserve=0), log)
    try:
        client.login()
        found = unpushable_mappings(client, config)
    except (SalesforceApiError, ApiBudgetExhausted, requests.RequestException, OSError) as exc:
        return FieldCheckReport(
            "unreachable",
            f"could not check mapped fields against Salesforce at {where}: "
            f"{client.redact(str(exc)) or type(exc).__name__}; the other checks are unaffected",
            [],
        )
    finally:
        client.close()
    return FieldCheckReport(
        "checked",
        f"checked the mapped fields of {', '.join(objects)} against Salesforce at {where}: "
        f"{len(found)} can never be pushed",
        found,
    )
