"""Tasks: one command, a script or steps on a selector; classified, authorized, queued.

``submit`` is the one way in, for a person, an API key, the agent and standing orders:
it resolves the targets to server ids, classifies every step with the tenant's policy,
hashes exactly what will run, and then either queues the task (read-only, or inside an
active standing order's scope) or opens an approval request.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from it0.audit import Actor
from it0.audit.chain import canonical_json
from it0.auth.tokens import Principal
from it0.core.clock import utcnow, uuid7
from it0.core.db import publish_after_commit
from it0.inventory.models import Server
from it0.inventory.selectors import parse_selector, resolve
from it0.inventory.service import Recorder
from it0.ops.errors import (
    AmbiguousReference,
    InvalidState,
    NoTargets,
    OpsNotFound,
    ReasonRequired,
)
from it0.ops.models import Approval, Task, TaskHost
from it0.ops.policy import Risk
from it0.ops.rules import tenant_policy
from it0.ops.schemas import (
    FINAL_STATUSES,
    Rollout,
    Step,
    TaskCreate,
    TaskDetail,
    TaskHostPublic,
    TaskPublic,
)
from it0.ops.settings import approval_settings

TASK_READY = "task.ready"
TASK_FINISHED = "task.finished"  # run, refused, rejected, expired or cancelled


@dataclass(frozen=True)
class Requester:
    """Who asks: the accountable person (``user_id``) and the actor that acts for them."""

    user_id: uuid.UUID
    name: str
    actor: Actor
    source: str  # user | api_key | agent | standing_order

    @classmethod
    def of(cls, principal: Principal) -> Requester:
        source = "api_key" if principal.api_key_id is not None else "user"
        return cls(principal.user_id, principal.username, principal.actor, source)

    def describe(self) -> dict[str, Any]:
        return {
            "user_id": str(self.user_id),
            "name": self.name,
            "actor": self.actor.type,
            "actor_id": self.actor.id,
            "source": self.source,
        }


# --- what runs, and its hash ----------------------------------------------------------------


def steps_of(body: TaskCreate) -> tuple[str, list[dict[str, Any]]]:
    if body.command is not None:
        return "command", [{"name": None, "command": body.command}]
    if body.script is not None:
        return "script", [{"name": "script", "command": body.script}]
    assert body.steps is not None
    return "steps", [{"name": s.name, "command": s.command} for s in body.steps]


def build_payload(
    kind: str,
    steps: Sequence[dict[str, Any]],
    servers: Sequence[Server],
    *,
    sudo: bool,
    timeout: float | None,
    rollout: Rollout | dict[str, Any] | None,
) -> dict[str, Any]:
    """What runs, exactly: the steps, and each server with where and how it is reached,
    so an approved host whose address, user, credential or kind changes is not approved."""
    if isinstance(rollout, Rollout):
        rollout = rollout.model_dump()
    return {
        "kind": kind,
        "steps": [{"name": s.get("name"), "command": s["command"]} for s in steps],
        "server_ids": sorted(str(s.id) for s in servers),
        "servers": [server_binding(s) for s in sorted(servers, key=lambda s: str(s.id))],
        "params": {"sudo": sudo, "timeout": timeout, "rollout": rollout},
    }


def server_binding(server: Server) -> dict[str, Any]:
    """The fields of a server that decide where a command runs and under which policy."""
    return {
        "id": str(server.id),
        "kind": server.kind,
        "address": server.address,
        "port": server.port,
        "username": server.username,
        "credential_id": str(server.credential_id) if server.credential_id else None,
        "environment": server.environment,
        "env_label": server.labels.get("env"),
    }


def payload_hash(payload: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of the payload: what an approval approves."""
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


# --- classification -------------------------------------------------------------------------


def environments(servers: Sequence[Server]) -> set[str | None]:
    envs: set[str | None] = {None}
    for server in servers:
        envs.add(server.environment or None)
        if server.labels.get("env"):
            envs.add(server.labels["env"])
    return envs


