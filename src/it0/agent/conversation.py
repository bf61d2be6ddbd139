"""Conversations: sessions, turns, their events, and resuming after an approval.

A turn runs in the background of the process that started it (the API for a user's
message, a worker for a resume), so a client that disconnects does not stop it. What it
shows is written to ``agent_events`` (text deltas coalesced) and handed live to the
clients of this process; any replica can replay and follow the events from the database.

A command that needs approval ends the turn with the session ``waiting_approval`` and an
``agent_waits`` row per paused call. When the task is decided (``task.finished`` on the
bus, or the periodic check that catches what a restart missed), the waits take the task's
outcome and, once none is open, the session resumes: exactly once, guarded by a
compare-and-set on its status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from it0.agent import library
from it0.agent.errors import AgentConfigError, SessionBusy, SessionNotFound
from it0.agent.models import AgentEvent, AgentSession, AgentWait
from it0.agent.search import RunbookIndex
from it0.agent.tools import OpsToolbox, clean, runbook_brief
from it0.audit import Actor
from it0.audit.chain import AuditContext
from it0.auth.models import Tenant
from it0.auth.tokens import Principal, TenantRef, user_principal
from it0.core.bus import Message
from it0.core.clock import utcnow
from it0.inventory.service import Recorder, TenantRecorder
from it0.ops.models import Task
from it0.ops.schemas import FINAL_STATUSES
from it0.ops.tasks import TASK_FINISHED
from it0.platform import Platform

log = logging.getLogger(__name__)

AGENT_GROUP = "agent"
FLUSH_SECONDS = 0.25
POLL_SECONDS = 0.2
CONTEXT_RUNBOOKS = 2


@dataclass(frozen=True)
class Live:
    """One event as the live stream of this process hands it out."""

    type: str
    data: dict[str, Any]
    seq: int | None  # None for a text delta not yet written


class EventLog:
    """Writes one turn's events and hands them to this process's listeners.

    Listeners get every event at once. The database gets them in batches: text deltas are
    joined, and events are written together every ``FLUSH_SECONDS`` or when one that a
    client acts on arrives (``MILESTONES``), which then carries its id — a commit that
    reaches the disk per tool call would cost more than the call.
    """

    MILESTONES = frozenset({"approval_required", "resumed", "error", "done"})

    def __init__(self, conversations: Conversations, schema: str, session_id: uuid.UUID) -> None:
        self.c = conversations
        self.schema = schema
        self.session_id = session_id
        self.turn = 0
        self._text: list[str] = []
        self._pending: list[tuple[str, dict[str, Any]]] = []
        self._since: float | None = None

    async def emit(self, type_: str, data: dict[str, Any]) -> None:
        now = asyncio.get_running_loop().time()
        self._since = self._since if self._since is not None else now
        if type_ == "text":
            self._text.append(data["delta"])
        else:
            self._fold_text()
            self._pending.append((type_, data))
        if type_ == "user":  # the echo of the question: out first, written with what follows
            self.c.broadcast(self.session_id, Live(type_, data, None))
            return
        if type_ in self.MILESTONES or now - self._since >= FLUSH_SECONDS:
            seq = await self.flush()
            self.c.broadcast(self.session_id, Live(type_, data, None if type_ == "text" else seq))
        else:
            self.c.broadcast(self.session_id, Live(type_, data, None))

    def _fold_text(self) -> None:
        if self._text:
            self._pending.append(("text", {"content": "".join(self._text)}))
            self._text = []

    async def flush(self) -> int | None:
        """Write what waits; the last event's id."""
        self._fold_text()
        pending, self._pending, self._since = self._pending, [], None
        if not pending:
            return None
        async with self.c.p.db.session(self.schema, write=True) as session:
            rows = [
                AgentEvent(session_id=self.session_id, turn=self.turn, type=kind, data=data)
                for kind, data in pending
            ]
            session.add_all(rows)
            await session.flush()
            return rows[-1].seq


