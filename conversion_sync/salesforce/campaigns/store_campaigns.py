"""Store campaigns: campaign types and their statuses, campaigns and their Salesforce link, members."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import sqlalchemy as sa

from conversion_sync.store.identity import IdentityMatcher

LinkMode = Literal["none", "existing", "create"]
LINK_MODES: tuple[LinkMode, ...] = ("none", "existing", "create")

_CAMPAIGN_ID = re.compile(r"^701[A-Za-z0-9]{12}(?:[A-Za-z0-9]{3})?$")
_SUFFIX_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class CampaignError(ValueError):
    """A campaign request that cannot be carried out; the message says what was wrong and what is allowed."""


@dataclass(frozen=True)
class CampaignType:
    """A campaign type: the member statuses its campaigns allow, and the default one."""

    id: int
    name: str
    statuses: list[str]
    default_status: str

    def canonical_status(self, status: str) -> str | None:
        """The type's spelling of `status` (statuses compare case-insensitively), None when not allowed."""
        wanted = status.strip().lower()
        return next((s for s in self.statuses if s.lower() == wanted), None)


@dataclass(frozen=True)
class Campaign:
    """A store campaign with its type and Salesforce link."""

    id: int
    name: str
    type: CampaignType
    salesforce_link: LinkMode
    salesforce_campaign_id: str | None
    linked_at: datetime | None
    last_reconciled_at: datetime | None
    members: int = 0
    last_run_at: datetime | None = None
    last_run_status: str | None = None
    """reconciled, failed or stopped (the API budget ran out), for the campaign's latest reconciliation."""
    last_run_counts: dict[str, int] | None = None
    last_run_error: str | None = None
    salesforce_missing_since: datetime | None = None
    """When the linked Salesforce campaign was found missing (a broken link); None while it exists."""

    @property
    def first_link(self) -> bool:
        """Never reconciled since it was linked: Salesforce members are imported before store members are pushed."""
        return self.last_reconciled_at is None


@dataclass(frozen=True)
class MemberChange:
    """What `add_member` did."""

    contact_id: int
    status: str
    action: Literal["added", "updated", "unchanged"]
    contact_created: bool


def salesforce_campaign_id(value: str) -> str:
    """A Salesforce Campaign id as 18 characters (15-character ids get their checksum); CampaignError if malformed."""
    text = value.strip()
    if not _CAMPAIGN_ID.match(text):
        raise CampaignError(
            f"'{value}' is not a Salesforce Campaign id: expected 15 or 18 letters and digits starting with 701"
        )
    if len(text) == 18:
        return text
    suffix = ""
    for start in (0, 5, 10):
        chunk = text[start : start + 5]
        bits = sum(1 << i for i, char in enumerate(chunk) if char.isupper())
        suffix += _SUFFIX_ALPHABET[bits]
    return text + suffix


# -- campaign types ---------------------------------------------------------------------------


def create_campaign_type(
    conn: sa.Connection, name: str, statuses: Sequence[str], default_status: str | None = None
) -> CampaignType:
    """A new campaign type; statuses are kept in the given order, the default must be one of them (default: first)."""
    name = name.strip()
    cleaned = [s.strip() for s in statuses if s and s.strip()]
    if not name:
        raise CampaignError("a campaign type needs a name")
    if not cleaned:
        raise CampaignError(f"campaign type '{name}' needs at least one member status (--status)")
    lowered = [s.lower() for s in cleaned]
    duplicates = sorted({s for s in cleaned if lowered.count(s.lower()) > 1})
    if duplicates:
        raise CampaignError(
            f"campaign type '{name}': statuses are compared case-insensitively; listed twice: {', '.join(duplicates)}"
        )
    too_long = [s for s in cleaned if len(s) > 40]
    if too_long:
        raise CampaignError(
            f"campaign type '{name}': Salesforce member statuses have at most 40 characters: {too_long[0]}"
        )
    default = cleaned[0] if default_status is None else default_status.strip()
    if default.lower() not in lowered:
        raise CampaignError(
            f"campaign type '{name}': default status '{default}' is not one of its statuses: {', '.join(cleaned)}"
        )
    default = cleaned[lowered.index(default.lower())]
    row = conn.execute(
        sa.text(
            """INSERT INTO campaign_types (name, statuses, default_status)
            VALUES (:name, CAST(:statuses AS jsonb), :default) ON CONFLICT (name) DO NOTHING RETURNING id"""
        ),
        {"name": name, "statuses": _json_list(cleaned), "default": default},
    ).first()
    if row is None:
        raise CampaignError(f"campaign type '{name}' already exists")
    return CampaignType(row[0], name, cleaned, default)


