"""`conversion-sync salesforce poll`: read Salesforce changes into the store now."""

from __future__ import annotations
