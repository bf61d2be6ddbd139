"""HTTP and WebSocket routes of voice calls."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, WebSocket
from pydantic import BaseModel, Field

from it0.auth.deps import Audit, public, require
from it0.auth.tokens import Principal
from it0.core.schemas import Body
from it0.voice.gateway import VoiceGateway
from it0.voice.registry import VoiceSession

router = APIRouter(prefix="/api/v1", tags=["voice"])
socket_router = APIRouter(prefix="/api/v1", tags=["voice"])  # served by the voice role

Caller = Annotated[Principal, require("voice:use")]
CallId = Annotated[uuid.UUID, Path(description="the voice session's id")]


async def gateway(request: Request) -> VoiceGateway:
    found: VoiceGateway = request.app.state.voice
    return found


GatewayDep = Annotated[VoiceGateway, Depends(gateway)]


class CallCreate(Body):
    agent_session_id: uuid.UUID | None = Field(
        default=None, description="an agent conversation of yours to continue (else a new one)"
    )


class CallPublic(BaseModel):
    session_id: uuid.UUID
    agent_session_id: uuid.UUID
    websocket_url: str = Field(description="connect within the token's lifetime")
    expires_in: int = Field(description="seconds the URL's token stays valid")


def _public(request: Request, g: VoiceGateway, session: VoiceSession) -> CallPublic:
    base = g.p.settings.public_url or str(request.base_url)
    scheme, _, rest = base.rstrip("/").partition("://")
    ws = "wss" if scheme == "https" else "ws"
    url = f"{ws}://{rest}/api/v1/voice/ws/{session.id}?token={g.token(session)}"
    return CallPublic(
        session_id=session.id,
        agent_session_id=session.agent_session_id,
        websocket_url=url,
        expires_in=g.p.settings.voice_token_ttl,
    )


@router.post("/voice/sessions", status_code=201)
async def create_call(
    principal: Caller,
    audit: Audit,
    request: Request,
    g: GatewayDep,
    body: CallCreate | None = None,
) -> CallPublic:
    """Start a voice call with the agent; connect to ``websocket_url`` to talk."""
    session = await g.create(audit, principal, body.agent_session_id if body else None)
    return _public(request, g, session)


@router.post("/voice/sessions/{session_id}/reconnect")
async def reconnect_call(
    session_id: CallId, principal: Caller, request: Request, g: GatewayDep
) -> CallPublic:
    """A fresh WebSocket URL for a call whose connection dropped (409 while still connected,
    404 once the session expired)."""
    session = await g.reconnectable(principal, session_id)
    return _public(request, g, session)


@router.delete("/voice/sessions/{session_id}", status_code=204)
async def end_call(session_id: CallId, principal: Caller, audit: Audit, g: GatewayDep) -> None:
    """Hang up: the call ends (``session.ended`` on its connection) and cannot be resumed."""
    await g.end(audit, principal, session_id)


@socket_router.websocket("/voice/ws/{session_id}", dependencies=[public])
async def call_socket(
    websocket: WebSocket,
    session_id: uuid.UUID,
    token: Annotated[str | None, Query(max_length=4096)] = None,
) -> None:
    """The call itself: PCM audio and JSON control messages (see ``it0.voice.protocol``).
    Authenticated by the short-lived token in ``websocket_url``, bound to this call."""
    g: VoiceGateway = websocket.app.state.voice
    await g.serve(websocket, session_id, token)