async def classify_steps(
    session: AsyncSession, steps: Sequence[dict[str, Any]], servers: Sequence[Server]
) -> tuple[Risk, list[dict[str, Any]]]:
    """The riskiest class over every step and every environment among the targets."""
    policy = await tenant_policy(session)
    risk = Risk.READ_ONLY
    explained: list[dict[str, Any]] = []
    for step in steps:
        worst = None
        for env in sorted(environments(servers), key=lambda e: e or ""):
            verdict = policy.classify(step["command"], env=env)
            if worst is None or Risk.max(worst.risk, verdict.risk) != worst.risk:
                worst = verdict
        assert worst is not None
        risk = Risk.max(risk, worst.risk)
        explained.append(worst.to_json())
    return risk, explained


# --- submitting -----------------------------------------------------------------------------


async def resolve_targets(session: AsyncSession, targets: str) -> list[Server]:
    servers = await resolve(session, parse_selector(targets), facts=False)
    if not servers:
        raise NoTargets(
            f"no server matches {targets!r}", details={"field": "targets", "targets": targets}
        )
    return sorted(servers, key=lambda s: s.name)


async def submit(
    audit: Recorder,
    requester: Requester,
    body: TaskCreate,
    *,
    settings_expiry: int,
    standing_order_id: uuid.UUID | None = None,
    retry_of: uuid.UUID | None = None,
    now: datetime | None = None,
) -> tuple[Task, Approval | None]:
    """Create the task; queue it when authorized, else open its approval request."""
    from it0.ops.orders import authorize_by_order  # orders build on tasks

    session = audit.session
    now = now or utcnow()
    servers = await resolve_targets(session, body.targets)
    kind, steps = steps_of(body)
    risk, verdicts = await classify_steps(session, steps, servers)
    if risk != Risk.READ_ONLY and not body.reason.strip():
        raise ReasonRequired(
            f"this task is {risk.value} and needs a reason", details={"field": "reason"}
        )
    payload = build_payload(
        kind,
        steps,
        servers,
        sudo=body.sudo,
        timeout=body.timeout,
        rollout=body.rollout,
    )
    task = Task(
        id=uuid7(),
        kind=kind,
        payload=payload,
        payload_hash=payload_hash(payload),
        selector=body.targets,
        server_names=[s.name for s in servers],
        reason=body.reason,
        risk=risk.value,
        verdicts=verdicts,
        status="pending_approval",
        source=requester.source,
        requested_by=requester.user_id,
        requester=requester.describe(),
        standing_order_id=None,
        authorization={},
        retry_of=retry_of,
        cancel_requested=False,
        counts={},
        created_at=now,
    )
    session.add(task)
    summary = _task_summary(task)
    if risk == Risk.READ_ONLY:  # inserted once, in the state it starts in (one statement)
        _authorize(task, {"by": "policy", "risk": risk.value}, now)
        await audit.record("task.created", "task", task.id, {**summary, "authorized_by": "policy"})
        await _start(audit, task, servers)
        return task, None
    await session.flush()
    coverage = await authorize_by_order(
        session, steps, servers, risk, now, sudo=body.sudo, only=standing_order_id
    )
    if coverage.order is not None:
        order = coverage.order
        task.standing_order_id = order.id
        _authorize(task, coverage.authorization, now)
        await audit.record(
            "task.created",
            "task",
            task.id,
            {**summary, "authorized_by": coverage.describe()},
        )
        await _start(audit, task, servers)
        return task, None
    task.standing_order_id = standing_order_id  # an order's own run that needs a person
    if coverage.note:
        task.authorization = {"not_covered": coverage.note}
    required, expiry = await approval_settings(session, settings_expiry)
    approval = Approval(
        task_id=task.id,
        payload_hash=task.payload_hash,
        risk=risk.value,
        required=required[risk.value],
        status="pending",
        requested_by=requester.user_id,
        expires_at=now + expiry,
        created_at=now,
    )
    session.add(approval)
    await session.flush()
    await audit.record("task.created", "task", task.id, summary)
    await audit.record(
        "approval.requested",
        "approval",
        approval.id,
        {
            "task_id": str(task.id),
            "risk": risk.value,
            "required": approval.required,
            "expires_at": approval.expires_at.isoformat(),
            "payload_hash": task.payload_hash,
            **({"not_covered": coverage.note} if coverage.note else {}),
        },
    )
    publish_after_commit(
        session,
        "approval.requested",
        {"tenant": audit.tenant_pair[0], "approval_id": str(approval.id), "task_id": str(task.id)},
    )
    return task, approval


