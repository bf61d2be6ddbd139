"""Approvals: expiry, signed single-use links, immutable votes, settings, the audit trail."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError

from it0.core.clock import utcnow
from it0.core.db import tenant_schema_name
from it0.ops.scheduler import Scheduler
from tests.audit.helpers import run_cli
from tests.auth.helpers import API, audit_events, code_of
from tests.execution.conftest import StartHosts
from tests.ops.conftest import APPROVALS, Ops

SETTINGS = f"{API}/settings/approvals"


async def test_expiry_ends_a_request_as_expired(ops: Ops, sshd_hosts: StartHosts) -> None:
    await ops.add_hosts(sshd_hosts, 1)
    task = await ops.submit(targets="web-1", command="reboot", reason="r")
    approval = (await ops.client.get(f"{APPROVALS}/{task['approval_id']}", headers=ops.bob)).json()
    scheduler = Scheduler(ops.platform)
    early = await scheduler.tick(utcnow() + timedelta(minutes=59))
    assert early.expired == 0
    report = await scheduler.tick(utcnow() + timedelta(minutes=61))
    assert report.expired == 1
    assert (await ops.task(task["id"]))["status"] == "expired"
    after = (await ops.client.get(f"{APPROVALS}/{approval['id']}", headers=ops.bob)).json()
    assert after["status"] == "expired"
    vote = await ops.vote(approval["id"], ops.bob)
    assert vote.status_code == 409
    assert code_of(vote) == "not_pending"
    # a second scheduler tick does not expire it again
    assert (await scheduler.tick(utcnow() + timedelta(minutes=90))).expired == 0
    events = await audit_events(ops.client, ops.admin, "approval.expired")
    assert len(events) == 1


async def test_expiry_is_configurable(ops: Ops, sshd_hosts: StartHosts) -> None:
    await ops.add_hosts(sshd_hosts, 1)
    response = await ops.client.put(SETTINGS, json={"expiry_minutes": 5}, headers=ops.admin)
    assert response.status_code == 200
    assert response.json()["expiry_minutes"] == 5
    task = await ops.submit(targets="web-1", command="reboot", reason="r")
    report = await Scheduler(ops.platform).tick(utcnow() + timedelta(minutes=6))
    assert report.expired == 1
    assert (await ops.task(task["id"]))["status"] == "expired"


async def test_settings_need_policy_write_and_lowering_is_audited(ops: Ops) -> None:
    denied = await ops.client.put(SETTINGS, json={"required": {"critical": 1}}, headers=ops.alice)
    assert denied.status_code == 403
    bad = await ops.client.put(SETTINGS, json={"required": {"critical": 0}}, headers=ops.admin)
    assert bad.status_code == 422
    ok = await ops.client.put(SETTINGS, json={"required": {"critical": 1}}, headers=ops.admin)
    assert ok.json()["required"]["critical"] == 1
    events = await audit_events(ops.client, ops.admin, "approvals.settings")
    assert events[-1]["summary"]["relaxed"] == ["critical"]


async def test_signed_link_votes_once_as_its_approver(ops: Ops, sshd_hosts: StartHosts) -> None:
    await ops.add_hosts(sshd_hosts, 1)
    task = await ops.submit(targets="web-1", command="systemctl restart nginx", reason="r")
    issued = await ops.client.post(f"{APPROVALS}/{task['approval_id']}/link", headers=ops.bob)
    assert issued.status_code == 201, issued.text
    link = issued.json()
    assert link["url"].endswith(link["token"])
    path = f"{API}/approval-links/{link['token']}"
    shown = await ops.client.get(path)  # no bearer: the link is the credential
    assert shown.status_code == 200
    assert shown.json()["steps"][0]["command"] == "systemctl restart nginx"
    used = await ops.client.post(path, json={"decision": "reject", "comment": "from my phone"})
    assert used.status_code == 200, used.text
    assert used.json()["status"] == "rejected"
    assert used.json()["votes"][0]["voter"] == "bob"
    assert used.json()["votes"][0]["via"] == "link"
    again = await ops.client.post(path, json={"decision": "approve"})
    assert again.status_code == 409
    assert code_of(again) == "link_used"
    assert (await ops.client.get(path)).status_code == 401


async def test_links_cannot_be_forged_or_used_by_the_requester(
    ops: Ops, sshd_hosts: StartHosts
) -> None:
    await ops.add_hosts(sshd_hosts, 1)
    task = await ops.submit(targets="web-1", command="systemctl restart nginx", reason="r")
    own = await ops.client.post(f"{APPROVALS}/{task['approval_id']}/link", headers=ops.alice)
    assert own.status_code == 201  # issuing is harmless; voting through it is four-eyes
    refused = await ops.client.post(
        f"{API}/approval-links/{own.json()['token']}", json={"decision": "approve"}
    )
    assert refused.status_code == 403
    assert code_of(refused) == "four_eyes"
    token = own.json()["token"]
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    bad = await ops.client.post(f"{API}/approval-links/{forged}", json={"decision": "approve"})
    assert bad.status_code == 401
    access = ops.bob["Authorization"].removeprefix("Bearer ")
    not_a_link = await ops.client.get(f"{API}/approval-links/{access}")
    assert not_a_link.status_code == 401


async def test_votes_are_immutable_in_the_database(ops: Ops, sshd_hosts: StartHosts) -> None:
    await ops.add_hosts(sshd_hosts, 1)
    task = await ops.submit(targets="web-1", command="reboot", reason="r")
    await ops.vote(task["approval_id"], ops.bob)
    schema = tenant_schema_name("default")
    async with ops.platform.db.session(schema, write=True) as session:
        table = (
            "approval_votes" if ops.platform.settings.is_sqlite else f'"{schema}".approval_votes'
        )
        with pytest.raises((IntegrityError, DBAPIError)):
            await session.execute(text(f"UPDATE {table} SET decision = 'reject'"))
        await session.rollback()
        with pytest.raises((IntegrityError, DBAPIError)):
            await session.execute(text(f"DELETE FROM {table}"))
        await session.rollback()


async def test_every_step_is_on_a_verified_trail(ops: Ops, sshd_hosts: StartHosts) -> None:
    await ops.add_hosts(sshd_hosts, 1)
    read = await ops.submit(targets="web-1", command="uptime")
    change = await ops.submit(targets="web-1", command="mkdir -p /tmp/it0-trail", reason="r")
    await ops.vote(change["approval_id"], ops.bob)
    await ops.wait(read["id"])
    await ops.wait(change["id"])
    actions = [e["action"] for e in await audit_events(ops.client, ops.admin)]
    for action in (
        "task.created",
        "approval.requested",
        "approval.approved",
        "task.approved",
        "task.started",
        "credential.use",
        "task.finished",
    ):
        assert action in actions, action
    result = await run_cli(ops.platform.settings, "audit", "verify")
    assert result.exit_code == 0, result.output
