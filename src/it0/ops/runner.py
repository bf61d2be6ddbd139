"""The worker side of tasks: claim an approved task, check it, run it in batches, store it.

Three phases, each in its own place: a write transaction claims the task and checks that
what runs is what was approved (hash, targets re-resolved, standing order still active);
the commands run with no transaction open while a writer flushes live output, renews the
task's lease and notices cancellation; a last transaction stores the outcome and audits it.

A running task holds a lease (``lease_until``). A worker that dies stops renewing it, and
``sweep`` turns the task into ``interrupted`` with the hosts that had and had not finished:
commands need not be idempotent, so nothing is re-run automatically.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import defer

from it0.audit import Actor, AuditContext
from it0.auth.errors import UnknownTenant
from it0.auth.tokens import TenantRef, find_tenant
from it0.core.bus import Message
from it0.core.clock import utcnow, uuid7
from it0.core.db import call_after_commit, publish_after_commit
from it0.execution import ExecutionError, HostTarget, RunResult, Stream, Unreachable
from it0.inventory.models import Server
from it0.inventory.reach import pin_host_key, targets_for
from it0.inventory.selectors import parse_selector, resolve
from it0.inventory.service import Recorder, TenantRecorder
from it0.ops.models import Approval, StandingOrder, Task, TaskHost, TaskOutput
from it0.ops.tasks import TASK_FINISHED, TASK_READY, payload_hash, server_binding
from it0.platform import Platform

log = logging.getLogger(__name__)

TASKS_GROUP = "tasks"
EXEMPT = {"it0_audit_exempt": True}
DONE_HOST = frozenset({"ok", "failed", "unreachable"})


# Host rows, output and the verdict go through Core statements built once: ORM bulk
# statements cost about twice the time on the task's critical path, and building a
# statement costs about as much as running it.
_HOSTS: Any = TaskHost.__table__
_OUTPUT: Any = TaskOutput.__table__
_TASKS: Any = Task.__table__
_INSERT_HOSTS = insert(_HOSTS)
_INSERT_OUTPUT = insert(_OUTPUT)
_UPDATE_HOST = update(_HOSTS).where(_HOSTS.c.id == bindparam("row_id"))
# the verdict, only while the task is still this worker's
_VERDICT = (
    update(_TASKS)
    .where(
        _TASKS.c.id == bindparam("task_id"),
        _TASKS.c.status == "running",
        _TASKS.c.worker_id == bindparam("worker"),
    )
    .values(
        status=bindparam("verdict"),
        finished_at=bindparam("at"),
        counts=bindparam("tally"),
        lease_until=None,
        message=bindparam("note"),
    )
    .returning(_TASKS.c.standing_order_id, _TASKS.c.authorization)
)


def worker_identity() -> str:
    return f"{socket.gethostname()[:30]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass
class HostPlan:
    server_id: uuid.UUID
    name: str
    batch: int
    target: HostTarget | None
    error: str | None = None  # could not be reached at all (no credential, …)
    row_id: uuid.UUID = field(default_factory=uuid7)  # its task_hosts row


@dataclass
class Plan:
    task_id: uuid.UUID
    steps: list[dict[str, Any]]
    sudo: bool
    timeout: float
    rollout: dict[str, Any] | None
    hosts: list[HostPlan]


@dataclass
class HostOutcome:
    status: str
    exit_status: int | None = None
    error: str | None = None
    steps: list[dict[str, Any]] = field(default_factory=list)
    stdout: str = ""
    stderr: str = ""
    truncated: bool = False
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration: float | None = None
    host_key: str | None = None


def batches_for(count: int, rollout: dict[str, Any] | None) -> list[int]:
    """The batch number of each of ``count`` hosts (in order)."""
    if not rollout or count == 0:
        return [0] * count
    size = rollout.get("batch_size")
    if size is None and rollout.get("batch_percent") is not None:
        size = max(1, math.ceil(count * float(rollout["batch_percent"]) / 100))
    size = int(size or count)
    return [i // size for i in range(count)]


def failure_threshold(count: int, rollout: dict[str, Any] | None) -> int | None:
    """How many failed hosts are tolerated before the rollout stops (None: never stop)."""
    if not rollout:
        return None
    limits = []
    if rollout.get("max_failures") is not None:
        limits.append(int(rollout["max_failures"]))
    if rollout.get("max_failure_percent") is not None:
        limits.append(math.floor(count * float(rollout["max_failure_percent"]) / 100))
    return min(limits) if limits else None


class TaskRunner:
    """Runs tasks for one process; several processes may run side by side."""

    def __init__(self, p: Platform, worker_id: str | None = None) -> None:
        self.p = p
        self.worker_id = worker_id or worker_identity()
        self.ctx = AuditContext(Actor.system(f"worker:{self.worker_id}"))
        self.running: dict[uuid.UUID, asyncio.Task[None]] = {}
        self.finishing: set[uuid.UUID] = set()  # storing results: let them complete
        self.closed = False
        self._claiming = 0
        self._tenants: dict[str, TenantRef] = {}

    def subscribe(self) -> None:
        self.p.bus.subscribe(TASK_READY, TASKS_GROUP, self.on_ready)
        self.p.task_starter = self

    async def on_ready(self, message: Message) -> None:
        """Claim here (quick), run in the background: one long task must not hold the queue."""
        slug, task_id = message.payload.get("tenant"), message.payload.get("task_id")
        try:
            tenant = await self._tenant(str(slug))
            tid = uuid.UUID(str(task_id))
        except (UnknownTenant, ValueError):
            log.warning("task.ready for an unknown tenant or task id: ignored")
            return
        if self.closed:
            return  # still approved: the scheduler offers it again
        self._claiming += 1
        try:
            plan = await self._claim(tenant, tid)
        except Exception as exc:  # a bug or an outage: fail the task visibly, never loop
            log.exception("claiming task %s failed", tid)
            await self._fail_claim(tenant, tid, exc)
            return
        finally:
            self._claiming -= 1
        if plan is not None and self.closed:
            await self._unclaim(tenant, plan)
        elif plan is not None:
            self._launch(tenant, plan)

    async def start_now(self, audit: Recorder, task: Task, servers: list[Server]) -> bool:
        """Claim ``task``, authorized in ``audit``'s open transaction, in that same transaction;
        it runs here as soon as the transaction commits (nothing runs if it rolls back).

        This spares a task authorized where it is created (read-only, or inside a standing
        order) a second transaction and a trip through the queue. False when stopping: the
        caller queues the task instead.
        """
        if self.closed:
            return False
        session = audit.session
        tenant = await self._tenant(audit.tenant_pair[0], session)
        recorder = TenantRecorder(self.p, session, tenant.pair, self.ctx)
        plan = await self._plan(recorder, tenant, task, servers)
        await self._take(recorder, task, plan, utcnow())
        call_after_commit(session, lambda: self._launch(tenant, plan))
        return True

    def _launch(self, tenant: TenantRef, plan: Plan) -> None:
        if self.closed:  # stopped between claim and start: give it back untouched
            job = asyncio.create_task(self._unclaim(tenant, plan), name=f"unclaim:{plan.task_id}")
        else:
            job = asyncio.create_task(self._execute(tenant, plan), name=f"task:{plan.task_id}")
        self.running[plan.task_id] = job
        job.add_done_callback(lambda _: self.running.pop(plan.task_id, None))

    async def _tenant(self, slug: str, session: AsyncSession | None = None) -> TenantRef:
        """Tenants are looked up once per process: a slug never changes its schema."""
        tenant = self._tenants.get(slug)
        if tenant is None and session is not None:
            tenant = self._tenants[slug] = await find_tenant(session, slug)
        elif tenant is None:
            async with self.p.db.session() as own:
                tenant = self._tenants[slug] = await find_tenant(own, slug)
        return tenant

    async def run(self, tenant: TenantRef, task_id: uuid.UUID) -> bool:
        """Claim and run the task to its end in the caller's task; False if not claimable."""
        plan = await self._claim(tenant, task_id)
        if plan is None:
            return False
        await self._execute(tenant, plan)
        return True

    async def close(self) -> None:
        """Stop running tasks: their remote commands are killed and the tasks are released
        for the sweep, which marks them interrupted."""
        self.closed = True
        if self.p.task_starter is self:
            self.p.task_starter = None
        for _ in range(1000):  # a claim in progress ends in a moment
            if not self._claiming:
                break
            await asyncio.sleep(0.01)
        jobs = list(self.running.items())
        for task_id, job in jobs:
            if task_id not in self.finishing:
                job.cancel()
        await asyncio.gather(*(job for _, job in jobs), return_exceptions=True)

    # --- phase 1: claim and check ---------------------------------------------------------

    async def _claim(self, tenant: TenantRef, task_id: uuid.UUID) -> Plan | None:
        now = utcnow()
        async with self.p.db.session(tenant.schema, write=True) as session:
            task = await session.get(Task, task_id, with_for_update=True)
            if task is None or task.status != "approved":
                return None  # claimed by another worker, cancelled, or gone
            audit = TenantRecorder(self.p, session, tenant.pair, self.ctx)
            refusal = await _refusal(session, task, now)
            servers: list[Server] = []
            if refusal is None:
                selected = await resolve(session, parse_selector(task.selector), facts=False)
                servers = sorted(selected, key=lambda s: s.name)
                approved = task.payload["server_ids"]
                now_ids = sorted(str(s.id) for s in servers)
                if now_ids != approved:
                    refusal = _targets_changed(approved, now_ids, servers)
                else:
                    refusal = _servers_changed(task.payload.get("servers", []), servers)
            if refusal is not None:
                task.status, task.finished_at, task.message = "failed", now, refusal[0]
                await session.flush()
                await audit.record("task.refused", "task", task.id, refusal[1])
                finished = _finished(tenant, task.id, task.status)
                publish_after_commit(session, TASK_FINISHED, finished)
                return None
            plan = await self._plan(audit, tenant, task, servers)
            await self._take(audit, task, plan, now)
        return plan

    async def _take(self, audit: TenantRecorder, task: Task, plan: Plan, now: datetime) -> None:
        """Make ``task`` this worker's, running, with a pending row per host (in the caller's
        transaction: nothing may run before it commits)."""
        session = audit.session
        task.status, task.started_at = "running", now
        task.worker_id = self.worker_id
        task.lease_until = now + timedelta(seconds=self.p.settings.task_lease_seconds)
        await session.flush()  # the task's row (a new one is inserted as running) before its hosts
        await session.execute(  # one executemany: this is on every task's critical path
            _INSERT_HOSTS,
            [
                {
                    "id": h.row_id,
                    "task_id": task.id,
                    "server_id": h.server_id,
                    "server_name": h.name,
                    "batch": h.batch,
                    "status": "pending",
                    "steps": [],
                    "stdout": "",
                    "stderr": "",
                    "truncated": False,
                }
                for h in plan.hosts
            ],
        )
        await audit.record(  # flushed with the commit
            "task.started",
            "task",
            task.id,
            {
                "worker": self.worker_id,
                "hosts": len(plan.hosts),
                "batches": 1 + max((h.batch for h in plan.hosts), default=0),
                "payload_hash": task.payload_hash,
                "authorization": task.authorization,
            },
        )
        running = {"task_id": task.id, "kind": "status", "data": {"status": "running"}, "at": now}
        await session.execute(_INSERT_OUTPUT, [running])

    async def _fail_claim(self, tenant: TenantRef, task_id: uuid.UUID, exc: Exception) -> None:
        with contextlib.suppress(Exception):  # the database may be what failed
            async with self.p.db.session(tenant.schema, write=True) as session:
                task = await session.get(Task, task_id, with_for_update=True)
                if task is None or task.status != "approved":
                    return
                task.status, task.finished_at = "failed", utcnow()
                task.message = f"the worker could not start it ({type(exc).__name__})"
                await session.flush()
                await TenantRecorder(self.p, session, tenant.pair, self.ctx).record(
                    "task.refused", "task", task.id, {"reason": "claim_failed"}
                )

    async def _unclaim(self, tenant: TenantRef, plan: Plan) -> None:
        """Give a claimed task back before any host was touched (the process is stopping)."""
        async with self.p.db.session(tenant.schema, write=True) as session:
            task = await session.get(Task, plan.task_id, with_for_update=True)
            if task is None or task.status != "running" or task.worker_id != self.worker_id:
                return
            await session.execute(delete(TaskHost).where(TaskHost.task_id == task.id))
            task.status, task.started_at, task.worker_id, task.lease_until = (
                "approved",
                None,
                None,
                None,
            )
            await session.flush()
            await TenantRecorder(self.p, session, tenant.pair, self.ctx).record(
                "task.released", "task", task.id, {"worker": self.worker_id}
            )

    async def _plan(
        self, audit: TenantRecorder, tenant: TenantRef, task: Task, servers: list[Server]
    ) -> Plan:
        params = task.payload["params"]
        batch_of = batches_for(len(servers), params["rollout"])
        targets = await targets_for(
            self.p, audit.session, tenant, servers, purpose=f"task {task.id}", ctx=self.ctx
        )
        hosts = [
            HostPlan(server.id, server.name, batch, target, None)
            if isinstance(target, HostTarget)
            else HostPlan(server.id, server.name, batch, None, target.message)
            for server, batch, target in zip(servers, batch_of, targets, strict=True)
        ]
        return Plan(
            task_id=task.id,
            steps=task.payload["steps"],
            sudo=bool(params["sudo"]),
            timeout=float(params["timeout"] or self.p.settings.exec_command_timeout),
            rollout=params["rollout"],
            hosts=hosts,
        )

    # --- phase 2: run ---------------------------------------------------------------------

    async def _execute(self, tenant: TenantRef, plan: Plan) -> None:
        live = LiveWriter(self.p, tenant, plan.task_id, self.worker_id)
        work = asyncio.create_task(self._batches(plan, live))
        writer = asyncio.create_task(live.loop(work))
        try:
            await asyncio.wait({work})
        except asyncio.CancelledError:  # the process is stopping
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)
            live.stop()
            await asyncio.gather(writer, return_exceptions=True)
            with contextlib.suppress(Exception):
                await live.flush()  # what finished is on record for the sweep
                await live.release()
            raise
        self.finishing.add(plan.task_id)
        try:
            live.stop()
            await writer
            cancelled = work.cancelled()
            if not cancelled and work.exception() is not None:
                log.error("task %s failed in the runner", plan.task_id, exc_info=work.exception())
            await self._finish(tenant, plan, live, cancelled=cancelled)
        finally:
            self.finishing.discard(plan.task_id)

    async def _batches(self, plan: Plan, live: LiveWriter) -> dict[uuid.UUID, HostOutcome]:
        outcomes = live.outcomes
        threshold = failure_threshold(len(plan.hosts), plan.rollout)
        pause = float((plan.rollout or {}).get("pause_seconds") or 0)
        batches = sorted({h.batch for h in plan.hosts})
        slots = asyncio.Semaphore(self.p.settings.task_batch_concurrency)
        stop_reason: str | None = None
        for index, batch in enumerate(batches):
            members = [h for h in plan.hosts if h.batch == batch]
            if stop_reason is not None:
                for h in members:
                    outcomes[h.server_id] = HostOutcome("skipped", error=stop_reason)
                    live.host(h, outcomes[h.server_id])
                continue
            await asyncio.gather(*(self._host(plan, h, live, slots) for h in members))
            failed = sum(1 for o in outcomes.values() if o.status in ("failed", "unreachable"))
            if threshold is not None and failed > threshold:
                stop_reason = f"rollout stopped: {failed} failed hosts exceed the limit {threshold}"
                live.note(stop_reason)
            elif pause and index < len(batches) - 1:
                await asyncio.sleep(pause)
        return outcomes

    async def _host(
        self, plan: Plan, host: HostPlan, live: LiveWriter, slots: asyncio.Semaphore
    ) -> None:
        outcome = HostOutcome("running", started_at=utcnow())
        live.outcomes[host.server_id] = outcome
        if host.target is None:
            outcome.status, outcome.error = "failed", host.error
            outcome.finished_at = utcnow()
            live.host(host, outcome)
            return
        started = time.monotonic()
        async with slots:
            live.host(host, outcome)
            for index, step in enumerate(plan.steps):
                result, error = await self._step(plan, host, step, live)
                outcome.steps.append(_step_record(index, step, result, error))
                if result is not None:
                    _absorb(outcome, result, index, len(plan.steps))
                if error is not None:
                    outcome.status = "unreachable" if isinstance(error, Unreachable) else "failed"
                    outcome.error = f"{error.code}: {error.message}"
                    break
                assert result is not None
                if not result.ok:
                    outcome.status = "failed"
                    break
            else:
                outcome.status = "ok"
        outcome.finished_at = utcnow()
        outcome.duration = round(time.monotonic() - started, 4)
        live.host(host, outcome)

    async def _step(
        self, plan: Plan, host: HostPlan, step: dict[str, Any], live: LiveWriter
    ) -> tuple[RunResult | None, ExecutionError | None]:
        assert host.target is not None

        def chunk(stream: Stream, text: str) -> None:
            live.output(host.name, stream, text)

        try:
            result = await self.p.executor.run_on(
                host.target,
                step["command"],
                timeout=plan.timeout,
                output_cap=self.p.settings.exec_output_cap,
                sudo=plan.sudo,
                on_chunk=chunk,
            )
        except ExecutionError as exc:
            return None, exc
        except Exception as exc:  # one host's surprise must not sink the task
            log.exception("unexpected error running on %s", host.name)
            return None, ExecutionError(f"internal error: {type(exc).__name__}", host.target)
        return result, None

    # --- phase 3: store -------------------------------------------------------------------

    async def _finish(
        self, tenant: TenantRef, plan: Plan, live: LiveWriter, *, cancelled: bool
    ) -> None:
        now = utcnow()
        outcomes = live.outcomes
        for h in plan.hosts:
            outcome = outcomes.get(h.server_id)
            if outcome is None or outcome.status in ("running", "pending"):
                outcomes[h.server_id] = HostOutcome(
                    "cancelled" if cancelled else "skipped",
                    error="cancelled" if cancelled else None,
                    steps=outcome.steps if outcome else [],
                    stdout=outcome.stdout if outcome else "",
                    stderr=outcome.stderr if outcome else "",
                )
        counts = _count(outcomes.values())
        if cancelled:
            status = "cancelled"
        elif counts.get("ok", 0) == len(plan.hosts):
            status = "succeeded"
        else:
            status = "failed"
        stop = next((o.error for o in outcomes.values() if o.status == "skipped"), None)
        message = stop or ("cancelled while running" if cancelled else None)
        async with self.p.db.session(tenant.schema, write=True) as session:
            audit = TenantRecorder(self.p, session, tenant.pair, self.ctx)
            # the verdict, only while the task is still this worker's (one statement)
            verdict = (
                await session.execute(
                    _VERDICT,
                    {
                        "task_id": plan.task_id,
                        "worker": self.worker_id,
                        "verdict": status,
                        "at": now,
                        "tally": counts,
                        "note": message,
                    },
                )
            ).first()
            rows = live.drain()
            if verdict is not None:  # the stream's last event, in the same insert as the output
                done = {"status": status, "counts": counts, "message": message}
                rows.append({"task_id": plan.task_id, "kind": "status", "data": done, "at": now})
            if rows:
                await session.execute(_INSERT_OUTPUT, rows)
            await _store_hosts(session, plan, outcomes)
            if verdict is None:
                # interrupted meanwhile (this worker lost its lease): keep that verdict
                kept = await session.scalar(select(Task.status).where(Task.id == plan.task_id))
                await audit.record(
                    "task.finished_late",
                    "task",
                    plan.task_id,
                    {"status": kept, "worker": self.worker_id, "counts": counts},
                )
                return
            order_id, authorization = verdict
            order = None  # row locks before the audit chain's lock, as everywhere: no deadlock
            if order_id is not None and authorization.get("by") == "standing_order":
                order = await session.get(StandingOrder, order_id, with_for_update=True)
            await _pin_new_keys(audit, plan, outcomes)
            await audit.record(
                "task.finished",
                "task",
                plan.task_id,
                {
                    "status": status,
                    "counts": counts,
                    "hosts": {h.name: outcomes[h.server_id].status for h in plan.hosts},
                    **({"message": message} if message else {}),
                },
            )
            if order is not None:
                await _order_outcome(audit, plan.task_id, order, status)
            publish_after_commit(session, TASK_FINISHED, _finished(tenant, plan.task_id, status))


