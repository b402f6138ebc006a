"""Store contacts → Salesforce Leads and Contacts: which go, linking before creating, newer-wins per field."""

from conversion_sync.salesforce.push.engine import (
    PUSH_RUN_NAME,
    PushCounts,
    PushInProgress,
    PushOptions,
    PushOutcome,
    SalesforcePusher,
)
from conversion_sync.salesforce.push.state import mark_for_push, push_errors, push_summary

__all__ = [
    "PUSH_RUN_NAME",
    "PushCounts",
    "PushInProgress",
    "PushOptions",
    "PushOutcome",
    "SalesforcePusher",
    "mark_for_push",
    "push_errors",
    "push_summary",
]
