"""Where this process runs: `local` (make dev, the tests) or `production` (everything else).

Read from CONVERSION_SYNC_ENV on every call, so a test or a launcher can change it. Only `local` may start the
embedded contact store and the development stand-ins; `production` needs every external service configured.
"""

from __future__ import annotations

import os
from typing import Literal, get_args

ENV_VAR = "CONVERSION_SYNC_ENV"

Environment = Literal["local", "production"]
ENVIRONMENTS: tuple[Environment, ...] = get_args(Environment)
DEFAULT_ENVIRONMENT: Environment = "production"


class UnknownEnvironment(ValueError):
    """CONVERSION_SYNC_ENV holds a value other than the allowed ones."""


def environment() -> Environment:
    """`local` or `production` from CONVERSION_SYNC_ENV; unset or empty means production."""
    raw = os.environ.get(ENV_VAR, "").strip()
    if not raw:
        return DEFAULT_ENVIRONMENT
    value = raw.lower()
    if value == "local":
        return "local"
    if value == "production":
        return "production"
    allowed = ", ".join(ENVIRONMENTS)
    raise UnknownEnvironment(
        f"{ENV_VAR}={raw!r} is not an environment; allowed: {allowed} (unset means {DEFAULT_ENVIRONMENT})"
    )


def is_local() -> bool:
    """Whether this process runs locally (CONVERSION_SYNC_ENV=local), where the embedded store may start."""
    return environment() == "local"
