"""Host keys: trust on first use, refusal of a changed key, trust, approval, known_hosts."""

from __future__ import annotations

from pathlib import Path

import asyncssh
import httpx
from sqlalchemy import update

from it0.audit import Actor, AuditContext
from it0.core.settings import Settings
from it0.execution._sshd import SshdServer
from it0.inventory.models import Server
from it0.platform import Platform
from tests.audit.helpers import run_cli, verify
from tests.auth.helpers import API, audit_events, error_of, member_headers
from tests.execution.conftest import StartHosts
from tests.inventory.reaching import SERVERS, add_key_credential, add_server, facts, host_key
from tests.sshd import ClientKeys

SETTINGS = f"{API}/settings/hostkeys"
CTX = AuditContext(Actor.system("test"))


def _fingerprint(line: str) -> str:
    return str(asyncssh.import_public_key(line).get_fingerprint("sha256"))


def _other_key() -> str:
    key = asyncssh.generate_private_key("ssh-ed25519")
    return " ".join(key.export_public_key("openssh").decode().split()[:2])


async def test_a_changed_host_key_is_refused_until_trusted(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    platform: Platform,
    sshd_hosts: StartHosts,
    client_keys: ClientKeys,
) -> None:
    first, second = sshd_hosts(2)
    credential_id = await add_key_credential(client, admin, client_keys)
    server = await add_server(client, admin, "app-1", first, credential_id)
    assert (await facts(client, admin, "app-1")).status_code == 200
    assert (await host_key(client, admin, "app-1"))["host_key"] == first.host_key

    # the same server now answers with another key (another sshd behind its address)
    moved = await client.patch(f"{SERVERS}/app-1", json={"port": second.port}, headers=admin)
    assert moved.status_code == 200, moved.text
    refused = await facts(client, admin, "app-1")
    assert refused.status_code == 409, refused.text
    error = error_of(refused)
    assert error["code"] == "host_key_changed"
    for part in ("app-1", _fingerprint(first.host_key), _fingerprint(second.host_key)):
        assert part in error["message"]
    pin = await host_key(client, admin, "app-1")
    assert pin["host_key"] == first.host_key  # never accepted silently
    assert pin["pending_host_key"] == second.host_key
    assert pin["pending_fingerprint"] == _fingerprint(second.host_key)
    changed = await audit_events(client, admin, "server.hostkey.changed")
    assert changed[0]["resource_id"] == server["id"]
    assert changed[0]["summary"]["pinned_fingerprint"] == _fingerprint(first.host_key)
    assert changed[0]["summary"]["presented_fingerprint"] == _fingerprint(second.host_key)
    assert (await facts(client, admin, "app-1")).status_code == 409  # still refused

    trusted = await client.post(f"{SERVERS}/app-1/trust-host-key", json={}, headers=admin)
    assert trusted.status_code == 200, trusted.text
    assert trusted.json()["host_key"] == second.host_key
    assert trusted.json()["pending_host_key"] is None
    event = (await audit_events(client, admin, "server.hostkey.trusted"))[0]
    assert event["summary"]["old_fingerprint"] == _fingerprint(first.host_key)
    assert event["summary"]["new_fingerprint"] == _fingerprint(second.host_key)
    assert (await facts(client, admin, "app-1")).status_code == 200

    nothing = await client.post(f"{SERVERS}/app-1/trust-host-key", json={}, headers=admin)
    assert nothing.status_code == 409
    assert error_of(nothing)["code"] == "no_pending_host_key"
    bad = await client.post(
        f"{SERVERS}/app-1/trust-host-key", json={"key": "ssh-ed25519 nope"}, headers=admin
    )
    assert bad.status_code == 422
    assert error_of(bad)["code"] == "invalid_host_key"
    assert (await verify(platform)).ok


