"""In-memory Salesforce org for the stand-in: schema, records, ids, clock, limits, sessions and faults."""

from __future__ import annotations

import base64
import csv
import hashlib
import hmac
import io
import json
import os
import random
import re
import secrets
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from .rules import (
    DuplicateFinding,
    DuplicateOptions,
    DuplicateRule,
    ValidationRule,
    find_duplicates,
    match_key,
    parse_duplicate_rule,
    parse_validation_rule,
)
from .soql import (
    ID_TYPES,
    NUMBER_TYPES,
    TEXT_TYPES,
    CompiledQuery,
    Record,
    Snapshot,
    SoqlError,
    canonical_datetime,
    compile_query,
    format_datetime,
    id_suffix,
    normalize_id,
    parse_datetime,
)

DEFAULT_USERNAME = "integration@example.com"
DEFAULT_PASSWORD = "standin-password"
DEFAULT_SECURITY_TOKEN = "standintoken"
DEFAULT_CLIENT_ID = "standin-client-id"
DEFAULT_CLIENT_SECRET = "standin-client-secret"
DEFAULT_API_MAX = 100_000
MAX_PAGE_SIZE = 2000
MIN_PAGE_SIZE = 200
COLLECTION_LIMIT = 200

_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_POD = "Kc0"
ORG_ID = "00D" + _POD + "000000001" + id_suffix("00D" + _POD + "000000001")
_EMAIL_RE = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+$")
SYSTEM_FIELDS = ("CreatedDate", "CreatedById", "LastModifiedDate", "LastModifiedById", "SystemModstamp")


# ============================================================================================
# Errors
# ============================================================================================


class ApiError(Exception):
    """A whole-request failure, rendered as Salesforce's JSON error array."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        fields: Sequence[str] = (),
        *,
        entries: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.fields = list(fields)
        self.entries = entries

    def body(self) -> list[dict[str, Any]]:
        if self.entries is not None:
            return self.entries
        return [{"message": self.message, "errorCode": self.code, "fields": self.fields}]


class RecordError(Exception):
    """A single record's failure (per-record result in collections, a 400/404 for single calls).

    ``more`` holds further errors of the same save (every failing validation rule is reported);
    ``duplicate_result`` the DuplicateResult that a single-record REST error body carries.
    """

    def __init__(
        self,
        code: str,
        message: str,
        fields: Sequence[str] = (),
        status: int = 400,
        *,
        more: Sequence[RecordError] = (),
        duplicate_result: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.fields = list(fields)
        self.status = status
        self.more = list(more)
        self.duplicate_result = duplicate_result

    def all(self) -> list[RecordError]:
        return [self, *self.more]

    def as_api_error(self) -> ApiError:
        entries: list[dict[str, Any]] = []
        for error in self.all():
            if error.duplicate_result is not None:
                # Salesforce's REST body spells this key "duplicateResut" (sic); clients read it as sent.
                entries.append(
                    {
                        "duplicateResut": error.duplicate_result,
                        "errorCode": error.code,
                        "message": error.message,
                    }
                )
            else:
                entries.append({"message": error.message, "errorCode": error.code, "fields": error.fields})
        return ApiError(self.status, self.code, self.message, self.fields, entries=entries)

    def result_error(self) -> dict[str, Any]:
        return {"statusCode": self.code, "message": self.message, "fields": self.fields}

    def result_errors(self) -> list[dict[str, Any]]:
        """The ``errors`` of a collection result or SaveResult (no DuplicateResult there)."""
        return [error.result_error() for error in self.all()]

    def bulk_error(self) -> str:
        """The ``sf__Error`` cell of Bulk API failed results: ``CODE:message:Field1,Field2 --``."""
        return " ".join(
            f"{e.code}:{e.message}:{','.join(e.fields)} --" if e.fields else f"{e.code}:{e.message}:--"
            for e in self.all()
        )


class AuthError(Exception):
    """Bad credentials (SOAP INVALID_LOGIN / OAuth invalid_grant)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# ============================================================================================
# Schema
# ============================================================================================


@dataclass(frozen=True, slots=True)
class FieldDef:
    """One sObject field as describe() reports it."""

    name: str
    type: str
    length: int = 0
    nillable: bool = True
    createable: bool = True
    updateable: bool = True
    required: bool = False
    reference_to: str | None = None
    relationship_name: str | None = None
    default: Any = None
    picklist: tuple[str, ...] = ()
    label: str = ""
    formula: str | None = None
    """A formula field's expression (describe: calculated=true, calculatedFormula); computed, never written."""

    @property
    def custom(self) -> bool:
        return self.name.endswith("__c")


@dataclass
class ObjectDef:
    """One sObject type: key prefix, fields (canonical order) and relationship names."""

    name: str
    key_prefix: str
    label: str
    label_plural: str
    fields: dict[str, FieldDef]
    createable: bool = True
    updateable: bool = True
    deletable: bool = True
    by_lower: dict[str, FieldDef] = field(default_factory=dict)
    relationships: dict[str, FieldDef] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)
    required: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.by_lower = {name.lower(): fdef for name, fdef in self.fields.items()}
        self.relationships = {
            fdef.relationship_name.lower(): fdef for fdef in self.fields.values() if fdef.relationship_name
        }
        # Values a new record starts with (booleans are never null in Salesforce).
        self.defaults = {
            name: fdef.default
            for name, fdef in self.fields.items()
            if fdef.default is not None and name != "IsDeleted"
        }
        self.required = tuple(name for name, fdef in self.fields.items() if fdef.required)


def _f(
    name: str,
    type_: str = "string",
    length: int = 0,
    *,
    required: bool = False,
    create: bool = True,
    update: bool = True,
    nillable: bool = True,
    ref: str | None = None,
    rel: str | None = None,
    default: Any = None,
    picklist: Sequence[str] = (),
    label: str = "",
    formula: str | None = None,
) -> FieldDef:
    if formula is not None:  # formula fields are computed: never createable or updateable, always nillable
        create = update = False
    if type_ == "boolean":
        nillable = False
        default = False if default is None else default
    if not length and type_ in TEXT_TYPES:
        length = {"textarea": 32000, "phone": 40, "email": 80, "url": 255}.get(type_, 255)
    if type_ in ID_TYPES:
        length = 18
    return FieldDef(
        name,
        type_,
        length,
        nillable and not required,
        create,
        update,
        required,
        ref,
        rel,
        default,
        tuple(picklist),
        label
        or re.sub(r"(?<=[a-z])(?=[A-Z])", " ", name.removesuffix("Id").removesuffix("__c")).replace("_", " "),
        formula,
    )


def _object(
    name: str, prefix: str, label: str, plural: str, fields: list[FieldDef], *, writable: bool = True
) -> ObjectDef:
    ordered: dict[str, FieldDef] = {}
    ordered["Id"] = FieldDef("Id", "id", 18, False, False, False, label=f"{label} ID")
    ordered["IsDeleted"] = _f("IsDeleted", "boolean", create=False, update=False, label="Deleted")
    for fdef in fields:
        ordered[fdef.name] = fdef
    ordered["CreatedDate"] = _f("CreatedDate", "datetime", create=False, update=False, nillable=False)
    ordered["CreatedById"] = _f(
        "CreatedById", "reference", ref="User", rel="CreatedBy", create=False, update=False
    )
    ordered["LastModifiedDate"] = _f(
        "LastModifiedDate", "datetime", create=False, update=False, nillable=False
    )
    ordered["LastModifiedById"] = _f(
        "LastModifiedById", "reference", ref="User", rel="LastModifiedBy", create=False, update=False
    )
    ordered["SystemModstamp"] = _f("SystemModstamp", "datetime", create=False, update=False, nillable=False)
    return ObjectDef(name, prefix, label, plural, ordered, writable, writable, writable)


_SALUTATIONS = ("Mr.", "Ms.", "Mrs.", "Dr.", "Prof.")
_LEAD_SOURCES = ("Web", "Phone Inquiry", "Partner Referral", "Purchased List", "Other")
_INDUSTRIES = tuple(
    [
        "Agriculture",
        "Banking",
        "Communications",
        "Consulting",
        "Education",
        "Electronics",
        "Energy",
        "Finance",
        "Healthcare",
        "Insurance",
        "Manufacturing",
        "Media",
        "Retail",
        "Technology",
        "Other",
    ]
)
LEAD_STATUSES = (
    "Open - Not Contacted",
    "Working - Contacted",
    "Closed - Converted",
    "Closed - Not Converted",
)


def _address(prefix: str) -> list[FieldDef]:
    return [
        _f(f"{prefix}Street", "textarea", 255),
        _f(f"{prefix}City", "string", 40),
        _f(f"{prefix}State", "string", 80),
        _f(f"{prefix}PostalCode", "string", 20),
        _f(f"{prefix}Country", "string", 80),
    ]


EMAIL_DOMAIN_FORMULA = 'IF(ISBLANK(Email), NULL, RIGHT(Email, LEN(Email) - FIND("@", Email)))'


def _email_domain(rec: Mapping[str, Any]) -> Any:
    email = rec.get("Email")
    return email.split("@", 1)[1] if email and "@" in email else None


FORMULAS: dict[tuple[str, str], Any] = {
    ("Contact", "Email_Domain__c"): _email_domain,
    ("Lead", "Email_Domain__c"): _email_domain,
}
"""(object, formula field) -> how the stand-in computes it from the record (Salesforce evaluates on read)."""


def _owner() -> FieldDef:
    return _f("OwnerId", "reference", ref="User", rel="Owner")


SCHEMA: dict[str, ObjectDef] = {
    obj.name: obj
    for obj in (
        _object(
            "User",
            "005",
            "User",
            "Users",
            [
                _f("Username", "string", 80, required=True),
                _f("LastName", "string", 80, required=True),
                _f("FirstName", "string", 40),
                _f("Name", "string", 121, create=False, update=False, label="Full Name"),
                _f("Email", "email", 128, required=True),
                _f("Alias", "string", 8),
                _f("IsActive", "boolean", default=True, label="Active"),
            ],
            writable=False,
        ),
        _object(
            "Account",
            "001",
            "Account",
            "Accounts",
            [
                _f(
                    "MasterRecordId",
                    "reference",
                    ref="Account",
                    rel="MasterRecord",
                    create=False,
                    update=False,
                ),
                _f("Name", "string", 255, required=True, label="Account Name"),
                _f("AccountNumber", "string", 40),
                _f(
                    "Type",
                    "picklist",
                    255,
                    picklist=(
                        "Prospect",
                        "Customer - Direct",
                        "Customer - Channel",
                        "Channel Partner / Reseller",
                        "Installation Partner",
                        "Technology Partner",
                        "Other",
                    ),
                ),
                _f("ParentId", "reference", ref="Account", rel="Parent"),
                *_address("Billing"),
                _f("Phone", "phone"),
                _f("Website", "url"),
                _f("Industry", "picklist", picklist=_INDUSTRIES),
                _f("AnnualRevenue", "currency"),
                _f("NumberOfEmployees", "int"),
                _f("Description", "textarea"),
                _owner(),
            ],
        ),
        _object(
            "Contact",
            "003",
            "Contact",
            "Contacts",
            [
                _f(
                    "MasterRecordId",
                    "reference",
                    ref="Contact",
                    rel="MasterRecord",
                    create=False,
                    update=False,
                ),
                _f("AccountId", "reference", ref="Account", rel="Account"),
                _f("LastName", "string", 80, required=True),
                _f("FirstName", "string", 40),
                _f("Salutation", "picklist", 40, picklist=_SALUTATIONS),
                _f("Name", "string", 121, create=False, update=False, label="Full Name"),
                *_address("Mailing"),
                _f("Phone", "phone"),
                _f("MobilePhone", "phone"),
                _f("Email", "email"),
                _f("Title", "string", 128),
                _f("Department", "string", 80),
                _f("LeadSource", "picklist", picklist=_LEAD_SOURCES),
                _f("Description", "textarea"),
                _f("HasOptedOutOfEmail", "boolean", label="Email Opt Out"),
                _owner(),
                _f("Email_Domain__c", "string", 1300, formula=EMAIL_DOMAIN_FORMULA),
                # Read-only for the integration user's profile (field-level security), not a formula.
                _f("Lifetime_Value__c", "currency", create=False, update=False),
            ],
        ),
        _object(
            "Lead",
            "00Q",
            "Lead",
            "Leads",
            [
                _f("MasterRecordId", "reference", ref="Lead", rel="MasterRecord", create=False, update=False),
                _f("LastName", "string", 80, required=True),
                _f("FirstName", "string", 40),
                _f("Salutation", "picklist", 40, picklist=_SALUTATIONS),
                _f("Name", "string", 121, create=False, update=False, label="Full Name"),
                _f("Title", "string", 128),
                _f("Company", "string", 255, required=True),
                *_address(""),
                _f("Phone", "phone"),
                _f("MobilePhone", "phone"),
                _f("Email", "email"),
                _f("Website", "url"),
                _f("Description", "textarea"),
                _f("LeadSource", "picklist", picklist=_LEAD_SOURCES),
                _f(
                    "Status",
                    "picklist",
                    255,
                    nillable=False,
                    default=LEAD_STATUSES[0],
                    picklist=LEAD_STATUSES,
                ),
                _f("Industry", "picklist", picklist=_INDUSTRIES),
                _f("AnnualRevenue", "currency"),
                _f("NumberOfEmployees", "int"),
                _f("HasOptedOutOfEmail", "boolean", label="Email Opt Out"),
                _f("IsConverted", "boolean", create=False, update=False, label="Converted"),
                _f("ConvertedDate", "date", create=False, update=False),
                _f(
                    "ConvertedAccountId",
                    "reference",
                    ref="Account",
                    rel="ConvertedAccount",
                    create=False,
                    update=False,
                ),
                _f(
                    "ConvertedContactId",
                    "reference",
                    ref="Contact",
                    rel="ConvertedContact",
                    create=False,
                    update=False,
                ),
                _owner(),
                _f("Email_Domain__c", "string", 1300, formula=EMAIL_DOMAIN_FORMULA),
                # Written by a scoring tool; read-only for the integration user (field-level security).
                _f("Lead_Score__c", "double", create=False, update=False),
            ],
        ),
        _object(
            "Campaign",
            "701",
            "Campaign",
            "Campaigns",
            [
                _f("Name", "string", 80, required=True),
                _f("ParentId", "reference", ref="Campaign", rel="Parent"),
                _f(
                    "Type",
                    "picklist",
                    picklist=(
                        "Conference",
                        "Webinar",
                        "Trade Show",
                        "Public Relations",
                        "Partners",
                        "Referral Program",
                        "Advertisement",
                        "Banner Ads",
                        "Direct Mail",
                        "Email",
                        "Telemarketing",
                        "Other",
                    ),
                ),
                _f("Status", "picklist", picklist=("Planned", "In Progress", "Completed", "Aborted")),
                _f("StartDate", "date"),
                _f("EndDate", "date"),
                _f("IsActive", "boolean", label="Active"),
                _f("Description", "textarea"),
                _owner(),
            ],
        ),
        _object(
            "CampaignMemberStatus",
            "01Y",
            "Campaign Member Status",
            "Campaign Member Statuses",
            [
                _f("CampaignId", "reference", ref="Campaign", required=True, update=False),
                _f("Label", "string", 765, required=True, update=False, label="Member Status Value"),
                _f("SortOrder", "int"),
                _f("IsDefault", "boolean", label="Default"),
                _f("HasResponded", "boolean", label="Responded"),
            ],
        ),
        _object(
            "CampaignMember",
            "00v",
            "Campaign Member",
            "Campaign Members",
            [
                _f("CampaignId", "reference", ref="Campaign", rel="Campaign", required=True, update=False),
                _f("LeadId", "reference", ref="Lead", rel="Lead", update=False),
                _f("ContactId", "reference", ref="Contact", rel="Contact", update=False),
                _f("Status", "picklist", 40),
                _f("HasResponded", "boolean", create=False, update=False, label="Responded"),
                _f("FirstRespondedDate", "date", create=False, update=False),
                _f("Type", "string", 40, create=False, update=False),
                _f("LeadOrContactId", "reference", create=False, update=False),
            ],
        ),
    )
}
PREFIX_TO_OBJECT = {obj.key_prefix: obj.name for obj in SCHEMA.values()}