def get_campaign_type(conn: sa.Connection, name: str) -> CampaignType:
    row = conn.execute(
        sa.text("SELECT id, name, statuses, default_status FROM campaign_types WHERE name = :name"),
        {"name": name},
    ).first()
    if row is None:
        known = ", ".join(t.name for t in list_campaign_types(conn)) or "none yet"
        raise CampaignError(f"unknown campaign type '{name}'; known types: {known}")
    return _campaign_type(row)


def list_campaign_types(conn: sa.Connection) -> list[CampaignType]:
    rows = conn.execute(
        sa.text("SELECT id, name, statuses, default_status FROM campaign_types ORDER BY name")
    ).all()
    return [_campaign_type(row) for row in rows]


def _campaign_type(row: Any) -> CampaignType:
    statuses = list(row[2] or [])
    return CampaignType(row[0], row[1], statuses, row[3] or (statuses[0] if statuses else ""))


def _json_list(values: Sequence[str]) -> str:
    return json.dumps(list(values))


# -- campaigns --------------------------------------------------------------------------------

_CAMPAIGN_SELECT = """
    SELECT c.id, c.name, c.salesforce_link, c.salesforce_campaign_id, c.linked_at, c.last_reconciled_at,
           t.id, t.name, t.statuses, t.default_status,
           (SELECT count(*) FROM campaign_members m WHERE m.campaign_id = c.id) AS members,
           c.last_run_at, c.last_run_status, c.last_run_counts, c.last_run_error, c.salesforce_missing_since
    FROM campaigns c JOIN campaign_types t ON t.id = c.campaign_type_id"""


CAMPAIGN_BY_NAME_SQL = f"{_CAMPAIGN_SELECT} WHERE c.name = :name"
ALL_CAMPAIGNS_SQL = f"{_CAMPAIGN_SELECT} ORDER BY c.name"
LINKED_CAMPAIGNS_SQL = f"{_CAMPAIGN_SELECT} WHERE c.salesforce_link <> 'none' ORDER BY c.id"
NAMED_LINKED_CAMPAIGNS_SQL = (
    f"{_CAMPAIGN_SELECT} WHERE c.salesforce_link <> 'none' AND c.name = ANY(:names) ORDER BY c.id"
)


def _campaign(row: Any) -> Campaign:
    return Campaign(
        id=row[0],
        name=row[1],
        salesforce_link=row[2],
        salesforce_campaign_id=row[3],
        linked_at=row[4],
        last_reconciled_at=row[5],
        type=_campaign_type(row[6:10]),
        members=row[10],
        last_run_at=row[11],
        last_run_status=row[12],
        last_run_counts=row[13],
        last_run_error=row[14],
        salesforce_missing_since=row[15],
    )


def _link_target(link: str, salesforce_id: str | None) -> tuple[LinkMode, str | None]:
    if link not in LINK_MODES:
        raise CampaignError(f"link must be one of: {', '.join(LINK_MODES)} (got '{link}')")
    if link == "existing":
        if not salesforce_id:
            raise CampaignError("link 'existing' needs the Salesforce Campaign id (701…)")
        return "existing", salesforce_campaign_id(salesforce_id)
    if salesforce_id:
        raise CampaignError(f"link '{link}' takes no Salesforce Campaign id; use link 'existing' for one")
    return link, None  # type: ignore[return-value]


def create_campaign(
    conn: sa.Connection,
    name: str,
    type_name: str,
    link: str = "none",
    salesforce_id: str | None = None,
) -> Campaign:
    """A new store campaign of `type_name`, linked to nothing, an existing Salesforce Campaign, or one to create.

    With link `create`, the next reconciliation creates the Salesforce Campaign (with the type's statuses).
    """
    name = name.strip()
    if not name:
        raise CampaignError("a campaign needs a name")
    campaign_type = get_campaign_type(conn, type_name)
    mode, sf_id = _link_target(link, salesforce_id)
    _ensure_unlinked_elsewhere(conn, sf_id, name)
    row = conn.execute(
        sa.text(
            """INSERT INTO campaigns (name, campaign_type_id, salesforce_link, salesforce_campaign_id, linked_at)
            VALUES (:name, :type_id, :link, :sf_id, CASE WHEN :link = 'none' THEN NULL ELSE now() END)
            ON CONFLICT (name) DO NOTHING RETURNING id"""
        ),
        {"name": name, "type_id": campaign_type.id, "link": mode, "sf_id": sf_id},
    ).first()
    if row is None:
        raise CampaignError(f"campaign '{name}' already exists")
    return get_campaign(conn, name)


