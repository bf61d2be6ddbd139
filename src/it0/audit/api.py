"""HTTP routes of the audit context: query, verify, checkpoint export."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import PlainTextResponse
from pydantic import AwareDatetime, BaseModel
from sqlalchemy import select

from it0.audit.models import AuditEvent
from it0.auth.deps import PlatformDep, TenantSession, require
from it0.auth.tokens import Principal

router = APIRouter(prefix="/api/v1/audit", tags=["audit"])
Reader = Annotated[Principal, require("audit:read")]


class AuditEventPublic(BaseModel):
    seq: int
    id: str
    occurred_at: datetime
    actor_type: str
    actor_id: str | None
    actor_name: str
    on_behalf_of: str | None
    action: str
    resource_type: str
    resource_id: str | None
    request_id: str | None
    client_addr: str | None
    summary: dict[str, Any]
    hash: str

    @classmethod
    def of(cls, event: AuditEvent) -> AuditEventPublic:
        return cls.model_validate(
            {
                **{k: getattr(event, k) for k in cls.model_fields if k not in ("id", "summary")},
                "id": str(event.id),
                "summary": json.loads(event.summary),
            }
        )


class AuditPage(BaseModel):
    items: list[AuditEventPublic]
    next_cursor: int | None


class VerifyReport(BaseModel):
    ok: bool
    events: int
    checkpoints: int
    first_bad_seq: int | None
    problem: str | None


@router.get("/events")
async def list_events(
    _: Reader,
    session: TenantSession,
    # no NUL: PostgreSQL refuses it in text parameters (a 500 instead of a 422)
    actor: Annotated[str | None, Query(max_length=200, description="actor id or name")] = None,
    action: Annotated[
        str | None,
        Query(max_length=100, description="exact, or a prefix ending in '*'"),
    ] = None,
    resource_type: Annotated[str | None, Query(max_length=64)] = None,
    resource_id: Annotated[str | None, Query(max_length=128)] = None,
    since: AwareDatetime | None = None,  # with a zone: the columns hold UTC instants
    until: AwareDatetime | None = None,
    cursor: Annotated[
        int | None, Query(ge=1, le=2**63 - 1, description="seq to continue below")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> AuditPage:
    """Newest first; pass ``next_cursor`` back as ``cursor`` for the next page."""
    query = select(AuditEvent).order_by(AuditEvent.seq.desc()).limit(limit + 1)
    if actor:
        query = query.where((AuditEvent.actor_id == actor) | (AuditEvent.actor_name == actor))
    if action:
        query = query.where(
            AuditEvent.action.startswith(action[:-1], autoescape=True)
            if action.endswith("*")
            else AuditEvent.action == action
        )
    if resource_type:
        query = query.where(AuditEvent.resource_type == resource_type)
    if resource_id:
        query = query.where(AuditEvent.resource_id == resource_id)
    if since:
        query = query.where(AuditEvent.occurred_at >= since)
    if until:
        query = query.where(AuditEvent.occurred_at < until)
    if cursor:
        query = query.where(AuditEvent.seq < cursor)
    events = (await session.scalars(query)).all()
    more = len(events) > limit
    events = events[:limit]
    return AuditPage(
        items=[AuditEventPublic.of(e) for e in events],
        next_cursor=events[-1].seq if more and events else None,
    )


@router.get("/verify")
async def verify(principal: Reader, session: TenantSession, p: PlatformDep) -> VerifyReport:
    result = await p.audit.verify(session, principal.tenant.slug)
    return VerifyReport(
        ok=result.ok,
        events=result.events,
        checkpoints=result.checkpoints,
        first_bad_seq=result.first_bad_seq,
        problem=result.problem,
    )


@router.get("/checkpoints", response_class=PlainTextResponse)
async def export_checkpoints(principal: Reader, session: TenantSession, p: PlatformDep) -> str:
    """JSON Lines: a header with the public key, then one signed checkpoint per line."""
    return "".join(
        line + "\n" for line in await p.audit.export_checkpoints(session, principal.tenant.slug)
    )
