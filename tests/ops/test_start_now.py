"""A task authorized as it is created (read-only, or inside a standing order) is claimed by
the creating process's worker in the creating transaction: no second transaction, no trip
through the queue, and nothing runs unless that transaction commits."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

import pytest

from it0.audit import Actor, AuditContext
from it0.auth.tokens import TenantRef, find_tenant
from it0.core.bus import Message
from it0.core.clock import utcnow
from it0.inventory.models import Server
from it0.inventory.service import TenantRecorder
from it0.ops.models import Task
from it0.ops.runner import TaskRunner, sweep
from it0.ops.schemas import TaskCreate
from it0.ops.tasks import TASK_READY, Requester, submit
from it0.platform import Platform
from tests.auth.helpers import audit_events, me
from tests.execution.conftest import StartHosts
from tests.inventory.reaching import host_key
from tests.ops.conftest import Ops, hold_results, until_a_lock_waits


def queued(platform: Platform) -> list[str]:
    """Ids of the tasks offered to the workers' queue from now on."""
    seen: list[str] = []

    async def spy(message: Message) -> None:
        seen.append(str(message.payload["task_id"]))

    platform.bus.subscribe(TASK_READY, "spy", spy)
    return seen


async def trail(ops: Ops, task_id: str) -> list[tuple[str, str]]:
    """(action, actor type) of the task's audit events, oldest first."""
    events = [e for e in await audit_events(ops.client, ops.admin) if e["resource_id"] == task_id]
    return [(e["action"], e["actor_type"]) for e in sorted(events, key=lambda e: e["seq"])]


async def test_read_only_task_is_running_when_the_request_returns(
    ops: Ops, sshd_hosts: StartHosts
) -> None:
    offered = queued(ops.platform)
    await ops.add_hosts(sshd_hosts, 2)
    task = await ops.submit(targets="web-1,web-2", command="echo hi")
    assert task["status"] == "running"
    # the host rows came with the task: whoever reads it sees what runs where
    detail = await ops.task(task["id"])
    assert [h["name"] for h in detail["hosts"]] == ["web-1", "web-2"]
    done = await ops.wait(task["id"])
    assert done["status"] == "succeeded", done
    assert [h["stdout"] for h in done["hosts"]] == ["hi\n", "hi\n"]
    assert offered == []  # never went through the queue
    assert await trail(ops, task["id"]) == [
        ("task.created", "user"),
        ("task.started", "system"),  # the worker's claim, as on the queued path
        ("task.finished", "system"),
    ]


async def test_without_a_worker_here_the_task_is_queued(
    ops: Ops, worker: TaskRunner, sshd_hosts: StartHosts
) -> None:
    await ops.add_hosts(sshd_hosts, 1)
    await worker.close()  # e.g. an api-only process
    assert ops.platform.task_starter is None
    offered = queued(ops.platform)
    task = await ops.submit(targets="web-1", command="uptime")
    assert task["status"] == "approved"
    assert offered == [task["id"]]
    # a worker elsewhere takes it from the queue
    other = TaskRunner(ops.platform, worker_id="other")
    other.subscribe()
    try:
        assert await other.run(await tenant_of(ops.platform), uuid.UUID(task["id"]))
        done = await ops.wait(task["id"])
        assert done["status"] == "succeeded"
    finally:
        await other.close()


async def tenant_of(platform: Platform) -> TenantRef:
    async with platform.db.session() as session:
        return await find_tenant(session, "default")


@asynccontextmanager
async def submitted(ops: Ops) -> AsyncIterator[Task]:
    """Alice's read-only task on web-1, submitted in a transaction still open in the block."""
    tenant = await tenant_of(ops.platform)
    alice = await me(ops.client, ops.alice)
    actor = Actor("user", alice["user_id"], "alice")
    requester = Requester(uuid.UUID(alice["user_id"]), "alice", actor, "user")
    async with ops.platform.db.session(tenant.schema, write=True) as session:
        audit = TenantRecorder(ops.platform, session, tenant.pair, AuditContext(actor))
        body = TaskCreate(targets="web-1", command="uptime")
        task, _ = await submit(audit, requester, body, settings_expiry=60)
        yield task


