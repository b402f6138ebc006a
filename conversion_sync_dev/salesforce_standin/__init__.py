"""A faithful local Salesforce stand-in (HTTPS on 127.0.0.1) used by the product, tests and `make dev`."""

from .app import create_app
from .org import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_PASSWORD,
    DEFAULT_SECURITY_TOKEN,
    DEFAULT_USERNAME,
    FAULT_KINDS,
    ORG_ID,
    ApiError,
    AuthError,
    Org,
    RecordError,
    seed_demo,
)
from .rules import STANDARD_DUPLICATE_MESSAGE, DuplicateOptions
from .server import API_VERSION, StandinServer
from .soql import SoqlError, compile_query, format_datetime, normalize_id

__all__ = [
    "API_VERSION",
    "DEFAULT_CLIENT_ID",
    "DEFAULT_CLIENT_SECRET",
    "DEFAULT_PASSWORD",
    "DEFAULT_SECURITY_TOKEN",
    "DEFAULT_USERNAME",
    "FAULT_KINDS",
    "ORG_ID",
    "STANDARD_DUPLICATE_MESSAGE",
    "ApiError",
    "AuthError",
    "DuplicateOptions",
    "Org",
    "RecordError",
    "SoqlError",
    "StandinServer",
    "compile_query",
    "create_app",
    "format_datetime",
    "normalize_id",
    "seed_demo",
]