class Conversations:
    """The agent's sessions in this process: starting turns, resuming them, streaming them."""

    def __init__(self, p: Platform) -> None:
        from it0.agent.runtime import parse_model

        self.p = p
        self.spec = parse_model(p.settings.agent_model)
        self._listeners: dict[uuid.UUID, set[asyncio.Queue[Live]]] = {}
        self._running: dict[uuid.UUID, asyncio.Task[None]] = {}
        self._agent: Any = None
        self._model: Any = None

    # --- live listeners -------------------------------------------------------------------

    def broadcast(self, session_id: uuid.UUID, event: Live) -> None:
        for queue in self._listeners.get(session_id, ()):
            queue.put_nowait(event)

    def subscribe_live(self, session_id: uuid.UUID) -> asyncio.Queue[Live]:
        queue: asyncio.Queue[Live] = asyncio.Queue()
        self._listeners.setdefault(session_id, set()).add(queue)
        return queue

    def unsubscribe_live(self, session_id: uuid.UUID, queue: asyncio.Queue[Live]) -> None:
        listeners = self._listeners.get(session_id, set())
        listeners.discard(queue)
        if not listeners:
            self._listeners.pop(session_id, None)

    # --- sessions -------------------------------------------------------------------------

    async def create(
        self, audit: Recorder, principal: Principal, title: str | None
    ) -> AgentSession:
        row = AgentSession(
            user_id=principal.user_id,
            username=principal.username,
            permissions=sorted(principal.permissions),
            title=(title or "New conversation").strip()[:200] or "New conversation",
            model=self.spec.label,
            status="idle",
            history=[],
            turns=0,
            input_tokens=0,
            output_tokens=0,
            tool_calls=0,
        )
        audit.session.add(row)
        await audit.session.flush()
        await audit.record(
            "agent.session.created",
            "agent_session",
            row.id,
            {"title": row.title, "model": row.model, "actor": principal.actor.type},
        )
        return row

    async def begin(
        self, audit: Recorder, principal: Principal, session_id: uuid.UUID, content: str
    ) -> AgentSession:
        """Claim the idle session for a new turn (in the caller's transaction)."""
        row = await own_session(audit.session, principal, session_id, lock=True)
        if row.status != "idle":
            waiting = await open_waits(audit.session, row.id)
            raise SessionBusy(
                f"the conversation is {row.status.replace('_', ' ')}"
                + (
                    "; approve, reject or cancel "
                    + ", ".join(f"task {w.task_id}" for w in waiting)
                    + " to go on"
                    if waiting
                    else ""
                ),
                details={"status": row.status, "tasks": [str(w.task_id) for w in waiting]},
            )
        now = utcnow()
        row.status, row.turn_started_at, row.updated_at = "running", now, now
        row.turns += 1
        if row.turns == 1 and row.title == "New conversation":
            row.title = " ".join(content.split())[:80] or row.title
        await audit.session.flush()
        await audit.record(
            "agent.message",
            "agent_session",
            row.id,
            {"turn": row.turns, "chars": len(content), "actor": principal.actor.type},
        )
        return row

    def start(
        self,
        tenant: TenantRef,
        row: AgentSession,
        *,
        prompt: str | None,
        resume: list[AgentWait] | None = None,
    ) -> asyncio.Task[None]:
        """Run the turn in the background; the caller streams it through ``listen``."""
        task = asyncio.create_task(
            self._turn(tenant, row.id, prompt, resume or []), name=f"it0-agent-{row.id}"
        )
        self._running[row.id] = task
        task.add_done_callback(lambda _: self._running.pop(row.id, None))
        return task

    async def close(self) -> None:
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._model is not None and hasattr(self._model, "__aexit__"):
            await self._model.__aexit__(None, None, None)

    # --- a turn ---------------------------------------------------------------------------

    async def _turn(
        self, tenant: TenantRef, session_id: uuid.UUID, prompt: str | None, waits: list[AgentWait]
    ) -> None:
        events = EventLog(self, tenant.schema, session_id)
        outcome = TurnOutcome()
        try:
            async with self.p.db.session(tenant.schema) as session:
                row = await session.get(AgentSession, session_id)
            assert row is not None
            events.turn = row.turns
            if prompt is not None:
                await events.emit("user", {"content": prompt})
            for wait in waits:
                await events.emit("resumed", {"task_id": str(wait.task_id), "status": wait.status})
            toolbox = await self._toolbox(tenant, row)
            if toolbox is None:
                outcome.error = ("forbidden", f"{row.username} can no longer use the agent")
            else:
                outcome = await self._run(row, toolbox, events, prompt, waits)
        except asyncio.CancelledError:
            outcome.error = ("interrupted", "the turn was interrupted (the server stopped)")
            outcome.retry = bool(waits)  # a resume is tried again once a server runs
            with contextlib.suppress(Exception):
                await self._finish(tenant, session_id, events, outcome, waits)
            raise
        except Exception as exc:
            log.exception("agent turn failed: %s", type(exc).__name__)
            outcome.error = ("internal", "the turn failed inside IT0; see the server log")
        await self._finish(tenant, session_id, events, outcome, waits)

    async def _toolbox(self, tenant: TenantRef, row: AgentSession) -> OpsToolbox | None:
        async with self.p.db.session(tenant.schema) as session:
            now = await user_principal(session, tenant.id, row.user_id)
        if now is None or "agent:use" not in now.permissions:
            return None
        return OpsToolbox(
            platform=self.p,
            tenant=tenant,
            user_id=row.user_id,
            username=row.username,
            permissions=frozenset(row.permissions) & now.permissions,
            session_id=row.id,
            wait_for_approvals=True,
        )

    async def _run(
        self,
        row: AgentSession,
        toolbox: OpsToolbox,
        events: EventLog,
        prompt: str | None,
        waits: list[AgentWait],
    ) -> TurnOutcome:
        provider = self.spec.provider
        if provider == "offline":
            from it0.agent import offline

            return await offline.run_turn(self.p, toolbox, events.emit, prompt, waits, row.history)
        context = await self._context(toolbox, prompt) if prompt else None
        if provider == "claude-sdk":
            return await self._run_claude_sdk(row, toolbox, events, prompt, waits, context)
        from pydantic_ai.tools import DeferredToolResults

        from it0.agent import runtime

        try:
            agent, model = await self._pydantic()
        except AgentConfigError as exc:
            return TurnOutcome(error=(exc.code, exc.message))
        deferred = None
        if waits:
            deferred = DeferredToolResults(
                calls={w.tool_call_id: w.result or "" for w in waits if w.tool_call_id}
            )
        result = await runtime.run_turn(
            agent,
            model,
            runtime.Deps(toolbox, events.emit),
            self.p.settings,
            prompt=prompt,
            history=row.history,
            deferred=deferred,
            context=context,
        )
        return TurnOutcome(
            history=result.history,
            input_tokens=result.input_tokens,
            output_tokens=result.output_tokens,
            tool_calls=result.tool_calls,
            paused=result.paused,
            error=result.error,
        )

    async def _run_claude_sdk(
        self,
        row: AgentSession,
        toolbox: OpsToolbox,
        events: EventLog,
        prompt: str | None,
        waits: list[AgentWait],
        context: str | None,
    ) -> TurnOutcome:
        from it0.agent import claude_sdk

        settings = self.p.settings
        if prompt is None:  # a resume: the SDK keeps the history, we tell it the outcome
            prompt = "\n\n".join(
                f"The approval of task {w.task_id} was decided ({w.status}):\n{w.result}"
                for w in waits
            )
        elif context:
            prompt = f"{prompt}\n\n<runbooks>\n{context}\n</runbooks>"
        workdir = Path(settings.data_dir) / "agent" / "claude-sdk"
        workdir.mkdir(parents=True, exist_ok=True)
        env = {}
        if settings.agent_base_url:
            env["ANTHROPIC_BASE_URL"] = settings.agent_base_url
        if settings.agent_api_key:
            env["ANTHROPIC_API_KEY"] = settings.agent_api_key.get_secret_value()
        resume = row.runtime_session
        for attempt in (1, 2):
            try:
                turn = await claude_sdk.run_turn(
                    prompt=prompt,
                    toolbox=toolbox,
                    emit=events.emit,
                    model=self.spec.name,
                    resume=resume,
                    max_tool_calls=settings.agent_max_tool_calls,
                    timeout=settings.agent_turn_timeout,
                    env=env,
                    workdir=workdir,
                )
                break
            except claude_sdk.ClaudeSdkError as exc:
                if attempt == 1 and resume and "No conversation found" in exc.message:
                    resume = None  # its transcript is gone (another host?): start afresh
                    continue
                return TurnOutcome(error=("model_error", exc.message))
        stopped = {
            "budget": f"it made more than {settings.agent_max_tool_calls} tool calls",
            "timeout": f"it ran longer than {settings.agent_turn_timeout:g} s",
        }
        return TurnOutcome(
            runtime_session=turn.session_id,
            input_tokens=turn.input_tokens,
            output_tokens=turn.output_tokens,
            tool_calls=turn.tool_calls,
            paused=bool(turn.pending),
            error=(
                ("budget_exceeded", f"the turn ended: {stopped.get(turn.stopped, turn.stopped)}")
                if turn.stopped
                else None
            ),
        )

    async def _pydantic(self) -> tuple[Any, Any]:
        from it0.agent import runtime

        if self._agent is None:
            model = runtime.build_model(self.spec, self.p.settings)
            await model.__aenter__()  # its HTTP client lives until close()
            self._model, self._agent = model, runtime.make_agent()
        return self._agent, self._model

    def use_model(self, model: Any) -> None:
        """Run pydantic-ai turns on ``model`` (benchmarks and tests use a function model)."""
        from it0.agent import runtime

        self.spec = runtime.ModelSpec("function", getattr(model, "model_name", "function"))
        self._model, self._agent = model, runtime.make_agent()

    async def _context(self, toolbox: OpsToolbox, prompt: str) -> str | None:
        async with self.p.db.session(toolbox.tenant.schema) as session:
            entries = await library.entries(session)
        found = RunbookIndex([e.runbook for e in entries]).search(prompt, CONTEXT_RUNBOOKS)
        if not found:
            return None
        briefs = "\n\n".join(runbook_brief(runbook) for runbook, _ in found)
        return f"Runbooks that match the request (use their diagnostics first):\n\n{briefs}"

    async def _finish(
        self,
        tenant: TenantRef,
        session_id: uuid.UUID,
        events: EventLog,
        outcome: TurnOutcome,
        waits: list[AgentWait] | None = None,
    ) -> None:
        """Store what the turn produced; the waits it answered are done with, unless retried."""
        if outcome.error:
            code, message = outcome.error
            await events.emit("error", {"code": code, "message": message})
        await events.flush()
        async with self.p.db.session(tenant.schema, write=True) as session:
            row = await session.get(AgentSession, session_id, with_for_update=True)
            assert row is not None
            if waits and not outcome.retry:
                if outcome.history is None and self.spec.provider in ("anthropic", "openai"):
                    from it0.agent.runtime import answer_calls

                    outcome.history = answer_calls(row.history, waits)
                for wait in waits:
                    await session.execute(delete(AgentWait).where(AgentWait.id == wait.id))
            if outcome.history is not None:
                row.history = outcome.history
            if outcome.runtime_session:
                row.runtime_session = outcome.runtime_session
            row.input_tokens += outcome.input_tokens
            row.output_tokens += outcome.output_tokens
            row.tool_calls += outcome.tool_calls
            row.status = "waiting_approval" if outcome.paused or outcome.retry else "idle"
            row.turn_started_at, row.updated_at = None, utcnow()
            await session.flush()
            audit = TenantRecorder(self.p, session, tenant.pair, agent_context(row))
            await audit.record(
                "agent.turn.finished",
                "agent_session",
                row.id,
                {
                    "turn": row.turns,
                    "status": row.status,
                    "input_tokens": outcome.input_tokens,
                    "output_tokens": outcome.output_tokens,
                    "tool_calls": outcome.tool_calls,
                    "error": outcome.error[0] if outcome.error else None,
                },
            )
            usage = {
                "input_tokens": row.input_tokens,
                "output_tokens": row.output_tokens,
                "tool_calls": row.tool_calls,
                "turn": {
                    "input_tokens": outcome.input_tokens,
                    "output_tokens": outcome.output_tokens,
                    "tool_calls": outcome.tool_calls,
                },
            }
            status = row.status
        await events.emit("done", {"status": status, "usage": usage})

    # --- resuming after a decision --------------------------------------------------------

    def subscribe(self) -> None:
        self.p.bus.subscribe(TASK_FINISHED, AGENT_GROUP, self.on_task_finished)

    async def on_task_finished(self, message: Message) -> None:
        slug, task_id = message.payload.get("tenant"), message.payload.get("task_id")
        if not isinstance(slug, str) or not isinstance(task_id, str):
            return
        tenant = next((t for t in await self.tenants() if t.slug == slug), None)
        if tenant is None:
            return
        await self.settle(tenant, [uuid.UUID(task_id)])

    async def tenants(self) -> list[TenantRef]:
        async with self.p.db.session() as session:
            rows = (await session.execute(select(Tenant.id, Tenant.slug, Tenant.schema_name))).all()
        return [TenantRef(i, slug, schema) for i, slug, schema in rows]

    async def settle(self, tenant: TenantRef, task_ids: list[uuid.UUID]) -> int:
        """Give the waits on these (final) tasks their outcome; resume sessions that can go on."""
        sessions: set[uuid.UUID] = set()
        async with self.p.db.session(tenant.schema, write=True) as session:
            waits = (
                await session.scalars(
                    select(AgentWait)
                    .where(AgentWait.task_id.in_(task_ids), AgentWait.resolved_at.is_(None))
                    .with_for_update()
                )
            ).all()
            for wait in waits:
                task = await session.get(Task, wait.task_id)
                if task is None or task.status not in FINAL_STATUSES:
                    continue
                wait.status, wait.resolved_at = task.status, utcnow()
                sessions.add(wait.session_id)
            if sessions:
                await session.flush()
                for wait in waits:
                    if wait.resolved_at is not None:
                        wait.result = await self._result_for(tenant, wait)
                await session.flush()
                audit = TenantRecorder(self.p, session, tenant.pair, SYSTEM)
                for wait in waits:
                    if wait.resolved_at is not None:
                        await audit.record(
                            "agent.wait.resolved",
                            "agent_session",
                            wait.session_id,
                            {"task_id": str(wait.task_id), "status": wait.status},
                        )
        resumed = 0
        for session_id in sessions:
            resumed += await self.resume(tenant, session_id)
        return resumed

    async def _result_for(self, tenant: TenantRef, wait: AgentWait) -> str:
        """What the paused call returns: the run's output, or why nothing ran."""
        async with self.p.db.session(tenant.schema) as session:
            row = await session.get(AgentSession, wait.session_id)
        assert row is not None
        toolbox = OpsToolbox(
            platform=self.p,
            tenant=tenant,
            user_id=row.user_id,
            username=row.username,
            permissions=frozenset(),
            session_id=row.id,
        )
        outcome = await toolbox.outcome(wait.task_id)
        if outcome.status in ("succeeded", "failed"):
            return "Approved and run. " + toolbox.describe(outcome)
        reason = clean(outcome.message or outcome.status)
        return (
            f"The command did not run: task {outcome.task_id} was {outcome.status} ({reason}). "
            "Do not try it again unless the user asks; tell the user."
        )

    async def resume(self, tenant: TenantRef, session_id: uuid.UUID) -> int:
        """Resume the session if it waits and nothing it waits for is open; once only."""
        async with self.p.db.session(tenant.schema, write=True) as session:
            if await open_waits(session, session_id):
                return 0
            # the row lock (a write transaction on SQLite) makes this a compare-and-set
            row = await session.get(AgentSession, session_id, with_for_update=True)
            if row is None or row.status != "waiting_approval":
                return 0
            now = utcnow()
            row.status, row.turn_started_at, row.updated_at = "running", now, now
            row.turns += 1  # the continuation is a turn of its own
            waits = (
                await session.scalars(
                    select(AgentWait)
                    .where(AgentWait.session_id == session_id, AgentWait.resolved_at.is_not(None))
                    .order_by(AgentWait.created_at)
                )
            ).all()
            waits = [w for w in waits if w.result is not None]
            audit = TenantRecorder(self.p, session, tenant.pair, agent_context(row))
            await audit.record(
                "agent.turn.resumed",
                "agent_session",
                session_id,
                {"tasks": {str(w.task_id): w.status for w in waits}},
            )
        self.start(tenant, row, prompt=None, resume=list(waits))
        return 1

    async def sweep(self, now: datetime | None = None) -> int:
        """Catch what events missed: decided tasks, resumable sessions, turns a crash cut."""
        now = now or utcnow()
        settings = self.p.settings
        stale = now - timedelta(
            seconds=settings.agent_turn_timeout + settings.agent_command_wait + 60
        )
        resumed = 0
        for tenant in await self.tenants():
            async with self.p.db.session(tenant.schema) as session:
                open_tasks = (
                    await session.scalars(
                        select(AgentWait.task_id)
                        .join(Task, Task.id == AgentWait.task_id)
                        .where(AgentWait.resolved_at.is_(None), Task.status.in_(FINAL_STATUSES))
                    )
                ).all()
                waiting = (
                    await session.scalars(
                        select(AgentSession.id).where(AgentSession.status == "waiting_approval")
                    )
                ).all()
                cut = (
                    await session.scalars(
                        select(AgentSession.id).where(
                            AgentSession.status == "running", AgentSession.turn_started_at < stale
                        )
                    )
                ).all()
            if open_tasks:
                resumed += await self.settle(tenant, list(set(open_tasks)))
            for session_id in waiting:
                resumed += await self.resume(tenant, session_id)
            for session_id in cut:
                if session_id not in self._running:
                    await self._interrupted(tenant, session_id)
        return resumed

    async def _interrupted(self, tenant: TenantRef, session_id: uuid.UUID) -> None:
        events = EventLog(self, tenant.schema, session_id)
        async with self.p.db.session(tenant.schema) as session:
            row = await session.get(AgentSession, session_id)
        if row is None:
            return
        events.turn = row.turns
        async with self.p.db.session(tenant.schema) as session:
            answered = (
                await session.scalars(
                    select(AgentWait.id).where(
                        AgentWait.session_id == session_id, AgentWait.resolved_at.is_not(None)
                    )
                )
            ).all()
        outcome = TurnOutcome(
            error=("interrupted", "the turn was cut off (the server stopped)"),
            retry=bool(answered),
        )
        await self._finish(tenant, session_id, events, outcome)

    async def loop(self) -> None:
        """The periodic check, for the worker role."""
        while True:
            try:
                await self.sweep()
            except Exception as exc:
                log.warning("agent sweep failed: %s", type(exc).__name__)
            await asyncio.sleep(self.p.settings.agent_resume_interval)


