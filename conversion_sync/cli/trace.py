"""`conversion-sync trace`: every run that wrote, rejected or removed one key."""

from __future__ import annotations