# Children whose parents we look up often (cascades, campaign statuses, member uniqueness).
_INDEXED_REFS: dict[str, tuple[str, ...]] = {
    "Contact": ("AccountId",),
    "CampaignMember": ("CampaignId", "LeadId", "ContactId"),
    "CampaignMemberStatus": ("CampaignId",),
}
DEFAULT_MEMBER_STATUSES = (("Sent", True, False, 1), ("Responded", False, True, 2))


# ============================================================================================
# Clock, faults, cursors, bulk jobs
# ============================================================================================


class Clock:
    """The org's notion of now: real UTC time plus an offset, or frozen at an instant."""

    def __init__(self) -> None:
        self._offset = timedelta(0)
        self._frozen: datetime | None = None

    def now(self) -> datetime:
        if self._frozen is not None:
            return self._frozen
        return datetime.now(UTC) + self._offset

    @property
    def frozen(self) -> bool:
        return self._frozen is not None

    def set(self, when: datetime) -> None:
        if self._frozen is not None:
            self._frozen = when
        else:
            self._offset = when - datetime.now(UTC)

    def advance(self, seconds: float) -> None:
        delta = timedelta(seconds=seconds)
        if self._frozen is not None:
            self._frozen += delta
        else:
            self._offset += delta

    def freeze(self) -> None:
        self._frozen = self.now()

    def unfreeze(self) -> None:
        if self._frozen is not None:
            self._offset = self._frozen - datetime.now(UTC)
            self._frozen = None

    def state(self) -> dict[str, Any]:
        return {"now": format_datetime(self.now()), "frozen": self.frozen}


FAULT_KINDS = ("invalid_session", "request_limit", "unavailable_503", "query_timeout")


@dataclass
class Fault:
    """A queued failure for the next matching API requests."""

    kind: str
    count: int = 1
    after: int = 0
    path_contains: str | None = None


@dataclass
class Cursor:
    """A server-side query locator: the snapshot and how to render its pages."""

    query: CompiledQuery
    snapshot: Snapshot
    include_deleted: bool
    batch_size: int
    last_used: float


@dataclass
class BulkQueryJob:
    """A Bulk API 2.0 query job with its snapshotted result."""

    id: str
    operation: str
    sobject: str
    query: CompiledQuery
    snapshot: Snapshot
    created: str
    api_version: str
    column_delimiter: str = "COMMA"
    line_ending: str = "LF"
    state: str = "UploadComplete"
    polls: int = 0

    def info(self) -> dict[str, Any]:
        done = self.state == "JobComplete"
        return {
            "id": self.id,
            "operation": self.operation,
            "object": self.sobject,
            "createdById": None,
            "createdDate": self.created,
            "systemModstamp": self.created,
            "state": self.state,
            "concurrencyMode": "Parallel",
            "contentType": "CSV",
            "apiVersion": float(self.api_version),
            "jobType": "V2Query",
            "lineEnding": self.line_ending,
            "columnDelimiter": self.column_delimiter,
            "numberRecordsProcessed": len(self.snapshot) if done else 0,
            "retries": 0,
            "totalProcessingTime": 0,
        }


@dataclass
class BulkIngestJob:
    """A Bulk API 2.0 ingest job: uploaded CSV rows and, once processed, per-row results."""

    id: str
    operation: str
    sobject: str
    external_id_field: str | None
    created: str
    api_version: str
    column_delimiter: str = "COMMA"
    line_ending: str = "LF"
    state: str = "Open"
    polls: int = 0
    uploads: list[str] = field(default_factory=list)
    header: list[str] = field(default_factory=list)
    successes: list[tuple[str, bool, list[str]]] = field(default_factory=list)
    failures: list[tuple[str, str, list[str]]] = field(default_factory=list)
    unprocessed: list[list[str]] = field(default_factory=list)
    error_message: str | None = None

    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "operation": self.operation,
            "object": self.sobject,
            "createdById": None,
            "createdDate": self.created,
            "systemModstamp": self.created,
            "state": self.state,
            "externalIdFieldName": self.external_id_field,
            "concurrencyMode": "Parallel",
            "contentType": "CSV",
            "apiVersion": float(self.api_version),
            "jobType": "V2Ingest",
            "lineEnding": self.line_ending,
            "columnDelimiter": self.column_delimiter,
            "numberRecordsProcessed": len(self.successes) + len(self.failures),
            "numberRecordsFailed": len(self.failures),
            "retries": 0,
            "totalProcessingTime": 0,
            "apiActiveProcessingTime": 0,
            "apexProcessingTime": 0,
        }
        if self.state == "Open":
            out["contentUrl"] = f"services/data/v{self.api_version}/jobs/ingest/{self.id}/batches"
        if self.error_message:
            out["errorMessage"] = self.error_message
        return out


INGEST_OPERATIONS = ("insert", "update", "upsert", "delete", "hardDelete")
INGEST_CHUNK = 200
_DELIMITERS = {"COMMA": ",", "TAB": "\t", "PIPE": "|", "SEMICOLON": ";", "CARET": "^", "BACKQUOTE": "`"}


def _csv_value(value: Any, field_type: str) -> str:
    if value is None:
        return ""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if field_type == "datetime":
        return value.removesuffix("+0000") + "Z"  # Bulk API renders datetimes with a Z suffix
    return str(value)


def _encode_locator(offset: int) -> str:
    return base64.b64encode(str(offset).encode()).decode().rstrip("=")


def _decode_locator(locator: str) -> int:
    try:
        return int(base64.b64decode(locator + "=" * (-len(locator) % 4)).decode())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "INVALID_QUERY_LOCATOR", f"Invalid locator: {locator}") from exc


# ============================================================================================
# The org
# ============================================================================================


