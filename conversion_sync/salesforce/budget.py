"""Salesforce API budget: what Sforce-Limit-Info says is left, the reserve to keep, and why a poll stopped."""

from __future__ import annotations

import re
from dataclasses import dataclass

_API_USAGE = re.compile(r"(?<![\w-])api-usage=(\d+)/(\d+)")


class ApiBudgetExhausted(Exception):
    """The poll must stop before its next call: the org's daily API allowance is (nearly) used up.

    Not a failure of the data: everything committed so far stays, and each cursor stays at its last commit.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def parse_limit_info(header: str | None) -> tuple[int, int] | None:
    """(used, max) from a `Sforce-Limit-Info` value like `api-usage=18/5000; per-app-api-usage=…`."""
    match = _API_USAGE.search(header or "")
    return (int(match[1]), int(match[2])) if match else None


@dataclass
class ApiBudget:
    """The org's daily API usage as last reported, the calls this run made, and the reserve to keep.

    `reserve` calls are left for everything else that uses the org (people, other integrations):
    once the remaining allowance is at or below it, `ensure_can_call` refuses the next call.
    """

    reserve: int = 0
    calls_made: int = 0
    used: int | None = None
    max: int | None = None

    @property
    def remaining(self) -> int | None:
        """Calls left in the org's daily allowance, None until Salesforce has said."""
        if self.used is None or self.max is None:
            return None
        return max(0, self.max - self.used)

    def record_call(self, limit_info: str | None) -> None:
        """One API call made by this run; `limit_info` is its response's Sforce-Limit-Info header."""
        self.calls_made += 1
        self.observe(limit_info)

    def observe(self, limit_info: str | None) -> None:
        parsed = parse_limit_info(limit_info)
        if parsed is not None:
            self.used, self.max = parsed

    def ensure_can_call(self) -> None:
        """Raise ApiBudgetExhausted when the next call would eat into the reserve."""
        remaining = self.remaining
        if remaining is not None and remaining <= self.reserve:
            raise ApiBudgetExhausted(
                f"Salesforce API budget: {remaining} of {self.max} daily calls left, at or below the "
                f"reserve of {self.reserve} (api_reserve in salesforce.yaml); stopped before the next call"
            )

    def limit_exceeded(self) -> ApiBudgetExhausted:
        """The error for Salesforce answering REQUEST_LIMIT_EXCEEDED."""
        usage = f" ({self.used}/{self.max} used)" if self.used is not None else ""
        return ApiBudgetExhausted(
            f"Salesforce answered REQUEST_LIMIT_EXCEEDED: the org's daily API allowance is used up{usage}"
        )
