"""salesforce.yaml: which Salesforce fields map to which store fields, and who wins a conflict."""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from conversion_sync.config.schedules import parse_duration, schedule_to_cron

Preference = Literal["most_recent", "salesforce_wins", "conversion_wins", "do_not_sync"]
SalesforceObject = Literal["Contact", "Lead", "Account"]


class FieldMapping(BaseModel):
    """One mapped field: the Salesforce field it reads and the conflict preference."""

    model_config = ConfigDict(extra="forbid")
    salesforce: str
    preference: Preference = "most_recent"


def _shorthand(value: object) -> object:
    if isinstance(value, str):
        return {"salesforce": value}
    return value


class SalesforceConfig(BaseModel):
    """Polling and campaign settings plus field mappings per Salesforce object."""

    model_config = ConfigDict(extra="forbid")
    poll_schedule: str = "every 5 minutes"
    poll_overlap: timedelta = timedelta(minutes=10)
    poll_upper_bound_lag: timedelta = timedelta(minutes=1)
    bulk_threshold: int = Field(default=50_000, gt=0)
    api_reserve: int = Field(default=500, ge=0)
    reconcile_schedule: str = "every 15 minutes"
    field_mappings: dict[SalesforceObject, dict[str, FieldMapping]] = Field(default_factory=dict)

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

    @field_validator("poll_overlap", "poll_upper_bound_lag", mode="before")
    @classmethod
    def _duration(cls, value: object) -> timedelta:
        if isinstance(value, timedelta):
            return value
        if not isinstance(value, str | int):
            raise ValueError("must be a duration such as '5 minutes'")
        return parse_duration(value)