def _ensure_unlinked_elsewhere(conn: sa.Connection, sf_id: str | None, name: str) -> None:
    if sf_id is None:
        return
    other = conn.execute(
        sa.text("SELECT name FROM campaigns WHERE salesforce_campaign_id = :id AND name <> :name"),
        {"id": sf_id, "name": name},
    ).scalar()
    if other is not None:
        raise CampaignError(f"Salesforce Campaign {sf_id} is already linked to store campaign '{other}'")


def get_campaign(conn: sa.Connection, name: str) -> Campaign:
    row = conn.execute(sa.text(CAMPAIGN_BY_NAME_SQL), {"name": name}).first()
    if row is None:
        known = ", ".join(c.name for c in list_campaigns(conn)) or "none yet"
        raise CampaignError(f"unknown campaign '{name}'; known campaigns: {known}")
    return _campaign(row)


def list_campaigns(conn: sa.Connection) -> list[Campaign]:
    return [_campaign(row) for row in conn.execute(sa.text(ALL_CAMPAIGNS_SQL)).all()]


def linked_campaigns(conn: sa.Connection, names: Sequence[str] | None = None) -> list[Campaign]:
    """Campaigns linked to Salesforce (existing or create), optionally only those named."""
    if names is None:
        rows = conn.execute(sa.text(LINKED_CAMPAIGNS_SQL)).all()
    else:
        rows = conn.execute(sa.text(NAMED_LINKED_CAMPAIGNS_SQL), {"names": list(names)}).all()
    return [_campaign(row) for row in rows]


def reconcile_selection(conn: sa.Connection, name: str | None) -> list[str] | None:
    """The campaigns a reconciliation run for `name` covers: None (every linked one) without a name, else
    [name]; CampaignError for an unknown campaign or one not linked to Salesforce."""
    if name is None:
        return None
    campaign = get_campaign(conn, name)
    if campaign.salesforce_link == "none":
        raise CampaignError(
            f"campaign '{campaign.name}' is not linked to Salesforce: nothing to reconcile "
            "(link it with: conversion-sync campaigns link)"
        )
    return [campaign.name]


def link_campaign(conn: sa.Connection, name: str, link: str, salesforce_id: str | None = None) -> Campaign:
    """Change a campaign's Salesforce link. A new link target starts over as a first link: members forget
    their Salesforce member ids and last synced status, and the next run imports before it pushes."""
    campaign = get_campaign(conn, name)
    mode, sf_id = _link_target(link, salesforce_id)
    same = mode == campaign.salesforce_link and (mode == "create" or sf_id == campaign.salesforce_campaign_id)
    if same:
        return campaign
    _ensure_unlinked_elsewhere(conn, sf_id, name)
    conn.execute(
        sa.text(
            """UPDATE campaigns SET salesforce_link = :link, salesforce_campaign_id = :sf_id,
                linked_at = CASE WHEN :link = 'none' THEN NULL ELSE now() END, last_reconciled_at = NULL,
                salesforce_missing_since = NULL, updated_at = now()
            WHERE id = :id"""
        ),
        {"link": mode, "sf_id": sf_id, "id": campaign.id},
    )
    conn.execute(
        sa.text(
            """UPDATE campaign_members SET salesforce_member_id = NULL, salesforce_synced_at = NULL,
                synced_status = NULL
            WHERE campaign_id = :id AND (salesforce_member_id IS NOT NULL OR synced_status IS NOT NULL)"""
        ),
        {"id": campaign.id},
    )
    return get_campaign(conn, name)


def set_salesforce_campaign(conn: sa.Connection, campaign_id: int, sf_id: str) -> None:
    """Record the Salesforce Campaign created for a campaign with link `create`."""
    conn.execute(
        sa.text(
            """UPDATE campaigns SET salesforce_campaign_id = :sf_id, linked_at = coalesce(linked_at, now()),
                updated_at = now() WHERE id = :id"""
        ),
        {"sf_id": sf_id, "id": campaign_id},
    )


@dataclass
class CampaignRun:
    """A campaign's part of a reconciliation, as the campaign remembers its latest one."""

    run_id: str
    status: Literal["reconciled", "failed", "stopped"]
    counts: dict[str, int] | None = None
    error: str | None = None
    missing: bool | None = None
    """The linked Salesforce campaign was found (False) or found missing (True); None: not known."""