def _authorize(task: Task, authorization: dict[str, Any], now: datetime) -> None:
    task.status = "approved"
    task.authorization = authorization
    task.authorized_by = authorization["by"]
    task.approved_at = now


async def _start(audit: Recorder, task: Task, servers: list[Server]) -> None:
    """An authorized task starts in this process when it runs a worker, else it is queued."""
    starter = audit.platform.task_starter
    if starter is None or not await starter.start_now(audit, task, servers):
        queue(audit, task)


def _ready(audit: Recorder, task: Task) -> dict[str, Any]:
    return {"tenant": audit.tenant_pair[0], "task_id": str(task.id)}


def queue(audit: Recorder, task: Task) -> None:
    """Hand an approved task to the workers once the transaction commits."""
    publish_after_commit(audit.session, TASK_READY, _ready(audit, task))


def announce_finished(audit: Recorder, task: Task) -> None:
    """Tell listeners (the agent waiting on it, benchmarks) once the final state commits."""
    publish_after_commit(
        audit.session,
        TASK_FINISHED,
        {"tenant": audit.tenant_pair[0], "task_id": str(task.id), "status": task.status},
    )


def _task_summary(task: Task) -> dict[str, Any]:
    return {
        "kind": task.kind,
        "risk": task.risk,
        "targets": task.selector,
        "servers": task.server_names,
        "commands": [s["command"][:500] for s in task.payload["steps"]],
        "reason": task.reason[:500],
        "payload_hash": task.payload_hash,
        "requested_by": task.requester,
    }


# --- lookups, cancel, retry -----------------------------------------------------------------


async def find_task(session: AsyncSession, ref: str | uuid.UUID) -> Task:
    task: Task | None = await _by_ref(session, Task, ref)
    if task is None:
        raise OpsNotFound(f"task {ref} not found")
    return task


async def _by_ref(session: AsyncSession, model: Any, ref: str | uuid.UUID) -> Any:
    """By full id, or by a unique prefix of at least 8 characters of the id.

    Ids are time-ordered (UUIDv7), so ids made close together share their first digits;
    a prefix that fits several is refused as ambiguous rather than reported missing.
    """
    text = str(ref).strip().lower()
    try:
        return await session.get(model, uuid.UUID(text))
    except ValueError:
        pass
    if len(text) < 8 or not all(c in "0123456789abcdef-" for c in text):
        return None
    rows = list(
        (
            await session.scalars(
                select(model).where(model.id >= _prefix_low(text)).order_by(model.id).limit(2)
            )
        ).all()
    )
    matches = [r for r in rows if str(r.id).startswith(text)]
    if len(matches) > 1:
        raise AmbiguousReference(
            f"{text!r} is the start of several ids: give more characters",
            details={"prefix": text},
        )
    return matches[0] if matches else None


def _prefix_low(prefix: str) -> uuid.UUID:
    digits = prefix.replace("-", "")
    return uuid.UUID(hex=(digits + "0" * 32)[:32])


async def approval_of(session: AsyncSession, task_id: uuid.UUID) -> Approval | None:
    found: Approval | None = await session.scalar(
        select(Approval).where(Approval.task_id == task_id)
    )
    return found


