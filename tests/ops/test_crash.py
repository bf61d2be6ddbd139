"""Crash safety with real processes: ``kill -9`` of the worker in the middle of a task."""

from __future__ import annotations

import getpass
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.execution.conftest import StartHosts
from tests.processes import it0_command, it0_env, server_pool
from tests.sshd import ClientKeys

pytestmark = pytest.mark.slow

PASSWORD = "crash-admin-password"
FAST = {
    "IT0_ADMIN_PASSWORD": PASSWORD,
    "IT0_TASK_LEASE_SECONDS": "2",
    "IT0_SCHEDULER_INTERVAL": "0.3",
}


def _poll(client: httpx.Client, path: str, done: Any, limit: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + limit
    while True:
        body: dict[str, Any] = client.get(path).json()
        if done(body):
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.05)


def _hosts(task: dict[str, Any]) -> dict[str, str]:
    return {h["name"]: h["status"] for h in task["hosts"]}


def test_kill_9_mid_task_leaves_it_interrupted_and_never_reruns_it(
    tmp_path: Path, sshd_hosts: StartHosts, client_keys: ClientKeys
) -> None:
    data = tmp_path / "data"
    hosts = sshd_hosts(2)
    with server_pool(tmp_path) as start:
        first = start(data, **FAST)
        with first.client() as client:
            token = client.post(
                "/api/v1/auth/login",
                json={"tenant": "default", "username": "admin", "password": PASSWORD},
            ).json()["access_token"]
            client.headers["Authorization"] = f"Bearer {token}"
            credential = client.post(
                "/api/v1/credentials",
                json={
                    "name": "key",
                    "kind": "ssh_key",
                    "username": getpass.getuser(),
                    "private_key": client_keys.ed25519,
                },
            ).json()["id"]
            for i, host in enumerate(hosts, start=1):
                added = client.post(
                    "/api/v1/servers",
                    json={
                        "name": f"web-{i}",
                        "address": host.host,
                        "port": host.port,
                        "credential_id": credential,
                    },
                )
                assert added.status_code == 201, added.text
            created = client.post(
                "/api/v1/tasks",
                json={
                    "targets": "web-1,web-2",
                    "command": "sleep 1; echo finished",
                    "rollout": {"batch_size": 1},
                },
            )
            assert created.status_code == 201, created.text
            path = f"/api/v1/tasks/{created.json()['id']}"
            _poll(client, path, lambda t: _hosts(t) == {"web-1": "ok", "web-2": "running"})
        os.kill(first.proc.pid, signal.SIGKILL)
        first.proc.wait(timeout=10)

        second = start(data, **FAST)
        with second.client() as client:
            client.headers["Authorization"] = f"Bearer {token}"
            task = _poll(client, path, lambda t: t["status"] == "interrupted")
            assert _hosts(task) == {"web-1": "ok", "web-2": "interrupted"}
            assert "finished: 1, not finished: 1" in task["message"]
            time.sleep(1.5)  # several scheduler ticks: nothing runs it again
            again = client.get(path).json()
            assert again["status"] == "interrupted"
            assert again["finished_at"] == task["finished_at"]
            events = client.get(
                "/api/v1/audit/events", params={"action": "task.interrupted"}
            ).json()["items"]
            assert [e["summary"]["unfinished"] for e in events] == [["web-2"]]
            assert [e["summary"]["finished"] for e in events] == [["web-1"]]
            listed = client.get("/api/v1/tasks").json()["items"]
            assert [t["id"] for t in listed] == [task["id"]]
        second.stop()
    verify = subprocess.run(
        it0_command("audit", "verify"),
        env=it0_env(data),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