RECORD_CAMPAIGN_RUN_SQL = """
    UPDATE campaigns SET last_run_id = :run, last_run_at = now(), last_run_status = :status,
        last_run_counts = CAST(:counts AS jsonb), last_run_error = :error,
        salesforce_missing_since = CASE
            WHEN CAST(:missing AS boolean) THEN coalesce(salesforce_missing_since, now())
            WHEN NOT CAST(:missing AS boolean) THEN NULL
            ELSE salesforce_missing_since END
    WHERE id = :id"""


def record_campaign_run(conn: sa.Connection, campaign_id: int, run: CampaignRun) -> None:
    conn.execute(
        sa.text(RECORD_CAMPAIGN_RUN_SQL),
        {
            "id": campaign_id,
            "run": run.run_id,
            "status": run.status,
            "counts": json.dumps(run.counts or {}),
            "error": run.error,
            "missing": run.missing,
        },
    )


def mark_reconciled(conn: sa.Connection, campaign_id: int) -> None:
    conn.execute(
        sa.text("UPDATE campaigns SET last_reconciled_at = now() WHERE id = :id"), {"id": campaign_id}
    )


# -- members ----------------------------------------------------------------------------------


def add_member(
    conn: sa.Connection,
    campaign_name: str,
    email: str,
    status: str | None = None,
    identity: IdentityMatcher | None = None,
) -> MemberChange:
    """Add a contact (matched or created by email) to a campaign, or change its status.

    A changed status moves the member's updated_at, so the next reconciliation pushes it (store side newer).
    A member removed earlier (a tombstone) is no longer removed.
    """
    campaign = get_campaign(conn, campaign_name)
    email = email.strip()
    if not _EMAIL.match(email):
        raise CampaignError(f"'{email}' is not an email address")
    wanted = status if status is not None else campaign.type.default_status
    canonical = campaign.type.canonical_status(wanted)
    if canonical is None:
        raise CampaignError(
            f"status '{wanted}' is not allowed in campaign '{campaign.name}' (type '{campaign.type.name}'); "
            f"allowed: {', '.join(campaign.type.statuses)}"
        )
    [contact_id], counts = (identity or IdentityMatcher()).resolve(conn, [(email, None, None)])
    assert contact_id is not None
    row = conn.execute(
        sa.text(
            """WITH before AS (
                SELECT status FROM campaign_members WHERE campaign_id = :campaign AND contact_id = :contact
            ), upsert AS (
                INSERT INTO campaign_members (campaign_id, contact_id, status, updated_at)
                VALUES (:campaign, :contact, :status, now())
                ON CONFLICT (campaign_id, contact_id) DO UPDATE SET status = EXCLUDED.status, updated_at = now()
                WHERE campaign_members.status IS DISTINCT FROM EXCLUDED.status
                RETURNING 1
            )
            SELECT (SELECT status FROM before), EXISTS (SELECT 1 FROM upsert)"""
        ),
        {"campaign": campaign.id, "contact": contact_id, "status": canonical},
    ).one()
    before, written = row
    conn.execute(  # added again in the store: no longer removed
        sa.text(
            "DELETE FROM campaign_member_tombstones WHERE campaign_id = :campaign AND contact_id = :contact"
        ),
        {"campaign": campaign.id, "contact": contact_id},
    )
    action: Literal["added", "updated", "unchanged"] = (
        "added" if before is None else ("updated" if written else "unchanged")
    )
    return MemberChange(contact_id, canonical, action, counts.created > 0)


def campaign_errors(
    conn: sa.Connection, campaign_name: str, run_id: str | None = None
) -> tuple[str | None, list[dict[str, Any]]]:
    """(run id, its error rows) for a campaign: the given run's, else the latest run that had any."""
    campaign = get_campaign(conn, campaign_name)
    if run_id is None:
        run_id = conn.execute(
            sa.text(
                "SELECT run_id FROM campaign_member_errors WHERE campaign_id = :id ORDER BY id DESC LIMIT 1"
            ),
            {"id": campaign.id},
        ).scalar()
        if run_id is None:
            return None, []
    rows = conn.execute(
        sa.text(
            """SELECT created_at, direction, code, email, contact_id, salesforce_person_id, salesforce_member_id,
                   status, message
            FROM campaign_member_errors WHERE campaign_id = :id AND run_id = :run ORDER BY id"""
        ),
        {"id": campaign.id, "run": run_id},
    ).mappings()
    return run_id, [dict(r) for r in rows]
