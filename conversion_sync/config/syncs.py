"""One sync per YAML file: what to query, where to write it, and when."""

from __future__ import annotations

import math
import re
from datetime import timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from conversion_sync.config.schedules import parse_duration, schedule_to_cron
from conversion_sync.syncs.template import TEMPLATE_NAMES, is_incremental, unknown_template_names

SYNC_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
DEFAULT_LOOKBACK = timedelta(minutes=5)
"""Overlap re-read by each incremental run: rows stamped before their transaction committed land behind the
watermark; change detection makes re-reading them free. `lookback: 0` opts out."""
DestinationType = Literal["contacts", "custom_objects", "events"]
DEFAULT_MAX_REMOVED = "10%"
"""Removal guard: a full sync may remove at most this share of its keys per run unless allowed more."""
_PERCENT = re.compile(r"^(\d+(\.\d+)?)\s*%$")


def parse_max_removed(value: object) -> tuple[int, float | None]:
    """`max_removed` as (count, None) or (0, percent); raises ValueError naming what is allowed."""
    if isinstance(value, bool):
        raise ValueError("must be a count (such as 500) or a percentage of the sync's keys (such as '10%')")
    if isinstance(value, int) and value >= 0:
        return value, None
    text = str(value).strip()
    if text.isdigit():
        return int(text), None
    match = _PERCENT.match(text)
    if match and float(match.group(1)) <= 100:
        return 0, float(match.group(1))
    raise ValueError(
        f"{value!r} is not a count (such as 500) or a percentage of the sync's keys (such as '10%', at most 100%)"
    )


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
    lookback: timedelta = DEFAULT_LOOKBACK
    late_after: timedelta | None = None
    """How long after its latest run the sync is shown late (its freshness policy's fail window); by default
    2 × the longest gap of its schedule. At least a minute."""
    after: list[str] = Field(default_factory=list)
    deps: list[str] = Field(default_factory=list)
    """Upstream Dagster asset keys (parts joined by `/`, as the UI shows them) beside the tables the query reads."""
    run_on: Literal["schedule", "upstream", "both"] = "schedule"
    """What starts the sync: its schedule, an update of an upstream asset (deps and read tables), or both."""
    delete_behavior: Literal["do_nothing", "clear_fields", "delete"] = "do_nothing"
    max_removed: int | str = DEFAULT_MAX_REMOVED
    """The most keys one run may remove (clear_fields or delete): a count, or a percentage of the sync's keys."""
    allow_empty_result: bool = False
    """Whether a full query that returns no rows may remove every key of the sync."""
    nulls: Literal["clear", "keep"] = "clear"
    """What a NULL does to a stored value: clear it, or keep the value stored."""
    max_rows: int | None = Field(default=None, gt=0)
    diff_in_warehouse: Literal["auto", "always", "never"] = "auto"
    """Whether a full-read rerun first reads only (key, fingerprint) computed in the warehouse and fetches the rows
    of new and changed keys: `auto` does for Postgres and Snowflake warehouses, `always` for any."""
    retry_rejected: bool = False
    """Whether each run also re-reads the keys earlier runs rejected that no run has accepted since."""
    owner: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    rejected_rate_threshold: float = Field(default=0.1, ge=0, le=1)
    _warehouse_kind: str | None = PrivateAttr(default=None)
    """The type of the sync's warehouse once the project is loaded: whose comment syntax the query uses."""

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

    @field_validator("deps")
    @classmethod
    def _deps(cls, deps: list[str]) -> list[str]:
        for key in deps:
            if not key.strip() or any(not part.strip() for part in key.split("/")):
                raise ValueError(
                    f"'{key}' is not an asset key: parts joined by '/', such as 'analytics/users'"
                )
        return [key.strip() for key in deps]

    @model_validator(mode="after")
    def _run_on(self) -> SyncConfig:
        if self.run_on == "upstream" and schedule_to_cron(self.schedule) is not None:
            raise ValueError(
                f"run_on: upstream runs the sync when its upstream assets update, so its schedule must be "
                f"manual (it is '{self.schedule}'); use run_on: both to keep the schedule too"
            )
        return self

    @field_validator("max_removed", mode="before")
    @classmethod
    def _max_removed(cls, value: object) -> int | str:
        parse_max_removed(value)
        return value if isinstance(value, int) else str(value).strip()

    def removal_limit(self, stored_keys: int) -> int:
        """How many of the sync's `stored_keys` one run may remove."""
        count, percent = parse_max_removed(self.max_removed)
        return count if percent is None else math.ceil(stored_keys * percent / 100)

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

    @field_validator("late_after", mode="before")
    @classmethod
    def _late_after(cls, value: object) -> timedelta | None:
        if value is None:
            return None
        late = cls._lookback(value)
        if late < timedelta(minutes=1):
            raise ValueError("must be at least a minute (the shortest freshness window Dagster evaluates)")
        return late

    @property
    def incremental(self) -> bool:
        """Whether the query uses the watermark outside its comments."""
        return is_incremental(self.query, self._warehouse_kind)

    def use_warehouse_kind(self, kind: str) -> None:
        """Read the query in the SQL dialect of its warehouse's type (comments, quoting)."""
        self._warehouse_kind = kind

    @property
    def cron_schedule(self) -> str | None:
        return schedule_to_cron(self.schedule)