# --- live output, lease, cancellation -------------------------------------------------------


class LiveWriter:
    """Batches output and host progress into the database every ``task_flush_interval``."""

    def __init__(self, p: Platform, tenant: TenantRef, task_id: uuid.UUID, worker: str) -> None:
        self.p, self.tenant, self.task_id, self.worker = p, tenant, task_id, worker
        self.outcomes: dict[uuid.UUID, HostOutcome] = {}
        self.pending: list[dict[str, Any]] = []
        self.hosts: dict[uuid.UUID, tuple[HostPlan, HostOutcome]] = {}
        self._stopped = asyncio.Event()
        self._lease_at = time.monotonic()
        self.lost = False  # the task was interrupted by the sweep while this worker ran it

    def output(self, host: str, stream: Stream, text: str) -> None:
        self.pending.append(
            {"kind": "output", "data": {"host": host, "stream": stream, "text": text}}
        )

    def host(self, plan: HostPlan, outcome: HostOutcome) -> None:
        """A host's new status: written with the next flush, after the output before it
        (a status not written yet is simply superseded)."""
        self.hosts.pop(plan.server_id, None)
        self.hosts[plan.server_id] = (plan, outcome)

    def _rows(
        self, rows: list[dict[str, Any]], hosts: dict[uuid.UUID, tuple[HostPlan, HostOutcome]]
    ) -> list[dict[str, Any]]:
        now = utcnow()
        events = rows + [
            {
                "kind": "host",
                "data": {
                    "host": plan.name,
                    "batch": plan.batch,
                    "status": o.status,
                    "exit_status": o.exit_status,
                    "error": o.error,
                },
            }
            for plan, o in hosts.values()
        ]
        return [{"task_id": self.task_id, "at": now, **row} for row in events]

    def note(self, message: str) -> None:
        self.pending.append({"kind": "note", "data": {"message": message}})

    def stop(self) -> None:
        self._stopped.set()

    async def release(self) -> None:
        """Let the lease lapse now, so the next sweep interrupts the task without waiting."""
        async with self.p.db.session(self.tenant.schema, write=True) as session:
            await session.execute(
                update(Task)
                .where(Task.id == self.task_id, Task.worker_id == self.worker)
                .values(lease_until=utcnow() - timedelta(seconds=1)),
                execution_options=EXEMPT,
            )

    async def loop(self, work: asyncio.Task[Any]) -> None:
        """Flush every interval until stopped; what is left then goes with the final store."""
        interval = self.p.settings.task_flush_interval
        while not self._stopped.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), timeout=interval)
            if self._stopped.is_set():
                return
            try:
                if await self.flush() and not work.done():
                    work.cancel()
            except Exception:  # a missed flush is retried; the final store is authoritative
                log.exception("flushing live output of task %s failed", self.task_id)

    def drain(self) -> list[dict[str, Any]]:
        """The output rows not written yet (for the final store's transaction)."""
        rows, self.pending = self.pending, []
        hosts, self.hosts = self.hosts, {}
        return self._rows(rows, hosts)

    async def flush(self) -> bool:
        """Write what arrived; renew the lease; return whether to stop: cancellation was
        asked for, or the task is no longer this worker's (the sweep interrupted it)."""
        rows, self.pending = self.pending, []
        hosts, self.hosts = self.hosts, {}
        try:
            return await self._write(rows, hosts)
        except Exception:
            self.pending[:0] = rows  # written with the next flush, or the final store
            self.hosts = {**hosts, **self.hosts}
            raise

    async def _write(
        self, rows: list[dict[str, Any]], hosts: dict[uuid.UUID, tuple[HostPlan, HostOutcome]]
    ) -> bool:
        now = utcnow()
        renewed = False
        async with self.p.db.session(self.tenant.schema, write=True) as session:
            if rows or hosts:
                await session.execute(_INSERT_OUTPUT, self._rows(rows, hosts))
            if hosts:
                await session.execute(
                    _UPDATE_HOST,
                    [
                        {"row_id": plan.row_id, "status": o.status, "started_at": o.started_at}
                        for plan, o in hosts.values()
                    ],
                    execution_options=EXEMPT,
                )
            lease = self.p.settings.task_lease_seconds
            if time.monotonic() - self._lease_at > lease / 3:
                renewed = True
                await session.execute(
                    update(Task)
                    .where(
                        Task.id == self.task_id,
                        Task.worker_id == self.worker,
                        Task.status == "running",
                    )
                    .values(lease_until=now + timedelta(seconds=lease)),
                    execution_options=EXEMPT,
                )
            state = (
                await session.execute(
                    select(Task.status, Task.worker_id, Task.cancel_requested).where(
                        Task.id == self.task_id
                    )
                )
            ).one()
        if renewed:
            self._lease_at = time.monotonic()
        status, worker, cancel = state
        self.lost = status != "running" or worker != self.worker
        return bool(cancel) or self.lost