async def cancel(audit: Recorder, task: Task, now: datetime | None = None) -> Task:
    """Before it runs: cancelled at once. Running: the worker stops it (and its hosts).

    The approval row, then the task row, are locked first (the order votes take too), so a
    vote or a worker's claim at the same moment is decided before or after, never between.
    """
    now = now or utcnow()
    approval = await approval_of(audit.session, task.id)
    if approval is not None:
        await audit.session.refresh(approval, with_for_update=True)
    await audit.session.refresh(task, with_for_update=True)
    if task.status in FINAL_STATUSES:
        raise InvalidState(f"task is {task.status} already", details={"status": task.status})
    if task.status == "running":
        task.cancel_requested = True
        await audit.session.flush()
        await audit.record("task.cancel_requested", "task", task.id, {"status": task.status})
        return task
    if approval is not None and approval.status == "pending":
        approval.status = "cancelled"
        approval.decided_at = now
    task.status = "cancelled"
    task.finished_at = now
    task.message = "cancelled before it ran"
    await audit.session.flush()
    await audit.record("task.cancelled", "task", task.id, {"before_run": True})
    announce_finished(audit, task)
    return task


def retry_body(task: Task, reason: str | None) -> TaskCreate:
    """The same request again: it is classified and authorized afresh."""
    payload = task.payload
    params = payload["params"]
    steps = payload["steps"]
    fields: dict[str, Any] = {
        "targets": task.selector,
        "reason": reason if reason is not None else task.reason,
        "sudo": params["sudo"],
        "timeout": params["timeout"],
        "rollout": params["rollout"],
    }
    if task.kind == "command":
        fields["command"] = steps[0]["command"]
    elif task.kind == "script":
        fields["script"] = steps[0]["command"]
    else:
        fields["steps"] = [Step(name=s["name"], command=s["command"]) for s in steps]
    return TaskCreate.model_validate(fields)


# --- views ----------------------------------------------------------------------------------


def task_public(task: Task, approval_id: uuid.UUID | None) -> TaskPublic:
    params = task.payload["params"]
    return TaskPublic(
        id=task.id,
        kind=task.kind,
        status=task.status,
        risk=task.risk,
        targets=task.selector,
        servers=task.server_names,
        steps=task.payload["steps"],
        reason=task.reason,
        source=task.source,
        requested_by=task.requester,
        standing_order_id=task.standing_order_id,
        approval_id=approval_id,
        authorization=task.authorization,
        payload_hash=task.payload_hash,
        sudo=params["sudo"],
        rollout=params["rollout"],
        counts=task.counts,
        message=task.message,
        retry_of=task.retry_of,
        created_at=task.created_at,
        approved_at=task.approved_at,
        started_at=task.started_at,
        finished_at=task.finished_at,
    )


async def task_detail(session: AsyncSession, task: Task) -> TaskDetail:
    approval = await approval_of(session, task.id)
    hosts = (
        await session.scalars(
            select(TaskHost)
            .where(TaskHost.task_id == task.id)
            .order_by(TaskHost.batch, TaskHost.server_name)
        )
    ).all()
    base = task_public(task, approval.id if approval else None)
    return TaskDetail(
        **base.model_dump(),
        verdicts=task.verdicts,
        hosts=[
            TaskHostPublic(
                server_id=h.server_id,
                name=h.server_name,
                batch=h.batch,
                status=h.status,
                exit_status=h.exit_status,
                error=h.error,
                steps=h.steps,
                stdout=h.stdout,
                stderr=h.stderr,
                truncated=h.truncated,
                started_at=h.started_at,
                finished_at=h.finished_at,
                duration=h.duration,
            )
            for h in hosts
        ],
    )


async def approval_ids(
    session: AsyncSession, task_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, uuid.UUID]:
    if not task_ids:
        return {}
    rows = await session.execute(
        select(Approval.task_id, Approval.id).where(Approval.task_id.in_(task_ids))
    )
    return {task_id: approval_id for task_id, approval_id in rows}
