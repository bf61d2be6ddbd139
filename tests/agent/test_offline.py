"""The agent without a model: the runbook planner end to end on real sshd hosts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.agent.conftest import SESSIONS, Agent
from tests.agent.prepared import fixture_runbook
from tests.auth.helpers import API
from tests.execution.conftest import StartHosts

NOTICE = "No language model is configured"


def text_of(events: list[tuple[str, Any]]) -> str:
    return "".join(data.get("delta", "") for kind, data in events if kind == "text")


async def test_disk_full_diagnosis_findings_and_remediation_waiting_for_approval(
    agent: Agent, sshd_hosts: StartHosts, tmp_path: Path
) -> None:
    ops = agent.ops
    await ops.add_hosts(sshd_hosts, 1)
    report = tmp_path / "df.txt"
    marker = tmp_path / "freed"
    report.write_text(
        "Filesystem     Type  Size  Used Avail Use% Mounted on\n"
        "/dev/sda1      ext4   50G   48G  1.0G  98% /\n"
        "/dev/sdb1      ext4  200G   20G  180G  10% /data\n"
    )
    put = await ops.client.put(
        f"{API}/runbooks/disk-full", json=fixture_runbook(report, marker), headers=ops.admin
    )
    assert put.status_code in (200, 201), put.text
    session_id = await agent.session(ops.alice)
    events = await agent.ask(session_id, "the disk is full on web-1", ops.alice)
    answer = text_of(events)
    assert NOTICE in answer
    assert "IT0_AGENT_MODEL" in answer
    assert "Disk full (prepared report)" in answer
    assert "/ is 98% full" in answer
    assert "/data is 10% full" not in answer
    calls = [data for kind, data in events if kind == "tool_call"]
    commands = [c["args"]["command"] for c in calls]
    assert sorted(commands[:2]) == sorted([f"cat {report}", "uptime"])  # run in parallel
    assert commands[2] == f"touch {marker}"
    results = [data for kind, data in events if kind == "tool_result"]
    assert any("load average" in r["content"] for r in results)
    approval = next(data for kind, data in events if kind == "approval_required")
    assert approval["hosts"] == ["web-1"]
    assert approval["task_id"] in answer
    assert events[-1][1]["status"] == "waiting_approval"
    assert not marker.exists()
    task = await ops.task(approval["task_id"])
    assert task["reason"].startswith("runbook disk-full: / is 98% full")
    assert task["requested_by"]["actor"] == "agent"

    # another person approves: the fix runs, the session resumes and runs the verify step
    approved = await ops.vote(approval["approval_id"], ops.bob)
    assert approved.status_code == 200, approved.text
    detail = await agent.settled(session_id, ops.alice, turns_done=2)
    assert marker.exists()
    last = detail["messages"][-1]
    assert f"`{approval['task_id']}` was **succeeded**" in last["content"]
    assert "Verify" in last["content"]
    assert "98%" in last["content"]  # the verify step's output, shown as data


async def test_builtin_runbook_runs_its_diagnostics_on_a_real_host(
    agent: Agent, sshd_hosts: StartHosts
) -> None:
    ops = agent.ops
    await ops.add_hosts(sshd_hosts, 1)
    session_id = await agent.session(ops.alice)
    events = await agent.ask(session_id, "the disk is full on web-1", ops.alice)
    answer = text_of(events)
    assert answer.startswith("Checking web-1 with the runbook")
    assert NOTICE in answer
    results = [data for kind, data in events if kind == "tool_result"]
    df = next(r for r in results if "Filesystem" in r["content"])
    assert '<untrusted-output host="web-1"' in df["content"]
    # every diagnostic was read-only: nothing waits for approval unless a finding asks
    statuses = {data["status"] for kind, data in events if kind == "done"}
    assert statuses <= {"idle", "waiting_approval"}


async def test_requests_without_a_match_or_a_host_get_a_helpful_answer(
    agent: Agent, sshd_hosts: StartHosts
) -> None:
    ops = agent.ops
    await ops.add_hosts(sshd_hosts, 2)
    session_id = await agent.session(ops.alice)
    nothing = text_of(await agent.ask(session_id, "what is the weather like", ops.alice))
    assert NOTICE in nothing
    assert "No runbook matches" in nothing
    nowhere = text_of(await agent.ask(session_id, "the disk is full", ops.alice))
    assert "does not say which hosts" in nowhere
    detail = await agent.detail(session_id, ops.alice)
    assert detail["status"] == "idle"
    assert detail["usage"]["tool_calls"] == 0
    assert [m["role"] for m in detail["messages"]] == ["user", "assistant"] * 2


async def test_service_named_in_the_request_fills_the_runbook(
    agent: Agent, sshd_hosts: StartHosts
) -> None:
    ops = agent.ops
    await ops.add_hosts(sshd_hosts, 1)
    session_id = await agent.session(ops.alice)
    events = await agent.ask(session_id, "nginx is down on web-1", ops.alice)
    commands = [data["args"]["command"] for kind, data in events if kind == "tool_call"]
    assert any("nginx" in c for c in commands)
    listed = await ops.client.get(SESSIONS, headers=ops.alice)
    assert listed.json()[0]["title"] == "nginx is down on web-1"
    assert listed.json()[0]["model"] == "offline"