# --- helpers --------------------------------------------------------------------------------


async def _refusal(
    session: AsyncSession, task: Task, now: datetime
) -> tuple[str, dict[str, Any]] | None:
    """Why an approved task may not run, if it may not."""
    if payload_hash(task.payload) != task.payload_hash:
        return "the task's payload no longer matches its hash", {"reason": "payload_changed"}
    by = task.authorization.get("by")
    if by == "approval":
        approval = await session.scalar(select(Approval).where(Approval.task_id == task.id))
        if approval is None or approval.status != "approved":
            return "the task has no granted approval", {"reason": "not_approved"}
        if approval.payload_hash != task.payload_hash:
            return (
                "what would run is not what was approved",
                {"reason": "payload_changed", "approved": approval.payload_hash},
            )
    elif by == "standing_order":
        order = await session.get(StandingOrder, task.standing_order_id)
        if order is None or order.status != "active" or order.expires_at <= now:
            return "the standing order is no longer active", {"reason": "order_inactive"}
        if task.authorization.get("version") != order.version:
            return (
                "the standing order changed since it authorized the task",
                {"reason": "order_changed", "version": order.version},
            )
    elif by != "policy":
        return "the task was never authorized", {"reason": "not_authorized"}
    return None


def _targets_changed(
    approved: Sequence[str], now_ids: Sequence[str], servers: Sequence[Server]
) -> tuple[str, dict[str, Any]]:
    names = {str(s.id): s.name for s in servers}
    added = sorted(names.get(i, i) for i in set(now_ids) - set(approved))
    removed = sorted(set(approved) - set(now_ids))
    message = "the targets changed after approval"
    if added:
        message += f"; now also matches {', '.join(added)}"
    if removed:
        message += f"; {len(removed)} approved host(s) no longer match"
    return message, {"reason": "targets_changed", "added": added, "removed": removed}


