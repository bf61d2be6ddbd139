"""Standing orders: approval by another person, unattended runs inside the scope, approval
requests outside it, rate limit, missed runs after downtime, auto-pause, event triggers."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from it0.audit import Actor, AuditContext
from it0.auth.tokens import find_tenant
from it0.core.clock import utcnow
from it0.inventory.service import TenantRecorder
from it0.ops.models import StandingOrder
from it0.ops.scheduler import Scheduler
from tests.auth.helpers import audit_events, code_of, member_headers
from tests.execution.conftest import StartHosts
from tests.ops.conftest import ORDERS, TASKS, Ops, hold_results, until_a_lock_waits


def order_body(workdir: Path, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "make-dirs",
        "description": "create work directories",
        "trigger": {"type": "cron", "cron": "0 * * * *", "timezone": "Europe/Berlin"},
        "scope": {
            "targets": "role=web",
            "commands": [
                {
                    "template": f"mkdir -p {workdir}/{{name}}",
                    "params": {"name": {"type": "enum", "values": ["a", "b"]}},
                }
            ],
            "max_risk": "low",
        },
        "action": {"command": 0, "params": {"name": "a"}},
        "rate_limit": {"max_runs": 5, "window_seconds": 3600},
        "expires_at": (utcnow() + timedelta(days=30)).isoformat(),
        "missed_runs": "skip",
        "pause_after_failures": 2,
    }
    body.update(overrides)
    return body


async def active_order(ops: Ops, body: dict[str, Any]) -> dict[str, Any]:
    created = await ops.client.post(ORDERS, json=body, headers=ops.alice)
    assert created.status_code == 201, created.text
    assert created.json()["status"] == "pending_approval"
    approved = await ops.client.post(
        f"{ORDERS}/{created.json()['number']}/approve",
        json={"version": created.json()["version"]},
        headers=ops.admin,
    )
    assert approved.status_code == 200, approved.text
    order: dict[str, Any] = approved.json()
    assert order["status"] == "active"
    return order


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


async def test_owner_cannot_approve_and_operators_cannot_either(ops: Ops, tmp_path: Path) -> None:
    created = await ops.client.post(ORDERS, json=order_body(tmp_path), headers=ops.alice)
    number = created.json()["number"]
    own = await ops.client.post(
        f"{ORDERS}/{number}/approve", json={"version": 1}, headers=ops.alice
    )
    assert own.status_code == 403  # operators lack standing_orders:approve
    by_owner_admin = await ops.client.post(
        ORDERS, json=order_body(tmp_path, name="x2"), headers=ops.admin
    )
    refused = await ops.client.post(
        f"{ORDERS}/{by_owner_admin.json()['number']}/approve",
        json={"version": 1},
        headers=ops.admin,
    )
    assert refused.status_code == 403
    assert code_of(refused) == "four_eyes"


async def test_invalid_orders_are_clear_422(ops: Ops, tmp_path: Path) -> None:
    cases: list[dict[str, Any]] = [
        {"trigger": {"type": "cron", "cron": "not a cron"}},
        {"trigger": {"type": "cron", "cron": "0 0 31 2 *"}},  # never fires
        {"trigger": {"type": "cron", "cron": "0 * * * *", "timezone": "Mars/Olympus"}},
        {"expires_at": (utcnow() - timedelta(days=1)).isoformat()},
        {"action": {"command": 0, "params": {"name": "c"}}},  # not one of the enum values
        {"action": {"command": 3, "params": {}}},
        {
            "scope": {
                "targets": "role=web",
                "commands": [{"template": "rm {path}", "params": {}}],
            }
        },
    ]
    for overrides in cases:
        response = await ops.client.post(
            ORDERS, json=order_body(tmp_path, **overrides), headers=ops.alice
        )
        assert response.status_code == 422, (overrides, response.text)


async def test_cron_tick_runs_in_scope_without_a_person(
    ops: Ops, sshd_hosts: StartHosts, tmp_path: Path
) -> None:
    await ops.add_hosts(sshd_hosts, 2, labels={"role": "web"})
    order = await active_order(ops, order_body(tmp_path))
    assert order["approved_by"] == "admin"
    due = at(order["next_run_at"])
    assert due.minute == 0
    scheduler = Scheduler(ops.platform)
    assert (await scheduler.tick(due - timedelta(seconds=1))).fired == 0
    report = await scheduler.tick(due + timedelta(seconds=2))
    assert report.fired == 1
    tasks = (await ops.client.get(TASKS, headers=ops.admin)).json()["items"]
    assert len(tasks) == 1
    task = await ops.wait(tasks[0]["id"])
    assert task["status"] == "succeeded", task
    assert task["source"] == "standing_order"
    assert task["authorization"]["by"] == "standing_order"
    assert task["authorization"]["approved_by"] == "admin"
    assert (tmp_path / "a").is_dir()
    created = next(
        e
        for e in await audit_events(ops.client, ops.admin, "task.created")
        if e["resource_id"] == task["id"]
    )
    assert "standing order #1" in created["summary"]["authorized_by"]
    assert "approved by admin" in created["summary"]["authorized_by"]
    # the same tick again (another scheduler, or a retry) fires nothing
    assert (await scheduler.tick(due + timedelta(seconds=3))).fired == 0
    after = (await ops.client.get(f"{ORDERS}/1", headers=ops.admin)).json()
    assert at(after["next_run_at"]) == due + timedelta(hours=1)


async def test_requests_inside_the_scope_run_unattended_outside_wait(
    ops: Ops, sshd_hosts: StartHosts, tmp_path: Path
) -> None:
    await ops.add_hosts(sshd_hosts, 2, labels={"role": "web"})
    await ops.add_hosts(sshd_hosts, 1, prefix="db", labels={"role": "db"})
    await active_order(ops, order_body(tmp_path, trigger=None, action=None))
    inside = await ops.submit(targets="role=web", command=f"mkdir -p {tmp_path}/b", reason="r")
    assert inside["status"] == "running"  # claimed by this process's worker as it was created
    assert inside["authorization"]["by"] == "standing_order"
    assert (await ops.wait(inside["id"]))["status"] == "succeeded"
    other_host = await ops.submit(targets="db-1", command=f"mkdir -p {tmp_path}/b", reason="r")
    assert other_host["status"] == "pending_approval"
    assert "outside its targets" in other_host["authorization"]["not_covered"]
    other_value = await ops.submit(targets="web-1", command=f"mkdir -p {tmp_path}/c", reason="r")
    assert other_value["status"] == "pending_approval"
    injected = await ops.submit(
        targets="web-1", command=f"mkdir -p {tmp_path}/a; reboot", reason="r"
    )
    assert injected["status"] == "pending_approval"
    other_command = await ops.submit(targets="web-1", command="systemctl restart nginx", reason="r")
    assert other_command["status"] == "pending_approval"


async def test_higher_risk_than_the_scope_allows_waits(
    ops: Ops, sshd_hosts: StartHosts, tmp_path: Path
) -> None:
    await ops.add_hosts(sshd_hosts, 1, labels={"role": "web"})
    scope = {
        "targets": "role=web",
        "commands": [
            {
                "template": "systemctl restart {unit}",
                "params": {"unit": {"type": "enum", "values": ["nginx"]}},
            }
        ],
        "max_risk": "low",
    }
    await active_order(ops, order_body(tmp_path, trigger=None, action=None, scope=scope))
    task = await ops.submit(targets="web-1", command="systemctl restart nginx", reason="r")
    assert task["status"] == "pending_approval"
    assert "above its low" in task["authorization"]["not_covered"]


async def test_rate_limit_turns_extra_runs_into_approvals(
    ops: Ops, sshd_hosts: StartHosts, tmp_path: Path
) -> None:
    await ops.add_hosts(sshd_hosts, 1, labels={"role": "web"})
    await active_order(
        ops,
        order_body(
            tmp_path, trigger=None, action=None, rate_limit={"max_runs": 2, "window_seconds": 600}
        ),
    )
    statuses = []
    for _ in range(3):
        task = await ops.submit(targets="web-1", command=f"mkdir -p {tmp_path}/a", reason="r")
        statuses.append(task["status"])
    assert statuses == ["running", "running", "pending_approval"]
    assert "rate limit" in task["authorization"]["not_covered"]


async def test_a_run_finishing_while_a_request_holds_its_order_does_not_deadlock(
    ops: Ops, sshd_hosts: StartHosts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request counting an order's runs locks the order, then writes audit; a run of that
    order finishing at the same moment must lock in the same order (the other way round,
    PostgreSQL found the two waiting on each other)."""
    await ops.add_hosts(sshd_hosts, 1, labels={"role": "web"})
    order = await active_order(ops, order_body(tmp_path, trigger=None, action=None))
    p = ops.platform
    gate = hold_results(p, monkeypatch)
    task = await ops.submit(targets="web-1", command=f"mkdir -p {tmp_path}/a", reason="r")
    assert task["status"] == "running"
    async with p.db.session() as session:
        tenant = await find_tenant(session, "default")
    async with p.db.session(tenant.schema, write=True) as session:
        await session.get(StandingOrder, uuid.UUID(order["id"]), with_for_update=True)
        gate.set()  # the run ends and stores its result meanwhile
        await until_a_lock_waits(p)
        audit = TenantRecorder(p, session, tenant.pair, AuditContext(Actor.system("test")))
        await audit.record("order.inspected", "standing_order", order["id"], {})
    done = await ops.wait(task["id"])
    assert done["status"] == "succeeded", done
    runs = await audit_events(ops.client, ops.admin, "order.run")
    assert [r["summary"]["task_id"] for r in runs] == [task["id"]]


