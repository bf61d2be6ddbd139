"""The agent's tables: the tenant's runbooks, conversations, their events and waits."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Index, Integer, String, Text, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from it0.core.clock import utcnow, uuid7
from it0.core.db import TenantBase, UTCDateTime
from it0.ops.models import SeqType


class TenantRunbook(TenantBase):
    """A runbook the tenant added; one with a built-in runbook's id replaces that one."""

    __tablename__ = "runbooks"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid7)
    runbook_id: Mapped[str] = mapped_column(String(100), unique=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class AgentSession(TenantBase):
    """One user's conversation with the agent: its model history, usage and state.

    ``status``: idle | running | waiting_approval. ``history`` is the model runtime's own
    message list (pydantic-ai's JSON form); what the user saw is in ``agent_events``.
    """

    __tablename__ = "agent_sessions"
    __table_args__ = (Index("ix_agent_sessions_user", "user_id", "updated_at"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid7)
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    username: Mapped[str] = mapped_column(String(128))
    # what the user could do when the session started; the agent never exceeds it
    permissions: Mapped[list[str]] = mapped_column(JSON)
    title: Mapped[str] = mapped_column(String(200))
    model: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(24), default="idle")
    history: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    runtime_session: Mapped[str | None] = mapped_column(String(200), default=None)
    turns: Mapped[int] = mapped_column(Integer, default=0)
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    tool_calls: Mapped[int] = mapped_column(Integer, default=0)
    turn_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AgentEvent(TenantBase):
    """What a turn showed the user, in order: replayed by the session's event stream."""

    __tablename__ = "agent_events"
    __table_args__ = (Index("ix_agent_events_session_seq", "session_id", "seq"),)

    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    session_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    turn: Mapped[int] = mapped_column(Integer)
    type: Mapped[str] = mapped_column(String(24))
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AgentWait(TenantBase):
    """A tool call paused on a task's approval; resolved with the task's outcome."""

    __tablename__ = "agent_waits"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid7)
    session_id: Mapped[uuid.UUID] = mapped_column(Uuid, index=True)
    task_id: Mapped[uuid.UUID] = mapped_column(Uuid, index=True)
    tool_call_id: Mapped[str | None] = mapped_column(String(200), default=None)
    result: Mapped[str | None] = mapped_column(Text, default=None)
    status: Mapped[str | None] = mapped_column(String(24), default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