def _servers_changed(
    approved: Sequence[dict[str, Any]], servers: Sequence[Server]
) -> tuple[str, dict[str, Any]] | None:
    """Approved hosts that are now reached elsewhere or otherwise (address, user, kind…)."""
    now = {str(s.id): (s.name, server_binding(s)) for s in servers}
    changed = sorted(now[a["id"]][0] for a in approved if now[a["id"]][1] != a)
    if not changed:
        return None
    message = f"servers changed after approval (address, user, credential or kind): {changed}"
    return message, {"reason": "servers_changed", "servers": changed}


def _absorb(outcome: HostOutcome, result: RunResult, index: int, total: int) -> None:
    if total > 1:
        header = f"--- step {index + 1} ---\n"
        outcome.stdout += header + result.stdout
        outcome.stderr += (header + result.stderr) if result.stderr else ""
    else:
        outcome.stdout, outcome.stderr = result.stdout, result.stderr
    outcome.exit_status = result.exit_status
    outcome.truncated = outcome.truncated or result.truncated
    if result.host_key_new and result.host_key:
        outcome.host_key = result.host_key


def _step_record(
    index: int, step: dict[str, Any], result: RunResult | None, error: ExecutionError | None
) -> dict[str, Any]:
    return {
        "index": index,
        "name": step.get("name"),
        "exit_status": result.exit_status if result else None,
        "signal": result.signal if result else None,
        "duration": round(result.duration, 4) if result else None,
        "error": error.code if error else None,
    }


