"""HTTP routes of the oversight path: tasks, approvals, standing orders, the risk policy."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import Field
from sqlalchemy import select

from it0.auth.deps import (
    Audit,
    AuditLog,
    PlatformDep,
    TenantSession,
    current_principal,
    public,
    request_context,
    require,
)
from it0.auth.errors import UnknownTenant
from it0.auth.tokens import Principal, TenantRef, find_tenant, user_principal
from it0.core.errors import AuthenticationError
from it0.core.schemas import Body
from it0.ops import approvals as approvals_service
from it0.ops import orders as orders_service
from it0.ops import rules as rules_service
from it0.ops import tasks as tasks_service
from it0.ops.models import StandingOrder, Task
from it0.ops.policy import RuleSpec
from it0.ops.schemas import (
    ApprovalLink,
    ApprovalPublic,
    ApprovalSettings,
    ApprovalSettingsPublic,
    ExplainRequest,
    LinkVote,
    OrderApproval,
    OrderCreate,
    OrderDecision,
    OrderPublic,
    OrderUpdate,
    TaskCreate,
    TaskDetail,
    TaskPage,
    TaskPublic,
    VoteCreate,
)
from it0.ops.settings import settings_public, update_settings
from it0.ops.stream import task_events
from it0.platform import Platform

router = APIRouter(prefix="/api/v1", tags=["oversight"])

TaskReader = Annotated[Principal, require("tasks:read")]
TaskWriter = Annotated[Principal, require("tasks:write")]
Approver = Annotated[Principal, require("tasks:approve")]
PolicyReader = Annotated[Principal, require("policy:read")]
PolicyWriter = Annotated[Principal, require("policy:write")]
OrderReader = Annotated[Principal, require("standing_orders:read")]
OrderWriter = Annotated[Principal, require("standing_orders:write")]
OrderApprover = Annotated[Principal, require("standing_orders:approve")]
Ref = Annotated[str, Path(min_length=1, max_length=64, description="id or unique id prefix")]
OrderRef = Annotated[str, Path(min_length=1, max_length=128, description="number, id or name")]
Cursor = Annotated[uuid.UUID | None, Query(description="next_cursor of the previous page")]
Limit = Annotated[int, Query(ge=1, le=500)]


# --- tasks ----------------------------------------------------------------------------------


@router.post("/tasks", status_code=201)
async def create_task(
    body: TaskCreate, principal: TaskWriter, audit: Audit, p: PlatformDep
) -> TaskPublic:
    """Classify and submit: read-only runs at once, the rest waits for approval (or runs
    inside an active standing order's scope)."""
    task, approval = await tasks_service.submit(
        audit,
        tasks_service.Requester.of(principal),
        body,
        settings_expiry=p.settings.approval_expiry_minutes,
    )
    return tasks_service.task_public(task, approval.id if approval else None)


@router.get("/tasks")
async def list_tasks(
    _: TaskReader,
    session: TenantSession,
    status: Annotated[str | None, Query(max_length=32)] = None,
    risk: Annotated[str | None, Query(max_length=16)] = None,
    cursor: Cursor = None,
    limit: Limit = 50,
) -> TaskPage:
    """Newest first; pass ``next_cursor`` back as ``cursor`` for the next page."""
    query = select(Task)
    if status:
        query = query.where(Task.status == status)
    if risk:
        query = query.where(Task.risk == risk)
    if cursor is not None:
        query = query.where(Task.id < cursor)
    tasks = list((await session.scalars(query.order_by(Task.id.desc()).limit(limit))).all())
    ids = await tasks_service.approval_ids(session, [t.id for t in tasks])
    return TaskPage(
        items=[tasks_service.task_public(t, ids.get(t.id)) for t in tasks],
        next_cursor=str(tasks[-1].id) if len(tasks) == limit else None,
    )


@router.get("/tasks/{ref}")
async def get_task(ref: Ref, _: TaskReader, session: TenantSession) -> TaskDetail:
    """The task with each host's status and output."""
    return await tasks_service.task_detail(session, await tasks_service.find_task(session, ref))


@router.post("/tasks/{ref}/cancel")
async def cancel_task(ref: Ref, _: TaskWriter, audit: Audit) -> TaskPublic:
    """Before it runs it ends at once; a running task stops its hosts within a moment."""
    task = await tasks_service.find_task(audit.session, ref)
    await tasks_service.cancel(audit, task)
    approval = await tasks_service.approval_of(audit.session, task.id)
    return tasks_service.task_public(task, approval.id if approval else None)


class RetryBody(Body):
    reason: str | None = Field(default=None, max_length=2000, description="replaces the reason")


@router.post("/tasks/{ref}/retry", status_code=201)
async def retry_task(
    ref: Ref, principal: TaskWriter, audit: Audit, p: PlatformDep, body: RetryBody | None = None
) -> TaskPublic:
    """A new task with the same request, classified and authorized afresh."""
    old = await tasks_service.find_task(audit.session, ref)
    task, approval = await tasks_service.submit(
        audit,
        tasks_service.Requester.of(principal),
        tasks_service.retry_body(old, body.reason if body else None),
        settings_expiry=p.settings.approval_expiry_minutes,
        retry_of=old.id,
    )
    return tasks_service.task_public(task, approval.id if approval else None)


async def _streamable(
    ref: Ref, principal: Annotated[Principal, Depends(current_principal)], p: PlatformDep
) -> tuple[Principal, Task]:
    async with p.db.session(principal.tenant.schema) as session:
        return principal, await tasks_service.find_task(session, ref)


@router.get("/tasks/{ref}/events", response_class=EventSourceResponse)
async def follow_task(
    ref: Ref,
    _: TaskReader,
    request: Request,
    found: Annotated[tuple[Principal, Task], Depends(_streamable)],
    p: PlatformDep,
    after: Annotated[int, Query(ge=0, le=2**62, description="replay events after this id")] = 0,
) -> AsyncIterator[ServerSentEvent]:
    """Server-Sent Events: ``output``, ``host``, ``note``, ``status`` and a final ``done``.

    Events carry ids; a client that reconnects with ``Last-Event-ID`` (or ``after``)
    continues where it left off.
    """
    principal, task = found
    last = request.headers.get("last-event-id", "")
    start = int(last) if re.fullmatch(r"[0-9]{1,18}", last) else after
    async for event in task_events(p, principal.tenant.schema, task.id, start):
        if await request.is_disconnected():
            return
        yield event


# --- approvals ------------------------------------------------------------------------------


@router.get("/approvals")
async def list_approvals(
    _: TaskReader,
    session: TenantSession,
    status: Annotated[
        Literal["pending", "approved", "rejected", "expired", "cancelled"] | None, Query()
    ] = None,
    cursor: Cursor = None,
    limit: Limit = 50,
) -> list[ApprovalPublic]:
    """Newest first; each with the command, its risk explanation and the resolved hosts."""
    return await approvals_service.list_approvals(session, status, limit, cursor)


@router.get("/approvals/{ref}")
async def get_approval(ref: Ref, _: TaskReader, session: TenantSession) -> ApprovalPublic:
    approval = await approvals_service.find_approval(session, ref)
    return await approvals_service.approval_public(session, approval)


async def _vote(
    audit: AuditLog, ref: str, principal: Principal, decision: Any, comment: str
) -> ApprovalPublic:
    approval = await approvals_service.find_approval(audit.session, ref)
    await approvals_service.vote(audit, approval, principal, decision, comment=comment)
    return await approvals_service.approval_public(audit.session, approval)


@router.post("/approvals/{ref}/approve")
async def approve(
    ref: Ref, principal: Approver, audit: Audit, body: VoteCreate | None = None
) -> ApprovalPublic:
    """Vote to approve exactly the payload shown (its hash); never your own request."""
    return await _vote(audit, ref, principal, "approve", body.comment if body else "")


@router.post("/approvals/{ref}/reject")
async def reject(
    ref: Ref, principal: Approver, audit: Audit, body: VoteCreate | None = None
) -> ApprovalPublic:
    """One rejection ends the request."""
    return await _vote(audit, ref, principal, "reject", body.comment if body else "")


@router.post("/approvals/{ref}/link", status_code=201)
async def approval_link(
    ref: Ref, principal: Approver, session: TenantSession, p: PlatformDep, request: Request
) -> ApprovalLink:
    """A signed single-use link that lets *you* decide from a notification (e.g. a phone)."""
    approval = await approvals_service.find_approval(session, ref)
    token, expires_at = approvals_service.issue_link(
        p.signer,
        principal.tenant.slug,
        approval,
        principal.user_id,
        ttl=timedelta(seconds=p.settings.approval_link_ttl),
    )
    base = p.settings.public_url or str(request.base_url).rstrip("/")
    return ApprovalLink(
        url=f"{base.rstrip('/')}/api/v1/approval-links/{token}", token=token, expires_at=expires_at
    )


LinkToken = Annotated[str, Path(min_length=20, max_length=2048)]


async def _link_approval(p: Platform, token: str) -> tuple[dict[str, Any], TenantRef, Principal]:
    claims = approvals_service.read_link(p.signer, token)
    try:
        async with p.db.session() as session:
            tenant = await find_tenant(session, claims["ten"])
    except UnknownTenant as exc:
        raise AuthenticationError("invalid link") from exc
    async with p.db.session(tenant.schema) as session:
        voter = await user_principal(session, tenant.id, uuid.UUID(claims["sub"]))
    if voter is None or "tasks:approve" not in voter.permissions:
        raise AuthenticationError("the link's approver can no longer approve")
    return claims, tenant, voter


@router.get("/approval-links/{token}", dependencies=[public])
async def show_link(token: LinkToken, p: PlatformDep) -> ApprovalPublic:
    """What the link would approve; reading does not use it up."""
    claims, tenant, _ = await _link_approval(p, token)
    async with p.db.session(tenant.schema) as session:
        if await approvals_service.link_used(session, claims["jti"]):
            raise AuthenticationError("this approval link has been used already")
        approval = await approvals_service.find_approval(session, claims["apr"])
        return await approvals_service.approval_public(session, approval)


@router.post("/approval-links/{token}", dependencies=[public])
async def use_link(
    token: LinkToken, body: LinkVote, p: PlatformDep, request: Request
) -> ApprovalPublic:
    """Approve or reject as the person the link was issued to; works once."""
    claims, tenant, voter = await _link_approval(p, token)
    async with p.db.session(tenant.schema, write=True) as session:
        approval = await approvals_service.find_approval(session, claims["apr"])
        await approvals_service.use_link(session, approval, claims)
        audit = AuditLog(p, session, voter, request_context(request, voter))
        await approvals_service.vote(
            audit, approval, voter, body.decision, comment=body.comment, via="link"
        )
        return await approvals_service.approval_public(session, approval)


@router.get("/settings/approvals")
async def get_approval_settings(
    _: PolicyReader, session: TenantSession, p: PlatformDep
) -> ApprovalSettingsPublic:
    return await settings_public(session, p.settings.approval_expiry_minutes)


@router.put("/settings/approvals")
async def put_approval_settings(
    body: ApprovalSettings, _: PolicyWriter, audit: Audit, p: PlatformDep
) -> ApprovalSettingsPublic:
    """Approvals needed per risk and the expiry; lowering a count is audited as relaxing."""
    return await update_settings(audit, body, p.settings.approval_expiry_minutes)


# --- the risk policy ------------------------------------------------------------------------


@router.post("/policy/explain")
async def explain(body: ExplainRequest, _: PolicyReader, session: TenantSession) -> dict[str, Any]:
    """The class of a command line and, for each part, the rule that decided it."""
    policy = await rules_service.tenant_policy(session)
    return policy.classify(body.command, env=body.env).to_json()


@router.get("/policy/rules")
async def list_rules(_: PolicyReader, session: TenantSession) -> list[dict[str, Any]]:
    """The tenant's own rules (the built-in ones ship with IT0)."""
    return [rules_service.rule_public(r) for r in await rules_service.tenant_rules(session)]


@router.post("/policy/rules", status_code=201)
async def add_rule(body: RuleSpec, principal: PolicyWriter, audit: Audit) -> dict[str, Any]:
    """Add a rule; one that lowers a class is flagged and audited as a relaxation."""
    row = await rules_service.add_rule(audit, body, principal.username)
    return rules_service.rule_public(row)


@router.delete("/policy/rules/{rule_id}", status_code=204)
async def delete_rule(rule_id: uuid.UUID, _: PolicyWriter, audit: Audit) -> None:
    await rules_service.remove_rule(audit, rule_id)


# --- standing orders ------------------------------------------------------------------------


@router.get("/standing-orders")
async def list_orders(
    _: OrderReader,
    session: TenantSession,
    status: Annotated[str | None, Query(max_length=32)] = None,
) -> list[OrderPublic]:
    query = select(StandingOrder).order_by(StandingOrder.number)
    if status:
        query = query.where(StandingOrder.status == status)
    return [orders_service.order_public(o) for o in (await session.scalars(query)).all()]


@router.post("/standing-orders", status_code=201)
async def create_order(body: OrderCreate, principal: OrderWriter, audit: Audit) -> OrderPublic:
    """Proposed orders wait for approval by another person with standing_orders:approve."""
    order = await orders_service.create_order(audit, principal, body)
    return orders_service.order_public(order)


@router.get("/standing-orders/{ref}")
async def get_order(ref: OrderRef, _: OrderReader, session: TenantSession) -> OrderPublic:
    return orders_service.order_public(await orders_service.find_order(session, ref))


@router.patch("/standing-orders/{ref}")
async def update_order(
    ref: OrderRef, body: OrderUpdate, principal: OrderWriter, audit: Audit
) -> OrderPublic:
    """A change is a new version: the order stops until another person approves it."""
    order = await orders_service.find_order(audit.session, ref)
    changed = await orders_service.update_order(audit, order, principal, body)
    return orders_service.order_public(changed)


@router.post("/standing-orders/{ref}/approve")
async def approve_order(
    ref: OrderRef, body: OrderApproval, principal: OrderApprover, audit: Audit
) -> OrderPublic:
    """Approve the ``version`` you reviewed; a newer version is refused (409)."""
    order = await orders_service.find_order(audit.session, ref)
    decided = await orders_service.decide_order(
        audit, order, principal, True, body.comment, version=body.version
    )
    return orders_service.order_public(decided)


@router.post("/standing-orders/{ref}/reject")
async def reject_order(
    ref: OrderRef, principal: OrderApprover, audit: Audit, body: OrderDecision | None = None
) -> OrderPublic:
    order = await orders_service.find_order(audit.session, ref)
    comment = body.comment if body else ""
    return orders_service.order_public(
        await orders_service.decide_order(audit, order, principal, False, comment)
    )


@router.post("/standing-orders/{ref}/pause")
async def pause_order(
    ref: OrderRef, _: OrderWriter, audit: Audit, body: OrderDecision | None = None
) -> OrderPublic:
    """Takes authority away at once; no second person needed."""
    order = await orders_service.find_order(audit.session, ref)
    reason = (body.comment if body else "") or "paused by hand"
    return orders_service.order_public(await orders_service.pause_order(audit, order, reason))


@router.post("/standing-orders/{ref}/resume")
async def resume_order(ref: OrderRef, principal: OrderWriter, audit: Audit) -> OrderPublic:
    """Asks to re-enable: the order waits for another person's approval."""
    order = await orders_service.find_order(audit.session, ref)
    return orders_service.order_public(await orders_service.resume_order(audit, order, principal))
