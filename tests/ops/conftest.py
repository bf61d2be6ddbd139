"""Fixtures of the oversight tests: real sshd hosts in the inventory, a running worker,
and people to request and approve."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from it0.ops.runner import TaskRunner
from it0.platform import Platform
from tests.auth.helpers import API, member_headers
from tests.execution.conftest import StartHosts, client_keys, fleet, sshd, sshd_hosts
from tests.inventory.reaching import add_key_credential, add_server
from tests.sshd import ClientKeys

__all__ = ["client_keys", "fleet", "sshd", "sshd_hosts"]

TASKS = f"{API}/tasks"
APPROVALS = f"{API}/approvals"
ORDERS = f"{API}/standing-orders"
FINAL = {"succeeded", "failed", "cancelled", "rejected", "expired", "interrupted"}


@dataclass
class Ops:
    """A tenant with servers on real sshd hosts and three people: admin, alice, bob."""

    client: httpx.AsyncClient
    platform: Platform
    admin: dict[str, str]
    alice: dict[str, str]
    bob: dict[str, str]
    credential: str
    servers: list[dict[str, Any]] = field(default_factory=list)

    async def add_hosts(
        self, hosts: StartHosts, count: int, prefix: str = "web", **fields: Any
    ) -> list[dict[str, Any]]:
        added = []
        for i, host in enumerate(hosts(count), start=1):
            added.append(
                await add_server(
                    self.client, self.admin, f"{prefix}-{i}", host, self.credential, **fields
                )
            )
        self.servers.extend(added)
        return added

    async def submit(
        self, headers: dict[str, str] | None = None, expect: int = 201, **body: Any
    ) -> dict[str, Any]:
        response = await self.client.post(TASKS, json=body, headers=headers or self.alice)
        assert response.status_code == expect, response.text
        result: dict[str, Any] = response.json()
        return result

    async def task(self, task_id: str) -> dict[str, Any]:
        response = await self.client.get(f"{TASKS}/{task_id}", headers=self.admin)
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    async def wait(self, task_id: str, statuses: set[str] = FINAL, limit: float = 30) -> Any:
        """Poll until the task reaches one of ``statuses`` (the worker runs in the background)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        while True:
            task = await self.task(task_id)
            if task["status"] in statuses:
                return task
            assert loop.time() < deadline, f"task still {task['status']}: {task}"
            await asyncio.sleep(0.05)

    async def vote(
        self, approval_id: str, headers: dict[str, str], decision: str = "approve", **body: Any
    ) -> httpx.Response:
        return await self.client.post(
            f"{APPROVALS}/{approval_id}/{decision}", json=body or None, headers=headers
        )


def hold_results(platform: Platform, monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """Commands still run on the hosts, but each result reaches the worker only once the
    returned event is set."""
    gate = asyncio.Event()
    run_on = platform.executor.run_on

    async def held(*args: Any, **kwargs: Any) -> Any:
        result = await run_on(*args, **kwargs)
        await gate.wait()
        return result

    monkeypatch.setattr(platform.executor, "run_on", held)
    return gate


async def until_a_lock_waits(p: Platform) -> None:
    """Until some transaction waits for a lock (PostgreSQL); SQLite's writers queue at
    BEGIN, so there a moment suffices."""
    if p.db.engine.dialect.name != "postgresql":
        await asyncio.sleep(0.3)
        return
    async with p.db.engine.connect() as conn:
        for _ in range(200):
            waiting = await conn.scalar(text("SELECT count(*) FROM pg_locks WHERE NOT granted"))
            if waiting:
                return
            await asyncio.sleep(0.05)
    raise AssertionError("nothing ever waited for the lock held")


@pytest.fixture
async def worker(platform: Platform) -> AsyncIterator[TaskRunner]:
    """A task worker on the platform's bus, as the worker role runs it."""
    runner = TaskRunner(platform)
    runner.subscribe()
    await platform.bus.start()
    yield runner
    await runner.close()


@pytest.fixture
async def ops(
    client: httpx.AsyncClient,
    platform: Platform,
    admin: dict[str, str],
    client_keys: ClientKeys,
    worker: TaskRunner,
) -> Ops:
    alice = await member_headers(client, admin, "alice", role="operator")
    bob = await member_headers(client, admin, "bob", role="operator")
    credential = await add_key_credential(client, admin, client_keys)
    return Ops(client, platform, admin, alice, bob, credential)
