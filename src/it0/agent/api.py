"""HTTP routes of the agent: conversations, and the runbook library (built-in and own)."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import BaseModel, Field
from sqlalchemy import select

from it0.agent import library
from it0.agent.conversation import Conversations, Live, own_session
from it0.agent.errors import InvalidRunbook
from it0.agent.models import AgentEvent, AgentSession
from it0.agent.runbooks import Runbook
from it0.agent.search import RunbookIndex
from it0.auth.deps import Audit, AuditLog, PlatformDep, TenantSession, request_context, require
from it0.auth.tokens import Principal
from it0.core.schemas import Body

router = APIRouter(prefix="/api/v1", tags=["agent"])

AgentUser = Annotated[Principal, require("agent:use")]
PolicyWriter = Annotated[Principal, require("policy:write")]
RunbookId = Annotated[str, Path(min_length=1, max_length=64)]


class RunbookPublic(Runbook):
    """A runbook as the library serves it: where it comes from and, for a search, its score."""

    source: library.Source
    score: float | None = None
    created_by: str | None = None
    updated_at: datetime | None = None


def _public(entry: library.Entry, score: float | None = None) -> RunbookPublic:
    row = entry.row
    return RunbookPublic.model_validate(
        {
            **entry.runbook.model_dump(),
            "source": entry.source,
            "score": score,
            "created_by": row.created_by if row else None,
            "updated_at": row.updated_at if row else None,
        }
    )


@router.get("/runbooks")
async def list_runbooks(
    _: AgentUser,
    session: TenantSession,
    q: Annotated[str | None, Query(max_length=1000, description="search by symptoms")] = None,
    limit: Annotated[int, Query(ge=1, le=100, description="results of a search")] = 5,
) -> list[RunbookPublic]:
    """Every runbook by id, or with ``q`` the best matches first."""
    entries = await library.entries(session)
    if not q:
        return [_public(entry) for entry in entries]
    by_id = {entry.runbook.id: entry for entry in entries}
    found = RunbookIndex([entry.runbook for entry in entries]).search(q, limit)
    return [_public(by_id[runbook.id], round(score, 4)) for runbook, score in found]


@router.get("/runbooks/{runbook_id}")
async def get_runbook(runbook_id: RunbookId, _: AgentUser, session: TenantSession) -> RunbookPublic:
    return _public(await library.find_entry(session, runbook_id))


@router.put("/runbooks/{runbook_id}", responses={201: {"description": "Created"}})
async def put_runbook(
    runbook_id: RunbookId, body: Runbook, principal: PolicyWriter, audit: Audit, response: Response
) -> RunbookPublic:
    """Add (201) or replace (200) the tenant's runbook; one with a built-in id overrides it.

    Diagnostics and verify steps must be ``read_only`` under the tenant's policy.
    """
    if body.id != runbook_id:
        raise InvalidRunbook(f"the body's id {body.id!r} is not the path's {runbook_id!r}")
    entry, created = await library.put_runbook(audit, body, principal.username)
    response.status_code = 201 if created else 200
    return _public(entry)


@router.delete("/runbooks/{runbook_id}", status_code=204)
async def delete_runbook(runbook_id: RunbookId, _: PolicyWriter, audit: Audit) -> None:
    """Remove the tenant's runbook; built-in ones cannot be removed, only overridden."""
    await library.remove_runbook(audit, runbook_id)


# --- conversations --------------------------------------------------------------------------


class SessionCreate(Body):
    title: str | None = Field(default=None, max_length=200)


class MessageCreate(Body):
    content: str = Field(min_length=1, max_length=20000)


class SessionPublic(BaseModel):
    id: uuid.UUID
    title: str
    model: str
    status: str
    turns: int
    usage: dict[str, int]
    created_at: datetime
    updated_at: datetime


class EventPublic(BaseModel):
    seq: int
    turn: int
    type: str
    data: dict[str, Any]
    at: datetime


class SessionDetail(SessionPublic):
    messages: list[dict[str, Any]]
    events: list[EventPublic]


def _session_public(row: AgentSession) -> dict[str, Any]:
    return {
        "id": row.id,
        "title": row.title,
        "model": row.model,
        "status": row.status,
        "turns": row.turns,
        "usage": {
            "input_tokens": row.input_tokens,
            "output_tokens": row.output_tokens,
            "tool_calls": row.tool_calls,
        },
        "created_at": row.created_at,
        "updated_at": row.updated_at,
    }


async def conversations(request: Request) -> Conversations:
    found: Conversations = request.app.state.conversations
    return found


ConversationsDep = Annotated[Conversations, Depends(conversations)]
SessionId = Annotated[uuid.UUID, Path(description="the conversation's id")]


@router.post("/agent/sessions", status_code=201)
async def create_session(
    principal: AgentUser,
    audit: Audit,
    c: ConversationsDep,
    body: SessionCreate | None = None,
) -> SessionPublic:
    """Start a conversation with the agent; it belongs to the caller alone."""
    row = await c.create(audit, principal, body.title if body else None)
    return SessionPublic.model_validate(_session_public(row))


