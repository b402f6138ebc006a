"""Starlette app for the Salesforce stand-in: SOAP/OAuth login, REST data API, Bulk 2.0 and control API."""

from __future__ import annotations

import json
import logging
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs
from xml.sax.saxutils import escape

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .org import ORG_ID, ApiError, AuthError, Org, RecordError, seed_demo
from .rules import DuplicateOptions

log = logging.getLogger(__name__)

JSON_TYPE = "application/json;charset=UTF-8"
_VERSION_RE = re.compile(r"^v(\d{2})\.0$")
_BATCH_RE = re.compile(r"batchSize\s*=\s*(\d+)", re.IGNORECASE)
MIN_API_VERSION = 50
MAX_API_VERSION = 62

Handler = Callable[[Request, str], Awaitable[Response]]


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    data = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    return Response(data, status_code=status, media_type=JSON_TYPE, headers=headers)


def _error(exc: ApiError) -> Response:
    return _json(exc.body(), exc.status)


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(
            400,
            "JSON_PARSER_ERROR",
            f"Unexpected character: {exc.msg} at [line:{exc.lineno}, column:{exc.colno}]"
            if isinstance(exc, json.JSONDecodeError)
            else str(exc),
        ) from exc


async def _json_object(request: Request) -> dict[str, Any]:
    body = await _json_body(request)
    if not isinstance(body, dict):
        raise ApiError(
            400, "JSON_PARSER_ERROR", "Cannot deserialize instance of object from the request body"
        )
    return body


def _bool_param(value: str | None) -> bool:
    return (value or "").lower() == "true"


def _duplicate_options(request: Request, version: str) -> DuplicateOptions:
    """The request's ``Sforce-Duplicate-Rule-Header`` (API 52.0 and later; ignored before, like Salesforce)."""
    header = request.headers.get("sforce-duplicate-rule-header")
    if float(version) < 52:
        header = None
    return DuplicateOptions.from_header(header, version)


def _base_url(request: Request) -> str:
    return f"{request.url.scheme}://{request.url.netloc}"


# ============================================================================================
# Login: SOAP partner login and OAuth 2.0 username-password flow
# ============================================================================================

_SOAP_FAULT = """<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope \
xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:sf="urn:fault.partner.soap.sforce.com" \
xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><soapenv:Fault><faultcode>sf:{code}</faultcode>\
<faultstring>{code}: {message}</faultstring><detail><sf:LoginFault xsi:type="sf:LoginFault"><sf:exceptionCode>{code}\
</sf:exceptionCode><sf:exceptionMessage>{message}</sf:exceptionMessage></sf:LoginFault></detail></soapenv:Fault>\
</soapenv:Body></soapenv:Envelope>"""

_SOAP_LOGIN = """<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope \
xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns="urn:partner.soap.sforce.com" \
xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><loginResponse><result>\
<metadataServerUrl>{base}/services/Soap/m/{version}/{org}</metadataServerUrl><passwordExpired>false</passwordExpired>\
<sandbox>false</sandbox><serverUrl>{base}/services/Soap/u/{version}/{org}</serverUrl><sessionId>{session}</sessionId>\
<userId>{user}</userId><userInfo><accessibilityMode>false</accessibilityMode><chatterExternal>false</chatterExternal>\
<currencySymbol>$</currencySymbol><orgAttachmentFileSizeLimit>5242880</orgAttachmentFileSizeLimit>\
<orgDefaultCurrencyIsoCode>USD</orgDefaultCurrencyIsoCode><orgDisallowHtmlAttachments>false\
</orgDisallowHtmlAttachments><orgHasPersonAccounts>false</orgHasPersonAccounts><organizationId>{org}\
</organizationId><organizationMultiCurrency>false</organizationMultiCurrency><organizationName>Conversion Sync \
Stand-in</organizationName><profileId>00eKc0000000001AAA</profileId><roleId xsi:nil="true"/>\
<sessionSecondsValid>7200</sessionSecondsValid><userDefaultCurrencyIsoCode xsi:nil="true"/><userEmail>{email}\
</userEmail><userFullName>Integration User</userFullName><userId>{user}</userId><userLanguage>en_US</userLanguage>\
<userLocale>en_US</userLocale><userName>{username}</userName><userTimeZone>Etc/UTC</userTimeZone>\
<userType>Standard</userType><userUiSkin>Theme3</userUiSkin></userInfo></result></loginResponse></soapenv:Body>\
</soapenv:Envelope>"""


