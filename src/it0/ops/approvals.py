"""Approval requests: quorum by risk, four-eyes, immutable votes, expiry, signed links.

A vote approves the payload hash the request was opened for; if the task no longer hashes
to it, the vote is refused. The request ends at the first rejection, at quorum, or at its
expiry (as ``expired``, never approved by default).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from it0.auth.tokens import Principal
from it0.core.clock import utcnow
from it0.core.errors import AuthenticationError
from it0.core.security import TokenSigner, random_token
from it0.inventory.service import Recorder
from it0.ops.errors import AlreadyVoted, FourEyes, LinkUsed, NotPending, OpsNotFound, PayloadChanged
from it0.ops.models import Approval, ApprovalLinkUse, ApprovalVote, Task
from it0.ops.schemas import ApprovalPublic, VotePublic
from it0.ops.tasks import _by_ref, announce_finished, payload_hash, queue

Decision = Literal["approve", "reject"]
LINK_TYPE = "approval-link"


async def find_approval(session: AsyncSession, ref: str | uuid.UUID) -> Approval:
    approval: Approval | None = await _by_ref(session, Approval, ref)
    if approval is None:
        raise OpsNotFound(f"approval {ref} not found")
    return approval


async def vote(
    audit: Recorder,
    approval: Approval,
    voter: Principal,
    decision: Decision,
    *,
    comment: str = "",
    via: str | None = None,
    now: datetime | None = None,
) -> Approval:
    """Cast ``voter``'s vote; the caller checked the ``tasks:approve`` permission."""
    now = now or utcnow()
    session = audit.session
    await session.refresh(approval, with_for_update=True)  # concurrent votes queue up here
    task = await session.get(Task, approval.task_id, with_for_update=True, populate_existing=True)
    assert task is not None  # the foreign key cascades
    if approval.status == "pending" and approval.expires_at <= now:
        await expire(audit, approval, task, now)
        raise NotPending("the approval request expired", details={"status": "expired"})
    if approval.status != "pending" or task.status != "pending_approval":
        status = approval.status if approval.status != "pending" else task.status
        raise NotPending(f"the approval request is {status}", details={"status": status})
    if voter.user_id == approval.requested_by:
        raise FourEyes(
            "the requester cannot approve or reject their own task, by any route",
            details={"requested_by": str(approval.requested_by)},
        )
    if payload_hash(task.payload) != approval.payload_hash or task.payload_hash != (
        approval.payload_hash
    ):
        raise PayloadChanged("the task changed after the approval was requested")
    ballot = ApprovalVote(
        approval_id=approval.id,
        voter_id=voter.user_id,
        voter_name=voter.username,
        decision=decision,
        comment=comment,
        via=via or ("api_key" if voter.api_key_id is not None else "user"),
        payload_hash=approval.payload_hash,
        created_at=now,
    )
    # voters queue on the approval's row lock, so this check cannot race
    if await session.scalar(
        select(ApprovalVote.id).where(
            ApprovalVote.approval_id == approval.id, ApprovalVote.voter_id == voter.user_id
        )
    ):
        raise AlreadyVoted("you have voted on this request already")
    session.add(ballot)
    await session.flush()
    approvals = await _approve_count(session, approval.id)
    await audit.record(
        f"approval.{decision}d" if decision == "approve" else "approval.rejected",
        "approval",
        approval.id,
        {
            "task_id": str(task.id),
            "voter": voter.username,
            "via": ballot.via,
            "payload_hash": approval.payload_hash,
            "approvals": approvals,
            "required": approval.required,
            "comment": comment[:500],
        },
    )
    if decision == "reject":
        approval.status, approval.decided_at = "rejected", now
        task.status, task.finished_at = "rejected", now
        task.message = f"rejected by {voter.username}"
        await audit.record("task.rejected", "task", task.id, {"by": voter.username})
        announce_finished(audit, task)
    elif approvals >= approval.required:
        approval.status, approval.decided_at = "approved", now
        voters = await _voters(session, approval.id)
        task.status, task.approved_at, task.authorized_by = "approved", now, "approval"
        task.authorization = {
            "by": "approval",
            "approval_id": str(approval.id),
            "approvers": voters,
            "payload_hash": approval.payload_hash,
        }
        await audit.record(
            "task.approved", "task", task.id, {"approvers": voters, "approval_id": str(approval.id)}
        )
        queue(audit, task)
    await session.flush()
    return approval


async def _approve_count(session: AsyncSession, approval_id: uuid.UUID) -> int:
    count = await session.scalar(
        select(func.count())
        .select_from(ApprovalVote)
        .where(ApprovalVote.approval_id == approval_id, ApprovalVote.decision == "approve")
    )
    return int(count or 0)