@router.get("/agent/sessions")
async def list_sessions(
    principal: AgentUser,
    session: TenantSession,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> list[SessionPublic]:
    """The caller's conversations, the latest first."""
    rows = await session.scalars(
        select(AgentSession)
        .where(AgentSession.user_id == principal.user_id)
        .order_by(AgentSession.updated_at.desc(), AgentSession.id.desc())
        .limit(limit)
    )
    return [SessionPublic.model_validate(_session_public(row)) for row in rows]


@router.get("/agent/sessions/{session_id}")
async def get_session(
    session_id: SessionId, principal: AgentUser, session: TenantSession
) -> SessionDetail:
    """The conversation: its messages as the user saw them, and every event in order."""
    row = await own_session(session, principal, session_id)
    events = (
        await session.scalars(
            select(AgentEvent).where(AgentEvent.session_id == row.id).order_by(AgentEvent.seq)
        )
    ).all()
    public = [EventPublic.model_validate(e, from_attributes=True) for e in events]
    return SessionDetail.model_validate(
        {**_session_public(row), "messages": transcript(public), "events": public}
    )


@router.delete("/agent/sessions/{session_id}", status_code=204)
async def delete_session(session_id: SessionId, principal: AgentUser, audit: Audit) -> None:
    """Forget the conversation (its tasks and their audit trail stay)."""
    from it0.agent.conversation import forget

    row = await own_session(audit.session, principal, session_id, lock=True)
    await forget(audit, row)


async def _begin(
    session_id: SessionId,
    body: MessageCreate,
    principal: AgentUser,
    request: Request,
    p: PlatformDep,
    c: ConversationsDep,
) -> tuple[asyncio.Queue[Live], uuid.UUID]:
    """Claim the session and start the turn before the response starts (errors are 4xx)."""
    async with p.db.session(principal.tenant.schema, write=True) as session:
        audit = AuditLog(p, session, principal, request_context(request, principal))
        row = await c.begin(audit, principal, session_id, body.content)
    queue = c.subscribe_live(row.id)
    c.start(principal.tenant, row, prompt=body.content)
    return queue, row.id


@router.post("/agent/sessions/{session_id}/messages", response_class=EventSourceResponse)
async def post_message(
    _: AgentUser,
    request: Request,
    c: ConversationsDep,
    begun: Annotated[tuple[asyncio.Queue[Live], uuid.UUID], Depends(_begin)],
) -> AsyncIterator[ServerSentEvent]:
    """Ask; the answer streams as Server-Sent Events until ``done``.

    Events: ``user``, ``text`` (deltas), ``tool_call``, ``tool_result``,
    ``approval_required`` (with the approval request's id), ``error``, ``done`` (with the
    session's status: ``waiting_approval`` when a command waits for a person). The turn
    goes on if the client disconnects; ``GET .../events`` replays and follows it.
    """
    queue, session_id = begun
    try:
        while True:
            event = await queue.get()
            yield ServerSentEvent(
                event=event.type,
                data=event.data,
                id=str(event.seq) if event.seq is not None else None,
            )
            if event.type == "done":
                return
    finally:
        c.unsubscribe_live(session_id, queue)


async def _followable(session_id: SessionId, principal: AgentUser, p: PlatformDep) -> Principal:
    """The caller's own session, checked before the stream starts (an error is a 404)."""
    async with p.db.session(principal.tenant.schema) as session:
        await own_session(session, principal, session_id)
    return principal


@router.get("/agent/sessions/{session_id}/events", response_class=EventSourceResponse)
async def follow_session(
    session_id: SessionId,
    _: AgentUser,
    principal: Annotated[Principal, Depends(_followable)],
    request: Request,
    p: PlatformDep,
    after: Annotated[int, Query(ge=0, le=2**62, description="replay events after this id")] = 0,
    follow: Annotated[bool, Query(description="wait for the turn (and resumes) to end")] = True,
) -> AsyncIterator[ServerSentEvent]:
    """Replay the conversation's events after ``after`` (or ``Last-Event-ID``), then follow.

    With ``follow`` the stream stays open while the agent answers or waits for an approval
    and ends when the session is idle; text arrives in coalesced chunks.
    """
    schema = principal.tenant.schema
    last = request.headers.get("last-event-id", "")
    cursor = int(last) if re.fullmatch(r"[0-9]{1,18}", last) else after
    while True:
        async with p.db.session(schema) as session:
            status = await session.scalar(
                select(AgentSession.status).where(AgentSession.id == session_id)
            )
            rows = (
                await session.scalars(
                    select(AgentEvent)
                    .where(AgentEvent.session_id == session_id, AgentEvent.seq > cursor)
                    .order_by(AgentEvent.seq)
                    .limit(500)
                )
            ).all()
        if status is None:
            return
        for row in rows:
            cursor = row.seq
            yield ServerSentEvent(event=row.type, id=str(row.seq), data=row.data)
        if len(rows) == 500:
            continue
        if not follow or (status == "idle" and not rows):
            return
        if await request.is_disconnected():
            return
        await asyncio.sleep(0.2)


def transcript(events: list[EventPublic]) -> list[dict[str, Any]]:
    """Events folded into messages: the user's, and the agent's with its tool calls."""
    messages: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    for event in events:
        if event.type == "user":
            current = None
            messages.append({"role": "user", "turn": event.turn, "content": event.data["content"]})
            continue
        if current is None or current["turn"] != event.turn:
            current = {"role": "assistant", "turn": event.turn, "content": "", "tools": []}
            messages.append(current)
        if event.type == "text":
            current["content"] += event.data.get("content", "")
        elif event.type in ("tool_call", "tool_result", "approval_required", "resumed", "error"):
            current["tools"].append({"type": event.type, **event.data})
        elif event.type == "done":
            current["status"] = event.data.get("status")
    return messages
