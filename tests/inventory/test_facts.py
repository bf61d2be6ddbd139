"""Facts through the API, the CLI and the worker, on real sshd hosts and the local host."""

from __future__ import annotations

import asyncio
import logging
import platform as host_platform
import socket
from typing import Any

import asyncssh
import httpx
import pytest

from it0.app import create_app
from it0.audit import Actor, AuditContext
from it0.core.bus import Message
from it0.core.settings import Settings
from it0.execution._sshd import SshdServer
from it0.inventory.schemas import ServerCreate
from it0.inventory.service import TenantRecorder, create_server
from it0.platform import Platform
from tests.audit.helpers import run_cli, verify
from tests.auth.helpers import audit_events, client_for, code_of, error_of, login_tokens
from tests.conftest import ADMIN_PASSWORD
from tests.inventory.reaching import (
    SERVERS,
    add_key_credential,
    add_server,
    facts,
    host_key,
    key_body,
)
from tests.sshd import ClientKeys

CTX = AuditContext(Actor.system("test"))


def _fingerprint(line: str) -> str:
    return str(asyncssh.import_public_key(line).get_fingerprint("sha256"))


def _check_facts(gathered: dict[str, Any]) -> None:
    assert gathered["os"].get("id") or gathered["os"].get("name")
    assert gathered["kernel"] == host_platform.uname().release
    assert gathered["cpu_count"] >= 1
    assert gathered["memory_total_bytes"] > 0
    assert gathered["disks"], gathered
    assert gathered["uptime_seconds"] > 0