@dataclass
class TurnOutcome:
    history: list[dict[str, Any]] | None = None
    runtime_session: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    tool_calls: int = 0
    paused: bool = False
    error: tuple[str, str] | None = None
    retry: bool = False  # an interrupted resume: wait again, so the next sweep resumes it


SYSTEM = AuditContext(Actor.system("agent"))


def agent_context(row: AgentSession) -> AuditContext:
    return AuditContext(
        Actor(
            type="agent",
            id=str(row.id),
            name=f"agent on behalf of {row.username}",
            on_behalf_of=str(row.user_id),
        )
    )


async def own_session(
    session: AsyncSession, principal: Principal, session_id: uuid.UUID, *, lock: bool = False
) -> AgentSession:
    """The principal's own conversation; another user's is as unknown as a missing one."""
    row = await session.get(AgentSession, session_id, with_for_update=lock)
    if row is None or row.user_id != principal.user_id:
        raise SessionNotFound("no such conversation")
    return row


async def forget(audit: Recorder, row: AgentSession) -> None:
    """Delete the conversation and its events; refused while it answers."""
    if row.status == "running":
        raise SessionBusy("the conversation is answering; delete it when the turn is done")
    session = audit.session
    await session.execute(delete(AgentEvent).where(AgentEvent.session_id == row.id))
    await session.execute(delete(AgentWait).where(AgentWait.session_id == row.id))
    await session.delete(row)
    await session.flush()
    await audit.record(
        "agent.session.deleted", "agent_session", row.id, {"title": row.title, "turns": row.turns}
    )


async def open_waits(session: AsyncSession, session_id: uuid.UUID) -> list[AgentWait]:
    rows = await session.scalars(
        select(AgentWait).where(AgentWait.session_id == session_id, AgentWait.resolved_at.is_(None))
    )
    return list(rows.all())
