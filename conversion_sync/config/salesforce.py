"""salesforce.yaml: which Salesforce fields map to which store fields, and who wins a conflict."""

from __future__ import annotations

from datetime import timedelta
from typing import Literal, cast

from pydantic import BaseModel, ConfigDict, Field, field_validator

from conversion_sync.config.schedules import parse_duration, schedule_to_cron

Preference = Literal["most_recent", "salesforce_wins", "conversion_wins", "do_not_sync"]
SalesforceObject = Literal["Contact", "Lead", "Account"]
CreatePolicy = Literal["immediately", "later", "never"]
PushObject = Literal["Lead", "Contact"]

DEFAULT_FIELD_MAPPINGS: dict[str, dict[str, str]] = {
    "Contact": {
        "first_name": "FirstName",
        "last_name": "LastName",
        "job_title": "Title",
        "phone": "Phone",
        "city": "MailingCity",
    },
    "Lead": {
        "first_name": "FirstName",
        "last_name": "LastName",
        "job_title": "Title",
        "phone": "Phone",
        "city": "City",
        "company_name": "Company",
    },
    "Account": {"name": "Name"},
}
"""The mappings used when salesforce.yaml has no `field_mappings` key: the standard fields, both ways, with
`most_recent`. A Contact's company is its Account (Account.Name → the company's name); a Lead's is Company."""


class FieldMapping(BaseModel):
    """One mapped field: the Salesforce field it reads and the conflict preference."""

    model_config = ConfigDict(extra="forbid")
    salesforce: str
    preference: Preference = "most_recent"


class PushRule(BaseModel):
    """Whether store contacts not yet in Salesforce are created there, and as what."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    create: CreatePolicy = "immediately"
    as_: PushObject = Field(default="Lead", alias="as")


class PushSourceRule(BaseModel):
    """A per-source override of the push rule; what it leaves out comes from the top-level rule."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    create: CreatePolicy | None = None
    as_: PushObject | None = Field(default=None, alias="as")


class PushSources(BaseModel):
    """Overrides by where a contact came from: checked in this order, the first that applies decides."""

    model_config = ConfigDict(extra="forbid")
    campaigns: dict[str, PushSourceRule] = Field(default_factory=dict)
    """By store campaign name: the contact is a member of the campaign."""
    warehouse_syncs: dict[str, PushSourceRule] = Field(default_factory=dict)
    """By warehouse sync name: the sync wrote the contact."""
    manual: PushSourceRule | None = None
    """Contacts no warehouse sync wrote (forms, CSV uploads, the API, the command line)."""


class PushConfig(PushRule):
    """salesforce.yaml `push:`: the default rule for creating store contacts in Salesforce, overrides per
    source, and how many records make a write go through a Bulk API 2.0 ingest job."""

    sources: PushSources = Field(default_factory=PushSources)
    bulk_threshold: int = Field(default=1000, gt=0)
    schedule: str = "every 15 minutes"
    """The push's own schedule, a safety net beside the push after each successful poll (a poll that failed,
    or a push skipped because another was running, is caught up); `manual` turns it off. A tick while a poll
    or a push is queued or running is skipped."""

    @field_validator("schedule", mode="before")
    @classmethod
    def _schedule(cls, value: object) -> str:
        schedule_to_cron(str(value))
        return str(value)


def _shorthand(value: object) -> object:
    if isinstance(value, str):
        return {"salesforce": value}
    return value


def _default_mappings() -> dict[SalesforceObject, dict[str, FieldMapping]]:
    return {
        cast(SalesforceObject, obj): {store: FieldMapping(salesforce=sf) for store, sf in fields.items()}
        for obj, fields in DEFAULT_FIELD_MAPPINGS.items()
    }


class SalesforceConfig(BaseModel):
    """Polling and campaign settings plus field mappings per Salesforce object."""

    model_config = ConfigDict(extra="forbid")
    poll_schedule: str = "every 5 minutes"
    poll_overlap: timedelta = timedelta(minutes=10)
    poll_upper_bound_lag: timedelta = timedelta(minutes=1)
    bulk_threshold: int = Field(default=50_000, gt=0)
    api_reserve: int = Field(default=500, ge=0)
    reconcile_schedule: str = "every 15 minutes"
    field_mappings: dict[SalesforceObject, dict[str, FieldMapping]] = Field(default_factory=_default_mappings)
    push: PushConfig = Field(default_factory=PushConfig)

    @field_validator("field_mappings", mode="before")
    @classmethod
    def _expand_shorthand(cls, value: object) -> object:
        if isinstance(value, dict):
            return {
                obj: {f: _shorthand(m) for f, m in fields.items()} if isinstance(fields, dict) else fields
                for obj, fields in value.items()
            }
        return value

    @field_validator("poll_schedule", "reconcile_schedule", mode="before")
    @classmethod
    def _schedule(cls, value: object) -> str:
        schedule_to_cron(str(value))
        return str(value)

    id_sweep_every: timedelta = timedelta(hours=24)
    """How often a poll also lists every Id (one cheap Bulk query per object) and unlinks store records whose
    Salesforce record is gone for good (beyond the recycle bin); 0 turns the sweep off."""

    @field_validator("poll_overlap", "poll_upper_bound_lag", "id_sweep_every", mode="before")
    @classmethod
    def _duration(cls, value: object) -> timedelta:
        if isinstance(value, timedelta):
            return value
        if not isinstance(value, str | int):
            raise ValueError("must be a duration such as '5 minutes'")
        return parse_duration(value)