async def test_missed_ticks_after_downtime_skip(
    ops: Ops, sshd_hosts: StartHosts, tmp_path: Path
) -> None:
    await ops.add_hosts(sshd_hosts, 1, labels={"role": "web"})
    order = await active_order(ops, order_body(tmp_path))
    due = at(order["next_run_at"])
    report = await Scheduler(ops.platform).tick(due + timedelta(hours=5, minutes=10))
    assert (report.fired, report.skipped) == (0, 1)
    assert (await ops.client.get(TASKS, headers=ops.admin)).json()["items"] == []
    missed = await audit_events(ops.client, ops.admin, "order.missed")
    assert missed[0]["summary"]["missed"] == 6
    assert missed[0]["summary"]["policy"] == "skip"
    after = (await ops.client.get(f"{ORDERS}/1", headers=ops.admin)).json()
    assert at(after["next_run_at"]) == due + timedelta(hours=6)


async def test_missed_ticks_after_downtime_run_once(
    ops: Ops, sshd_hosts: StartHosts, tmp_path: Path
) -> None:
    await ops.add_hosts(sshd_hosts, 1, labels={"role": "web"})
    order = await active_order(ops, order_body(tmp_path, missed_runs="run_once"))
    due = at(order["next_run_at"])
    scheduler = Scheduler(ops.platform)
    report = await scheduler.tick(due + timedelta(hours=5, minutes=10))
    assert (report.fired, report.skipped) == (1, 0)  # once, never a flood
    assert (await scheduler.tick(due + timedelta(hours=5, minutes=11))).fired == 0
    tasks = (await ops.client.get(TASKS, headers=ops.admin)).json()["items"]
    assert len(tasks) == 1
    assert "after 6 missed" in tasks[0]["reason"]


