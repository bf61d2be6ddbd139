"""Tasks, their hosts and output, approvals and votes, standing orders, tenant policy rules.

A task stores exactly what will run (``payload``: steps, resolved server ids, parameters)
and the hash of it; an approval approves that hash, and the runner checks it again.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy.orm import Mapped, mapped_column

from it0.core.clock import utcnow, uuid7
from it0.core.db import TenantBase, UTCDateTime

SeqType = BigInteger().with_variant(Integer(), "sqlite")


class Task(TenantBase):
    __tablename__ = "tasks"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid7)
    kind: Mapped[str] = mapped_column(String(16))  # command | script | steps
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)  # steps, server_ids, params
    payload_hash: Mapped[str] = mapped_column(String(64))
    selector: Mapped[str] = mapped_column(Text)
    server_names: Mapped[list[str]] = mapped_column(JSON, default=list)
    reason: Mapped[str] = mapped_column(Text, default="")
    risk: Mapped[str] = mapped_column(String(16))
    verdicts: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    status: Mapped[str] = mapped_column(String(20), index=True)
    source: Mapped[str] = mapped_column(String(20))  # user | api_key | agent | standing_order
    requested_by: Mapped[uuid.UUID] = mapped_column(Uuid)  # the accountable person
    requester: Mapped[dict[str, Any]] = mapped_column(JSON)  # the actor, as audited
    standing_order_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, default=None, index=True)
    authorization: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # policy | approval | standing_order, once authorized (what rate limits count)
    authorized_by: Mapped[str | None] = mapped_column(String(20), default=None)
    retry_of: Mapped[uuid.UUID | None] = mapped_column(Uuid, default=None)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    worker_id: Mapped[str | None] = mapped_column(String(64), default=None)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    counts: Mapped[dict[str, int]] = mapped_column(JSON, default=dict)
    message: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    approved_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)


class TaskHost(TenantBase):
    """One host of a task: its batch, status and (capped) output."""

    __tablename__ = "task_hosts"
    __table_args__ = (UniqueConstraint("task_id", "server_id", name="uq_task_hosts_server"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid7)
    task_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tasks.id", ondelete="CASCADE"), index=True
    )
    server_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    server_name: Mapped[str] = mapped_column(String(128))
    batch: Mapped[int] = mapped_column(Integer)
    # pending | running | ok | failed | unreachable | skipped | cancelled | interrupted
    status: Mapped[str] = mapped_column(String(16))
    exit_status: Mapped[int | None] = mapped_column(Integer, default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    steps: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    stdout: Mapped[str] = mapped_column(Text, default="")
    stderr: Mapped[str] = mapped_column(Text, default="")
    truncated: Mapped[bool] = mapped_column(Boolean, default=False)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    duration: Mapped[float | None] = mapped_column(Float, default=None)


class TaskOutput(TenantBase):
    """Live output as it arrived, in order: what the event stream replays and follows."""

    __tablename__ = "task_output"
    __table_args__ = (Index("ix_task_output_task_seq", "task_id", "seq"),)

    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    task_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    kind: Mapped[str] = mapped_column(String(16))  # output | host | status
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Approval(TenantBase):
    """The request to approve one task's payload hash; decided by votes or by expiry."""

    __tablename__ = "approvals"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid7)
    task_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tasks.id", ondelete="CASCADE"), unique=True
    )
    payload_hash: Mapped[str] = mapped_column(String(64))
    risk: Mapped[str] = mapped_column(String(16))
    required: Mapped[int] = mapped_column(Integer)
    # pending | approved | rejected | expired | cancelled
    status: Mapped[str] = mapped_column(String(16), index=True)
    requested_by: Mapped[uuid.UUID] = mapped_column(Uuid)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)


class ApprovalVote(TenantBase):
    """Immutable: the database refuses UPDATE and DELETE on this table."""

    __tablename__ = "approval_votes"
    __table_args__ = (UniqueConstraint("approval_id", "voter_id", name="uq_votes_voter"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid7)
    approval_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("approvals.id"), index=True)
    voter_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    voter_name: Mapped[str] = mapped_column(String(128))
    decision: Mapped[str] = mapped_column(String(8))  # approve | reject
    comment: Mapped[str] = mapped_column(Text, default="")
    via: Mapped[str] = mapped_column(String(16))  # user | api_key | link
    payload_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ApprovalLinkUse(TenantBase):
    """Single use of signed approval links: a link's id may appear here once."""

    __tablename__ = "approval_link_uses"

    jti: Mapped[str] = mapped_column(String(64), primary_key=True)
    approval_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    used_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class StandingOrder(TenantBase):
    __tablename__ = "standing_orders"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid7)
    number: Mapped[int] = mapped_column(Integer, unique=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    owner_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    owner_name: Mapped[str] = mapped_column(String(128))
    # who wrote or re-enabled the current version: never its approver (four-eyes)
    changed_by: Mapped[uuid.UUID] = mapped_column(Uuid)
    # pending_approval | active | paused | rejected | expired
    status: Mapped[str] = mapped_column(String(20), index=True)
    trigger: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    scope: Mapped[dict[str, Any]] = mapped_column(JSON)
    action: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    rate_limit: Mapped[dict[str, int]] = mapped_column(JSON)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    missed_runs: Mapped[str] = mapped_column(String(16))  # skip | run_once
    pause_after_failures: Mapped[int] = mapped_column(Integer)
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)
    version: Mapped[int] = mapped_column(Integer, default=1)
    next_run_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None, index=True)
    last_run_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    approved_by: Mapped[uuid.UUID | None] = mapped_column(Uuid, default=None)
    approved_by_name: Mapped[str | None] = mapped_column(String(128), default=None)
    approved_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    status_reason: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class PolicyRule(TenantBase):
    """A tenant's addition to the built-in risk rules (``it0.ops.policy.RuleSpec``)."""

    __tablename__ = "policy_rules"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid7)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    relaxes: Mapped[bool] = mapped_column(Boolean, default=False)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
