"""Validation rules and duplicate rules of the stand-in org, configured like a Salesforce admin would."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Record = dict[str, Any]
FieldLookup = Callable[[str], str]
"""Canonical field name for a (case-insensitive) name on the rule's object; raises ValueError if unknown."""

STANDARD_DUPLICATE_MESSAGE = (
    "You're creating a duplicate record. We recommend you use an existing record instead."
)
DUPLICATE_ACTIONS = ("block", "allow")


# ============================================================================================
# Validation rules
# ============================================================================================


def _blank(value: Any) -> bool:
    return value is None or value == ""


def _formula_literal(value: Any) -> str:
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int | float):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True)
class Condition:
    """The error condition of a validation rule (the rule fails the save when it is true).

    ``op`` is ``is_blank`` (ISBLANK), ``not_matches`` (a non-blank value that REGEX does not match as a
    whole), ``matches``, ``equals``, ``not_equals``, or ``all`` / ``any`` over ``parts``.
    """

    op: str
    field: str | None = None
    value: Any = None
    parts: tuple[Condition, ...] = ()

    def holds(self, rec: Mapping[str, Any]) -> bool:
        op = self.op
        if op == "all":
            return all(p.holds(rec) for p in self.parts)
        if op == "any":
            return any(p.holds(rec) for p in self.parts)
        assert self.field is not None
        value = rec.get(self.field)
        if op == "is_blank":
            return _blank(value)
        if op in ("matches", "not_matches"):
            if _blank(value):
                return False
            # REGEX() matches the whole text (Java's String.matches), not a substring.
            matched = re.fullmatch(self.value, str(value)) is not None
            return matched if op == "matches" else not matched
        if op == "equals":
            return value == self.value or (_blank(value) and _blank(self.value))
        if op == "not_equals":
            return not (value == self.value or (_blank(value) and _blank(self.value)))
        raise AssertionError(op)

    def formula(self) -> str:
        """The condition as a Salesforce formula (for listings; the stand-in evaluates it directly)."""
        if self.op in ("all", "any"):
            return ("AND(" if self.op == "all" else "OR(") + ", ".join(p.formula() for p in self.parts) + ")"
        name = self.field
        if self.op == "is_blank":
            return f"ISBLANK({name})"
        if self.op == "matches":
            return f"AND(NOT(ISBLANK({name})), REGEX({name}, {_formula_literal(self.value)}))"
        if self.op == "not_matches":
            return f"AND(NOT(ISBLANK({name})), NOT(REGEX({name}, {_formula_literal(self.value)})))"
        if self.op == "equals":
            return f"{name} = {_formula_literal(self.value)}"
        return f"{name} <> {_formula_literal(self.value)}"


_FIELD_OPS = ("is_blank", "not_matches", "matches", "equals", "not_equals")


def parse_condition(raw: Any, lookup: FieldLookup) -> Condition:
    """``{"field": "Phone", "not_matches": "[0-9]{10}"}``, ``{"field": "Title", "is_blank": true}``,
    ``{"field": "LeadSource", "equals": "Other"}`` or ``{"all": [...]}`` / ``{"any": [...]}``."""
    if not isinstance(raw, Mapping):
        raise ValueError(f"a condition is an object, not {raw!r}")
    for combinator in ("all", "any"):
        if combinator in raw:
            parts = raw[combinator]
            if not isinstance(parts, list) or not parts:
                raise ValueError(f"{combinator!r} needs a non-empty list of conditions")
            return Condition(combinator, parts=tuple(parse_condition(p, lookup) for p in parts))
    ops = [op for op in _FIELD_OPS if op in raw]
    if len(ops) != 1 or not isinstance(raw.get("field"), str):
        raise ValueError(
            'a condition needs "field" and exactly one of ' + ", ".join(_FIELD_OPS) + ', or "all" / "any"'
        )
    op = ops[0]
    value = raw[op]
    if op == "is_blank":
        if value is not True:
            raise ValueError('use {"field": ..., "is_blank": true}')
        value = None
    if op in ("matches", "not_matches"):
        if not isinstance(value, str):
            raise ValueError(f"{op} needs a regular expression string")
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"{op}: bad regular expression {value!r}: {exc}") from None
    return Condition(op, lookup(raw["field"]), value)


