"""The scheduler fires each tick and each expiry exactly once, with several schedulers on
one PostgreSQL, and picks up after a restart."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from it0.auth.bootstrap import bootstrap
from it0.core.clock import utcnow
from it0.ops.scheduler import Scheduler
from it0.platform import Platform
from tests.auth.helpers import API, audit_events, member_headers
from tests.ops.conftest import ORDERS, TASKS


async def _local_server(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    response = await client.post(
        f"{API}/servers",
        json={"name": "local-1", "kind": "local", "address": "127.0.0.1", "labels": {"role": "x"}},
        headers=admin,
    )
    assert response.status_code == 201, response.text


async def _orders(
    client: httpx.AsyncClient, admin: dict[str, str], alice: dict[str, str], count: int, tmp: Path
) -> list[dict[str, Any]]:
    orders = []
    for i in range(count):
        body = {
            "name": f"order-{i}",
            "trigger": {"type": "cron", "cron": "*/5 * * * *"},
            "scope": {
                "targets": "role=x",
                "commands": [{"template": f"mkdir -p {tmp}/o{i}", "params": {}}],
                "max_risk": "low",
            },
            "action": {"command": 0, "params": {}},
            "expires_at": (utcnow() + timedelta(days=1)).isoformat(),
        }
        created = await client.post(ORDERS, json=body, headers=alice)
        assert created.status_code == 201, created.text
        approved = await client.post(
            f"{ORDERS}/{created.json()['number']}/approve", json={"version": 1}, headers=admin
        )
        assert approved.status_code == 200, approved.text
        orders.append(approved.json())
    return orders


async def test_two_schedulers_fire_each_tick_once(
    platform: Platform, client: httpx.AsyncClient, admin: dict[str, str], tmp_path: Path
) -> None:
    await _local_server(client, admin)
    alice = await member_headers(client, admin, "alice", role="operator")
    orders = await _orders(client, admin, alice, 8, tmp_path)
    due = max(datetime.fromisoformat(o["next_run_at"]) for o in orders)
    task = await client.post(
        TASKS, json={"targets": "local-1", "command": "reboot", "reason": "r"}, headers=alice
    )
    assert task.status_code == 201
    other = Platform.create(platform.settings)  # its own engine and connections
    try:
        first, second = Scheduler(platform), Scheduler(other)
        at_tick = await asyncio.gather(
            first.tick(due + timedelta(seconds=1)), second.tick(due + timedelta(seconds=1))
        )
        later = await asyncio.gather(
            first.tick(utcnow() + timedelta(hours=2)), second.tick(utcnow() + timedelta(hours=2))
        )
    finally:
        await other.close()
    assert [r.errors for r in at_tick + later] == [[], [], [], []]
    assert sum(r.fired for r in at_tick) == 8
    items = (await client.get(TASKS, params={"limit": 500}, headers=admin)).json()["items"]
    per_order: dict[str, int] = {}
    for t in items:
        if t["source"] == "standing_order":
            per_order[t["standing_order_id"]] = per_order.get(t["standing_order_id"], 0) + 1
    assert sorted(per_order.values()) == [1] * 8
    # two hours on: the missed ticks are skipped (never a flood), the approval expires once
    assert sum(r.fired for r in later) == 0
    assert sum(r.skipped for r in later) == 8
    assert sum(r.expired for r in later) == 1
    assert len(await audit_events(client, admin, "approval.expired")) == 1
    assert task.json()["status"] == "pending_approval"


async def test_a_restarted_scheduler_applies_the_missed_run_policy(
    platform: Platform, client: httpx.AsyncClient, admin: dict[str, str], tmp_path: Path
) -> None:
    await _local_server(client, admin)
    alice = await member_headers(client, admin, "alice", role="operator")
    orders = await _orders(client, admin, alice, 1, tmp_path)
    due = datetime.fromisoformat(orders[0]["next_run_at"])
    # a new process after a night of downtime: same database, fresh platform
    later = Platform.create(platform.settings)
    try:
        await bootstrap(later)
        report = await Scheduler(later, clock=lambda: due + timedelta(hours=8)).tick()
    finally:
        await later.close()
    assert (report.fired, report.skipped) == (0, 1)
    missed = await audit_events(client, admin, "order.missed")
    assert missed[0]["summary"]["missed"] == 8 * 12 + 1
    order = (await client.get(f"{ORDERS}/1", headers=admin)).json()
    assert datetime.fromisoformat(order["next_run_at"]) > due + timedelta(hours=8)