def _soap_fault(code: str, message: str, status: int = 500) -> Response:
    body = _SOAP_FAULT.format(code=escape(code), message=escape(message))
    return Response(body, status_code=status, media_type="text/xml;charset=UTF-8")


def _find_local(root: ET.Element, name: str) -> str | None:
    for element in root.iter():
        if element.tag.rsplit("}", 1)[-1] == name:
            return element.text or ""
    return None


def _make_soap_login(org: Org) -> Handler:
    async def soap_login(request: Request) -> Response:
        version = request.path_params["version"]
        try:
            root = ET.fromstring(await request.body())
        except ET.ParseError as exc:
            return _soap_fault("INVALID_REQUEST", f"could not parse the SOAP envelope: {exc}")
        username = _find_local(root, "username")
        password = _find_local(root, "password")
        if username is None or password is None:
            return _soap_fault(
                "INVALID_LOGIN", "Invalid username, password, security token; or user locked out."
            )
        try:
            session = org.login(username, password)
        except AuthError as exc:
            return _soap_fault(exc.code, exc.message)
        body = _SOAP_LOGIN.format(
            base=_base_url(request),
            version=escape(version),
            org=ORG_ID,
            session=session,
            user=org.user_id,
            email=escape(org.username),
            username=escape(org.username),
        )
        return Response(body, media_type="text/xml;charset=UTF-8")

    return soap_login  # type: ignore[return-value]


def _make_oauth_token(org: Org) -> Callable[[Request], Awaitable[Response]]:
    async def oauth_token(request: Request) -> Response:
        raw = (await request.body()).decode("utf-8", "replace")
        form = {key: values[0] for key, values in parse_qs(raw, keep_blank_values=True).items()}
        form.update({k: v for k, v in request.query_params.items() if k not in form})
        try:
            granted = org.oauth_login(form)
        except AuthError as exc:
            return _json({"error": exc.code, "error_description": exc.message}, 400)
        base = _base_url(request)
        identity = f"{base}/id/{ORG_ID}/{org.user_id}"
        return _json(
            {
                "access_token": granted["access_token"],
                "instance_url": base,
                "id": identity,
                "token_type": "Bearer",
                "issued_at": granted["issued_at"],
                "signature": org.oauth_signature(identity, granted["issued_at"]),
            }
        )

    return oauth_token


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() in ("bearer", "oauth") and token.strip():
        return token.strip()
    return None


def _make_identity(org: Org) -> Callable[[Request], Awaitable[Response]]:
    async def identity(request: Request) -> Response:
        if not org.check_session(_bearer(request)):
            return _json("Bad_OAuth_Token", 403)
        return _json(
            {
                "id": f"{_base_url(request)}/id/{ORG_ID}/{org.user_id}",
                "user_id": org.user_id,
                "organization_id": ORG_ID,
                "username": org.username,
                "display_name": "Integration User",
                "email": org.username,
                "active": True,
                "user_type": "STANDARD",
                "language": "en_US",
                "locale": "en_US",
                "utcOffset": 0,
            }
        )

    return identity


# ============================================================================================
# REST data API
# ============================================================================================


