"""Turning a server into a target, and matching known_hosts entries (no network)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid

import asyncssh
import pytest

from it0.audit import Actor, AuditContext
from it0.auth.tokens import find_tenant
from it0.inventory.credentials import CredentialCreate, create_credential
from it0.inventory.errors import InvalidHostKey, NotConnectable
from it0.inventory.models import Server
from it0.inventory.reach import (
    KnownHost,
    known_host_matches,
    normalize_key,
    parse_known_hosts,
    set_require_approved_keys,
    target_for,
)
from it0.inventory.service import TenantRecorder
from it0.platform import Platform

CTX = AuditContext(Actor.system("test"))
KEY = asyncssh.generate_private_key("ssh-ed25519")
LINE = " ".join(KEY.export_public_key("openssh").decode().split()[:2])


def _hashed(host: str) -> str:
    salt = b"0123456789abcdefghij"
    digest = hmac.new(salt, host.encode(), hashlib.sha1).digest()
    return f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"


@pytest.mark.parametrize(
    ("patterns", "hosts", "expected"),
    [
        (("10.0.0.1",), ["10.0.0.1", "web-1"], True),
        (("web-1",), ["10.0.0.1", "web-1"], True),
        (("WEB-1",), ["10.0.0.1", "web-1"], True),
        (("[10.0.0.1]:2222",), ["[10.0.0.1]:2222"], True),
        (("10.0.0.1",), ["[10.0.0.1]:2222"], False),
        (("*.example.org",), ["db.example.org"], True),
        (("10.0.0.?",), ["10.0.0.7"], True),
        (("10.0.0.*", "!10.0.0.7"), ["10.0.0.7"], False),
        ((_hashed("10.0.0.1"),), ["10.0.0.1"], True),
        ((_hashed("10.0.0.1"),), ["10.0.0.2"], False),
        (("|1|bad",), ["10.0.0.1"], False),
    ],
)
def test_known_host_patterns(patterns: tuple[str, ...], hosts: list[str], expected: bool) -> None:
    assert known_host_matches(KnownHost(patterns, LINE), hosts) is expected


def test_known_hosts_parsing_skips_markers_and_bad_lines() -> None:
    text = (
        "# comment\n\n"
        f"a,b {LINE} comment here\n"
        f"@cert-authority *.example {LINE}\n"
        "c ssh-ed25519 not-base64\n"
        "only-two fields\n"
    )
    entries, skipped = parse_known_hosts(text)
    assert entries == [KnownHost(("a", "b"), LINE)]
    assert skipped == 3


def test_keys_are_normalized_and_validated() -> None:
    assert normalize_key(f"  {LINE} user@host \n") == LINE
    with pytest.raises(InvalidHostKey):
        normalize_key("ssh-ed25519 AAAA")


async def test_target_for_takes_the_user_from_the_server_else_the_credential(
    platform: Platform,
) -> None:
    private = asyncssh.generate_private_key("ssh-ed25519").export_private_key("openssh").decode()
    async with platform.db.session() as session:
        tenant = await find_tenant(session, "default")
    async with platform.db.session(tenant.schema, write=True) as session:
        credential = await create_credential(
            platform,
            session,
            tenant,
            CTX,
            CredentialCreate.model_validate(
                {"name": "k", "kind": "ssh_key", "username": "deploy", "private_key": private}
            ),
        )
        server = Server(id=uuid.uuid4(), name="s", address="192.0.2.5", port=2200, facts={})
        server.credential_id = credential.id
        session.add(server)
        await session.flush()

        target = await target_for(platform, session, tenant, server, purpose="test", ctx=CTX)
        assert (target.username, target.port, target.kind) == ("deploy", 2200, "ssh")
        assert target.private_key == private
        assert target.trust_on_first_use is True
        assert target.known_host_key is None
        assert private not in repr(target)

        server.username, server.host_key = "ops", LINE
        await set_require_approved_keys(TenantRecorder(platform, session, tenant.pair, CTX), True)
        target = await target_for(platform, session, tenant, server, purpose="test", ctx=CTX)
        assert (target.username, target.known_host_key) == ("ops", LINE)
        assert target.trust_on_first_use is False

        server.kind = "local"
        local = await target_for(platform, session, tenant, server, purpose="test", ctx=CTX)
        assert local.kind == "local"

        server.kind, server.credential_id = "ssh", None
        with pytest.raises(NotConnectable):
            await target_for(platform, session, tenant, server, purpose="test", ctx=CTX)