async def test_a_rolled_back_submission_runs_nothing(
    ops: Ops, worker: TaskRunner, sshd_hosts: StartHosts
) -> None:
    await ops.add_hosts(sshd_hosts, 1)
    seen: dict[str, str] = {}

    async def submit_then_fail() -> None:
        async with submitted(ops) as task:
            seen.update(id=str(task.id), status=task.status)
            raise RuntimeError("the request fails after the submit")

    with pytest.raises(RuntimeError):
        await submit_then_fail()
    task_id, status = seen["id"], seen["status"]
    assert status == "running"  # claimed inside the transaction that then rolled back
    assert not worker.running
    response = await ops.client.get(f"/api/v1/tasks/{task_id}", headers=ops.admin)
    assert response.status_code == 404
    assert await trail(ops, task_id) == []


async def test_a_worker_stopping_before_the_commit_gives_the_task_back(
    ops: Ops, worker: TaskRunner, sshd_hosts: StartHosts
) -> None:
    await ops.add_hosts(sshd_hosts, 1)
    async with submitted(ops) as task:
        worker.closed = True  # the process begins to stop while the request commits
    released = await ops.wait(str(task.id), {"approved"}, limit=10)
    assert released["hosts"] == []
    assert [a for a, _ in await trail(ops, str(task.id))] == [
        "task.created",
        "task.started",
        "task.released",
    ]


async def test_a_worker_that_lost_its_task_keeps_the_sweeps_verdict(
    ops: Ops, sshd_hosts: StartHosts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lease lapsed while the host ran (the sweep declared it interrupted): the worker's
    late result is stored and audited, but the verdict stays the sweep's."""
    await ops.add_hosts(sshd_hosts, 1)
    p = ops.platform
    hold_results(p, monkeypatch)  # never released: the result waits until the worker gives up
    task = await ops.submit(targets="web-1", command="echo late")
    assert task["status"] == "running"
    later = utcnow() + timedelta(hours=1)
    scheduler = AuditContext(Actor.system("scheduler"))
    assert await sweep(p, await tenant_of(p), later, scheduler) == 1
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while not (late := await audit_events(ops.client, ops.admin, "task.finished_late")):
        assert loop.time() < deadline, "the worker never noticed it lost the task"
        await asyncio.sleep(0.05)
    assert late[0]["resource_id"] == task["id"]
    assert late[0]["summary"]["status"] == "interrupted"
    assert (await ops.task(task["id"]))["status"] == "interrupted"
    assert [a for a, _ in await trail(ops, task["id"])] == [
        "task.created",
        "task.started",
        "task.interrupted",
        "task.finished_late",
    ]


async def test_first_use_pins_lock_their_servers_before_any_audit(
    ops: Ops, sshd_hosts: StartHosts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task's first run pins each new host's key in its final store; a request holding
    one of those servers while it writes audit must not deadlock with it (the pins used to
    lock each server only when they reached it, after the first pin's audit event)."""
    added = await ops.add_hosts(sshd_hosts, 2, labels={"role": "pinned"})
    p = ops.platform
    gate = hold_results(p, monkeypatch)
    task = await ops.submit(targets="role=pinned", command="uptime")
    assert task["status"] == "running"
    tenant = await tenant_of(p)
    async with p.db.session(tenant.schema, write=True) as session:
        await session.get(Server, uuid.UUID(added[1]["id"]), with_for_update=True)
        gate.set()  # the run ends and stores its result meanwhile
        await until_a_lock_waits(p)
        audit = TenantRecorder(p, session, tenant.pair, AuditContext(Actor.system("test")))
        await audit.record("server.inspected", "server", added[1]["id"], {})
    done = await ops.wait(task["id"])
    assert done["status"] == "succeeded", done
    pins = await audit_events(ops.client, ops.admin, "server.hostkey.pinned")
    assert sorted(e["summary"]["name"] for e in pins) == ["web-1", "web-2"]
    for server in added:
        key = await host_key(ops.client, ops.admin, server["id"])
        assert key["host_key"] is not None