def _count(outcomes: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    return counts


async def _store_hosts(
    session: AsyncSession, plan: Plan, outcomes: dict[uuid.UUID, HostOutcome]
) -> None:
    """One executemany for all hosts (the final store is on the task's critical path)."""
    await session.execute(
        _UPDATE_HOST,
        [
            {
                "row_id": host.row_id,
                "status": o.status,
                "exit_status": o.exit_status,
                "error": o.error,
                "steps": o.steps,
                "stdout": o.stdout,
                "stderr": o.stderr,
                "truncated": o.truncated,
                "started_at": o.started_at,
                "finished_at": o.finished_at,
                "duration": o.duration,
            }
            for host in plan.hosts
            for o in (outcomes[host.server_id],)
        ],
    )


async def _pin_new_keys(
    audit: TenantRecorder, plan: Plan, outcomes: dict[uuid.UUID, HostOutcome]
) -> None:
    """Pin the keys hosts presented on first use. Their rows are locked together before the
    first pin is audited: row locks before the audit chain's lock, as everywhere."""
    keys = {h.server_id: k for h in plan.hosts if (k := outcomes[h.server_id].host_key)}
    if not keys:
        return
    locked = await audit.session.scalars(
        select(Server)
        .where(Server.id.in_(keys))
        .order_by(Server.name)  # the order every multi-server lock takes
        .with_for_update()
        .options(defer(Server.facts, raiseload=True))
        .execution_options(populate_existing=True)
    )
    servers = {server.id: server for server in locked}
    for host in plan.hosts:
        server = servers.get(host.server_id)
        if server is not None and host.server_id in keys and server.host_key is None:
            await pin_host_key(audit, server, keys[host.server_id], source="first use")


async def _order_outcome(
    audit: TenantRecorder, task_id: uuid.UUID, order: StandingOrder, status: str
) -> None:
    """Count consecutive failures of a standing order's runs (``order`` is locked); pause
    it at its limit."""
    if status == "succeeded":
        order.consecutive_failures = 0
    else:
        order.consecutive_failures += 1
    paused = order.status == "active" and order.consecutive_failures >= order.pause_after_failures
    if paused:
        order.status = "paused"
        order.status_reason = f"paused after {order.consecutive_failures} consecutive failed runs"
    await audit.session.flush()
    await audit.record(
        "order.run",
        "standing_order",
        order.id,
        {
            "task_id": str(task_id),
            "status": status,
            "consecutive_failures": order.consecutive_failures,
            **({"paused": order.status_reason} if paused else {}),
        },
    )


def _finished(tenant: TenantRef, task_id: uuid.UUID, status: str) -> dict[str, Any]:
    return {"tenant": tenant.slug, "task_id": str(task_id), "status": status}


# --- crash safety ---------------------------------------------------------------------------


async def sweep(p: Platform, tenant: TenantRef, now: datetime, ctx: AuditContext) -> int:
    """Running tasks whose lease lapsed become ``interrupted``; never re-run."""
    interrupted = 0
    async with p.db.session(tenant.schema, write=True) as session:
        stale = (
            await session.scalars(
                select(Task)
                .where(Task.status == "running", Task.lease_until < now)
                .with_for_update(skip_locked=True)
            )
        ).all()
        audit = TenantRecorder(p, session, tenant.pair, ctx)
        for task in stale:
            hosts = (
                await session.scalars(select(TaskHost).where(TaskHost.task_id == task.id))
            ).all()
            finished = sorted(h.server_name for h in hosts if h.status in DONE_HOST)
            unfinished = sorted(h.server_name for h in hosts if h.status not in DONE_HOST)
            for h in hosts:
                if h.status not in DONE_HOST:
                    h.status = "interrupted"
            task.status, task.finished_at, task.lease_until = "interrupted", now, None
            task.counts = _count(hosts)
            task.message = (
                f"the worker {task.worker_id} stopped; finished: {len(finished)}, "
                f"not finished: {len(unfinished)} (not re-run: use retry)"
            )
            await session.flush()
            await audit.record(
                "task.interrupted",
                "task",
                task.id,
                {"worker": task.worker_id, "finished": finished, "unfinished": unfinished},
            )
            session.add(
                TaskOutput(
                    task_id=task.id,
                    kind="status",
                    data={"status": "interrupted", "counts": task.counts, "message": task.message},
                    at=now,
                )
            )
            interrupted += 1
    return interrupted


async def requeue(p: Platform, tenant: TenantRef, now: datetime, older_than: float = 5.0) -> int:
    """Approved tasks nobody claimed (a lost message, a restart) are offered again."""
    cutoff = now - timedelta(seconds=older_than)
    async with p.db.session(tenant.schema) as session:
        ids = (
            await session.scalars(
                select(Task.id).where(Task.status == "approved", Task.approved_at < cutoff)
            )
        ).all()
    for task_id in ids:
        await p.bus.publish(TASK_READY, {"tenant": tenant.slug, "task_id": str(task_id)})
    return len(ids)
