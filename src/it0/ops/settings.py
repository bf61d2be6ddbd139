"""The tenant's approval settings: how many approvals each risk needs, and their expiry."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from it0.inventory.models import TenantSetting
from it0.inventory.service import Recorder
from it0.ops.schemas import ApprovalSettings, ApprovalSettingsPublic

KEY = "approvals"
DEFAULT_REQUIRED = {"low": 1, "high": 1, "critical": 2, "unknown": 1}


async def _stored(session: AsyncSession) -> dict[str, Any]:
    row = await session.get(TenantSetting, KEY)
    return dict(row.value) if row is not None and isinstance(row.value, dict) else {}


async def approval_settings(
    session: AsyncSession, default_expiry_minutes: int
) -> tuple[dict[str, int], timedelta]:
    stored = await _stored(session)
    required = {**DEFAULT_REQUIRED, **stored.get("required", {})}
    minutes = stored.get("expiry_minutes") or default_expiry_minutes
    return required, timedelta(minutes=minutes)


async def settings_public(
    session: AsyncSession, default_expiry_minutes: int
) -> ApprovalSettingsPublic:
    required, expiry = await approval_settings(session, default_expiry_minutes)
    return ApprovalSettingsPublic(
        required=required, expiry_minutes=int(expiry.total_seconds() // 60)
    )


async def update_settings(
    audit: Recorder, body: ApprovalSettings, default_expiry_minutes: int
) -> ApprovalSettingsPublic:
    """Merge the given fields; lowering a count relaxes oversight and is audited as such."""
    session = audit.session
    before, _ = await approval_settings(session, default_expiry_minutes)
    stored = await _stored(session)
    required = {**stored.get("required", {}), **body.required}
    value = {
        "required": required,
        "expiry_minutes": body.expiry_minutes or stored.get("expiry_minutes"),
    }
    row = await session.get(TenantSetting, KEY)
    if row is None:
        session.add(TenantSetting(key=KEY, value=value))
    else:
        row.value = value
    await session.flush()
    relaxed = sorted(r for r, n in body.required.items() if n < before[r])
    await audit.record(
        "approvals.settings",
        "tenant_setting",
        KEY,
        {**value, "relaxed": relaxed},
    )
    return await settings_public(session, default_expiry_minutes)
