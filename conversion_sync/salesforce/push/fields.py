"""Which store fields the push writes to a Lead or Contact, how a record is built, and when a store value wins."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from conversion_sync.config.salesforce import SalesforceConfig
from conversion_sync.salesforce.clock import PUSH_PREFERENCES, store_value_wins
from conversion_sync.salesforce.poller import mapped_fields
from conversion_sync.store.contacts import sql_literal
from conversion_sync.store.sql_text import quote_ident

PEOPLE = ("Lead", "Contact")

PLACEHOLDER = "[not provided]"
"""Salesforce requires Lead.LastName, Lead.Company and Contact.LastName; a contact without one gets this text
(what Salesforce's own web-to-lead writes), and the next poll reads it back like any other value."""

REQUIRED_TEXT: dict[str, tuple[str, ...]] = {"Lead": ("LastName", "Company"), "Contact": ("LastName",)}


@dataclass(frozen=True)
class PushField:
    """A mapped field the push may write: its store field, Salesforce field and preference."""

    store_field: str
    salesforce_field: str
    preference: str
    is_column: bool

    def store_json_sql(self, contact: str = "c") -> str:
        """SQL for the store value as jsonb (NULL when empty)."""
        if self.is_column:
            return f"to_jsonb({contact}.{quote_ident(self.store_field)})"
        return f"NULLIF({contact}.custom_fields -> {sql_literal(self.store_field)}, 'null'::jsonb)"


def push_fields(config: SalesforceConfig, sobject: str) -> list[PushField]:
    """The mapped fields of `sobject` whose preference lets store values go to Salesforce (most_recent,
    conversion_wins); salesforce_wins and do_not_sync fields are never written."""
    return [
        PushField(m.store_field, m.salesforce_field, m.preference, m.is_column)
        for m in mapped_fields(config, sobject)
        if m.preference in PUSH_PREFERENCES
    ]


def all_push_fields(config: SalesforceConfig) -> dict[str, list[PushField]]:
    return {sobject: push_fields(config, sobject) for sobject in PEOPLE}


def read_fields(config: SalesforceConfig, sobject: str) -> list[str]:
    """The fields a push reads from a Lead or Contact: identity, conversion and every pushable mapped field."""
    names = ["Id", "Email", "LastModifiedDate", "SystemModstamp"]
    if sobject == "Lead":
        names += ["IsConverted", "ConvertedContactId"]
    names += [f.salesforce_field for f in push_fields(config, sobject)]
    unique: dict[str, str] = {}
    for name in names:
        unique.setdefault(name.lower(), name)
    return list(unique.values())


def same_value(store: Any, salesforce: Any) -> bool:
    """Whether a store value and a Salesforce value are the same (text compared as text, numbers as numbers)."""
    if store is None or salesforce is None:
        return store is None and salesforce is None
    if isinstance(store, bool) or isinstance(salesforce, bool):
        return bool(store) == bool(salesforce) and type(store) is type(salesforce)
    if isinstance(store, int | float) and isinstance(salesforce, int | float):
        return float(store) == float(salesforce)
    return str(store) == str(salesforce)


def field_value(record: Mapping[str, Any], name: str) -> Any:
    """A field of a REST record, whatever the case of its name."""
    if name in record:
        return record[name]
    lower = name.lower()
    return next((v for k, v in record.items() if k.lower() == lower), None)


def new_record(
    sobject: str, email: str, values: Mapping[str, Any], fields: Sequence[PushField]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the Salesforce record to create for a store contact, store field → the value Salesforce will hold).

    Every pushable field with a store value is written; required text fields without one get PLACEHOLDER."""
    record: dict[str, Any] = {"Email": email.strip()}
    synced: dict[str, Any] = {}
    for f in fields:
        value = values.get(f.store_field)
        synced[f.store_field] = value
        if value is not None:
            record[f.salesforce_field] = value
    for required in REQUIRED_TEXT[sobject]:
        if not any(k.lower() == required.lower() and v not in (None, "") for k, v in record.items()):
            record[required] = PLACEHOLDER
            for f in fields:
                if f.salesforce_field.lower() == required.lower():
                    synced[f.store_field] = PLACEHOLDER
    return record, synced


def planned_update(
    record: Mapping[str, Any],
    values: Mapping[str, Any],
    stamps: Mapping[str, Any],
    fields: Sequence[PushField],
    last_modified: datetime | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the fields to write over a Salesforce record, store field → the value Salesforce holds afterwards).

    A field is written when its store value is present, differs from Salesforce's, and the preference lets it
    win: conversion_wins always, most_recent when the store's stamp is strictly newer than the record's
    LastModifiedDate (the exact negation of the poll's rule, so a value is never both read and pushed)."""
    changes: dict[str, Any] = {}
    synced: dict[str, Any] = {}
    for f in fields:
        theirs = field_value(record, f.salesforce_field)
        ours = values.get(f.store_field)
        synced[f.store_field] = theirs
        if ours is None or same_value(ours, theirs):
            continue
        if f.preference == "most_recent" and not store_value_wins(
            _stamp(stamps.get(f.store_field)), last_modified
        ):
            continue
        changes[f.salesforce_field] = ours
        synced[f.store_field] = ours
    return changes, synced


def _stamp(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))