@dataclass(frozen=True)
class ValidationRule:
    """An active validation rule: when ``condition`` holds for the record being saved, the save fails with
    FIELD_CUSTOM_VALIDATION_EXCEPTION, ``error_message`` and ``error_field`` (None: top of page)."""

    sobject: str
    name: str
    condition: Condition
    error_message: str
    error_field: str | None = None
    on_insert: bool = True
    on_update: bool = True
    active: bool = True

    def applies(self, creating: bool) -> bool:
        return self.active and (self.on_insert if creating else self.on_update)

    def describe(self) -> dict[str, Any]:
        formula = self.condition.formula()
        if not (self.on_insert and self.on_update):
            formula = f"AND({'ISNEW()' if self.on_insert else 'NOT(ISNEW())'}, {formula})"
        return {
            "object": self.sobject,
            "name": self.name,
            "active": self.active,
            "errorConditionFormula": formula,
            "errorMessage": self.error_message,
            "errorDisplayField": self.error_field,
        }


def parse_validation_rule(raw: Mapping[str, Any], sobject: str, lookup: FieldLookup) -> ValidationRule:
    name = raw.get("name")
    message = raw.get("error_message")
    if not isinstance(name, str) or not name or not isinstance(message, str) or not message:
        raise ValueError('a validation rule needs "name", "error_message" and "condition"')
    when = raw.get("on", ["insert", "update"])
    if isinstance(when, str):
        when = [when]
    if not set(when) <= {"insert", "update"} or not when:
        raise ValueError('"on" is "insert", "update" or both')
    error_field = raw.get("error_field")
    return ValidationRule(
        sobject,
        name,
        parse_condition(raw.get("condition"), lookup),
        message,
        lookup(error_field) if error_field else None,
        "insert" in when,
        "update" in when,
        bool(raw.get("active", True)),
    )


# ============================================================================================
# Duplicate rules
# ============================================================================================


@dataclass(frozen=True)
class DuplicateOptions:
    """The ``Sforce-Duplicate-Rule-Header`` of a request (every option false when absent)."""

    allow_save: bool = False
    include_record_details: bool = False
    run_as_current_user: bool = False
    api_version: str = "59.0"
    """The request's API version (for record URLs in the DuplicateResult), not part of the header."""

    @classmethod
    def from_header(cls, header: str | None, api_version: str = "59.0") -> DuplicateOptions:
        """Parse ``allowSave=true; includeRecordDetails=true; runAsCurrentUser=false``."""
        options: dict[str, bool] = {}
        for part in (header or "").replace(",", ";").split(";"):
            key, _, value = part.partition("=")
            options[key.strip().lower()] = value.strip().lower() == "true"
        return cls(
            options.get("allowsave", False),
            options.get("includerecorddetails", False),
            options.get("runascurrentuser", False),
            api_version,
        )


@dataclass(frozen=True)
class DuplicateRule:
    """An active duplicate rule with one exact matching rule per compared object.

    A record being saved matches an existing record of a compared object when every ``match_fields`` value
    is non-blank and equal ignoring case and surrounding spaces (converted Leads are never matched).
    Action ``block`` always fails the save; ``allow`` with ``alert`` fails it unless the request says
    ``allowSave=true``; ``allow`` without an alert (report only) saves.
    """

    sobject: str
    name: str
    match_fields: tuple[str, ...]
    compare_objects: tuple[str, ...]
    action_on_insert: str = "allow"
    action_on_update: str = "allow"
    alert: bool = True
    alert_text: str = STANDARD_DUPLICATE_MESSAGE
    active: bool = True

    def match_rule(self, compared: str) -> str:
        return f"{compared}_{'_'.join(f.removesuffix('__c') for f in self.match_fields)}_Match_Rule"

    def action(self, creating: bool) -> str:
        return self.action_on_insert if creating else self.action_on_update

    def describe(self) -> dict[str, Any]:
        return {
            "object": self.sobject,
            "name": self.name,
            "active": self.active,
            "matchFields": list(self.match_fields),
            "compareObjects": list(self.compare_objects),
            "actionOnInsert": self.action_on_insert.capitalize(),
            "actionOnUpdate": self.action_on_update.capitalize(),
            "operations": ["Alert"] if self.alert else ["Report"],
            "alertText": self.alert_text,
            "matchRules": [self.match_rule(o) for o in self.compare_objects],
        }