class Org:
    """All state of one stand-in org. Every public method is thread-safe (one re-entrant lock)."""

    def __init__(
        self,
        *,
        username: str = DEFAULT_USERNAME,
        password: str = DEFAULT_PASSWORD,
        security_token: str = DEFAULT_SECURITY_TOKEN,
        client_id: str = DEFAULT_CLIENT_ID,
        client_secret: str = DEFAULT_CLIENT_SECRET,
        api_max: int = DEFAULT_API_MAX,
        page_size: int = MAX_PAGE_SIZE,
    ) -> None:
        self.username = username
        self.password = password
        self.security_token = security_token
        self.client_id = client_id
        self.client_secret = client_secret
        self._lock = threading.RLock()
        self._default_api_max = api_max
        self._default_page_size = page_size
        self.schema = SCHEMA
        self.saved_write_count = 0
        self._reset_state()

    # -- lifecycle ------------------------------------------------------------------------

    def _reset_state(self) -> None:
        self._tables: dict[str, dict[str, Record]] = {name: {} for name in SCHEMA}
        self._children: dict[tuple[str, str], dict[str, set[str]]] = {
            (obj, ref): {} for obj, refs in _INDEXED_REFS.items() for ref in refs
        }
        self._seq = 1
        self.clock = Clock()
        self._sessions: dict[str, float] = {}
        self.api_max = self._default_api_max
        self.api_used = 0
        self.page_size = self._default_page_size
        self.max_cursors = 10
        self.cursor_timeout_seconds = 15 * 60.0
        self.session_timeout_seconds = 2 * 3600.0
        self.bulk_polls_before_complete = 0
        self._faults: list[Fault] = []
        self._stats: Counter[str] = Counter()
        self._cursors: OrderedDict[str, Cursor] = OrderedDict()
        self._bulk_jobs: dict[str, BulkQueryJob] = {}
        self._ingest_jobs: dict[str, BulkIngestJob] = {}
        self._undo: list[tuple[str, Record | None, Record | None]] | None = None
        self._validation_rules: list[ValidationRule] = []
        self._duplicate_rules: list[DuplicateRule] = []
        # The rules as configured (kept for save/load): kind -> (object, name) -> the request's rule object
        self._rule_sources: dict[str, dict[tuple[str, str], dict[str, Any]]] = {
            "validation": {},
            "duplicate": {},
        }
        # (object, match fields) -> match key -> ids, kept current by _store for the active duplicate rules
        self._match_index: dict[tuple[str, tuple[str, ...]], dict[tuple[str, ...], set[str]]] = {}
        # Ids created in the current chunk of a collection or Bulk job: Salesforce does not match records
        # against others saved in the same chunk.
        self._chunk_created: set[str] | None = None
        self.write_count = 0
        self.user_id = self._new_id("005")
        stamp = self._stamp()
        self._tables["User"][self.user_id] = {
            "Id": self.user_id,
            "IsDeleted": False,
            "Username": self.username,
            "LastName": "User",
            "FirstName": "Integration",
            "Name": "Integration User",
            "Email": self.username,
            "Alias": "integ",
            "IsActive": True,
            "CreatedDate": stamp,
            "CreatedById": self.user_id,
            "LastModifiedDate": stamp,
            "LastModifiedById": self.user_id,
            "SystemModstamp": stamp,
        }

    def reset(self) -> None:
        """Forget all records, sessions, faults, stats, limits, clock and configuration."""
        with self._lock:
            self._reset_state()
            self.write_count += 1

    # -- ids and time ---------------------------------------------------------------------

    def _new_id(self, prefix: str) -> str:
        n = self._seq
        self._seq += 1
        digits = ""
        while n:
            n, rem = divmod(n, 62)
            digits = _BASE62[rem] + digits
        id15 = prefix + _POD + digits.rjust(9, "0")
        return id15 + id_suffix(id15)

    def now(self) -> datetime:
        """The org clock's current instant (UTC)."""
        with self._lock:
            return self.clock.now()

    def _stamp(self) -> str:
        """Audit timestamp: Salesforce stores these with whole-second precision."""
        return format_datetime(self.clock.now().replace(microsecond=0))

    def _today(self) -> str:
        return self.clock.now().date().isoformat()

    # -- clock control --------------------------------------------------------------------

    def set_clock(self, when: datetime | str, *, freeze: bool | None = None) -> dict[str, Any]:
        """Move the clock to ``when`` (optionally freezing or unfreezing it)."""
        with self._lock:
            instant = parse_datetime(when) if isinstance(when, str) else when.astimezone(UTC)
            if freeze is True:
                self.clock.freeze()
            self.clock.set(instant)
            if freeze is False:
                self.clock.unfreeze()
            return self.clock.state()

    def advance_clock(self, seconds: float) -> dict[str, Any]:
        """Move the clock forward (or back, with a negative number)."""
        with self._lock:
            self.clock.advance(seconds)
            return self.clock.state()

    def freeze_clock(self) -> dict[str, Any]:
        with self._lock:
            self.clock.freeze()
            return self.clock.state()

    def unfreeze_clock(self) -> dict[str, Any]:
        with self._lock:
            self.clock.unfreeze()
            return self.clock.state()

    # -- sessions -------------------------------------------------------------------------

    def login(self, username: str, password: str) -> str:
        """Password (+ security token) login; returns a new session id or raises AuthError."""
        with self._lock:
            ok_user = hmac.compare_digest(username.lower().encode(), self.username.lower().encode())
            ok_pass = hmac.compare_digest(password.encode(), (self.password + self.security_token).encode())
            self._stats["login"] += 1
            if not (ok_user and ok_pass):
                self._stats["login_failed"] += 1
                raise AuthError(
                    "INVALID_LOGIN", "Invalid username, password, security token; or user locked out."
                )
            token = f"{ORG_ID[:15]}!AQ0AQ{secrets.token_urlsafe(72)}"
            self._sessions[token] = time.monotonic()
            return token

    def oauth_login(self, form: Mapping[str, str]) -> dict[str, Any]:
        """OAuth 2.0 username-password flow; returns the token response or raises AuthError."""
        with self._lock:
            if form.get("grant_type") != "password":
                raise AuthError("unsupported_grant_type", "grant type not supported")
            if form.get("client_id") != self.client_id:
                raise AuthError("invalid_client_id", "client identifier invalid")
            if form.get("client_secret") != self.client_secret:
                raise AuthError("invalid_client", "invalid client credentials")
            try:
                token = self.login(form.get("username", ""), form.get("password", ""))
            except AuthError as exc:
                raise AuthError("invalid_grant", "authentication failure") from exc
            issued_at = str(int(time.time() * 1000))
            return {"access_token": token, "issued_at": issued_at}

    def oauth_signature(self, identity_url: str, issued_at: str) -> str:
        digest = hmac.new(self.client_secret.encode(), (identity_url + issued_at).encode(), hashlib.sha256)
        return base64.b64encode(digest.digest()).decode()

    def check_session(self, token: str | None) -> bool:
        """True when ``token`` is a live session (and refreshes its idle timer)."""
        if not token:
            return False
        with self._lock:
            last = self._sessions.get(token)
            now = time.monotonic()
            if last is None or now - last > self.session_timeout_seconds:
                self._sessions.pop(token, None)
                return False
            self._sessions[token] = now
            return True

    def invalidate_sessions(self) -> None:
        """Expire every session: clients must log in again."""
        with self._lock:
            self._sessions.clear()

    # -- limits, faults, stats, config ----------------------------------------------------

    def set_limits(self, *, max: int | None = None, used: int | None = None) -> dict[str, int]:
        """Set the daily API request allowance and/or how much of it is used."""
        with self._lock:
            if max is not None:
                self.api_max = int(max)
            if used is not None:
                self.api_used = int(used)
            return {"max": self.api_max, "used": self.api_used}

    def limit_info(self) -> str:
        """Value for the ``Sforce-Limit-Info`` header."""
        return f"api-usage={self.api_used}/{self.api_max}"

    def consume_api_request(self) -> bool:
        """Count one API request; False (not counted) when the daily allowance is used up."""
        with self._lock:
            if self.api_used >= self.api_max:
                return False
            self.api_used += 1
            return True

    def add_fault(
        self, kind: str, *, count: int = 1, after: int = 0, path_contains: str | None = None
    ) -> None:
        """Queue ``count`` failures of ``kind`` for API requests whose path contains ``path_contains``."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; expected one of {', '.join(FAULT_KINDS)}")
        with self._lock:
            self._faults.append(Fault(kind, int(count), int(after), path_contains or None))

    def pending_faults(self) -> list[dict[str, Any]]:
        """Queued faults that have not fired yet (``count`` left, ``after`` still to skip)."""
        with self._lock:
            return [dict(vars(fault)) for fault in self._faults]

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def take_fault(self, path: str) -> str | None:
        """The fault (if any) that fires for this request; skips and counts are consumed."""
        with self._lock:
            fired: str | None = None
            for fault in self._faults:
                if fault.path_contains and fault.path_contains not in path:
                    continue
                if fault.after > 0:
                    fault.after -= 1
                elif fired is None and fault.count > 0:
                    fault.count -= 1
                    fired = fault.kind
            self._faults = [f for f in self._faults if f.count > 0]
            if fired is not None:
                self._stats[f"fault:{fired}"] += 1
                if fired == "invalid_session":
                    self._sessions.clear()
            return fired

    def record_request(self, kind: str) -> None:
        with self._lock:
            self._stats[kind] += 1
            self._stats["api_requests"] += 1

    def stats(self) -> dict[str, Any]:
        """Request counts per kind (``query``, ``query_more``, ``sobject_create`` ...) and API usage."""
        with self._lock:
            return {
                "requests": dict(self._stats),
                "api_usage": {"used": self.api_used, "max": self.api_max},
                "records": {
                    name: sum(1 for r in table.values() if not r["IsDeleted"])
                    for name, table in self._tables.items()
                },
                "open_cursors": len(self._cursors),
                "clock": self.clock.state(),
            }

    def reset_stats(self) -> None:
        with self._lock:
            self._stats.clear()

    def configure(
        self,
        *,
        page_size: int | None = None,
        max_cursors: int | None = None,
        bulk_polls_before_complete: int | None = None,
        session_timeout_seconds: float | None = None,
        cursor_timeout_seconds: float | None = None,
    ) -> dict[str, Any]:
        """Tune behaviour: default query page size (200..2000), open-cursor cap, bulk job latency."""
        with self._lock:
            if page_size is not None:
                if not MIN_PAGE_SIZE <= int(page_size) <= MAX_PAGE_SIZE:
                    raise ValueError(f"page_size must be between {MIN_PAGE_SIZE} and {MAX_PAGE_SIZE}")
                self.page_size = int(page_size)
            if max_cursors is not None:
                self.max_cursors = int(max_cursors)
            if bulk_polls_before_complete is not None:
                self.bulk_polls_before_complete = int(bulk_polls_before_complete)
            if session_timeout_seconds is not None:
                self.session_timeout_seconds = float(session_timeout_seconds)
            if cursor_timeout_seconds is not None:
                self.cursor_timeout_seconds = float(cursor_timeout_seconds)
            return {
                "page_size": self.page_size,
                "max_cursors": self.max_cursors,
                "bulk_polls_before_complete": self.bulk_polls_before_complete,
                "session_timeout_seconds": self.session_timeout_seconds,
                "cursor_timeout_seconds": self.cursor_timeout_seconds,
            }

    # -- schema helpers -------------------------------------------------------------------

    def object_def(self, name: str) -> ObjectDef:
        """Case-insensitive sObject lookup; raises 404 NOT_FOUND like the REST API."""
        obj = self.schema.get(name)
        if obj is None:
            for candidate in self.schema.values():
                if candidate.name.lower() == name.lower():
                    return candidate
            raise ApiError(404, "NOT_FOUND", "The requested resource does not exist")
        return obj

    def type_of_id(self, record_id: str) -> str | None:
        return PREFIX_TO_OBJECT.get(record_id[:3])

    # -- low-level storage ----------------------------------------------------------------

    def _store(self, sobject: str, new: Record | None, old: Record | None) -> None:
        """Replace a record (records are never mutated in place, so snapshots stay valid)."""
        table = self._tables[sobject]
        if new is not None:
            table[new["Id"]] = new
        elif old is not None:
            table.pop(old["Id"], None)
        refs = _INDEXED_REFS.get(sobject)
        if refs:
            for ref in refs:
                index = self._children[(sobject, ref)]
                if old is not None and not old["IsDeleted"] and old.get(ref):
                    members = index.get(old[ref])
                    if members is not None:
                        members.discard(old["Id"])
                if new is not None and not new["IsDeleted"] and new.get(ref):
                    index.setdefault(new[ref], set()).add(new["Id"])
        for (indexed, fields), matches in self._match_index.items():
            if indexed != sobject:
                continue
            if old is not None and (key := match_key(old, fields)) is not None:
                ids = matches.get(key)
                if ids is not None:
                    ids.discard(old["Id"])
            if new is not None and (key := match_key(new, fields)) is not None:
                matches.setdefault(key, set()).add(new["Id"])
        if self._undo is not None:
            self._undo.append((sobject, old, new))
        self.write_count += 1

    def _rollback_to(self, mark: int) -> None:
        assert self._undo is not None
        while len(self._undo) > mark:
            sobject, old, new = self._undo.pop()
            undo, self._undo = self._undo, None
            try:
                self._store(sobject, old, new)
            finally:
                self._undo = undo

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """Undo everything stored inside the block if it raises."""
        outer = self._undo
        if outer is None:
            self._undo = []
        mark = len(self._undo or [])
        try:
            yield
        except BaseException:
            self._rollback_to(mark)
            raise
        finally:
            if outer is None:
                self._undo = None

    def _children_of(self, sobject: str, ref: str, parent_id: str) -> list[Record]:
        table = self._tables[sobject]
        return [table[i] for i in sorted(self._children[(sobject, ref)].get(parent_id, ()))]

    def _live(self, sobject: str, record_id: str) -> Record:
        rec = self._tables[sobject].get(record_id)
        if rec is None:
            raise RecordError("NOT_FOUND", "The requested resource does not exist", status=404)
        if rec["IsDeleted"]:
            raise RecordError("ENTITY_IS_DELETED", "entity is deleted", status=404)
        return rec

    def _resolve_id(self, obj: ObjectDef, raw: str) -> str:
        """Canonical id for a URL id of type ``obj``; 404 like Salesforce otherwise."""
        normalized = normalize_id(raw)
        if normalized is None:
            raise RecordError(
                "NOT_FOUND",
                f"Provided external ID field does not exist or is not accessible: {raw}",
                status=404,
            )
        if normalized[:3] != obj.key_prefix:
            raise RecordError("NOT_FOUND", "The requested resource does not exist", status=404)
        return normalized

    # -- value coercion -------------------------------------------------------------------

    def _coerce(self, obj: ObjectDef, fields: Mapping[str, Any]) -> dict[str, Any]:
        """JSON values → stored values; unknown fields and type mismatches fail the request."""
        out: dict[str, Any] = {}
        for key, value in fields.items():
            if key == "attributes":
                continue
            fdef = obj.by_lower.get(key.lower())
            if fdef is None:
                raise ApiError(400, "INVALID_FIELD", f"No such column '{key}' on sobject of type {obj.name}")
            out[fdef.name] = _coerce_value(fdef, value)
        return out

    # -- record validation ----------------------------------------------------------------

    def _check_fields(
        self, obj: ObjectDef, values: Mapping[str, Any], *, creating: bool, system: bool
    ) -> None:
        refused = []
        for name in values:
            fdef = obj.fields[name]
            if name == "Id":
                if creating:
                    raise RecordError("INVALID_FIELD", "cannot specify Id in an insert call", ["Id"])
                continue
            allowed = fdef.createable if creating else fdef.updateable
            # Seeding may set audit and system fields, never computed ones (Name, formulas).
            if not allowed and not (system and name != "Name" and fdef.formula is None):
                refused.append(name)
        if refused:
            raise RecordError(
                "INVALID_FIELD_FOR_INSERT_UPDATE",
                f"Unable to create/update fields: {', '.join(refused)}. Please check the security settings "
                "of this field and verify that it is read/write for your profile or permission set.",
                refused,
            )

    def _validate_values(self, obj: ObjectDef, rec: Record, changed: Iterable[str]) -> None:
        missing = [name for name in obj.required if rec.get(name) is None]
        if missing:
            raise RecordError(
                "REQUIRED_FIELD_MISSING", f"Required fields are missing: [{', '.join(missing)}]", missing
            )
        for name in changed:
            fdef = obj.fields[name]
            value = rec.get(name)
            if value is None:
                continue
            if fdef.type in TEXT_TYPES and len(value) > fdef.length:
                raise RecordError(
                    "STRING_TOO_LONG",
                    f"{fdef.label}: data value too large: {value[:80]} (max length={fdef.length})",
                    [name],
                )
            if fdef.type == "email" and not _EMAIL_RE.match(value):
                raise RecordError(
                    "INVALID_EMAIL_ADDRESS", f"{fdef.label}: invalid email address: {value}", [name]
                )
            if fdef.type == "reference" and name not in SYSTEM_FIELDS and name != "LeadOrContactId":
                self._check_reference(fdef, value)

    def _check_reference(self, fdef: FieldDef, value: str) -> None:
        normalized = normalize_id(value)
        if normalized is None:
            raise RecordError(
                "MALFORMED_ID", f"{fdef.label} ID: id value of incorrect type: {value}", [fdef.name]
            )
        target = fdef.reference_to
        assert target is not None
        if normalized[:3] != self.schema[target].key_prefix:
            raise RecordError(
                "FIELD_INTEGRITY_EXCEPTION",
                f"{fdef.label} ID: id value of incorrect type: {value}",
                [fdef.name],
            )
        parent = self._tables[target].get(normalized)
        if parent is None or parent["IsDeleted"]:
            raise RecordError(
                "INSUFFICIENT_ACCESS_ON_CROSS_REFERENCE_ENTITY",
                f"insufficient access rights on cross-reference id: {value}",
                [fdef.name],
            )

    # -- validation rules and duplicate rules ---------------------------------------------

    def _field_lookup(self, obj: ObjectDef) -> Callable[[str], str]:
        def lookup(name: str) -> str:
            fdef = obj.by_lower.get(str(name).lower())
            if fdef is None:
                raise ValueError(f"No such column '{name}' on sobject of type {obj.name}")
            return fdef.name

        return lookup

    def set_validation_rules(
        self, rules: Sequence[Mapping[str, Any]], *, replace: bool = False
    ) -> list[dict]:
        """Add (or with ``replace``, replace all) validation rules; each needs object, name, error_message,
        condition and may have error_field, on (insert/update) and active. Returns every rule."""
        with self._lock:
            parsed = []
            for raw in rules:
                obj = self.object_def(str(raw.get("object") or raw.get("sobject") or ""))
                parsed.append(parse_validation_rule(raw, obj.name, self._field_lookup(obj)))
            kept = [] if replace else self._validation_rules
            names = {(r.sobject, r.name) for r in parsed}
            self._validation_rules = [r for r in kept if (r.sobject, r.name) not in names] + parsed
            self._remember_rules("validation", rules, parsed, replace)
            return self.validation_rules()

    def _remember_rules(
        self,
        kind: str,
        raw: Sequence[Mapping[str, Any]],
        parsed: Sequence[ValidationRule | DuplicateRule],
        replace: bool,
    ) -> None:
        sources = {} if replace else self._rule_sources[kind]
        for source, rule in zip(raw, parsed, strict=True):
            sources.pop((rule.sobject, rule.name), None)
            sources[(rule.sobject, rule.name)] = {**source, "object": rule.sobject}
        self._rule_sources[kind] = sources
        self.write_count += 1  # the configuration is part of the saved state

    def validation_rules(self) -> list[dict]:
        with self._lock:
            return [rule.describe() for rule in self._validation_rules]

    def set_duplicate_rules(self, rules: Sequence[Mapping[str, Any]], *, replace: bool = False) -> list[dict]:
        """Add (or with ``replace``, replace all) duplicate rules on Lead, Contact or Account. Returns all."""
        with self._lock:
            lookups = {name: self._field_lookup(self.schema[name]) for name in ("Lead", "Contact", "Account")}
            parsed = []
            for raw in rules:
                obj = self.object_def(str(raw.get("object") or raw.get("sobject") or ""))
                if obj.name not in lookups:
                    raise ValueError(f"duplicate rules exist for Lead, Contact and Account, not {obj.name}")
                parsed.append(parse_duplicate_rule(raw, obj.name, lookups))
            kept = [] if replace else self._duplicate_rules
            names = {(r.sobject, r.name) for r in parsed}
            self._duplicate_rules = [r for r in kept if (r.sobject, r.name) not in names] + parsed
            self._remember_rules("duplicate", rules, parsed, replace)
            self._rebuild_match_index()
            return self.duplicate_rules()

    def duplicate_rules(self) -> list[dict]:
        with self._lock:
            return [rule.describe() for rule in self._duplicate_rules]

    def _rebuild_match_index(self) -> None:
        self._match_index = {}
        for rule in self._duplicate_rules:
            for other in rule.compare_objects:
                key = (other, rule.match_fields)
                if key in self._match_index:
                    continue
                index: dict[tuple[str, ...], set[str]] = {}
                for rec in self._tables[other].values():
                    found = match_key(rec, rule.match_fields)
                    if found is not None:
                        index.setdefault(found, set()).add(rec["Id"])
                self._match_index[key] = index

    def _matching(self, sobject: str, fields: tuple[str, ...], key: tuple[str, ...]) -> list[Record]:
        table = self._tables[sobject]
        return [table[i] for i in self._match_index.get((sobject, fields), {}).get(key, ())]

    def _check_custom_rules(
        self, obj: ObjectDef, rec: Record, *, creating: bool, options: DuplicateOptions | None
    ) -> None:
        """Validation rules, then duplicate rules (Salesforce's order of execution); raise on failure."""
        failed = [r for r in self._validation_rules if r.sobject == obj.name and r.applies(creating)]
        errors = [
            RecordError(
                "FIELD_CUSTOM_VALIDATION_EXCEPTION",
                rule.error_message,
                [rule.error_field] if rule.error_field else [],
            )
            for rule in failed
            if rule.condition.holds(rec)
        ]
        if errors:
            raise RecordError(errors[0].code, errors[0].message, errors[0].fields, more=errors[1:])
        options = options or DuplicateOptions()
        for rule in self._duplicate_rules:
            if rule.sobject != obj.name or not rule.active:
                continue
            action = rule.action(creating)
            if action == "allow" and not rule.alert:
                continue  # report only: the save goes ahead
            matches = find_duplicates(rule, rec, self._matching, self._chunk_created or set())
            if not matches:
                continue
            allow_save = action == "allow"
            if allow_save and options.allow_save:
                continue
            finding = DuplicateFinding(rule, allow_save, matches)
            raise RecordError(
                "DUPLICATES_DETECTED",
                rule.alert_text,
                [],
                duplicate_result=finding.result(
                    lambda sobject, found: self._duplicate_record(sobject, found, options)
                ),
            )

    def _duplicate_record(self, sobject: str, rec: Record, options: DuplicateOptions) -> dict[str, Any]:
        obj = self.schema[sobject]
        if options.include_record_details:
            return self._render(obj, rec, None, options.api_version)
        return {
            "attributes": {
                "type": sobject,
                "url": f"/services/data/v{options.api_version}/sobjects/{sobject}/{rec['Id']}",
            },
            "Id": rec["Id"],
        }

    # -- object rules ---------------------------------------------------------------------

    def _statuses(self, campaign_id: str) -> list[Record]:
        return self._children_of("CampaignMemberStatus", "CampaignId", campaign_id)

    def _apply_rules(self, obj: ObjectDef, rec: Record, old: Record | None, stamp: str) -> None:
        """Object-specific behaviour run on every create/update, before storing ``rec``."""
        name = obj.name
        if name in ("Contact", "Lead"):
            rec["Name"] = " ".join(p for p in (rec.get("FirstName"), rec.get("LastName")) if p) or None
        _compute_formulas(name, rec)
        if name == "Lead" and rec.get("Status") is None:
            rec["Status"] = LEAD_STATUSES[0]
        if name == "CampaignMember":
            self._campaign_member_rules(rec, old)
        elif name == "CampaignMemberStatus":
            self._member_status_rules(rec, old, stamp)

    def _campaign_member_rules(self, rec: Record, old: Record | None) -> None:
        campaign_id = rec["CampaignId"]
        if old is None:
            lead_id, contact_id = rec.get("LeadId"), rec.get("ContactId")
            if (lead_id is None) == (contact_id is None):
                raise RecordError(
                    "REQUIRED_FIELD_MISSING",
                    "Required fields are missing: [exactly one of LeadId, ContactId]",
                    ["LeadId", "ContactId"],
                )
            person = str(lead_id if lead_id is not None else contact_id)  # exactly one is set (checked above)
            if lead_id is not None and self._tables["Lead"][lead_id].get("IsConverted"):
                raise RecordError(
                    "CANNOT_UPDATE_CONVERTED_LEAD", "cannot reference converted lead", ["LeadId"]
                )
            ref = "LeadId" if lead_id is not None else "ContactId"
            for member in self._children_of("CampaignMember", ref, person):
                if member["CampaignId"] == campaign_id:
                    raise RecordError("DUPLICATE_VALUE", "Already a campaign member.", [])
            rec["Type"] = "Lead" if lead_id is not None else "Contact"
            rec["LeadOrContactId"] = person
        statuses = self._statuses(campaign_id)
        status = rec.get("Status")
        chosen: Record | None = None
        if status is None:
            chosen = next((s for s in statuses if s["IsDefault"]), statuses[0] if statuses else None)
        else:
            chosen = next((s for s in statuses if s["Label"].lower() == status.lower()), None)
            if chosen is None:
                # Real Salesforce validates Status against the campaign's CampaignMemberStatus labels, which
                # behave as a per-campaign restricted picklist; INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST is
                # the code Salesforce uses for a value outside a restricted picklist, so it is the closest.
                raise RecordError(
                    "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                    f"Status: bad value for restricted picklist field: {status}",
                    ["Status"],
                )
        if chosen is not None:
            rec["Status"] = chosen["Label"]
            rec["HasResponded"] = bool(chosen["HasResponded"])
        else:
            rec["HasResponded"] = False
        if rec["HasResponded"] and not rec.get("FirstRespondedDate"):
            rec["FirstRespondedDate"] = self._today()

    def _member_status_rules(self, rec: Record, old: Record | None, stamp: str) -> None:
        campaign_id = rec["CampaignId"]
        siblings = [s for s in self._statuses(campaign_id) if s["Id"] != rec["Id"]]
        if old is None:
            for sibling in siblings:
                if sibling["Label"].lower() == rec["Label"].lower():
                    raise RecordError(
                        "DUPLICATE_VALUE",
                        f"duplicate value found: Label duplicates value on record with id: {sibling['Id']}",
                        ["Label"],
                    )
            if rec.get("SortOrder") is None:
                rec["SortOrder"] = max((s.get("SortOrder") or 0 for s in siblings), default=0) + 1
        if rec.get("IsDefault"):
            for sibling in siblings:
                if sibling["IsDefault"]:
                    self._store(
                        "CampaignMemberStatus",
                        {**sibling, "IsDefault": False, "LastModifiedDate": stamp, "SystemModstamp": stamp},
                        sibling,
                    )
        elif old is not None and old.get("IsDefault"):
            raise RecordError(
                "FIELD_INTEGRITY_EXCEPTION", "A campaign must have a default member status.", ["IsDefault"]
            )

    def _after_create(self, obj: ObjectDef, rec: Record, stamp: str) -> None:
        if obj.name == "Campaign":
            for label, is_default, responded, order in DEFAULT_MEMBER_STATUSES:
                self._insert_raw(
                    "CampaignMemberStatus",
                    {
                        "CampaignId": rec["Id"],
                        "Label": label,
                        "IsDefault": is_default,
                        "HasResponded": responded,
                        "SortOrder": order,
                    },
                    stamp,
                )

    def _insert_raw(self, sobject: str, values: dict[str, Any], stamp: str) -> Record:
        """Store a new record with defaults and audit fields (no validation)."""
        obj = self.schema[sobject]
        rec: Record = {"Id": self._new_id(obj.key_prefix), "IsDeleted": False}
        for fdef in obj.fields.values():
            if fdef.default is not None and fdef.name != "IsDeleted":
                rec[fdef.name] = fdef.default
        rec.update(values)
        if "OwnerId" in obj.fields and rec.get("OwnerId") is None:
            rec["OwnerId"] = self.user_id
        rec.setdefault("CreatedDate", stamp)
        rec.setdefault("LastModifiedDate", rec["CreatedDate"])
        rec.setdefault("SystemModstamp", rec["LastModifiedDate"])
        rec.setdefault("CreatedById", self.user_id)
        rec.setdefault("LastModifiedById", self.user_id)
        self._store(sobject, rec, None)
        return rec

    # -- create / update / delete ---------------------------------------------------------

    def _create_one(
        self,
        obj: ObjectDef,
        values: dict[str, Any],
        *,
        system: bool = False,
        stamp: str | None = None,
        enforce: bool = True,
        options: DuplicateOptions | None = None,
    ) -> str:
        if not obj.createable:
            raise RecordError("INVALID_TYPE_FOR_OPERATION", f"entity type {obj.name} does not support insert")
        self._check_fields(obj, values, creating=True, system=system)
        stamp = stamp or self._stamp()
        # Everything is validated before the record is stored, so a failure leaves nothing behind.
        rec: Record = {"Id": "", "IsDeleted": False, **obj.defaults}
        for name, value in values.items():
            if value is not None:
                rec[name] = value
        self._validate_values(obj, rec, values)
        self._apply_rules(obj, rec, None, stamp)
        if enforce and not system:
            self._check_custom_rules(obj, rec, creating=True, options=options)
        rec["Id"] = self._new_id(obj.key_prefix)
        if "OwnerId" in obj.fields and rec.get("OwnerId") is None:
            rec["OwnerId"] = self.user_id
        deleted = rec["IsDeleted"]
        rec["IsDeleted"] = False
        if "CreatedDate" not in rec:
            rec["CreatedDate"] = stamp
        if "LastModifiedDate" not in rec:
            rec["LastModifiedDate"] = rec["CreatedDate"] if "CreatedDate" in values else stamp
        if "SystemModstamp" not in rec:
            rec["SystemModstamp"] = rec["LastModifiedDate"]
        if "CreatedById" not in rec:
            rec["CreatedById"] = self.user_id
        if "LastModifiedById" not in rec:
            rec["LastModifiedById"] = self.user_id
        self._store(obj.name, rec, None)
        if self._chunk_created is not None:
            self._chunk_created.add(rec["Id"])
        self._after_create(obj, rec, stamp)
        if deleted:  # seeded directly into the recycle bin
            self._mark_deleted(obj.name, rec, rec["SystemModstamp"], cascade=False)
        return rec["Id"]

    def _update_one(
        self,
        obj: ObjectDef,
        record_id: str,
        values: dict[str, Any],
        *,
        options: DuplicateOptions | None = None,
    ) -> None:
        if not obj.updateable:
            raise RecordError("INVALID_TYPE_FOR_OPERATION", f"entity type {obj.name} does not support update")
        old = self._live(obj.name, record_id)
        if obj.name == "Lead" and old.get("IsConverted"):
            raise RecordError("CANNOT_UPDATE_CONVERTED_LEAD", "cannot reference converted lead")
        values = {k: v for k, v in values.items() if k != "Id"}
        self._check_fields(obj, values, creating=False, system=False)
        stamp = self._stamp()
        with self._transaction():
            rec = {**old, **values}
            for name in values:
                if obj.fields[name].type == "boolean" and rec[name] is None:
                    rec[name] = False
            self._validate_values(obj, rec, values.keys())
            self._apply_rules(obj, rec, old, stamp)
            self._check_custom_rules(obj, rec, creating=False, options=options)
            rec["LastModifiedDate"] = stamp
            rec["SystemModstamp"] = stamp
            rec["LastModifiedById"] = self.user_id
            self._store(obj.name, rec, old)

    def _mark_deleted(
        self, sobject: str, rec: Record, stamp: str, *, cascade: bool = True, **extra: Any
    ) -> None:
        new = {
            **rec,
            **extra,
            "IsDeleted": True,
            "LastModifiedDate": stamp,
            "SystemModstamp": stamp,
            "LastModifiedById": self.user_id,
            "_DeletedDate": stamp,
        }
        self._store(sobject, new, rec)
        if not cascade:
            return
        children: list[tuple[str, Record]] = []
        if sobject == "Account":
            children = [("Contact", c) for c in self._children_of("Contact", "AccountId", rec["Id"])]
        elif sobject in ("Contact", "Lead"):
            ref = "ContactId" if sobject == "Contact" else "LeadId"
            children = [("CampaignMember", m) for m in self._children_of("CampaignMember", ref, rec["Id"])]
        elif sobject == "Campaign":
            children = [
                ("CampaignMember", m) for m in self._children_of("CampaignMember", "CampaignId", rec["Id"])
            ]
            children += [("CampaignMemberStatus", s) for s in self._statuses(rec["Id"])]
        for child_type, child in children:
            current = self._tables[child_type][child["Id"]]
            if not current["IsDeleted"]:
                self._mark_deleted(child_type, current, stamp)

    def _delete_one(self, obj: ObjectDef, record_id: str) -> None:
        if not obj.deletable:
            raise RecordError("INVALID_TYPE_FOR_OPERATION", f"entity type {obj.name} does not support delete")
        rec = self._live(obj.name, record_id)
        if obj.name == "CampaignMemberStatus":
            if rec["IsDefault"]:
                raise RecordError(
                    "FIELD_INTEGRITY_EXCEPTION", "You can't delete the default campaign member status.", []
                )
            in_use = any(
                m["Status"] == rec["Label"]
                for m in self._children_of("CampaignMember", "CampaignId", rec["CampaignId"])
            )
            if in_use:
                raise RecordError(
                    "FIELD_INTEGRITY_EXCEPTION",
                    "You can't delete a member status that campaign members use.",
                    [],
                )
        with self._transaction():
            self._mark_deleted(obj.name, rec, self._stamp())

    # -- public record API (REST handlers and in-process use) -----------------------------

    def create(
        self, sobject: str, fields: Mapping[str, Any], *, options: DuplicateOptions | None = None
    ) -> str:
        """Create one record like ``POST sobjects/{Type}``; raises RecordError/ApiError."""
        with self._lock:
            obj = self.object_def(sobject)
            return self._create_one(obj, self._coerce(obj, fields), options=options)

    def update(
        self,
        sobject: str,
        record_id: str,
        fields: Mapping[str, Any],
        *,
        options: DuplicateOptions | None = None,
    ) -> None:
        """Update one record like ``PATCH sobjects/{Type}/{Id}``."""
        with self._lock:
            obj = self.object_def(sobject)
            values = self._coerce(obj, fields)
            self._update_one(obj, self._resolve_id(obj, record_id), values, options=options)

    def delete(self, sobject: str, record_id: str) -> None:
        """Delete (to the recycle bin) like ``DELETE sobjects/{Type}/{Id}``."""
        with self._lock:
            obj = self.object_def(sobject)
            self._delete_one(obj, self._resolve_id(obj, record_id))

    def get(
        self, sobject: str, record_id: str, fields: Sequence[str] | None = None, version: str = "59.0"
    ) -> dict:
        """Retrieve one record like ``GET sobjects/{Type}/{Id}`` (all fields unless ``fields``)."""
        with self._lock:
            obj = self.object_def(sobject)
            rec = self._live(obj.name, self._resolve_id(obj, record_id))
            return self._render(obj, rec, fields, version)

    def _render(self, obj: ObjectDef, rec: Record, fields: Sequence[str] | None, version: str) -> dict:
        out: dict[str, Any] = {
            "attributes": {
                "type": obj.name,
                "url": f"/services/data/v{version}/sobjects/{obj.name}/{rec['Id']}",
            }
        }
        if fields:
            names = []
            for raw in fields:
                fdef = obj.by_lower.get(raw.strip().lower())
                if fdef is None:
                    raise ApiError(
                        400, "INVALID_FIELD", f"No such column '{raw}' on sobject of type {obj.name}"
                    )
                names.append(fdef.name)
        else:
            names = list(obj.fields)
        for name in names:
            out[name] = rec.get(name)
        return out

    def seed(self, sobject: str, records: Iterable[Mapping[str, Any]]) -> list[str]:
        """Bulk insert with the API's validation, but system fields (CreatedDate, LastModifiedDate,
        SystemModstamp, IsConverted, IsDeleted ...) may be given explicitly. All or nothing."""
        with self._lock:
            obj = self.object_def(sobject)
            ids: list[str] = []
            cache: dict[str, str] = {}
            stamp = self._stamp()
            with self._transaction():
                for index, raw in enumerate(records):
                    values = self._coerce_seed(obj, raw, cache)
                    try:
                        ids.append(self._create_one(obj, values, system=True, stamp=stamp))
                    except RecordError as exc:
                        raise ApiError(400, exc.code, f"record {index}: {exc.message}", exc.fields) from exc
            return ids

    def _coerce_seed(self, obj: ObjectDef, raw: Mapping[str, Any], cache: dict[str, str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in raw.items():
            if key == "attributes":
                continue
            fdef = obj.fields.get(key) or obj.by_lower.get(key.lower())
            if fdef is None:
                raise ApiError(400, "INVALID_FIELD", f"No such column '{key}' on sobject of type {obj.name}")
            if fdef.type == "datetime" and isinstance(value, str):
                converted = cache.get(value)
                if converted is None:
                    converted = cache[value] = _coerce_value(fdef, value)
                out[fdef.name] = converted
            elif isinstance(value, datetime) and fdef.type == "datetime":
                out[fdef.name] = format_datetime(value)
            elif isinstance(value, date) and fdef.type == "date":
                out[fdef.name] = value.isoformat()
            else:
                out[fdef.name] = _coerce_value(fdef, value)
        return out

    def query(
        self, soql: str, *, include_deleted: bool = False, version: str = "59.0"
    ) -> list[dict[str, Any]]:
        """All rows of a SOQL query, rendered like the REST API (in-process convenience)."""
        with self._lock:
            compiled = self._compile(soql)
            if compiled.is_count:
                raise ApiError(400, "MALFORMED_QUERY", "use count() for COUNT() queries")
            snapshot = compiled.run(self._tables, include_deleted)
            render = compiled.renderer(snapshot, f"/services/data/v{version}/sobjects/")
            return [render(i) for i in range(len(snapshot))]

    def count(self, soql: str, *, include_deleted: bool = False) -> int:
        with self._lock:
            compiled = self._compile(soql)
            if compiled.is_count:
                return compiled.count(self._tables, include_deleted)
            return len(compiled.run(self._tables, include_deleted))

    def _compile(self, soql: str) -> CompiledQuery:
        try:
            return compile_query(soql, self.schema, self._tables)
        except SoqlError as exc:
            raise ApiError(400, exc.code, exc.message) from exc

    # -- REST query with server-side cursors ----------------------------------------------

    def run_query(
        self, soql: str, *, include_deleted: bool, version: str, batch_size: int | None = None
    ) -> dict[str, Any]:
        """``GET query`` / ``queryAll``: first page plus a cursor for the rest."""
        with self._lock:
            compiled = self._compile(soql)
            if compiled.is_count:
                total = compiled.count(self._tables, include_deleted)
                return {"totalSize": total, "done": True, "records": []}
            snapshot = compiled.run(self._tables, include_deleted)
            size = _clamp_batch(batch_size, self.page_size)
            cursor = Cursor(compiled, snapshot, include_deleted, size, time.monotonic())
            return self._page(cursor, 0, version, size)

    def query_more(self, locator: str, *, version: str, batch_size: int | None = None) -> dict[str, Any]:
        """``GET query/{cursorId}-{offset}``: the next page of a snapshotted result."""
        with self._lock:
            self._expire_cursors()
            cursor_id, _, offset_text = locator.rpartition("-")
            cursor = self._cursors.get(cursor_id)
            if cursor is None or not offset_text.isdigit():
                raise ApiError(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
            cursor.last_used = time.monotonic()
            self._cursors.move_to_end(cursor_id)
            size = _clamp_batch(batch_size, cursor.batch_size) if batch_size else cursor.batch_size
            return self._page(cursor, int(offset_text), version, size, cursor_id)

    def _page(
        self, cursor: Cursor, offset: int, version: str, size: int, cursor_id: str | None = None
    ) -> dict[str, Any]:
        total = len(cursor.snapshot)
        end = min(total, offset + size)
        render = cursor.query.renderer(cursor.snapshot, f"/services/data/v{version}/sobjects/")
        records = [render(i) for i in range(offset, end)]
        page: dict[str, Any] = {"totalSize": total, "done": end >= total}
        if end < total:
            if cursor_id is None:
                self._expire_cursors()
                cursor_id = self._new_id("01g")
                self._cursors[cursor_id] = cursor
                while len(self._cursors) > self.max_cursors:
                    self._cursors.popitem(last=False)
            endpoint = "queryAll" if cursor.include_deleted else "query"
            page["nextRecordsUrl"] = f"/services/data/v{version}/{endpoint}/{cursor_id}-{end}"
        elif cursor_id is not None:
            self._cursors.pop(cursor_id, None)
        page["records"] = records
        return page

    def _expire_cursors(self) -> None:
        cutoff = time.monotonic() - self.cursor_timeout_seconds
        for cursor_id in [c for c, cur in self._cursors.items() if cur.last_used < cutoff]:
            del self._cursors[cursor_id]

    # -- replication (updated/deleted) ----------------------------------------------------

    def _replication_window(self, start: str, end: str) -> tuple[str, str]:
        try:
            start_dt = parse_datetime(start.replace(" ", "+"))
            end_dt = parse_datetime(end.replace(" ", "+"))
        except ValueError as exc:
            raise ApiError(400, "INVALID_REPLICATION_DATE", f"invalid date: {exc}") from exc
        now = self.clock.now()
        start_dt = start_dt.replace(second=0, microsecond=0)
        end_dt = min(end_dt, now).replace(second=0, microsecond=0)
        if end_dt < start_dt:
            raise ApiError(400, "INVALID_REPLICATION_DATE", "end date must be after start date")
        if start_dt < now - timedelta(days=30):
            raise ApiError(400, "INVALID_REPLICATION_DATE", "startDate can not be more than 30 days ago")
        return format_datetime(start_dt), format_datetime(end_dt)

    def updated(self, sobject: str, start: str, end: str) -> dict[str, Any]:
        """``GET sobjects/{Type}/updated``: ids whose SystemModstamp is in [start, end) (minutes)."""
        with self._lock:
            obj = self.object_def(sobject)
            lo, hi = self._replication_window(start, end)
            ids = [
                rec["Id"]
                for rec in self._tables[obj.name].values()
                if not rec["IsDeleted"] and lo <= rec["SystemModstamp"] < hi
            ]
            return {"ids": sorted(ids), "latestDateCovered": hi}

    def deleted(self, sobject: str, start: str, end: str) -> dict[str, Any]:
        """``GET sobjects/{Type}/deleted``: records deleted in [start, end) (minutes)."""
        with self._lock:
            obj = self.object_def(sobject)
            lo, hi = self._replication_window(start, end)
            rows = [
                {"id": rec["Id"], "deletedDate": rec["_DeletedDate"]}
                for rec in self._tables[obj.name].values()
                if rec["IsDeleted"]
            ]
            earliest = min((r["deletedDate"] for r in rows), default=lo)
            rows = sorted(
                (r for r in rows if lo <= r["deletedDate"] < hi), key=lambda r: (r["deletedDate"], r["id"])
            )
            return {"deletedRecords": rows, "earliestDateAvailable": earliest, "latestDateCovered": hi}

    # -- sObject collections ----------------------------------------------------------------

    def _collection_results(
        self, items: list[tuple[str | None, Any]], all_or_none: bool, action: Any
    ) -> list[dict[str, Any]]:
        """Run ``action(item)`` per record; allOrNone rolls every change back on the first failure."""
        results: list[dict[str, Any]] = []
        failed = False
        with self._lock:
            outer = self._undo
            self._undo = []
            self._chunk_created = set()
            try:
                for record_id, item in items:
                    mark = len(self._undo)
                    try:
                        new_id = action(item)
                        results.append({"id": new_id or record_id, "success": True, "errors": []})
                    except RecordError as exc:
                        self._rollback_to(mark)
                        failed = True
                        result: dict[str, Any] = {"success": False, "errors": exc.result_errors()}
                        if record_id:
                            result = {"id": record_id, **result}
                        results.append(result)
                if failed and all_or_none:
                    self._rollback_to(0)
                    rolled_back = {
                        "statusCode": "ALL_OR_NONE_OPERATION_ROLLED_BACK",
                        "message": "Record rolled back because not all records were valid and the request "
                        "was using AllOrNone header",
                        "fields": [],
                    }
                    results = [
                        r if not r["success"] else {"success": False, "errors": [rolled_back]}
                        for r in results
                    ]
            finally:
                self._undo = outer
                self._chunk_created = None
        return results

    def create_collection(
        self,
        records: Sequence[Mapping[str, Any]],
        *,
        all_or_none: bool = False,
        options: DuplicateOptions | None = None,
    ) -> list[dict]:
        """``POST composite/sobjects``: up to 200 records, each with ``attributes.type``."""
        _check_collection_size(len(records))
        with self._lock:
            prepared: list[tuple[str | None, Any]] = []
            for raw in records:
                sobject = (raw.get("attributes") or {}).get("type")
                if not sobject:
                    raise ApiError(400, "INVALID_TYPE", "No SObject Type defined in attributes")
                obj = self.object_def(sobject)
                prepared.append((None, (obj, self._coerce(obj, raw))))
            return self._collection_results(
                prepared, all_or_none, lambda item: self._create_one(*item, options=options)
            )

    def update_collection(
        self,
        records: Sequence[Mapping[str, Any]],
        *,
        all_or_none: bool = False,
        options: DuplicateOptions | None = None,
    ) -> list[dict]:
        """``PATCH composite/sobjects``: up to 200 records, each with ``attributes.type`` and ``Id``."""
        _check_collection_size(len(records))
        with self._lock:
            prepared: list[tuple[str | None, Any]] = []
            for raw in records:
                sobject = (raw.get("attributes") or {}).get("type")
                if not sobject:
                    raise ApiError(400, "INVALID_TYPE", "No SObject Type defined in attributes")
                obj = self.object_def(sobject)
                values = self._coerce(obj, raw)
                raw_id = values.pop("Id", None)
                prepared.append((raw_id, (obj, raw_id, values)))

            def update(item: tuple[ObjectDef, str | None, dict[str, Any]]) -> None:
                obj, raw_id, values = item
                if not raw_id:
                    raise RecordError("MISSING_ARGUMENT", "Id not specified in an update call", ["Id"])
                record_id = normalize_id(raw_id)
                if record_id is None:
                    raise RecordError("MALFORMED_ID", f"malformed id {raw_id}", ["Id"])
                if record_id[:3] != obj.key_prefix or record_id not in self._tables[obj.name]:
                    raise RecordError("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id", ["Id"])
                self._update_one(obj, record_id, values, options=options)

            return self._collection_results(prepared, all_or_none, update)

    def delete_collection(self, ids: Sequence[str], *, all_or_none: bool = False) -> list[dict]:
        """``DELETE composite/sobjects?ids=...``: up to 200 ids of any types."""
        _check_collection_size(len(ids))

        def delete(raw_id: str) -> str:
            record_id = normalize_id(raw_id)
            if record_id is None:
                raise RecordError("MALFORMED_ID", f"malformed id {raw_id}", [])
            sobject = self.type_of_id(record_id)
            if sobject is None or record_id not in self._tables[sobject]:
                raise RecordError("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id", [])
            self._delete_one(self.schema[sobject], record_id)
            return record_id

        return self._collection_results([(i, i) for i in ids], all_or_none, delete)

    def retrieve_collection(
        self, sobject: str, ids: Sequence[str], fields: Sequence[str], version: str = "59.0"
    ) -> list[dict | None]:
        """``GET composite/sobjects/{Type}?ids=&fields=``: records in id order, null when missing."""
        _check_collection_size(len(ids))
        if not fields:
            raise ApiError(400, "MISSING_ARGUMENT", "fields parameter is required")
        with self._lock:
            obj = self.object_def(sobject)
            out: list[dict | None] = []
            for raw_id in ids:
                record_id = normalize_id(raw_id)
                rec = self._tables[obj.name].get(record_id) if record_id else None
                out.append(
                    None if rec is None or rec["IsDeleted"] else self._render(obj, rec, fields, version)
                )
            return out

    # -- lead conversion and merge (control API) ------------------------------------------

    def convert_lead(
        self,
        lead_id: str,
        *,
        contact_id: str | None = None,
        account_id: str | None = None,
        converted_status: str = "Closed - Converted",
    ) -> dict[str, Any]:
        """Like Salesforce's convertLead: creates (or uses) a Contact and Account, marks the Lead."""
        with self._lock, self._transaction():
            lead_id = _must_id(lead_id, "Lead")
            lead = self._live("Lead", lead_id)
            if lead.get("IsConverted"):
                raise RecordError("CANNOT_UPDATE_CONVERTED_LEAD", "cannot reference converted lead")
            stamp = self._stamp()
            contact = self._live("Contact", _must_id(contact_id, "Contact")) if contact_id else None
            if account_id:
                account = self._live("Account", _must_id(account_id, "Account"))
            elif contact is not None and contact.get("AccountId"):
                account = self._live("Account", contact["AccountId"])
            else:
                account_new_id = self._create_one(
                    self.schema["Account"], {"Name": lead["Company"]}, enforce=False
                )
                account = self._tables["Account"][account_new_id]
            if contact is None:
                fields = {
                    "FirstName": lead.get("FirstName"),
                    "LastName": lead["LastName"],
                    "Email": lead.get("Email"),
                    "Title": lead.get("Title"),
                    "Phone": lead.get("Phone"),
                    "MobilePhone": lead.get("MobilePhone"),
                    "MailingCity": lead.get("City"),
                    "MailingState": lead.get("State"),
                    "MailingCountry": lead.get("Country"),
                    "LeadSource": lead.get("LeadSource"),
                    "Salutation": lead.get("Salutation"),
                    "AccountId": account["Id"],
                }
                contact_new_id = self._create_one(
                    self.schema["Contact"], {k: v for k, v in fields.items() if v is not None}, enforce=False
                )
                contact = self._tables["Contact"][contact_new_id]
            else:
                filled = {
                    k: lead.get(k) for k in ("Email", "Title", "Phone") if not contact.get(k) and lead.get(k)
                }
                if not contact.get("AccountId"):
                    filled["AccountId"] = account["Id"]
                self._touch("Contact", contact, stamp, **filled)
                self._touch("Account", account, stamp)
            contact = self._tables["Contact"][contact["Id"]]
            self._touch(
                "Lead",
                lead,
                stamp,
                IsConverted=True,
                ConvertedContactId=contact["Id"],
                ConvertedAccountId=account["Id"],
                ConvertedDate=self._today(),
                Status=converted_status,
            )
            # Salesforce keeps the lead's campaign history: members gain the new ContactId.
            for member in self._children_of("CampaignMember", "LeadId", lead_id):
                already = any(
                    m["CampaignId"] == member["CampaignId"]
                    for m in self._children_of("CampaignMember", "ContactId", contact["Id"])
                )
                if not already:
                    self._touch(
                        "CampaignMember",
                        member,
                        stamp,
                        ContactId=contact["Id"],
                        Type="Contact",
                        LeadOrContactId=contact["Id"],
                    )
            return {
                "leadId": lead_id,
                "contactId": contact["Id"],
                "accountId": account["Id"],
                "success": True,
            }

    def _touch(self, sobject: str, rec: Record, stamp: str, **changes: Any) -> Record:
        new = {
            **rec,
            **changes,
            "LastModifiedDate": stamp,
            "SystemModstamp": stamp,
            "LastModifiedById": self.user_id,
        }
        _compute_formulas(sobject, new)
        self._store(sobject, new, rec)
        return new

    def merge(self, master_id: str, duplicate_ids: Sequence[str]) -> dict[str, Any]:
        """Like Salesforce's merge: duplicates are deleted with MasterRecordId = master and their
        children (contacts of an account, campaign memberships) move to the master."""
        with self._lock, self._transaction():
            master_norm = normalize_id(master_id)
            sobject = self.type_of_id(master_norm or "")
            if master_norm is None or sobject not in ("Account", "Contact", "Lead"):
                raise RecordError("INVALID_ID_FIELD", f"invalid master record id: {master_id}")
            if not 1 <= len(duplicate_ids) <= 2:
                raise RecordError("INVALID_ARGUMENT", "merge takes one master and one or two duplicates")
            master = self._live(sobject, master_norm)
            stamp = self._stamp()
            merged = []
            for raw in duplicate_ids:
                dup_id = _must_id(raw, sobject)
                if dup_id == master_norm:
                    raise RecordError("INVALID_ID_FIELD", "cannot merge a record with itself")
                self._live(sobject, dup_id)
                if sobject == "Account":
                    for contact in self._children_of("Contact", "AccountId", dup_id):
                        self._touch("Contact", contact, stamp, AccountId=master_norm)
                else:
                    ref = "ContactId" if sobject == "Contact" else "LeadId"
                    master_campaigns = {
                        m["CampaignId"] for m in self._children_of("CampaignMember", ref, master_norm)
                    }
                    for member in self._children_of("CampaignMember", ref, dup_id):
                        if member["CampaignId"] in master_campaigns:
                            self._mark_deleted("CampaignMember", member, stamp)
                        else:
                            changes = {ref: master_norm}
                            if member.get("LeadOrContactId") == dup_id:
                                changes["LeadOrContactId"] = master_norm
                            self._touch("CampaignMember", member, stamp, **changes)
                            master_campaigns.add(member["CampaignId"])
                self._mark_deleted(
                    sobject, self._tables[sobject][dup_id], stamp, cascade=False, MasterRecordId=master_norm
                )
                merged.append(dup_id)
            self._touch(sobject, self._tables[sobject][master["Id"]], stamp)
            return {"id": master_norm, "mergedRecordIds": merged, "success": True}

    def backdate(
        self,
        ids: Sequence[str],
        when: datetime | str,
        fields: Sequence[str] = ("SystemModstamp", "LastModifiedDate"),
    ) -> int:
        """Set audit timestamps of records to ``when`` (a transaction that committed late)."""
        stamp = canonical_datetime(when) if isinstance(when, str) else format_datetime(when)
        allowed = {"SystemModstamp", "LastModifiedDate", "CreatedDate"}
        bad = set(fields) - allowed
        if bad:
            raise ValueError(f"backdate can set only {sorted(allowed)}, not {sorted(bad)}")
        with self._lock:
            changed = 0
            for raw in ids:
                record_id = normalize_id(raw)
                sobject = self.type_of_id(record_id or "")
                rec = self._tables[sobject].get(record_id) if sobject and record_id else None
                if rec is None:
                    raise ApiError(404, "NOT_FOUND", f"no record with id {raw}")
                self._store(sobject, {**rec, **dict.fromkeys(fields, stamp)}, rec)  # type: ignore[arg-type]
                changed += 1
            return changed

    def empty_recycle_bin(self, ids: Sequence[str]) -> int:
        """Purge deleted records for good (emptied from the recycle bin, or past its retention): queryAll and
        Bulk queryAll no longer return them. Like Salesforce, only records in the recycle bin can be purged."""
        with self._lock:
            purged: list[tuple[str, Record]] = []
            for raw in ids:
                record_id = normalize_id(raw)
                sobject = self.type_of_id(record_id or "")
                rec = self._tables[sobject].get(record_id) if sobject and record_id else None
                if sobject is None or rec is None or not rec["IsDeleted"]:
                    raise ApiError(400, "INVALID_ID_FIELD", f"{raw} is not in the recycle bin")
                purged.append((sobject, rec))
            for sobject, rec in purged:
                self._store(sobject, None, rec)
            return len(purged)

    # -- Bulk API 2.0 query jobs ----------------------------------------------------------

    def create_bulk_query(self, body: Mapping[str, Any], version: str) -> dict[str, Any]:
        with self._lock:
            operation = body.get("operation")
            if operation not in ("query", "queryAll"):
                raise ApiError(400, "INVALIDJOB", f"Invalid operation: {operation}")
            soql = body.get("query")
            if not isinstance(soql, str):
                raise ApiError(400, "INVALIDJOB", "query is required")
            delimiter = body.get("columnDelimiter", "COMMA")
            line_ending = body.get("lineEnding", "LF")
            if delimiter not in _DELIMITERS or line_ending not in ("LF", "CRLF"):
                raise ApiError(400, "INVALIDJOB", "Invalid columnDelimiter or lineEnding")
            compiled = self._compile(soql)
            if compiled.is_count or compiled.offset:
                raise ApiError(400, "INVALIDJOB", "Bulk API 2.0 query jobs do not support COUNT() or OFFSET")
            snapshot = compiled.run(self._tables, operation == "queryAll")
            job = BulkQueryJob(
                self._new_id("750"),
                operation,
                compiled.sobject,
                compiled,
                snapshot,
                self._stamp(),
                version,
                delimiter,
                line_ending,
            )
            self._bulk_jobs[job.id] = job
            return job.info()

    def _bulk_job(self, job_id: str) -> BulkQueryJob:
        job = self._bulk_jobs.get(normalize_id(job_id) or job_id)
        if job is None:
            raise ApiError(404, "NOT_FOUND", "The requested resource does not exist")
        return job

    def bulk_query_info(self, job_id: str) -> dict[str, Any]:
        with self._lock:
            job = self._bulk_job(job_id)
            if job.state in ("UploadComplete", "InProgress"):
                job.polls += 1
                job.state = "JobComplete" if job.polls > self.bulk_polls_before_complete else "InProgress"
            return job.info()

    def bulk_query_list(self) -> dict[str, Any]:
        with self._lock:
            return {
                "done": True,
                "records": [job.info() for job in self._bulk_jobs.values()],
                "nextRecordsUrl": None,
            }

    def abort_bulk_query(self, job_id: str, state: str) -> dict[str, Any]:
        with self._lock:
            job = self._bulk_job(job_id)
            if state != "Aborted":
                raise ApiError(400, "INVALIDJOBSTATE", f"Invalid state: {state}")
            if job.state == "JobComplete":
                raise ApiError(400, "INVALIDJOBSTATE", "Job is already complete")
            job.state = "Aborted"
            return job.info()

    def delete_bulk_query(self, job_id: str) -> None:
        with self._lock:
            job = self._bulk_job(job_id)
            del self._bulk_jobs[job.id]

    def bulk_query_results(
        self, job_id: str, locator: str | None, max_records: int | None
    ) -> tuple[str, str, int]:
        """One CSV chunk: (csv text, next locator or "null", number of records)."""
        with self._lock:
            job = self._bulk_job(job_id)
            if job.state != "JobComplete":
                raise ApiError(400, "INVALIDJOBSTATE", f"Job state {job.state} does not allow results")
            offset = _decode_locator(locator) if locator else 0
            limit = max_records or 50_000
            end = min(len(job.snapshot), offset + limit)
            buffer = io.StringIO()
            writer = csv.writer(
                buffer,
                delimiter=_DELIMITERS[job.column_delimiter],
                lineterminator="\r\n" if job.line_ending == "CRLF" else "\n",
                quoting=csv.QUOTE_ALL,
            )
            writer.writerow([path.text for path in job.query.select])
            columns = list(
                zip(
                    job.query.column_getters(job.snapshot),
                    [p.field.type for p in job.query.select],
                    strict=True,
                )
            )
            writer.writerows(
                [_csv_value(get(i), ftype) for get, ftype in columns] for i in range(offset, end)
            )
            next_locator = _encode_locator(end) if end < len(job.snapshot) else "null"
            return buffer.getvalue(), next_locator, max(0, end - offset)

    # -- Bulk API 2.0 ingest jobs ---------------------------------------------------------

    def create_ingest_job(self, body: Mapping[str, Any], version: str) -> dict[str, Any]:
        """``POST jobs/ingest``: an Open job waiting for CSV uploads."""
        with self._lock:
            operation = body.get("operation")
            if operation not in INGEST_OPERATIONS:
                raise ApiError(400, "INVALIDJOB", f"Invalid operation: {operation}")
            sobject = body.get("object")
            if not isinstance(sobject, str):
                raise ApiError(400, "INVALIDJOB", "object is required")
            try:
                obj = self.object_def(sobject)
            except ApiError:
                raise ApiError(400, "INVALIDJOB", f"Unable to find object: {sobject}") from None
            external_id = body.get("externalIdFieldName")
            if operation == "upsert" and (external_id or "").lower() != "id":
                # The stand-in's objects have no external id fields; Id is the only upsert key.
                raise ApiError(400, "INVALIDJOB", f"Invalid external id field: {external_id}")
            delimiter = body.get("columnDelimiter", "COMMA")
            line_ending = body.get("lineEnding", "LF")
            if delimiter not in _DELIMITERS or line_ending not in ("LF", "CRLF"):
                raise ApiError(400, "INVALIDJOB", "Invalid columnDelimiter or lineEnding")
            job = BulkIngestJob(
                self._new_id("750"),
                operation,
                obj.name,
                "Id" if external_id else None,
                self._stamp(),
                version,
                delimiter,
                line_ending,
            )
            self._ingest_jobs[job.id] = job
            return job.info()

    def _ingest_job(self, job_id: str) -> BulkIngestJob:
        job = self._ingest_jobs.get(normalize_id(job_id) or job_id)
        if job is None:
            raise ApiError(404, "NOT_FOUND", "The requested resource does not exist")
        return job

    def upload_ingest_data(self, job_id: str, data: str) -> None:
        """``PUT jobs/ingest/{id}/batches``: CSV with a header row."""
        with self._lock:
            job = self._ingest_job(job_id)
            if job.state != "Open":
                raise ApiError(400, "INVALIDJOBSTATE", f"Job state {job.state} does not accept data")
            job.uploads.append(data)

    def set_ingest_state(self, job_id: str, state: str) -> dict[str, Any]:
        """``PATCH jobs/ingest/{id}``: UploadComplete processes the rows; Aborted drops them."""
        with self._lock:
            job = self._ingest_job(job_id)
            if state == "Aborted" and job.state in ("Open", "UploadComplete", "InProgress"):
                job.state = "Aborted"
                return job.info()
            if state != "UploadComplete" or job.state != "Open":
                raise ApiError(400, "INVALIDJOBSTATE", f"Cannot change state from {job.state} to {state}")
            job.state = "UploadComplete"
            self._process_ingest(job)
            return job.info()

    def _process_ingest(self, job: BulkIngestJob) -> None:
        obj = self.schema[job.sobject]
        rows: list[list[str]] = []
        for data in job.uploads:
            reader = csv.reader(io.StringIO(data, newline=""), delimiter=_DELIMITERS[job.column_delimiter])
            header = next(reader, None)
            if header is None:
                continue
            if job.header and header != job.header:
                job.state, job.error_message = "Failed", "InvalidBatch : all uploads must share one header"
                return
            job.header = header
            rows.extend(row for row in reader if row)
        fields: list[FieldDef] = []
        for column in job.header:
            fdef = obj.by_lower.get(column.strip().lower())
            if fdef is None:
                job.state, job.error_message = "Failed", f"InvalidBatch : Field name not found : {column}"
                job.unprocessed = rows
                return
            fields.append(fdef)
        if job.operation in ("delete", "hardDelete") and [f.name for f in fields] != ["Id"]:
            job.state, job.error_message = (
                "Failed",
                "InvalidBatch : The 'delete' batch must contain only 'Id'",
            )
            job.unprocessed = rows
            return
        self._undo = []
        try:
            for number, row in enumerate(rows):
                if number % INGEST_CHUNK == 0:  # Salesforce saves a Bulk job's rows in chunks of 200
                    self._chunk_created = set()
                mark = len(self._undo)
                raw_id = ""
                try:
                    values = _csv_row_values(fields, row)
                    raw_id = str(values.pop("Id", None) or "")
                    record_id, created = self._ingest_row(obj, job.operation, raw_id, values)
                    job.successes.append((record_id, created, row))
                except (RecordError, ApiError) as exc:
                    self._rollback_to(mark)
                    error = (
                        exc.bulk_error()
                        if isinstance(exc, RecordError)
                        else RecordError(exc.code, exc.message, exc.fields).bulk_error()
                    )
                    job.failures.append((normalize_id(raw_id) or "", error, row))
        finally:
            self._undo = None
            self._chunk_created = None
        job.state = "JobComplete" if self.bulk_polls_before_complete == 0 else "InProgress"

    def _ingest_row(
        self, obj: ObjectDef, operation: str, raw_id: str, values: dict[str, Any]
    ) -> tuple[str, bool]:
        if operation == "insert" or (operation == "upsert" and not raw_id):
            return self._create_one(obj, values), True
        record_id = normalize_id(raw_id) if raw_id else None
        if record_id is None:
            raise RecordError("MALFORMED_ID", f"Id: invalid id: {raw_id}", ["Id"])
        if record_id[:3] != obj.key_prefix or record_id not in self._tables[obj.name]:
            raise RecordError("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id", ["Id"])
        if operation in ("delete", "hardDelete"):
            self._delete_one(obj, record_id)
        else:
            self._update_one(obj, record_id, values)
        return record_id, False

    def ingest_job_info(self, job_id: str) -> dict[str, Any]:
        with self._lock:
            job = self._ingest_job(job_id)
            if job.state == "InProgress":
                job.polls += 1
                if job.polls >= self.bulk_polls_before_complete:
                    job.state = "JobComplete"
            return job.info()

    def ingest_job_list(self) -> dict[str, Any]:
        with self._lock:
            return {
                "done": True,
                "records": [j.info() for j in self._ingest_jobs.values()],
                "nextRecordsUrl": None,
            }

    def delete_ingest_job(self, job_id: str) -> None:
        with self._lock:
            job = self._ingest_job(job_id)
            del self._ingest_jobs[job.id]

    def ingest_results(self, job_id: str, kind: str) -> str:
        """CSV for ``successfulResults``, ``failedResults`` or ``unprocessedrecords``."""
        with self._lock:
            job = self._ingest_job(job_id)
            buffer = io.StringIO()
            writer = csv.writer(
                buffer,
                delimiter=_DELIMITERS[job.column_delimiter],
                lineterminator="\r\n" if job.line_ending == "CRLF" else "\n",
                quoting=csv.QUOTE_ALL,
            )
            if kind == "successfulResults":
                writer.writerow(["sf__Id", "sf__Created", *job.header])
                writer.writerows(
                    [rid, "true" if created else "false", *row] for rid, created, row in job.successes
                )
            elif kind == "failedResults":
                writer.writerow(["sf__Id", "sf__Error", *job.header])
                writer.writerows([rid, error, *row] for rid, error, row in job.failures)
            else:
                writer.writerow(job.header)
                pending = job.unprocessed
                if job.state in ("Open", "Aborted") and not job.successes and not job.failures:
                    pending = [
                        row for data in job.uploads for row in list(csv.reader(io.StringIO(data)))[1:] if row
                    ]
                writer.writerows(pending)
            return buffer.getvalue()

    # -- describe and limits --------------------------------------------------------------

    def describe(self, sobject: str, version: str = "59.0") -> dict[str, Any]:
        obj = self.object_def(sobject)
        return _describe(obj, version)

    def describe_global(self, version: str = "59.0") -> dict[str, Any]:
        return {
            "encoding": "UTF-8",
            "maxBatchSize": COLLECTION_LIMIT,
            "sobjects": [_object_summary(obj, version) for obj in self.schema.values()],
        }

    def limits(self) -> dict[str, Any]:
        with self._lock:
            return {
                "DailyApiRequests": {"Max": self.api_max, "Remaining": max(0, self.api_max - self.api_used)},
                "DailyBulkV2QueryJobs": {"Max": 10000, "Remaining": 10000 - len(self._bulk_jobs)},
                "DailyBulkV2QueryFileStorageMB": {"Max": 976562, "Remaining": 976562},
                "DailyBulkApiBatches": {"Max": 15000, "Remaining": 15000},
                "ConcurrentSyncRequests": {"Max": 25, "Remaining": 25},
                "DataStorageMB": {"Max": 1024, "Remaining": 1024},
            }

    # -- persistence ----------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        """Write records, counters, clock and limits to a JSON file (atomically)."""
        with self._lock:
            state = {
                "format": 1,
                "seq": self._seq,
                "api": {"max": self.api_max, "used": self.api_used},
                "clock": {
                    "offset_seconds": self.clock._offset.total_seconds(),
                    "frozen": format_datetime(self.clock._frozen) if self.clock._frozen else None,
                },
                "page_size": self.page_size,
                "user_id": self.user_id,
                "rules": {kind: list(sources.values()) for kind, sources in self._rule_sources.items()},
                "records": {name: list(table.values()) for name, table in self._tables.items()},
            }
            written = self.write_count
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(target.suffix + ".tmp")
        with tmp.open("w", encoding="utf-8") as handle:
            json.dump(state, handle, separators=(",", ":"))
        os.replace(tmp, target)
        self.saved_write_count = written

    def load(self, path: str | Path) -> None:
        """Replace the org's records and counters with a file written by ``save``."""
        state = json.loads(Path(path).read_text(encoding="utf-8"))
        with self._lock:
            self._reset_state()
            self._seq = int(state["seq"])
            self.api_max = int(state["api"]["max"])
            self.api_used = int(state["api"]["used"])
            self.clock._offset = timedelta(seconds=state["clock"]["offset_seconds"])
            frozen = state["clock"].get("frozen")
            self.clock._frozen = parse_datetime(frozen) if frozen else None
            self.page_size = int(state.get("page_size", self.page_size))
            self.user_id = state.get("user_id", self.user_id)
            for name, rows in state["records"].items():
                if name not in self._tables:
                    continue
                self._tables[name].clear()
                for rec in rows:
                    self._store(name, rec, None)
            rules = state.get("rules") or {}
            self.set_validation_rules(rules.get("validation") or [])
            self.set_duplicate_rules(rules.get("duplicate") or [])
            self.saved_write_count = self.write_count


# ============================================================================================
# Helpers
# ============================================================================================


def _compute_formulas(sobject: str, rec: Record) -> None:
    for (owner, name), compute in FORMULAS.items():
        if owner == sobject:
            rec[name] = compute(rec)


def _clamp_batch(requested: int | None, default: int) -> int:
    if requested is None:
        return default
    return max(MIN_PAGE_SIZE, min(MAX_PAGE_SIZE, int(requested)))


def _check_collection_size(n: int) -> None:
    if n > COLLECTION_LIMIT:
        raise ApiError(
            400,
            "EXCEEDED_ID_LIMIT",
            "record limit reached. cannot submit more than 200 records into this call",
        )


def _csv_row_values(fields: Sequence[FieldDef], row: Sequence[str]) -> dict[str, Any]:
    """Bulk CSV cells → JSON-typed values: empty cells are left out, ``#N/A`` sets null."""
    values: dict[str, Any] = {}
    for fdef, cell in zip(fields, row, strict=False):
        if cell == "":
            continue
        if cell == "#N/A":
            values[fdef.name] = None
            continue
        try:
            if fdef.type == "boolean":
                if cell.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(cell)
                value: Any = cell.lower() in ("true", "1")
            elif fdef.type == "int":
                value = int(cell)
            elif fdef.type in NUMBER_TYPES:
                value = float(cell)
            else:
                value = cell
        except ValueError:
            raise RecordError(
                "INVALID_FIELD", f"{fdef.label}: value not of required type: {cell}", [fdef.name]
            ) from None
        values[fdef.name] = _coerce_value(fdef, value)
    return values


def _must_id(raw: str | None, sobject: str) -> str:
    normalized = normalize_id(raw or "")
    if normalized is None or normalized[:3] != SCHEMA[sobject].key_prefix:
        raise RecordError("INVALID_ID_FIELD", f"invalid {sobject} id: {raw}")
    return normalized


def _parser_error(fdef: FieldDef, value: Any, kind: str) -> ApiError:
    shown = json.dumps(value) if not isinstance(value, str) else value
    return ApiError(
        400,
        "JSON_PARSER_ERROR",
        f"Cannot deserialize instance of {kind} from VALUE_{type(value).__name__.upper()} value {shown} "
        f"or request may be missing a required field (field {fdef.name})",
    )


def _coerce_value(fdef: FieldDef, value: Any) -> Any:
    """Convert a JSON value for ``fdef`` to its stored form (Salesforce stores "" as null)."""
    ftype = fdef.type
    if value is None:
        return None
    if type(value) is str and ftype in TEXT_TYPES:
        return value or None
    if ftype in TEXT_TYPES:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise _parser_error(fdef, value, "string")
        text = value if isinstance(value, str) else str(value)
        return text if text != "" else None
    if ftype in ID_TYPES:
        if not isinstance(value, str):
            raise _parser_error(fdef, value, "reference")
        if value == "":
            return None
        return normalize_id(value) or value  # malformed ids are reported by validation (MALFORMED_ID)
    if ftype == "boolean":
        if not isinstance(value, bool):
            raise _parser_error(fdef, value, "boolean")
        return value
    if ftype == "datetime":
        if not isinstance(value, str):
            raise _parser_error(fdef, value, "datetime")
        try:
            return canonical_datetime(value)
        except ValueError:
            raise _parser_error(fdef, value, "datetime") from None
    if ftype == "date":
        if not isinstance(value, str):
            raise _parser_error(fdef, value, "date")
        try:
            return date.fromisoformat(value[:10]).isoformat()
        except ValueError:
            raise _parser_error(fdef, value, "date") from None
    if ftype == "int":
        if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
            raise _parser_error(fdef, value, "int")
        return int(value)
    if ftype in NUMBER_TYPES:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _parser_error(fdef, value, "double")
        return float(value)
    return value


_SOAP_TYPES = {
    "id": "tns:ID",
    "reference": "tns:ID",
    "boolean": "xsd:boolean",
    "datetime": "xsd:dateTime",
    "date": "xsd:date",
    "int": "xsd:int",
    "double": "xsd:double",
    "currency": "xsd:double",
}


def _describe_field(fdef: FieldDef) -> dict[str, Any]:
    return {
        "name": fdef.name,
        "label": fdef.label,
        "type": fdef.type,
        "soapType": _SOAP_TYPES.get(fdef.type, "xsd:string"),
        "length": fdef.length if fdef.type in TEXT_TYPES else 0,
        "byteLength": fdef.length * 3 if fdef.type in TEXT_TYPES | ID_TYPES else 0,
        "precision": 18 if fdef.type in ("currency", "double") else 0,
        "scale": 2 if fdef.type == "currency" else 0,
        "digits": 9 if fdef.type == "int" else 0,
        "nillable": fdef.nillable,
        "createable": fdef.createable,
        "updateable": fdef.updateable,
        "defaultedOnCreate": fdef.default is not None or fdef.name in SYSTEM_FIELDS or fdef.name == "Id",
        "defaultValue": fdef.default if fdef.type != "boolean" else bool(fdef.default),
        "custom": fdef.custom,
        "calculated": fdef.formula is not None,
        "calculatedFormula": fdef.formula,
        "filterable": fdef.type != "textarea",
        "sortable": fdef.type != "textarea",
        "groupable": fdef.type not in ("textarea", "datetime", "double", "currency"),
        "unique": False,
        "externalId": False,
        "idLookup": fdef.name == "Id",
        "nameField": fdef.name == "Name",
        "referenceTo": [fdef.reference_to] if fdef.reference_to else [],
        "relationshipName": fdef.relationship_name,
        "picklistValues": [
            {
                "active": True,
                "defaultValue": value == fdef.default,
                "label": value,
                "validFor": None,
                "value": value,
            }
            for value in fdef.picklist
        ],
        "restrictedPicklist": False,
    }


def _object_summary(obj: ObjectDef, version: str) -> dict[str, Any]:
    base = f"/services/data/v{version}/sobjects/{obj.name}"
    return {
        "name": obj.name,
        "label": obj.label,
        "labelPlural": obj.label_plural,
        "keyPrefix": obj.key_prefix,
        "custom": False,
        "queryable": True,
        "retrieveable": True,
        "searchable": True,
        "createable": obj.createable,
        "updateable": obj.updateable,
        "deletable": obj.deletable,
        "replicateable": True,
        "undeletable": obj.deletable,
        "urls": {
            "sobject": base,
            "describe": f"{base}/describe",
            "rowTemplate": f"{base}/{{ID}}",
        },
    }


def _describe(obj: ObjectDef, version: str) -> dict[str, Any]:
    out = _object_summary(obj, version)
    out["fields"] = [_describe_field(f) for f in obj.fields.values()]
    out["childRelationships"] = [
        {"childSObject": child.name, "field": f.name, "relationshipName": None, "cascadeDelete": False}
        for child in SCHEMA.values()
        for f in child.fields.values()
        if f.reference_to == obj.name and f.name not in SYSTEM_FIELDS
    ]
    return out


# ============================================================================================
# Demo data
# ============================================================================================


def seed_demo(org: Org, *, accounts: int = 40, contacts: int = 200, leads: int = 80, seed: int = 7) -> dict:
    """A small, deterministic demo org: accounts, contacts, leads, a converted lead and two campaigns."""
    rng = random.Random(seed)
    first = [
        "Ada",
        "Grace",
        "Alan",
        "Linus",
        "Margaret",
        "Ken",
        "Barbara",
        "Dennis",
        "Frances",
        "John",
        "Radia",
        "Edsger",
        "Katherine",
        "Tim",
    ]
    last = [
        "Lovelace",
        "Hopper",
        "Turing",
        "Torvalds",
        "Hamilton",
        "Thompson",
        "Liskov",
        "Ritchie",
        "Allen",
        "Backus",
        "Perlman",
        "Knuth",
    ]
    words = [
        "Acme",
        "Globex",
        "Initech",
        "Umbrella",
        "Hooli",
        "Vandelay",
        "Stark",
        "Wayne",
        "Tyrell",
        "Cyberdyne",
    ]
    cities = ["Berlin", "Paris", "Austin", "Toronto", "Lisbon", "Osaka", "Denver", "Dublin"]
    account_ids = org.seed(
        "Account",
        [
            {
                "Name": f"{rng.choice(words)} {suffix} {i}",
                "Industry": rng.choice(_INDUSTRIES),
                "Website": f"https://www.example{i}.com",
                "BillingCity": rng.choice(cities),
                "NumberOfEmployees": rng.randint(5, 5000),
            }
            for i, suffix in enumerate(
                rng.choice(["Corp", "Labs", "GmbH", "Inc", "Ltd"]) for _ in range(accounts)
            )
        ],
    )
    contact_rows = []
    for i in range(contacts):
        fn, ln = rng.choice(first), rng.choice(last)
        row: dict[str, Any] = {
            "FirstName": fn,
            "LastName": ln,
            "AccountId": rng.choice(account_ids),
            "Title": rng.choice(["CTO", "Engineer", "VP Marketing", "Analyst", None]),
            "MailingCity": rng.choice(cities),
        }
        if i % 17 != 0:  # a few contacts without email, like real orgs
            row["Email"] = f"{fn}.{ln}.{i}@example.com".lower()
        contact_rows.append(row)
    contact_ids = org.seed("Contact", contact_rows)
    lead_ids = org.seed(
        "Lead",
        [
            {
                "FirstName": rng.choice(first),
                "LastName": rng.choice(last),
                "Company": f"{rng.choice(words)} Prospects",
                "Email": f"lead{i}@prospect.example.com",
                "City": rng.choice(cities),
                "Status": rng.choice(LEAD_STATUSES[:2]),
                "LeadSource": rng.choice(_LEAD_SOURCES),
            }
            for i in range(leads)
        ],
    )
    campaigns = org.seed(
        "Campaign",
        [
            {"Name": "Spring Webinar", "Type": "Webinar", "IsActive": True, "Status": "In Progress"},
            {"Name": "Summer Conference", "Type": "Conference", "IsActive": True, "Status": "Planned"},
        ],
    )
    org.seed(
        "CampaignMemberStatus",
        [
            {"CampaignId": campaigns[1], "Label": "Registered", "SortOrder": 3},
            {"CampaignId": campaigns[1], "Label": "Attended", "HasResponded": True, "SortOrder": 4},
        ],
    )
    org.seed(
        "CampaignMember",
        [
            {"CampaignId": campaigns[0], "ContactId": c, "Status": rng.choice(["Sent", "Responded"])}
            for c in contact_ids[:30]
        ],
    )
    org.seed(
        "CampaignMember",
        [
            {
                "CampaignId": campaigns[1],
                "LeadId": lead,
                "Status": rng.choice(["Sent", "Registered", "Attended"]),
            }
            for lead in lead_ids[:20]
        ],
    )
    converted = org.convert_lead(lead_ids[-1])
    return {
        "accounts": len(account_ids),
        "contacts": len(contact_ids) + 1,
        "leads": len(lead_ids),
        "campaigns": len(campaigns),
        "converted_lead": converted,
    }
