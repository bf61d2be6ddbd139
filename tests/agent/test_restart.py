"""A paused conversation survives a restart: real ``it0 serve`` processes, a fake model.

The agent asks for a mutation and pauses; the server stops; a new server process starts on
the same data; another person approves; that process's worker runs the task, and the
conversation resumes there and finishes.
"""

from __future__ import annotations

import getpass
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.agent.conftest import parse_sse
from tests.agent.fakes import FakeModelServer, Reply
from tests.execution.conftest import StartHosts
from tests.processes import server_pool
from tests.sshd import ClientKeys

pytestmark = pytest.mark.slow

PASSWORD = "restart-admin-password"
API = "/api/v1"


def _login(client: httpx.Client, username: str, password: str) -> None:
    response = client.post(
        f"{API}/auth/login",
        json={"tenant": "default", "username": username, "password": password},
    )
    assert response.status_code == 200, response.text
    client.headers["Authorization"] = f"Bearer {response.json()['access_token']}"


def _poll(client: httpx.Client, path: str, done: Any, limit: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + limit
    while True:
        body: dict[str, Any] = client.get(path).json()
        if done(body):
            return body
        assert time.monotonic() < deadline, json.dumps(body)[-3000:]
        time.sleep(0.1)


def test_a_paused_turn_resumes_in_another_process_after_approval(
    tmp_path: Path, sshd_hosts: StartHosts, client_keys: ClientKeys
) -> None:
    host = sshd_hosts(1)[0]
    marker = tmp_path / "fixed"
    replies = [
        Reply(
            text="Creating the file needs approval.",
            tool_calls=[
                (
                    "run_command",
                    {"selector": "web-1", "command": f"touch {marker}", "reason": "the fix"},
                )
            ],
        ),
        Reply(text="The file is there now."),
    ]
    data = tmp_path / "data"
    with FakeModelServer(replies) as model, server_pool(tmp_path) as start:
        env = {
            "IT0_ADMIN_PASSWORD": PASSWORD,
            "IT0_AGENT_MODEL": "anthropic:claude-test",
            "IT0_AGENT_BASE_URL": model.url,
            "IT0_AGENT_API_KEY": "test-key",
            "IT0_AGENT_RESUME_INTERVAL": "0.5",
        }
        first = start(data, **env)
        with first.client() as admin:
            _login(admin, "admin", PASSWORD)
            credential = admin.post(
                f"{API}/credentials",
                json={
                    "name": "key",
                    "kind": "ssh_key",
                    "username": getpass.getuser(),
                    "private_key": client_keys.ed25519,
                },
            ).json()["id"]
            added = admin.post(
                f"{API}/servers",
                json={
                    "name": "web-1",
                    "address": host.host,
                    "port": host.port,
                    "credential_id": credential,
                },
            )
            assert added.status_code == 201, added.text
            bob = admin.post(
                f"{API}/users",
                json={"username": "bob", "password": "bob-password-1", "role": "operator"},
            )
            assert bob.status_code == 201, bob.text
            session_id = admin.post(f"{API}/agent/sessions").json()["id"]
            answer = admin.post(
                f"{API}/agent/sessions/{session_id}/messages", json={"content": "fix web-1"}
            )
            assert answer.status_code == 200, answer.text
            events = parse_sse(answer.text)
            assert events[-1][1]["status"] == "waiting_approval"
            approval = next(data for kind, data in events if kind == "approval_required")
            token = admin.headers["Authorization"]
        first.stop()
        assert not marker.exists()

        second = start(data, **env)
        with second.client() as client:
            _login(client, "bob", "bob-password-1")
            vote = client.post(f"{API}/approvals/{approval['approval_id']}/approve")
            assert vote.status_code == 200, vote.text
            client.headers["Authorization"] = token
            detail = _poll(
                client,
                f"{API}/agent/sessions/{session_id}",
                lambda s: s["status"] == "idle" and s["turns"] == 2,
            )
        assert marker.exists()
        last = detail["messages"][-1]
        assert last["role"] == "assistant"
        assert last["content"] == "The file is there now."
        assert last["tools"][0] == {
            "type": "resumed",
            "task_id": approval["task_id"],
            "status": "succeeded",
        }
        assert model.requests[-1].tool_results[-1].startswith("Approved and run.")