async def test_order_pauses_after_consecutive_failures_and_resume_needs_approval(
    ops: Ops, sshd_hosts: StartHosts, tmp_path: Path
) -> None:
    await ops.add_hosts(sshd_hosts, 1, labels={"role": "web"})
    blocker = tmp_path / "blocked"
    blocker.write_text("a file where a directory should go")
    scope = {
        "targets": "role=web",
        "commands": [
            {
                "template": f"mkdir {blocker}/{{name}}",
                "params": {"name": {"type": "enum", "values": ["x"]}},
            }
        ],
        "max_risk": "low",
    }
    order = await active_order(
        ops, order_body(tmp_path, scope=scope, action={"command": 0, "params": {"name": "x"}})
    )
    due = at(order["next_run_at"])
    scheduler = Scheduler(ops.platform)
    for hour in range(2):
        assert (await scheduler.tick(due + timedelta(hours=hour, seconds=1))).fired == 1
        tasks = (await ops.client.get(TASKS, headers=ops.admin)).json()["items"]
        assert (await ops.wait(tasks[0]["id"]))["status"] == "failed"
    paused = (await ops.client.get(f"{ORDERS}/1", headers=ops.admin)).json()
    assert paused["status"] == "paused"
    assert "2 consecutive failed runs" in paused["status_reason"]
    assert (await scheduler.tick(due + timedelta(hours=2, seconds=1))).fired == 0
    resumed = await ops.client.post(f"{ORDERS}/1/resume", headers=ops.alice)
    assert resumed.json()["status"] == "pending_approval"
    approved = await ops.client.post(f"{ORDERS}/1/approve", json={"version": 1}, headers=ops.admin)
    assert approved.json()["status"] == "active"


