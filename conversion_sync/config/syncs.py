"""One sync per YAML file: what to query, where to write it, and when."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from conversion_sync.config.schedules import parse_duration, schedule_to_cron
from conversion_sync.syncs.template import TEMPLATE_NAMES, is_incremental, unknown_template_names

SYNC_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
DestinationType = Literal["contacts", "custom_objects", "events"]


class DestinationConfig(BaseModel):
    """Where rows are written."""

    model_config = ConfigDict(extra="forbid")
    type: DestinationType
    object_type: str | None = None

    @model_validator(mode="after")
    def _object_type_for_custom_objects(self) -> DestinationConfig:
        if self.type == "custom_objects" and not self.object_type:
            raise ValueError("object_type is required when destination type is custom_objects")
        if self.type != "custom_objects" and self.object_type:
            raise ValueError(f"object_type only applies to custom_objects, not {self.type}")
        return self


class SyncConfig(BaseModel):
    """A validated sync file."""

    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    warehouse: str
    destination: DestinationConfig
    mode: Literal["upsert", "update", "insert"] = "upsert"
    query: str
    schedule: str = "manual"
    enabled: bool = True
    lookback: timedelta = timedelta(0)
    after: list[str] = Field(default_factory=list)
    delete_behavior: Literal["do_nothing", "clear_fields", "delete"] = "do_nothing"
    max_rows: int | None = Field(default=None, gt=0)
    owner: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    rejected_rate_threshold: float = Field(default=0.1, ge=0, le=1)

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not SYNC_NAME.match(name):
            raise ValueError(
                "must be lower-case letters, digits and underscores, starting with a letter (max 63 characters)"
            )
        return name

    @field_validator("query")
    @classmethod
    def _query(cls, query: str) -> str:
        if not query.strip():
            raise ValueError("query is empty")
        unknown = unknown_template_names(query)
        if unknown:
            names = ", ".join("{{" + n + "}}" for n in unknown)
            raise ValueError(f"unknown template name {names}; allowed: {', '.join(TEMPLATE_NAMES)}")
        return query

    @field_validator("schedule", mode="before")
    @classmethod
    def _schedule(cls, schedule: object) -> str:
        schedule_to_cron(str(schedule))
        return str(schedule)

    @field_validator("lookback", mode="before")
    @classmethod
    def _lookback(cls, value: object) -> timedelta:
        if isinstance(value, timedelta):
            return value
        if not isinstance(value, str | int):
            raise ValueError("must be a duration such as '5 minutes'")
        return parse_duration(value)

    @property
    def incremental(self) -> bool:
        return is_incremental(self.query)

    @property
    def cron_schedule(self) -> str | None:
        return schedule_to_cron(self.schedule)
