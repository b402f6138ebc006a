"""`conversion-sync salesforce push`: send store contacts to Salesforce now."""

from __future__ import annotations
