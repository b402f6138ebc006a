"""Values that may come from the environment: `{env: VAR}` references, resolved at run time."""

from __future__ import annotations

import os
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict


class EnvRef(BaseModel):
    """A reference to an environment variable, written `{env: VAR}` in YAML."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    env: str

    def resolve(self, what: str) -> str:
        value = os.environ.get(self.env)
        if value is None or value == "":
            raise MissingEnvironmentVariable(f"{what}: environment variable {self.env} is not set")
        return value


class MissingEnvironmentVariable(Exception):
    """An `{env: VAR}` reference whose variable is not set."""


def _secret_must_be_env(value: Any) -> Any:
    if isinstance(value, str | int | float):
        raise ValueError("secrets must not be written inline; use {env: VARIABLE_NAME}")
    return value


Secret = Annotated[EnvRef, BeforeValidator(_secret_must_be_env)]
"""A secret: only `{env: VAR}` is accepted."""

Setting = str | EnvRef
"""A plain setting: a literal or `{env: VAR}`."""


def resolve_setting(value: Setting | None, what: str) -> str | None:
    """Return the literal value, or the environment variable's value for an EnvRef."""
    if value is None or isinstance(value, str):
        return value
    return value.resolve(what)