async def _voters(session: AsyncSession, approval_id: uuid.UUID) -> list[str]:
    rows = await session.scalars(
        select(ApprovalVote.voter_name)
        .where(ApprovalVote.approval_id == approval_id, ApprovalVote.decision == "approve")
        .order_by(ApprovalVote.created_at)
    )
    return list(rows.all())


async def expire(audit: Recorder, approval: Approval, task: Task, now: datetime) -> None:
    approval.status, approval.decided_at = "expired", now
    if task.status == "pending_approval":
        task.status, task.finished_at = "expired", now
        task.message = "the approval request expired"
        announce_finished(audit, task)
    await audit.session.flush()
    await audit.record(
        "approval.expired",
        "approval",
        approval.id,
        {"task_id": str(task.id), "expires_at": approval.expires_at.isoformat()},
    )


# --- signed single-use links ----------------------------------------------------------------


def issue_link(
    signer: TokenSigner,
    tenant_slug: str,
    approval: Approval,
    approver_id: uuid.UUID,
    *,
    ttl: timedelta,
    now: datetime | None = None,
) -> tuple[str, datetime]:
    """A token naming the approver and the request; it lives until the earlier of its TTL
    and the request's expiry, and works once."""
    now = now or utcnow()
    expires_at = min(now + ttl, approval.expires_at)
    token = signer.issue_claims(
        {
            "ten": tenant_slug,
            "apr": str(approval.id),
            "sub": str(approver_id),
            "jti": random_token(16),
        },
        typ=LINK_TYPE,
        expires_at=expires_at,
    )
    return token, expires_at


def read_link(signer: TokenSigner, token: str) -> dict[str, Any]:
    claims = signer.verify_claims(token, typ=LINK_TYPE)
    if not all(isinstance(claims.get(k), str) for k in ("ten", "apr", "sub", "jti")):
        raise AuthenticationError("invalid link")
    return claims


async def use_link(session: AsyncSession, approval: Approval, claims: dict[str, Any]) -> None:
    """Consume the link's id; a second use is refused. Uses of links to one request queue
    on the request's row lock, so two at once cannot both pass."""
    await session.refresh(approval, with_for_update=True)
    if await link_used(session, claims["jti"]):
        raise LinkUsed("this approval link has been used already")
    session.add(ApprovalLinkUse(jti=claims["jti"], approval_id=approval.id))
    await session.flush()


async def link_used(session: AsyncSession, jti: str) -> bool:
    return await session.get(ApprovalLinkUse, jti) is not None


# --- views ----------------------------------------------------------------------------------


async def approval_public(session: AsyncSession, approval: Approval) -> ApprovalPublic:
    task = await session.get(Task, approval.task_id)
    assert task is not None
    votes = (
        await session.scalars(
            select(ApprovalVote)
            .where(ApprovalVote.approval_id == approval.id)
            .order_by(ApprovalVote.created_at)
        )
    ).all()
    return _public(approval, task, votes)


def _public(approval: Approval, task: Task, votes: Sequence[ApprovalVote]) -> ApprovalPublic:
    return ApprovalPublic(
        id=approval.id,
        task_id=task.id,
        status=approval.status,
        risk=approval.risk,
        required=approval.required,
        approvals=sum(1 for v in votes if v.decision == "approve"),
        payload_hash=approval.payload_hash,
        requested_by=task.requester,
        reason=task.reason,
        expires_at=approval.expires_at,
        created_at=approval.created_at,
        decided_at=approval.decided_at,
        votes=[
            VotePublic(
                voter=v.voter_name,
                voter_id=v.voter_id,
                decision=v.decision,
                comment=v.comment,
                via=v.via,
                created_at=v.created_at,
            )
            for v in votes
        ],
        targets=task.selector,
        servers=task.server_names,
        steps=task.payload["steps"],
        verdicts=task.verdicts,
        sudo=task.payload["params"]["sudo"],
    )


async def list_approvals(
    session: AsyncSession, status: str | None, limit: int, cursor: uuid.UUID | None
) -> list[ApprovalPublic]:
    query = select(Approval, Task).join(Task, Task.id == Approval.task_id)
    if status:
        query = query.where(Approval.status == status)
    if cursor is not None:
        query = query.where(Approval.id < cursor)
    rows = (await session.execute(query.order_by(Approval.id.desc()).limit(limit))).all()
    ids = [a.id for a, _ in rows]
    votes: dict[uuid.UUID, list[ApprovalVote]] = {i: [] for i in ids}
    if ids:
        for v in (
            await session.scalars(
                select(ApprovalVote)
                .where(ApprovalVote.approval_id.in_(ids))
                .order_by(ApprovalVote.created_at)
            )
        ).all():
            votes[v.approval_id].append(v)
    return [_public(a, t, votes[a.id]) for a, t in rows]