async def test_a_change_needs_approval_again(ops: Ops, tmp_path: Path) -> None:
    await active_order(ops, order_body(tmp_path))
    changed = await ops.client.patch(
        f"{ORDERS}/make-dirs",
        json={"rate_limit": {"max_runs": 100, "window_seconds": 60}},
        headers=ops.alice,
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["status"] == "pending_approval"
    assert changed.json()["version"] == 2
    assert changed.json()["next_run_at"] is None
    events = [e["action"] for e in await audit_events(ops.client, ops.admin)]
    assert events.count("order.approved") == 1
    assert "order.changed" in events


async def test_event_trigger_fires_on_matching_alerts(
    ops: Ops, sshd_hosts: StartHosts, tmp_path: Path
) -> None:
    await ops.add_hosts(sshd_hosts, 1, labels={"role": "web"})
    body = order_body(
        tmp_path,
        trigger={"type": "event", "topic": "alert.fired", "labels": {"alertname": "DirMissing"}},
        action={"command": 0, "params": {"name": "$labels.dir"}},
    )
    await active_order(ops, body)
    scheduler = Scheduler(ops.platform)
    from it0.core.bus import Message

    def alert(labels: dict[str, str]) -> Message:
        return Message(
            id="1-0",
            topic="alert.fired",
            payload={"tenant": "default", "labels": labels},
            attempts=1,
        )

    await scheduler.on_event(alert({"alertname": "Other", "dir": "a"}))
    await scheduler.on_event(alert({"alertname": "DirMissing", "dir": "b"}))
    await scheduler.on_event(alert({"alertname": "DirMissing", "dir": "b; reboot"}))
    tasks = (await ops.client.get(TASKS, headers=ops.admin)).json()["items"]
    assert len(tasks) == 1
    assert (await ops.wait(tasks[0]["id"]))["status"] == "succeeded"
    assert (tmp_path / "b").is_dir()
    failed = await audit_events(ops.client, ops.admin, "order.run_failed")
    assert len(failed) == 1


async def test_an_alert_firing_while_a_request_holds_one_of_its_orders_does_not_deadlock(
    ops: Ops, sshd_hosts: StartHosts, tmp_path: Path
) -> None:
    """Every order an event fires is locked before the first audit event, as a request
    locks the order it counts against before its own (PostgreSQL would find the two
    waiting on each other otherwise)."""
    await ops.add_hosts(sshd_hosts, 1, labels={"role": "web"})
    trigger = {"type": "event", "topic": "alert.fired", "labels": {"alertname": "DirMissing"}}
    action = {"command": 0, "params": {"name": "a"}}
    await active_order(ops, order_body(tmp_path, name="first", trigger=trigger, action=action))
    second = await active_order(
        ops, order_body(tmp_path, name="second", trigger=trigger, action=action)
    )
    p = ops.platform
    from it0.core.bus import Message

    alert = Message(
        id="1-0",
        topic="alert.fired",
        payload={"tenant": "default", "labels": {"alertname": "DirMissing"}},
        attempts=1,
    )
    async with p.db.session() as session:
        tenant = await find_tenant(session, "default")
    async with p.db.session(tenant.schema, write=True) as session:
        await session.get(StandingOrder, uuid.UUID(second["id"]), with_for_update=True)
        firing = asyncio.create_task(Scheduler(p).on_event(alert))
        await until_a_lock_waits(p)
        audit = TenantRecorder(p, session, tenant.pair, AuditContext(Actor.system("test")))
        await audit.record("order.inspected", "standing_order", second["id"], {})
    await firing
    tasks = (await ops.client.get(TASKS, headers=ops.admin)).json()["items"]
    assert len(tasks) == 2
    for task in tasks:
        assert (await ops.wait(task["id"]))["status"] == "succeeded"


async def test_an_editor_cannot_approve_their_own_version(ops: Ops, tmp_path: Path) -> None:
    await active_order(ops, order_body(tmp_path))
    carol = await member_headers(ops.client, ops.admin, "carol", role="admin")
    widened = {
        "scope": {
            "targets": "role=web",
            "commands": [{"template": "reboot", "params": {}}],
            "max_risk": "critical",
        },
        "action": None,
        "trigger": None,
    }
    changed = await ops.client.patch(f"{ORDERS}/1", json=widened, headers=carol)
    assert changed.status_code == 200, changed.text
    assert changed.json()["version"] == 2
    own = await ops.client.post(f"{ORDERS}/1/approve", json={"version": 2}, headers=carol)
    assert own.status_code == 403
    assert code_of(own) == "four_eyes"
    stale = await ops.client.post(f"{ORDERS}/1/approve", json={"version": 1}, headers=ops.admin)
    assert stale.status_code == 409
    assert stale.json()["error"]["details"]["version"] == 2
    fresh = await ops.client.post(f"{ORDERS}/1/approve", json={"version": 2}, headers=ops.admin)
    assert fresh.json()["status"] == "active"


async def test_sudo_runs_only_when_the_scope_allows_it(
    ops: Ops, sshd_hosts: StartHosts, tmp_path: Path
) -> None:
    await ops.add_hosts(sshd_hosts, 1, labels={"role": "web"})
    await active_order(ops, order_body(tmp_path, trigger=None, action=None))
    as_root = await ops.submit(
        targets="web-1", command=f"mkdir -p {tmp_path}/a", reason="r", sudo=True
    )
    assert as_root["status"] == "pending_approval"
    assert "does not allow sudo" in as_root["authorization"]["not_covered"]


async def test_the_rate_limit_holds_under_concurrent_requests(
    ops: Ops, sshd_hosts: StartHosts, tmp_path: Path
) -> None:
    await ops.add_hosts(sshd_hosts, 1, labels={"role": "web"})
    await active_order(
        ops,
        order_body(
            tmp_path, trigger=None, action=None, rate_limit={"max_runs": 1, "window_seconds": 600}
        ),
    )
    command = f"mkdir -p {tmp_path}/a"
    results = await asyncio.gather(
        *(ops.submit(targets="web-1", command=command, reason="r") for _ in range(5))
    )
    assert sorted(r["status"] for r in results) == ["pending_approval"] * 4 + ["running"]


async def test_an_out_of_scope_run_does_not_pile_up(
    ops: Ops, sshd_hosts: StartHosts, tmp_path: Path
) -> None:
    await ops.add_hosts(sshd_hosts, 1, labels={"role": "web"})
    scope = {
        "targets": "role=web",
        "commands": [{"template": "systemctl restart nginx", "params": {}}],
        "max_risk": "low",  # the action itself is high: every run needs a person
    }
    order = await active_order(
        ops, order_body(tmp_path, scope=scope, trigger={"type": "cron", "cron": "* * * * *"})
    )
    due = at(order["next_run_at"])
    scheduler = Scheduler(ops.platform)
    assert (await scheduler.tick(due + timedelta(seconds=1))).fired == 1
    report = await scheduler.tick(due + timedelta(minutes=1, seconds=1))
    assert report.fired == 0
    tasks = (await ops.client.get(TASKS, headers=ops.admin)).json()["items"]
    assert [t["status"] for t in tasks] == ["pending_approval"]
    failed = await audit_events(ops.client, ops.admin, "order.run_failed")
    assert failed[0]["summary"]["error"] == "run_waiting"


async def test_bad_order_input_is_4xx(ops: Ops, tmp_path: Path) -> None:
    await active_order(ops, order_body(tmp_path))
    for field in ("expires_at", "scope", "rate_limit", "description", "missed_runs"):
        response = await ops.client.patch(f"{ORDERS}/1", json={field: None}, headers=ops.alice)
        assert response.status_code == 422, (field, response.text)
    for ref in ("%C2%B2", "99999999999999999999", "1" * 128):
        assert (await ops.client.get(f"{ORDERS}/{ref}", headers=ops.alice)).status_code == 404
    for cron in ("0 0 1 1 * 0 2027", "* * * *"):
        body = order_body(tmp_path, name="x", trigger={"type": "cron", "cron": cron})
        response = await ops.client.post(ORDERS, json=body, headers=ops.alice)
        assert response.status_code == 422, (cron, response.text)
    adjacent = order_body(
        tmp_path,
        name="y",
        action=None,
        trigger=None,
        scope={
            "targets": "role=web",
            "commands": [
                {"template": "echo {a}{b}", "params": {"a": {}, "b": {}}},
            ],
        },
    )
    response = await ops.client.post(ORDERS, json=adjacent, headers=ops.alice)
    assert response.status_code == 422
    nested = order_body(
        tmp_path,
        name="z",
        action=None,
        trigger=None,
        scope={
            "targets": "role=web",
            "commands": [{"template": "echo {a}", "params": {"a": {"pattern": "(a+)+"}}}],
        },
    )
    assert (await ops.client.post(ORDERS, json=nested, headers=ops.alice)).status_code == 422


def test_a_fall_back_night_does_not_tick_twice() -> None:
    from it0.ops.orders import next_cron

    trigger = {"cron": "30 2 * * *", "timezone": "Europe/Berlin"}
    first = next_cron(trigger, datetime(2026, 10, 24, 23, 0, tzinfo=UTC))
    assert first == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)  # 02:30 CEST
    second = next_cron(trigger, first + timedelta(seconds=5), previous=first)
    assert second == datetime(2026, 10, 26, 1, 30, tzinfo=UTC)  # not 02:30 CET the same night