class DataApi:
    """Routes ``/services/data/v{version}/...`` with Salesforce's auth, limit and error behaviour."""

    def __init__(self, org: Org) -> None:
        self.org = org

    async def handle(self, request: Request) -> Response:
        path = request.path_params.get("path", "")
        segments = [s for s in path.split("/") if s]
        if not segments:
            return self.versions(request)
        match = _VERSION_RE.match(segments[0])
        if match is None or not MIN_API_VERSION <= int(match[1]) <= MAX_API_VERSION:
            response = _error(ApiError(404, "NOT_FOUND", "The requested resource does not exist"))
            response.headers["Sforce-Limit-Info"] = self.org.limit_info()
            return response
        version = f"{match[1]}.0"
        route_error: ApiError | None = None
        try:
            kind, handler = self.route(request.method, segments[1:])
        except ApiError as exc:
            kind, handler, route_error = "unknown", None, exc
        org = self.org
        org.record_request(kind)
        response = await self._guarded(request, version, handler, route_error)
        response.headers["Sforce-Limit-Info"] = org.limit_info()
        return response

    async def _guarded(
        self, request: Request, version: str, handler: Callable[..., Any] | None, route_error: ApiError | None
    ) -> Response:
        org = self.org
        if not org.check_session(_bearer(request)):
            return _json([{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}], 401)
        fault = org.take_fault(request.url.path)
        if fault is not None:
            return _fault_response(fault)
        if not org.consume_api_request():
            return _json(
                [{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}], 403
            )
        try:
            if route_error is not None:
                raise route_error
            assert handler is not None
            return await handler(request, version)
        except ApiError as exc:
            return _error(exc)
        except RecordError as exc:
            return _error(exc.as_api_error())
        except Exception as exc:  # a bug in the stand-in: answer like Salesforce, log the traceback
            log.exception("stand-in error on %s %s", request.method, request.url.path)
            return _error(ApiError(500, "UNKNOWN_EXCEPTION", f"An unexpected error occurred: {exc!r}"))

    def versions(self, request: Request) -> Response:
        return _json(
            [
                {"label": f"v{v}.0", "url": f"/services/data/v{v}.0", "version": f"{v}.0"}
                for v in range(MIN_API_VERSION, MAX_API_VERSION + 1)
            ]
        )

    # -- routing --------------------------------------------------------------------------

    def route(self, method: str, parts: list[str]) -> tuple[str, Callable[..., Any]]:
        """(stats kind, handler) for a path below the version segment; 404/405 like Salesforce."""
        n = len(parts)
        head = parts[0] if parts else ""
        table: dict[str, tuple[str, Callable[..., Any]]] = {}
        if n == 0:
            table = {"GET": ("resources", self.resources)}
        elif head in ("query", "queryAll") and n == 1:
            table = {"GET": (head, self.query(head == "queryAll"))}
        elif head in ("query", "queryAll") and n == 2:
            table = {"GET": ("query_more", self.query_more(parts[1]))}
        elif head == "limits" and n == 1:
            table = {"GET": ("limits", self.limits)}
        elif head == "sobjects" and n == 1:
            table = {"GET": ("describe_global", self.describe_global)}
        elif head == "sobjects" and n == 2:
            table = {
                "GET": ("sobject_info", self.sobject_info(parts[1])),
                "POST": ("sobject_create", self.create(parts[1])),
            }
        elif head == "sobjects" and n == 3 and parts[2] == "describe":
            table = {"GET": ("describe", self.describe(parts[1]))}
        elif head == "sobjects" and n == 3 and parts[2] in ("updated", "deleted"):
            table = {"GET": (parts[2], self.replication(parts[1], parts[2]))}
        elif head == "sobjects" and n == 3:
            table = {
                "GET": ("sobject_get", self.retrieve(parts[1], parts[2])),
                "PATCH": ("sobject_update", self.update(parts[1], parts[2])),
                "DELETE": ("sobject_delete", self.delete(parts[1], parts[2])),
            }
        elif head == "composite" and n == 2 and parts[1] == "sobjects":
            table = {
                "POST": ("composite_create", self.collection_create),
                "PATCH": ("composite_update", self.collection_update),
                "DELETE": ("composite_delete", self.collection_delete),
            }
        elif head == "composite" and n == 3 and parts[1] == "sobjects":
            handler = self.collection_retrieve(parts[2])
            table = {"GET": ("composite_retrieve", handler), "POST": ("composite_retrieve", handler)}
        elif head == "jobs" and n >= 2 and parts[1] == "query":
            table = self._bulk_routes(parts[2:])
        elif head == "jobs" and n >= 2 and parts[1] == "ingest":
            table = self._ingest_routes(parts[2:])
        if not table:
            raise ApiError(404, "NOT_FOUND", "The requested resource does not exist")
        if method not in table:
            allowed = ",".join(sorted(table))
            raise ApiError(
                405, "METHOD_NOT_ALLOWED", f"HTTP Method '{method}' not allowed. Allowed are {allowed}"
            )
        return table[method]

    def _bulk_routes(self, rest: list[str]) -> dict[str, tuple[str, Callable[..., Any]]]:
        if not rest:
            return {
                "POST": ("bulk2_query_create", self.bulk_create),
                "GET": ("bulk2_query_list", self.bulk_list),
            }
        if len(rest) == 1:
            job_id = rest[0]
            return {
                "GET": ("bulk2_query_status", self.bulk_info(job_id)),
                "PATCH": ("bulk2_query_abort", self.bulk_abort(job_id)),
                "DELETE": ("bulk2_query_delete", self.bulk_delete(job_id)),
            }
        if len(rest) == 2 and rest[1] == "results":
            return {"GET": ("bulk2_query_results", self.bulk_results(rest[0]))}
        return {}

    def _ingest_routes(self, rest: list[str]) -> dict[str, tuple[str, Callable[..., Any]]]:
        if not rest:
            return {
                "POST": ("bulk2_ingest_create", self.ingest_create),
                "GET": ("bulk2_ingest_list", self.ingest_list),
            }
        job_id = rest[0]
        if len(rest) == 1:
            return {
                "GET": ("bulk2_ingest_status", self.ingest_info(job_id)),
                "PATCH": ("bulk2_ingest_state", self.ingest_state(job_id)),
                "DELETE": ("bulk2_ingest_delete", self.ingest_delete(job_id)),
            }
        if len(rest) == 2 and rest[1] == "batches":
            return {"PUT": ("bulk2_ingest_upload", self.ingest_upload(job_id))}
        if len(rest) == 2 and rest[1] in ("successfulResults", "failedResults", "unprocessedrecords"):
            return {"GET": ("bulk2_ingest_results", self.ingest_results(job_id, rest[1]))}
        return {}

    # -- handlers -------------------------------------------------------------------------

    async def resources(self, request: Request, version: str) -> Response:
        base = f"/services/data/v{version}"
        return _json(
            {
                name: f"{base}/{name}"
                for name in ("sobjects", "query", "queryAll", "limits", "composite", "jobs")
            }
        )

    def query(self, include_deleted: bool) -> Callable[..., Any]:
        async def handler(request: Request, version: str) -> Response:
            soql = request.query_params.get("q")
            if soql is None:
                raise ApiError(400, "MALFORMED_QUERY", "A query string must be provided in the q parameter")
            page = self.org.run_query(
                soql, include_deleted=include_deleted, version=version, batch_size=_batch_size(request)
            )
            return _json(page)

        return handler

    def query_more(self, locator: str) -> Callable[..., Any]:
        async def handler(request: Request, version: str) -> Response:
            return _json(self.org.query_more(locator, version=version, batch_size=_batch_size(request)))

        return handler

    async def limits(self, request: Request, version: str) -> Response:
        return _json(self.org.limits())

    async def describe_global(self, request: Request, version: str) -> Response:
        return _json(self.org.describe_global(version))

    def sobject_info(self, sobject: str) -> Callable[..., Any]:
        async def handler(request: Request, version: str) -> Response:
            describe = self.org.describe(sobject, version)
            summary = {k: v for k, v in describe.items() if k not in ("fields", "childRelationships")}
            return _json({"objectDescribe": summary, "recentItems": []})

        return handler

    def describe(self, sobject: str) -> Callable[..., Any]:
        async def handler(request: Request, version: str) -> Response:
            return _json(self.org.describe(sobject, version))

        return handler

    def replication(self, sobject: str, which: str) -> Callable[..., Any]:
        async def handler(request: Request, version: str) -> Response:
            start = request.query_params.get("start")
            end = request.query_params.get("end")
            if not start or not end:
                raise ApiError(400, "MISSING_ARGUMENT", "start and end are required")
            if which == "updated":
                return _json(self.org.updated(sobject, start, end))
            return _json(self.org.deleted(sobject, start, end))

        return handler

    def create(self, sobject: str) -> Callable[..., Any]:
        async def handler(request: Request, version: str) -> Response:
            body = await _json_object(request)
            new_id = self.org.create(sobject, body, options=_duplicate_options(request, version))
            return _json({"id": new_id, "success": True, "errors": []}, 201)

        return handler

    def retrieve(self, sobject: str, record_id: str) -> Callable[..., Any]:
        async def handler(request: Request, version: str) -> Response:
            fields_param = request.query_params.get("fields")
            fields = [f for f in fields_param.split(",") if f.strip()] if fields_param else None
            return _json(self.org.get(sobject, record_id, fields, version))

        return handler

    def update(self, sobject: str, record_id: str) -> Callable[..., Any]:
        async def handler(request: Request, version: str) -> Response:
            body = await _json_object(request)
            self.org.update(sobject, record_id, body, options=_duplicate_options(request, version))
            return Response(status_code=204)

        return handler

    def delete(self, sobject: str, record_id: str) -> Callable[..., Any]:
        async def handler(request: Request, version: str) -> Response:
            self.org.delete(sobject, record_id)
            return Response(status_code=204)

        return handler

    async def _collection_body(self, request: Request) -> tuple[list[dict[str, Any]], bool]:
        body = await _json_object(request)
        records = body.get("records")
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise ApiError(400, "JSON_PARSER_ERROR", "records must be a list of objects")
        return records, bool(body.get("allOrNone", False))

    async def collection_create(self, request: Request, version: str) -> Response:
        records, all_or_none = await self._collection_body(request)
        options = _duplicate_options(request, version)
        return _json(self.org.create_collection(records, all_or_none=all_or_none, options=options))

    async def collection_update(self, request: Request, version: str) -> Response:
        records, all_or_none = await self._collection_body(request)
        options = _duplicate_options(request, version)
        return _json(self.org.update_collection(records, all_or_none=all_or_none, options=options))

    async def collection_delete(self, request: Request, version: str) -> Response:
        ids = [i for i in (request.query_params.get("ids") or "").split(",") if i]
        if not ids:
            raise ApiError(400, "MISSING_ARGUMENT", "ids parameter is required")
        all_or_none = _bool_param(request.query_params.get("allOrNone"))
        return _json(self.org.delete_collection(ids, all_or_none=all_or_none))

    def collection_retrieve(self, sobject: str) -> Callable[..., Any]:
        async def handler(request: Request, version: str) -> Response:
            if request.method == "POST":
                body = await _json_object(request)
                ids, fields = list(body.get("ids") or []), list(body.get("fields") or [])
            else:
                ids = [i for i in (request.query_params.get("ids") or "").split(",") if i]
                fields = [f for f in (request.query_params.get("fields") or "").split(",") if f]
            return _json(self.org.retrieve_collection(sobject, ids, fields, version))

        return handler

    # -- Bulk API 2.0 query ---------------------------------------------------------------

    async def bulk_create(self, request: Request, version: str) -> Response:
        return _json(self.org.create_bulk_query(await _json_object(request), version))

    async def bulk_list(self, request: Request, version: str) -> Response:
        return _json(self.org.bulk_query_list())

    def bulk_info(self, job_id: str) -> Callable[..., Any]:
        async def handler(request: Request, version: str) -> Response:
            return _json(self.org.bulk_query_info(job_id))

        return handler

    def bulk_abort(self, job_id: str) -> Callable[..., Any]:
        async def handler(request: Request, version: str) -> Response:
            body = await _json_object(request)
            return _json(self.org.abort_bulk_query(job_id, str(body.get("state"))))

        return handler

    def bulk_delete(self, job_id: str) -> Callable[..., Any]:
        async def handler(request: Request, version: str) -> Response:
            self.org.delete_bulk_query(job_id)
            return Response(status_code=204)

        return handler

    def bulk_results(self, job_id: str) -> Callable[..., Any]:
        async def handler(request: Request, version: str) -> Response:
            max_records = request.query_params.get("maxRecords")
            if max_records is not None and (not max_records.isdigit() or int(max_records) < 1):
                raise ApiError(400, "INVALIDREQUEST", f"Invalid maxRecords: {max_records}")
            text, locator, count = self.org.bulk_query_results(
                job_id, request.query_params.get("locator") or None, int(max_records) if max_records else None
            )
            return Response(
                text.encode(),
                media_type="text/csv;charset=UTF-8",
                headers={"Sforce-Locator": locator, "Sforce-NumberOfRecords": str(count)},
            )

        return handler

    # -- Bulk API 2.0 ingest ---------------------------------------------------------------

    async def ingest_create(self, request: Request, version: str) -> Response:
        return _json(self.org.create_ingest_job(await _json_object(request), version))

    async def ingest_list(self, request: Request, version: str) -> Response:
        return _json(self.org.ingest_job_list())

    def ingest_info(self, job_id: str) -> Callable[..., Any]:
        async def handler(request: Request, version: str) -> Response:
            return _json(self.org.ingest_job_info(job_id))

        return handler

    def ingest_state(self, job_id: str) -> Callable[..., Any]:
        async def handler(request: Request, version: str) -> Response:
            body = await _json_object(request)
            return _json(self.org.set_ingest_state(job_id, str(body.get("state"))))

        return handler

    def ingest_delete(self, job_id: str) -> Callable[..., Any]:
        async def handler(request: Request, version: str) -> Response:
            self.org.delete_ingest_job(job_id)
            return Response(status_code=204)

        return handler

    def ingest_upload(self, job_id: str) -> Callable[..., Any]:
        async def handler(request: Request, version: str) -> Response:
            data = (await request.body()).decode("utf-8-sig", "replace")
            self.org.upload_ingest_data(job_id, data)
            return Response(status_code=201)

        return handler

    def ingest_results(self, job_id: str, kind: str) -> Callable[..., Any]:
        async def handler(request: Request, version: str) -> Response:
            text = self.org.ingest_results(job_id, kind)
            return Response(text.encode(), media_type="text/csv;charset=UTF-8")

        return handler