async def test_approved_keys_only_then_a_known_hosts_import(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    settings: Settings,
    sshd: SshdServer,
    client_keys: ClientKeys,
    tmp_path: Path,
) -> None:
    assert (await client.get(SETTINGS, headers=admin)).json() == {"require_approved": False}
    response = await client.put(SETTINGS, json={"require_approved": True}, headers=admin)
    assert response.status_code == 200, response.text
    assert (await client.get(SETTINGS, headers=admin)).json() == {"require_approved": True}
    same = await client.put(SETTINGS, json={"require_approved": True}, headers=admin)
    assert same.status_code == 200, same.text
    changed = await audit_events(client, admin, "settings.update")
    assert [e["summary"] for e in changed] == [{"before": False, "after": True}]

    credential_id = await add_key_credential(client, admin, client_keys)
    await add_server(client, admin, "strict-1", sshd, credential_id)
    refused = await facts(client, admin, "strict-1")
    assert refused.status_code == 409, refused.text
    assert error_of(refused)["code"] == "host_key_unknown"
    pin = await host_key(client, admin, "strict-1")
    assert pin["host_key"] is None
    assert pin["pending_host_key"] == sshd.host_key
    assert await audit_events(client, admin, "server.hostkey.unknown")
    assert not await audit_events(client, admin, "server.hostkey.pinned")

    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(
        "# comment\n"
        f"[{sshd.host}]:{sshd.port} {sshd.host_key} root@sshd\n"
        f"elsewhere.example {_other_key()}\n"
        "@revoked * ssh-ed25519 AAAA\n"
    )
    result = await run_cli(settings, "servers", "known-hosts", known_hosts)
    assert result.exit_code == 0, result.output
    assert "pinned (1): strict-1" in result.output
    pin = await host_key(client, admin, "strict-1")
    assert pin["host_key"] == sshd.host_key
    assert pin["pending_host_key"] is None
    assert (await facts(client, admin, "strict-1")).status_code == 200

    again = await run_cli(settings, "servers", "known-hosts", known_hosts)
    assert "unchanged (1): strict-1" in again.output
    imports = await audit_events(client, admin, "server.hostkeys.import")
    assert len(imports) == 2

    off = await run_cli(settings, "servers", "require-approved-keys", "off")
    assert off.exit_code == 0, off.output
    assert (await client.get(SETTINGS, headers=admin)).json() == {"require_approved": False}


async def test_known_hosts_conflicts_are_reported_not_overwritten(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    settings: Settings,
    platform: Platform,
    tmp_path: Path,
) -> None:
    pinned, other = _other_key(), _other_key()
    for name, address in (("kh-1", "10.9.0.1"), ("kh-2", "10.9.0.2")):
        response = await client.post(
            SERVERS, json={"name": name, "address": address}, headers=admin
        )
        assert response.status_code == 201, response.text
    result = await run_cli(settings, "servers", "trust", "kh-1", "--key", f"{pinned} me@host")
    assert result.exit_code == 0, result.output
    assert _fingerprint(pinned) in result.output
    assert (await host_key(client, admin, "kh-1"))["host_key"] == pinned

    file = tmp_path / "known_hosts"
    file.write_text(f"10.9.0.1 {other}\nkh-2,10.9.0.99 {other}\n")
    report = await run_cli(settings, "servers", "known-hosts", file)
    assert report.exit_code == 0, report.output
    assert "pinned (1): kh-2" in report.output
    assert "conflicts (1): kh-1" in report.output
    assert (await host_key(client, admin, "kh-1"))["host_key"] == pinned
    assert (await host_key(client, admin, "kh-2"))["host_key"] == other

    # trust the pending key from the CLI
    nothing = await run_cli(settings, "servers", "trust", "kh-1")
    assert nothing.exit_code == 2
    assert "no pending host key" in nothing.output
    async with platform.db.session("t_default", write=True) as session:
        await session.execute(
            update(Server).where(Server.name == "kh-1").values(pending_host_key=other)
        )
        # what a refused connection records (tests/inventory/test_facts.py shows the real one)
        await platform.audit.record(
            session, ("default", "t_default"), CTX, "server.hostkey.changed", "server", None, {}
        )
    trusted = await run_cli(settings, "servers", "trust", "kh-1")
    assert trusted.exit_code == 0, trusted.output
    assert (await host_key(client, admin, "kh-1"))["host_key"] == other
    events = await audit_events(client, admin, "server.hostkey.trusted")
    assert [e["summary"]["new_fingerprint"] for e in events] == [
        _fingerprint(other),
        _fingerprint(pinned),
    ]


async def test_settings_need_policy_write(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    viewer = await member_headers(client, admin, "vera-viewer", role="viewer")
    response = await client.put(SETTINGS, json={"require_approved": True}, headers=viewer)
    assert response.status_code == 403
    trust = await client.post(f"{SERVERS}/localhost/trust-host-key", json={}, headers=viewer)
    assert trust.status_code == 403
    gather = await client.post(f"{SERVERS}/localhost/facts", headers=viewer)
    assert gather.status_code == 403
