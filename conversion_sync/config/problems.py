"""Config problems: what was wrong, in which file and key, and what is allowed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError


@dataclass(frozen=True)
class ConfigProblem:
    """One problem found while loading the config directory."""

    file: str
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}: {self.key}" if self.key else self.file
        return f"{where}: {self.message}"


class ConfigError(Exception):
    """Raised when config cannot be used; carries every problem found."""

    def __init__(self, problems: list[ConfigProblem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


def _key_path(loc: tuple[Any, ...], prefix: str) -> str:
    parts = [prefix] if prefix else []
    for part in loc:
        if isinstance(part, int):
            parts[-1:] = [f"{parts[-1]}[{part}]"] if parts else [f"[{part}]"]
        elif (
            part == "[key]"
            or part in ("function-after", "function-before", "function-plain")
            or str(part).startswith(("function-", "tagged-union", "literal["))
        ):
            continue
        else:
            parts.append(str(part))
    return ".".join(parts)


def problems_from_validation_error(
    error: ValidationError, file: str, prefix: str = "", allowed_keys: dict[str, list[str]] | None = None
) -> list[ConfigProblem]:
    """Translate a pydantic ValidationError into user-facing problems with key paths."""
    problems = []
    for err in error.errors(include_url=False):
        loc = tuple(err["loc"])
        key = _key_path(loc, prefix)
        kind = err["type"]
        if kind == "extra_forbidden":
            parent = _key_path(loc[:-1], prefix)
            allowed = (allowed_keys or {}).get(parent)
            message = f"unknown key '{loc[-1]}'"
            if allowed:
                message += f"; allowed keys: {', '.join(allowed)}"
        elif kind in ("literal_error", "enum"):
            expected = str(err.get("ctx", {}).get("expected", "")).replace("'", "").replace(" or ", ", ")
            message = f"must be one of: {expected} (got {err.get('input')!r})"
        elif kind == "missing":
            message = "is required but missing"
        else:
            message = err["msg"]
            if message.startswith("Value error, "):
                message = message[len("Value error, ") :]
            if kind not in ("value_error",) and "input" in err and not isinstance(err["input"], dict | list):
                message += f" (got {err['input']!r})"
        problems.append(ConfigProblem(file=file, key=key, message=message))
    return problems