def parse_duplicate_rule(
    raw: Mapping[str, Any], sobject: str, lookups: Mapping[str, FieldLookup]
) -> DuplicateRule:
    """``{"object": "Lead", "name": ..., "match_fields": ["Email"], "compare_objects": ["Lead", "Contact"],
    "action_on_insert": "block" | "allow", "action_on_update": ..., "alert": true, "alert_text": ...}``."""
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError('a duplicate rule needs "name" and "match_fields"')
    fields = raw.get("match_fields") or []
    if isinstance(fields, str):
        fields = [fields]
    if not fields:
        raise ValueError('a duplicate rule needs "match_fields", e.g. ["Email"]')
    compare = raw.get("compare_objects") or [sobject]
    if isinstance(compare, str):
        compare = [compare]
    canonical_compare = []
    for other in compare:
        found = next((o for o in lookups if o.lower() == str(other).lower()), None)
        if found is None:
            raise ValueError(f"compare_objects: {other!r} is not an object duplicate rules can compare")
        canonical_compare.append(found)
    match_fields = tuple(lookups[sobject](f) for f in fields)
    for other in canonical_compare:
        for name_ in match_fields:
            lookups[other](name_)  # the matching rule compares the same field on the other object
    actions = {}
    for key in ("action_on_insert", "action_on_update"):
        action = str(raw.get(key, "allow")).lower()
        if action not in DUPLICATE_ACTIONS:
            raise ValueError(f"{key} is one of {', '.join(DUPLICATE_ACTIONS)}, not {action!r}")
        actions[key] = action
    return DuplicateRule(
        sobject,
        name,
        match_fields,
        tuple(canonical_compare),
        actions["action_on_insert"],
        actions["action_on_update"],
        bool(raw.get("alert", True)),
        str(raw.get("alert_text") or STANDARD_DUPLICATE_MESSAGE),
        bool(raw.get("active", True)),
    )


@dataclass
class DuplicateFinding:
    """What one duplicate rule found for one record being saved."""

    rule: DuplicateRule
    allow_save: bool
    matches: dict[str, list[Record]] = field(default_factory=dict)

    def result(self, render: Callable[[str, Record], dict[str, Any]]) -> dict[str, Any]:
        """The DuplicateResult structure of the REST error body (``render(type, record)`` -> record JSON)."""
        return {
            "allowSave": self.allow_save,
            "duplicateRule": self.rule.name,
            "duplicateRuleEntityType": self.rule.sobject,
            "errorMessage": self.rule.alert_text,
            "matchResults": [
                {
                    "entityType": other,
                    "errors": [],
                    "matchEngine": "ExactMatchEngine",
                    "matchRecords": [
                        {
                            "additionalInformation": [],
                            "fieldDiffs": [],
                            "matchConfidence": 100.0,
                            "record": render(other, rec),
                        }
                        for rec in records
                    ],
                    "rule": self.rule.match_rule(other),
                    "size": len(records),
                    "success": True,
                }
                for other, records in self.matches.items()
            ],
        }


def find_duplicates(
    rule: DuplicateRule,
    rec: Mapping[str, Any],
    lookup: Callable[[str, tuple[str, ...], tuple[str, ...]], Iterable[Record]],
    skip_ids: set[str],
) -> dict[str, list[Record]]:
    """Records of each compared object that ``rec`` duplicates under ``rule`` (never itself or ``skip_ids``).

    ``lookup(object, match_fields, key)`` gives the candidate records of ``object`` with that match key.
    """
    key = match_key(rec, rule.match_fields)
    if key is None:
        return {}
    found: dict[str, list[Record]] = {}
    for other in rule.compare_objects:
        hits = [
            cand
            for cand in lookup(other, rule.match_fields, key)
            if cand["Id"] != rec.get("Id")
            and cand["Id"] not in skip_ids
            and not cand["IsDeleted"]
            and not (other == "Lead" and cand.get("IsConverted"))
        ]
        if hits:
            found[other] = sorted(hits, key=lambda r: r["Id"])
    return found


def match_key(rec: Mapping[str, Any], fields: Sequence[str]) -> tuple[str, ...] | None:
    """The exact-match key of ``rec`` (values trimmed, lower-case); None when any field is blank."""
    values = []
    for name in fields:
        value = rec.get(name)
        if _blank(value):
            return None
        values.append(str(value).strip().lower())
    return tuple(values)
