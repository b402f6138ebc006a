"""schema.yaml: the store's typed contact fields and custom object types."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

FieldType = Literal["string", "number", "integer", "boolean", "date", "datetime", "json"]

STANDARD_CONTACT_FIELDS: tuple[str, ...] = (
    "first_name",
    "last_name",
    "job_title",
    "phone",
    "city",
    "company_name",
)
"""Contact fields every store has, stored as columns."""

RESERVED_CONTACT_NAMES = frozenset(
    {"id", "email", "salesforce_id", "salesforce_type", "company_id", "created_at", "updated_at"}
)
_IDENTIFIER = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


def _check_field_names(fields: dict[str, str]) -> dict[str, str]:
    for name in fields:
        if not _IDENTIFIER.match(name):
            raise ValueError(
                f"field name {name!r} must be lower-case letters, digits and underscores, starting with a letter"
            )
    return fields


class ObjectTypeConfig(BaseModel):
    """A custom object type and its fields."""

    model_config = ConfigDict(extra="forbid")
    fields: dict[str, FieldType] = Field(default_factory=dict)

    _names = field_validator("fields")(_check_field_names)


class StoreSchemaConfig(BaseModel):
    """The store's typed fields (schema.yaml)."""

    model_config = ConfigDict(extra="forbid")
    contact_fields: dict[str, FieldType] = Field(default_factory=dict)
    object_types: dict[str, ObjectTypeConfig] = Field(default_factory=dict)

    @field_validator("contact_fields")
    @classmethod
    def _contact_field_names(cls, fields: dict[str, str]) -> dict[str, str]:
        _check_field_names(fields)
        for name in fields:
            if name in RESERVED_CONTACT_NAMES or name in STANDARD_CONTACT_FIELDS or name == "updated_at":
                raise ValueError(f"contact field {name!r} clashes with a built-in contact field")
        return fields

    @field_validator("object_types")
    @classmethod
    def _object_type_names(cls, types: dict[str, ObjectTypeConfig]) -> dict[str, ObjectTypeConfig]:
        for name in types:
            if not _IDENTIFIER.match(name):
                raise ValueError(
                    f"object type name {name!r} must be lower-case letters, digits and underscores"
                )
        return types

    def contact_field_types(self) -> dict[str, str]:
        """Every writable contact field with its type: standard fields then custom ones."""
        return {**{name: "string" for name in STANDARD_CONTACT_FIELDS}, **self.contact_fields}
