"""Tasks end to end on real sshd hosts: read-only runs at once, the rest waits for people."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from tests.auth.helpers import API, code_of, create_key, error_of, member_headers
from tests.execution.conftest import StartHosts
from tests.ops.conftest import APPROVALS, TASKS, Ops


async def test_read_only_runs_at_once_on_every_host(ops: Ops, sshd_hosts: StartHosts) -> None:
    await ops.add_hosts(sshd_hosts, 3)
    task = await ops.submit(targets="web-1,web-2,web-3", command="echo hello; uname -s")
    assert task["risk"] == "read_only"
    assert task["approval_id"] is None
    assert task["authorization"] == {"by": "policy", "risk": "read_only"}
    done = await ops.wait(task["id"])
    assert done["status"] == "succeeded", done
    assert done["counts"] == {"ok": 3}
    assert [h["name"] for h in done["hosts"]] == ["web-1", "web-2", "web-3"]
    for host in done["hosts"]:
        assert host["status"] == "ok"
        assert host["exit_status"] == 0
        assert host["stdout"] == "hello\nLinux\n"
        assert host["duration"] > 0


async def test_mutating_command_waits_and_touches_nothing(
    ops: Ops, sshd_hosts: StartHosts, tmp_path: Path
) -> None:
    await ops.add_hosts(sshd_hosts, 1)
    task = await ops.submit(targets="web-1", command="rm -rf /srv/x", reason="clean up")
    assert task["status"] == "pending_approval"
    assert task["risk"] in ("high", "critical")
    assert task["approval_id"] is not None
    detail = await ops.task(task["id"])
    assert detail["hosts"] == []  # nothing was sent to any host
    approval = (await ops.client.get(f"{APPROVALS}/{task['approval_id']}", headers=ops.bob)).json()
    assert approval["status"] == "pending"
    assert approval["servers"] == ["web-1"]
    assert approval["steps"][0]["command"] == "rm -rf /srv/x"
    assert approval["verdicts"][0]["risk"] == task["risk"]


async def test_a_change_needs_a_reason(ops: Ops, sshd_hosts: StartHosts) -> None:
    await ops.add_hosts(sshd_hosts, 1)
    response = await ops.client.post(
        TASKS, json={"targets": "web-1", "command": "touch /tmp/x"}, headers=ops.alice
    )
    assert response.status_code == 422
    assert code_of(response) == "reason_required"


async def test_approved_change_runs_exactly_once(
    ops: Ops, sshd_hosts: StartHosts, tmp_path: Path
) -> None:
    await ops.add_hosts(sshd_hosts, 2)
    marker = tmp_path / "marker"
    task = await ops.submit(
        targets="web-1,web-2", command=f"echo ran >> {marker}", reason="leave a mark"
    )
    assert task["status"] == "pending_approval"
    assert not marker.exists()
    response = await ops.vote(task["approval_id"], ops.bob, comment="fine")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "approved"
    done = await ops.wait(task["id"])
    assert done["status"] == "succeeded", done
    assert done["authorization"]["by"] == "approval"
    assert done["authorization"]["approvers"] == ["bob"]
    assert marker.read_text() == "ran\nran\n"  # both hosts (same machine), once each


async def test_requester_cannot_approve_own_task_by_user_or_key(
    ops: Ops, sshd_hosts: StartHosts
) -> None:
    await ops.add_hosts(sshd_hosts, 1)
    carol = await member_headers(ops.client, ops.admin, "carol", role="admin")
    task = await ops.submit(carol, targets="web-1", command="systemctl restart nginx", reason="r")
    response = await ops.vote(task["approval_id"], carol)
    assert response.status_code == 403
    assert code_of(response) == "four_eyes"
    key = await create_key(ops.client, carol, name="carol ci", role="operator")
    key_headers = {"Authorization": f"Bearer {key['key']}"}
    response = await ops.vote(task["approval_id"], key_headers)
    assert response.status_code == 403
    assert code_of(response) == "four_eyes"
    # a task requested through carol's key is still carol's: she cannot approve it either
    by_key = await ops.submit(
        key_headers, targets="web-1", command="systemctl restart nginx", reason="r"
    )
    assert by_key["requested_by"]["source"] == "api_key"
    assert by_key["requested_by"]["name"] == "carol"
    assert (await ops.vote(by_key["approval_id"], carol)).status_code == 403
    approval = (await ops.client.get(f"{APPROVALS}/{task['approval_id']}", headers=ops.bob)).json()
    assert approval["status"] == "pending"
    assert approval["votes"] == []
    assert (await ops.vote(by_key["approval_id"], ops.bob)).json()["status"] == "approved"


async def test_critical_needs_two_people(ops: Ops, sshd_hosts: StartHosts) -> None:
    await ops.add_hosts(sshd_hosts, 1)
    task = await ops.submit(targets="web-1", command="reboot", reason="kernel update")
    assert task["risk"] == "critical"
    first = await ops.vote(task["approval_id"], ops.bob)
    assert first.status_code == 200, first.text
    assert first.json()["status"] == "pending"
    assert first.json()["approvals"] == 1
    assert first.json()["required"] == 2
    again = await ops.vote(task["approval_id"], ops.bob)
    assert again.status_code == 409
    assert code_of(again) == "already_voted"
    # cancel instead of rebooting the test machine: the quorum is what is under test
    cancelled = await ops.client.post(f"{TASKS}/{task['id']}/cancel", headers=ops.alice)
    assert cancelled.json()["status"] == "cancelled"
    late = await ops.vote(task["approval_id"], ops.admin)
    assert late.status_code == 409
    assert code_of(late) == "not_pending"


async def test_second_vote_reaches_quorum(ops: Ops, sshd_hosts: StartHosts) -> None:
    await ops.add_hosts(sshd_hosts, 1)
    put = await ops.client.put(
        f"{TASKS.replace('/tasks', '')}/settings/approvals",
        json={"required": {"low": 2}},
        headers=ops.admin,
    )
    assert put.status_code == 200, put.text
    task = await ops.submit(targets="web-1", command="mkdir -p /tmp/it0-quorum", reason="r")
    assert task["risk"] == "low"
    assert (await ops.vote(task["approval_id"], ops.bob)).json()["status"] == "pending"
    second = await ops.vote(task["approval_id"], ops.admin)
    assert second.json()["status"] == "approved"
    done = await ops.wait(task["id"])
    assert done["status"] == "succeeded"
    assert sorted(done["authorization"]["approvers"]) == ["admin", "bob"]


async def test_one_rejection_ends_the_request(ops: Ops, sshd_hosts: StartHosts) -> None:
    await ops.add_hosts(sshd_hosts, 1)
    task = await ops.submit(targets="web-1", command="reboot", reason="r")
    response = await ops.vote(task["approval_id"], ops.bob, "reject", comment="not now")
    assert response.status_code == 200
    assert response.json()["status"] == "rejected"
    assert (await ops.task(task["id"]))["status"] == "rejected"
    assert (await ops.vote(task["approval_id"], ops.admin)).status_code == 409


async def test_changed_targets_after_approval_are_refused(
    ops: Ops, sshd_hosts: StartHosts, tmp_path: Path
) -> None:
    await ops.add_hosts(sshd_hosts, 2, labels={"role": "web"})
    marker = tmp_path / "m"
    task = await ops.submit(targets="role=web", command=f"touch {marker}", reason="r")
    # a third host joins the selector after the request: not what the approver saw
    await ops.add_hosts(sshd_hosts, 1, prefix="late", labels={"role": "web"})
    await ops.vote(task["approval_id"], ops.bob)
    done = await ops.wait(task["id"])
    assert done["status"] == "failed"
    assert "targets changed" in done["message"]
    assert "late-1" in done["message"]
    assert done["hosts"] == []
    assert not marker.exists()


async def test_rolling_run_stops_at_the_failure_threshold(ops: Ops, sshd_hosts: StartHosts) -> None:
    await ops.add_hosts(sshd_hosts, 5)
    task = await ops.submit(
        targets="web-1,web-2,web-3,web-4,web-5",
        command="test -e /nonexistent/it0",
        rollout={"batch_size": 1, "max_failures": 1},
    )
    done = await ops.wait(task["id"])
    assert done["status"] == "failed"
    by_name = {h["name"]: h for h in done["hosts"]}
    assert [by_name[f"web-{i}"]["batch"] for i in range(1, 6)] == [0, 1, 2, 3, 4]
    assert by_name["web-1"]["status"] == "failed"
    assert by_name["web-2"]["status"] == "failed"
    for name in ("web-3", "web-4", "web-5"):
        assert by_name[name]["status"] == "skipped"
    assert done["counts"] == {"failed": 2, "skipped": 3}
    assert "rollout stopped" in done["message"]


async def test_batches_by_percent_with_pause(ops: Ops, sshd_hosts: StartHosts) -> None:
    await ops.add_hosts(sshd_hosts, 4)
    task = await ops.submit(
        targets="web-1,web-2,web-3,web-4",
        command="date +%s.%N",
        rollout={"batch_percent": 50, "pause_seconds": 0.3},
    )
    done = await ops.wait(task["id"])
    assert done["status"] == "succeeded"
    batches = sorted(h["batch"] for h in done["hosts"])
    assert batches == [0, 0, 1, 1]
    first = max(float(h["stdout"]) for h in done["hosts"] if h["batch"] == 0)
    second = min(float(h["stdout"]) for h in done["hosts"] if h["batch"] == 1)
    assert second - first >= 0.3


async def test_steps_stop_a_host_at_its_first_failure(ops: Ops, sshd_hosts: StartHosts) -> None:
    await ops.add_hosts(sshd_hosts, 1)
    task = await ops.submit(
        targets="web-1",
        steps=[
            {"name": "first", "command": "echo one"},
            {"name": "fails", "command": "ls /nonexistent/it0"},
            {"name": "never", "command": "echo three"},
        ],
    )
    done = await ops.wait(task["id"])
    host = done["hosts"][0]
    assert host["status"] == "failed"
    assert [s["name"] for s in host["steps"]] == ["first", "fails"]
    assert "one" in host["stdout"]
    assert "three" not in host["stdout"]


async def test_cancel_a_running_task_stops_its_hosts(ops: Ops, sshd_hosts: StartHosts) -> None:
    await ops.add_hosts(sshd_hosts, 2)
    task = await ops.submit(targets="web-1,web-2", command="sleep 30")
    await ops.wait(task["id"], {"running"})
    response = await ops.client.post(f"{TASKS}/{task['id']}/cancel", headers=ops.alice)
    assert response.status_code == 200, response.text
    done = await ops.wait(task["id"], limit=15)
    assert done["status"] == "cancelled"
    assert {h["status"] for h in done["hosts"]} == {"cancelled"}
    again = await ops.client.post(f"{TASKS}/{task['id']}/cancel", headers=ops.alice)
    assert again.status_code == 409


async def test_events_stream_replays_and_follows(ops: Ops, sshd_hosts: StartHosts) -> None:
    await ops.add_hosts(sshd_hosts, 2)
    task = await ops.submit(targets="web-1,web-2", command="echo a; sleep 0.3; echo b")
    events = await read_events(ops.client, task["id"], ops.alice)
    kinds = [e["event"] for e in events]
    assert kinds[-1] == "done"
    assert events[-1]["data"]["status"] == "succeeded"
    output = "".join(
        e["data"]["text"] for e in events if e["event"] == "output" and e["data"]["host"] == "web-1"
    )
    assert output == "a\nb\n"
    hosts_done = [e["data"] for e in events if e["event"] == "host" and e["data"]["status"] == "ok"]
    assert sorted(h["host"] for h in hosts_done) == ["web-1", "web-2"]
    # a client that comes back with Last-Event-ID gets only what followed it
    ids = [int(e["id"]) for e in events if e.get("id")]
    resumed = await read_events(ops.client, task["id"], ops.alice, last_id=ids[1])
    assert [int(e["id"]) for e in resumed if e.get("id")] == ids[2:]


async def read_events(
    client: httpx.AsyncClient, task_id: str, headers: dict[str, str], last_id: int | None = None
) -> list[dict[str, Any]]:
    extra = {"Last-Event-ID": str(last_id)} if last_id is not None else {}
    events: list[dict[str, Any]] = []
    async with client.stream(
        "GET", f"{TASKS}/{task_id}/events", headers={**headers, **extra}, timeout=30
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        current: dict[str, Any] = {}
        async for line in response.aiter_lines():
            if line == "":
                if "event" in current:
                    events.append(current)
                current = {}
            elif line.startswith("event: "):
                current["event"] = line[7:]
            elif line.startswith("id: "):
                current["id"] = line[4:]
            elif line.startswith("data: "):
                current["data"] = json.loads(line[6:])
    return events


async def test_unknown_task_and_bad_bodies_are_clear_4xx(ops: Ops) -> None:
    missing = await ops.client.get(
        f"{TASKS}/0190aaaa-0000-7000-8000-000000000000", headers=ops.alice
    )
    assert missing.status_code == 404
    assert error_of(missing)["code"] == "not_found"
    both = await ops.client.post(
        TASKS, json={"targets": "x", "command": "ls", "script": "ls"}, headers=ops.alice
    )
    assert both.status_code == 422
    none = await ops.client.post(
        TASKS, json={"targets": "nothing-matches", "command": "ls"}, headers=ops.alice
    )
    assert none.status_code == 422
    assert code_of(none) == "no_targets"
    bad_selector = await ops.client.post(
        TASKS, json={"targets": "env in (", "command": "ls"}, headers=ops.alice
    )
    assert bad_selector.status_code == 422


async def test_viewer_cannot_run_or_approve(ops: Ops, sshd_hosts: StartHosts) -> None:
    viewer = await member_headers(ops.client, ops.admin, "vera", role="viewer")
    await ops.add_hosts(sshd_hosts, 1)
    denied = await ops.client.post(
        TASKS, json={"targets": "web-1", "command": "uptime"}, headers=viewer
    )
    assert denied.status_code == 403
    task = await ops.submit(targets="web-1", command="reboot", reason="r")
    assert (await ops.vote(task["approval_id"], viewer)).status_code == 403
    listed = await ops.client.get(TASKS, headers=viewer)
    assert listed.status_code == 200
    assert [t["id"] for t in listed.json()["items"]] == [task["id"]]


async def test_retry_creates_a_new_task(ops: Ops, sshd_hosts: StartHosts) -> None:
    await ops.add_hosts(sshd_hosts, 1)
    first = await ops.submit(targets="web-1", command="uptime")
    await ops.wait(first["id"])
    response = await ops.client.post(f"{TASKS}/{first['id'][:13]}/retry", headers=ops.alice)
    assert response.status_code == 201, response.text
    second = response.json()
    assert second["id"] != first["id"]
    assert second["retry_of"] == first["id"]
    assert second["payload_hash"] == first["payload_hash"]
    assert (await ops.wait(second["id"]))["status"] == "succeeded"


async def test_a_server_moved_after_approval_is_refused(
    ops: Ops, sshd_hosts: StartHosts, tmp_path: Path
) -> None:
    await ops.add_hosts(sshd_hosts, 1)
    marker = tmp_path / "moved"
    task = await ops.submit(targets="web-1", command=f"touch {marker}", reason="r")
    moved = await ops.client.patch(
        f"{API}/servers/web-1", json={"kind": "local", "address": "127.0.0.1"}, headers=ops.admin
    )
    assert moved.status_code == 200, moved.text
    await ops.vote(task["approval_id"], ops.bob)
    done = await ops.wait(task["id"])
    assert done["status"] == "failed"
    assert "servers changed after approval" in done["message"]
    assert not marker.exists()