def _batch_size(request: Request) -> int | None:
    header = request.headers.get("sforce-query-options")
    if not header:
        return None
    match = _BATCH_RE.search(header)
    return int(match[1]) if match else None


def _fault_response(kind: str) -> Response:
    if kind == "invalid_session":
        return _json([{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}], 401)
    if kind == "request_limit":
        return _json(
            [{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}], 403
        )
    if kind == "query_timeout":
        return _json(
            [{"message": "Your query request was running for too long.", "errorCode": "QUERY_TIMEOUT"}], 400
        )
    return _json(
        [
            {
                "message": "Server temporarily unavailable, please try again later.",
                "errorCode": "SERVER_UNAVAILABLE",
            }
        ],
        503,
    )


# ============================================================================================
# Control API (tests and `make dev` only; no auth)
# ============================================================================================


_READ_ONLY_ACTIONS = frozenset({"stats", "info", "clock", "faults", "validation_rules", "duplicate_rules"})


class ControlApi:
    """``/_standin/{action}``: drive the org's clock, data, faults and limits from outside."""

    def __init__(self, org: Org, state_path: Path | None) -> None:
        self.org = org
        self.state_path = state_path

    async def handle(self, request: Request) -> Response:
        action = request.path_params["action"]
        handler = getattr(self, f"do_{action}", None)
        if handler is None:
            return _error(ApiError(404, "NOT_FOUND", f"unknown control action {action!r}"))
        if request.method == "GET" and action not in _READ_ONLY_ACTIONS:
            return _error(ApiError(405, "METHOD_NOT_ALLOWED", f"use POST for /_standin/{action}"))
        try:
            body = await _json_body(request) if request.method == "POST" else None
            return _json(handler(body or {}))
        except ApiError as exc:
            return _error(exc)
        except RecordError as exc:
            return _error(exc.as_api_error())
        except (ValueError, KeyError, TypeError) as exc:
            return _error(ApiError(400, "INVALID_CONTROL_REQUEST", f"{type(exc).__name__}: {exc}"))

    def do_seed(self, body: dict[str, Any]) -> Any:
        sobject = body.get("type") or body.get("sobject")
        records = body.get("records")
        if not isinstance(sobject, str) or not isinstance(records, list):
            raise ValueError('seed needs {"type": "Contact", "records": [...]}')
        started = time.perf_counter()
        ids = self.org.seed(sobject, records)
        out: dict[str, Any] = {"count": len(ids), "seconds": round(time.perf_counter() - started, 3)}
        if body.get("return_ids", True):
            out["ids"] = ids
        return out

    def do_seed_demo(self, body: dict[str, Any]) -> Any:
        return seed_demo(self.org)

    def do_clock(self, body: dict[str, Any]) -> Any:
        org = self.org
        if "freeze" in body and body["freeze"] is not None and "set" not in body:
            if body["freeze"]:
                org.freeze_clock()
            else:
                org.unfreeze_clock()
        if body.get("set"):
            org.set_clock(str(body["set"]), freeze=body.get("freeze"))
        if body.get("advance_seconds"):
            org.advance_clock(float(body["advance_seconds"]))
        return org.clock.state()

    def do_backdate(self, body: dict[str, Any]) -> Any:
        fields = body.get("fields") or ("SystemModstamp", "LastModifiedDate")
        when = body.get("when") or body.get("to")
        if not when:
            raise ValueError('backdate needs {"ids": [...], "when": "2024-01-01T00:00:00Z"}')
        return {"updated": self.org.backdate(list(body.get("ids") or []), str(when), tuple(fields))}

    def do_faults(self, body: dict[str, Any]) -> Any:
        if body.get("clear"):
            self.org.clear_faults()
        for fault in body.get("faults") or ([body] if "kind" in body else []):
            self.org.add_fault(
                fault["kind"],
                count=int(fault.get("count", 1)),
                after=int(fault.get("after", 0)),
                path_contains=fault.get("path_contains"),
            )
        return {"pending": self.org.pending_faults()}

    def do_limits(self, body: dict[str, Any]) -> Any:
        return self.org.set_limits(max=body.get("max"), used=body.get("used"))

    def do_convert_lead(self, body: dict[str, Any]) -> Any:
        return self.org.convert_lead(
            body["lead_id"],
            contact_id=body.get("contact_id"),
            account_id=body.get("account_id"),
            converted_status=body.get("converted_status") or "Closed - Converted",
        )

    def do_validation_rules(self, body: dict[str, Any]) -> Any:
        """GET lists; POST ``{"rules": [...], "replace": false}`` adds (same object+name replaces), ``{"clear": true}``
        removes all. A rule: object, name, error_message, condition, optional error_field, on, active."""
        return {"rules": self._set_rules(body, self.org.set_validation_rules, self.org.validation_rules)}

    def do_duplicate_rules(self, body: dict[str, Any]) -> Any:
        """GET lists; POST ``{"rules": [...]}`` like validation_rules. A rule: object, name, match_fields,
        optional compare_objects, action_on_insert / action_on_update (block | allow), alert, alert_text."""
        return {"rules": self._set_rules(body, self.org.set_duplicate_rules, self.org.duplicate_rules)}

    @staticmethod
    def _set_rules(body: dict[str, Any], setter: Callable[..., Any], getter: Callable[[], Any]) -> Any:
        if body.get("clear"):
            setter([], replace=True)
        rules = body.get("rules")
        if rules is None and "name" in body:
            rules = [body]
        if rules is not None:
            if not isinstance(rules, list) or not all(isinstance(r, dict) for r in rules):
                raise ValueError('rules must be a list of objects: {"rules": [{...}]}')
            return setter(rules, replace=bool(body.get("replace")))
        return getter()

    def do_merge(self, body: dict[str, Any]) -> Any:
        return self.org.merge(body["master_id"], list(body["duplicate_ids"]))

    def do_reset(self, body: dict[str, Any]) -> Any:
        self.org.reset()
        return {"ok": True}

    def do_stats(self, body: dict[str, Any]) -> Any:
        stats = self.org.stats()
        if body.get("reset"):
            self.org.reset_stats()
        return stats

    def do_config(self, body: dict[str, Any]) -> Any:
        return self.org.configure(**body)

    def do_invalidate_sessions(self, body: dict[str, Any]) -> Any:
        self.org.invalidate_sessions()
        return {"ok": True}

    def do_save(self, body: dict[str, Any]) -> Any:
        path = body.get("path") or self.state_path
        if not path:
            raise ValueError('no state file configured; pass {"path": ...}')
        self.org.save(path)
        return {"saved": str(path)}

    def do_info(self, body: dict[str, Any]) -> Any:
        return {
            "username": self.org.username,
            "organization_id": ORG_ID,
            "user_id": self.org.user_id,
            "clock": self.org.clock.state(),
            "state_path": str(self.state_path) if self.state_path else None,
        }


# ============================================================================================
# Application
# ============================================================================================


def create_app(org: Org, *, state_path: Path | None = None) -> Starlette:
    """The ASGI app serving ``org`` (login, REST, Bulk 2.0 query, control API)."""
    data_api = DataApi(org)
    control = ControlApi(org, state_path)

    async def root(request: Request) -> Response:
        return _json({"service": "conversion_sync Salesforce stand-in", "login_url": _base_url(request)})

    routes = [
        Route("/", root),
        Route("/services/Soap/{kind:str}/{version:str}", _make_soap_login(org), methods=["POST"]),
        Route("/services/oauth2/token", _make_oauth_token(org), methods=["POST"]),
        Route("/id/{org_id:str}/{user_id:str}", _make_identity(org), methods=["GET"]),
        Route("/services/data", data_api.handle, methods=["GET"]),
        Route(
            "/services/data/{path:path}",
            data_api.handle,
            methods=["GET", "POST", "PATCH", "PUT", "DELETE", "HEAD", "OPTIONS"],
        ),
        Route("/_standin/{action:str}", control.handle, methods=["GET", "POST"]),
    ]
    return Starlette(routes=routes)