async def test_facts_over_ssh_pin_the_key_and_are_audited(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    platform: Platform,
    sshd: SshdServer,
    client_keys: ClientKeys,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    credential_id = await add_key_credential(client, admin, client_keys)
    server = await add_server(client, admin, "web-1", sshd, credential_id)

    response = await facts(client, admin, "web-1")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == server["id"]
    assert body["status"] == "reachable"
    _check_facts(body["facts"])

    stored = (await client.get(f"{SERVERS}/web-1", headers=admin)).json()
    assert stored["status"] == "reachable"
    assert stored["last_seen_at"] is not None
    assert stored["facts_at"] is not None
    assert stored["facts"]["kernel"] == body["facts"]["kernel"]
    pin = await host_key(client, admin, "web-1")
    assert pin["host_key"] == sshd.host_key
    assert pin["fingerprint"] == _fingerprint(sshd.host_key)
    assert pin["pending_host_key"] is None

    events = await audit_events(client, admin)
    uses = [e for e in events if e["action"] == "credential.use"]
    assert [u["summary"]["server_id"] for u in uses] == [server["id"]]
    assert uses[0]["summary"]["purpose"] == "facts"
    pinned = [e for e in events if e["action"] == "server.hostkey.pinned"]
    assert len(pinned) == 1
    assert pinned[0]["resource_id"] == server["id"]
    assert pinned[0]["summary"]["fingerprint"] == _fingerprint(sshd.host_key)
    gathered = [e for e in events if e["action"] == "server.facts"]
    assert gathered[0]["summary"]["ok"] is True
    assert gathered[0]["summary"]["kernel"] == body["facts"]["kernel"]

    # the second contact checks against the pin: nothing new pinned
    again = await facts(client, admin, server["id"])
    assert again.status_code == 200, again.text
    events = await audit_events(client, admin)
    assert len([e for e in events if e["action"] == "server.hostkey.pinned"]) == 1
    assert len([e for e in events if e["action"] == "credential.use"]) == 2
    assert (await host_key(client, admin, "web-1"))["host_key"] == sshd.host_key

    # the private key shows nowhere: responses, the trail, the logs
    seen = response.text + again.text + str(events) + caplog.text
    for line in key_body(client_keys.ed25519):
        assert line not in seen
    assert (await verify(platform)).ok


async def test_an_unreachable_server_is_a_424_and_marked_unreachable(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    sshd: SshdServer,
    client_keys: ClientKeys,
) -> None:
    with socket.socket() as probe:  # a port nobody listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    credential_id = await add_key_credential(client, admin, client_keys)
    await add_server(client, admin, "gone-1", sshd, credential_id, port=port)

    response = await facts(client, admin, "gone-1")
    assert response.status_code == 424, response.text
    error = error_of(response)
    assert error["code"] == "unreachable"
    assert "gone-1" in error["message"]
    stored = (await client.get(f"{SERVERS}/gone-1", headers=admin)).json()
    assert stored["status"] == "unreachable"
    assert stored["facts_at"] is None
    failed = await audit_events(client, admin, "server.facts")
    assert failed[0]["summary"] == {"name": "gone-1", "ok": False, "error": "unreachable"}


async def test_a_server_without_credential_or_user_is_a_422(
    client: httpx.AsyncClient, admin: dict[str, str], sshd: SshdServer
) -> None:
    await add_server(client, admin, "bare-1", sshd, None)
    response = await facts(client, admin, "bare-1")
    assert response.status_code == 422, response.text
    assert code_of(response) == "not_connectable"
    missing = await facts(client, admin, "no-such-server")
    assert missing.status_code == 404


async def test_local_server_facts_run_on_this_host(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    response = await client.post(
        SERVERS, json={"name": "control-1", "kind": "local"}, headers=admin
    )
    assert response.status_code == 201, response.text
    gathered = await facts(client, admin, "control-1")
    assert gathered.status_code == 200, gathered.text
    assert gathered.json()["status"] == "reachable"
    _check_facts(gathered.json()["facts"])
    assert (await host_key(client, admin, "control-1"))["host_key"] is None


async def test_a_new_server_is_published_and_the_worker_gathers_its_facts(
    platform: Platform, sshd: SshdServer, client_keys: ClientKeys
) -> None:
    app = create_app(platform=platform, roles=("api", "worker"))
    published: list[Message] = []

    async def collect(message: Message) -> None:
        published.append(message)

    async with app.router.lifespan_context(app), client_for(app) as client:
        platform.bus.subscribe("server.created", "test-observer", collect)
        token = (await login_tokens(client, "admin", ADMIN_PASSWORD))["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        credential_id = await add_key_credential(client, headers, client_keys)
        server = await add_server(client, headers, "new-1", sshd, credential_id)

        stored: dict[str, Any] = {}
        for _ in range(200):  # bounded: 20 s
            stored = (await client.get(f"{SERVERS}/new-1", headers=headers)).json()
            if stored["facts_at"] is not None:
                break
            await asyncio.sleep(0.1)
        assert stored["status"] == "reachable", stored
        _check_facts(stored["facts"])
        assert [m.payload for m in published] == [{"tenant": "default", "server_id": server["id"]}]
        events = await audit_events(client, headers)
        worker = [e for e in events if e["action"] == "server.facts"]
        assert worker[0]["actor_name"] == "worker:facts"
        pinned = [e for e in events if e["action"] == "server.hostkey.pinned"]
        assert pinned[0]["resource_id"] == server["id"]


async def test_server_created_is_published_after_the_commit_only(platform: Platform) -> None:
    published: list[Message] = []

    async def collect(message: Message) -> None:
        published.append(message)

    platform.bus.subscribe("server.created", "test-observer", collect)
    await platform.bus.start()

    class Abort(Exception):
        pass

    async def create_then_fail() -> None:
        async with platform.db.session("t_default", write=True) as session:
            await create_server(
                TenantRecorder(platform, session, ("default", "t_default"), CTX),
                ServerCreate(name="rolled-back", address="192.0.2.1"),
            )
            raise Abort

    with pytest.raises(Abort):
        await create_then_fail()
    async with platform.db.session("t_default", write=True) as session:
        server = await create_server(
            TenantRecorder(platform, session, ("default", "t_default"), CTX),
            ServerCreate(name="kept", address="192.0.2.2"),
        )
        await asyncio.sleep(0.05)
        assert published == []  # not before the commit
    for _ in range(100):
        if published:
            break
        await asyncio.sleep(0.01)
    assert [m.payload for m in published] == [{"tenant": "default", "server_id": str(server.id)}]


async def test_cli_facts(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    settings: Settings,
    sshd: SshdServer,
    client_keys: ClientKeys,
) -> None:
    credential_id = await add_key_credential(client, admin, client_keys)
    await add_server(client, admin, "db-1", sshd, credential_id)
    result = await run_cli(settings, "servers", "facts", "db-1")
    assert result.exit_code == 0, result.output
    for word in ("OS", "kernel", host_platform.uname().release, "CPUs", "memory", "uptime"):
        assert word in result.output
    for line in key_body(client_keys.ed25519):
        assert line not in result.output
    stored = (await client.get(f"{SERVERS}/db-1", headers=admin)).json()
    assert stored["status"] == "reachable"

    missing = await run_cli(settings, "servers", "facts", "nope")
    assert missing.exit_code == 2
    assert "not found" in missing.output
