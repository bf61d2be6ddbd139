"""API keys: shown once, stored hashed, authenticate, expire, revoke, never outgrow the creator."""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import select, update

from it0.auth.models import ApiKey
from it0.auth.permissions import BUILTIN_ROLES
from it0.core.clock import utcnow
from it0.core.security import sha256_hex
from it0.platform import Platform
from tests.auth.helpers import (
    API,
    PASSWORD,
    add_member,
    audit_events,
    bearer,
    code_of,
    create_key,
    create_role,
    error_of,
    login_tokens,
    me,
    member_headers,
)
from tests.conftest import ADMIN_PASSWORD

SCHEMA = "t_default"


async def _row(platform: Platform, key_id: str) -> ApiKey:
    async with platform.db.session(SCHEMA) as session:
        row = await session.scalar(select(ApiKey).where(ApiKey.id == uuid.UUID(key_id)))
    assert row is not None
    return row


async def test_key_is_shown_once_and_stored_hashed(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    platform: Platform,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    created = await create_key(client, admin, name="ci deploys", role="operator")
    plaintext = created["key"]
    assert created["name"] == "ci deploys"
    assert created["role"] == "operator"
    assert created["revoked_at"] is None
    assert created["last_used_at"] is None
    assert created["expires_at"] is None
    # a visible prefix names the tenant and identifies the key, and is part of the key
    prefix = created["prefix"]
    assert prefix.startswith("it0_default_")
    assert plaintext.startswith(prefix)
    assert len(plaintext) > len(prefix) + 30
    assert created["created_by"] == (await me(client, admin))["user_id"]

    # listed without the secret
    response = await client.get(f"{API}/api-keys", headers=admin)
    assert response.status_code == 200
    assert plaintext not in response.text
    [listed] = response.json()
    assert "key" not in listed
    assert listed["id"] == created["id"]
    assert listed["prefix"] == prefix

    # stored as a hash only
    row = await _row(platform, created["id"])
    assert row.key_hash != plaintext
    assert plaintext not in row.key_hash
    assert row.key_hash == sha256_hex(plaintext)
    assert row.prefix == prefix

    # audited with its prefix, without the secret
    [event] = await audit_events(client, admin, "apikey.create")
    assert event["resource_id"] == created["id"]
    assert event["summary"]["prefix"] == prefix
    assert plaintext not in (await client.get(f"{API}/audit/events", headers=admin)).text

    # use it, so that every log line of creation and use is captured
    assert (await client.get(f"{API}/auth/me", headers=bearer(plaintext))).status_code == 200
    assert caplog.records  # the access log did run
    for record in caplog.records:
        assert plaintext not in record.getMessage()
        assert plaintext not in repr(record.__dict__)
    assert plaintext not in caplog.text


async def test_key_authenticates_as_bearer(
    client: httpx.AsyncClient, admin: dict[str, str], platform: Platform
) -> None:
    created = await create_key(client, admin, role="viewer")
    key = bearer(created["key"])
    identity = await me(client, key)
    assert identity["username"] == "admin"
    assert identity["tenant"] == "default"
    assert identity["role"] == "viewer"
    assert identity["via_api_key"] == created["id"]
    assert identity["permissions"] == sorted(BUILTIN_ROLES["viewer"])
    # platform administration is never delegated to a key
    assert (await client.get(f"{API}/tenants", headers=key)).status_code == 403

    await platform.db.deferred_writes_done()
    row = await _row(platform, created["id"])
    assert row.last_used_at is not None
    assert utcnow() - row.last_used_at < timedelta(minutes=5)
    [listed] = (await client.get(f"{API}/api-keys", headers=admin)).json()
    assert listed["last_used_at"] is not None

    # a key acts through the audit trail as itself, on behalf of its creator
    response = await client.post(f"{API}/api-keys", json={"name": "k2"}, headers=key)
    assert response.status_code == 403
    assert code_of(response) == "missing_permission"


async def test_a_burst_larger_than_the_pool_on_an_idle_key(
    client: httpx.AsyncClient, admin: dict[str, str], platform: Platform
) -> None:
    """A key's first use in a while stamps ``last_used_at``; a burst of requests bigger
    than the connection pool must not wait on itself for that stamp."""
    created = await create_key(client, admin, role="viewer")
    key = bearer(created["key"])
    burst = 48  # the pool holds 16 connections on SQLite, 20 on PostgreSQL
    responses = await asyncio.gather(
        *(client.get(f"{API}/auth/me", headers=key) for _ in range(burst))
    )
    assert [r.status_code for r in responses] == [200] * burst
    await platform.db.deferred_writes_done()
    assert (await _row(platform, created["id"])).last_used_at is not None


async def test_key_with_write_access_is_audited_as_the_key(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    created = await create_key(client, admin, role="admin")
    await add_member(client, bearer(created["key"]), "made-by-key")
    event = next(
        e
        for e in await audit_events(client, admin, "user.add")
        if e["summary"]["username"] == "made-by-key"
    )
    assert event["actor_type"] == "api_key"
    assert event["actor_id"] == created["id"]
    assert event["on_behalf_of"] == created["created_by"]


async def test_tampered_or_unknown_keys_are_rejected(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    plaintext = (await create_key(client, admin))["key"]
    flipped = plaintext[:-1] + ("A" if plaintext[-1] != "A" else "B")
    for credential in (flipped, plaintext[:-5], plaintext + "x", plaintext.upper()):
        response = await client.get(f"{API}/auth/me", headers=bearer(credential))
        assert response.status_code == 401, credential
        assert code_of(response) in {"invalid_credentials", "unauthenticated"}


async def test_revoked_key_is_rejected(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    created = await create_key(client, admin)
    key = bearer(created["key"])
    assert (await client.get(f"{API}/auth/me", headers=key)).status_code == 200
    revoked = await client.delete(f"{API}/api-keys/{created['id']}", headers=admin)
    assert revoked.status_code == 200
    assert revoked.json()["revoked_at"] is not None
    response = await client.get(f"{API}/auth/me", headers=key)
    assert response.status_code == 401
    assert code_of(response) == "token_revoked"
    # revoking again changes nothing and is audited once
    again = await client.delete(f"{API}/api-keys/{created['id']}", headers=admin)
    assert again.status_code == 200
    assert again.json()["revoked_at"] == revoked.json()["revoked_at"]
    assert len(await audit_events(client, admin, "apikey.revoke")) == 1
    # an unknown key id is 404
    response = await client.delete(f"{API}/api-keys/{uuid.uuid4()}", headers=admin)
    assert response.status_code == 404


async def test_expiry_in_the_past_is_refused(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    past = (utcnow() - timedelta(minutes=1)).isoformat()
    response = await client.post(
        f"{API}/api-keys", json={"name": "old", "expires_at": past}, headers=admin
    )
    assert response.status_code == 422
    error = error_of(response)
    assert error["code"] == "validation_error"
    assert error["details"]["field"] == "expires_at"
    assert (await client.get(f"{API}/api-keys", headers=admin)).json() == []


async def test_expiry_without_a_timezone_is_a_validation_error(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    """A naive timestamp is ambiguous; it must be refused cleanly, not crash the request."""
    future = (utcnow() + timedelta(days=30)).replace(tzinfo=None).isoformat()
    response = await client.post(
        f"{API}/api-keys", json={"name": "naive", "expires_at": future}, headers=admin
    )
    assert response.status_code == 422, response.text
    assert code_of(response) == "validation_error"
    assert [f["field"] for f in error_of(response)["details"]["fields"]] == ["expires_at"]


async def test_key_past_its_expiry_is_rejected(
    client: httpx.AsyncClient, admin: dict[str, str], platform: Platform
) -> None:
    expires = utcnow() + timedelta(days=1)
    created = await create_key(client, admin, expires_at=expires.isoformat())
    assert created["expires_at"] is not None
    key = bearer(created["key"])
    assert (await client.get(f"{API}/auth/me", headers=key)).status_code == 200
    async with platform.db.session(SCHEMA, write=True) as session:
        await session.execute(
            update(ApiKey)
            .where(ApiKey.id == uuid.UUID(created["id"]))
            .values(expires_at=utcnow() - timedelta(seconds=1)),
            execution_options={"it0_audit_exempt": True},
        )
    response = await client.get(f"{API}/auth/me", headers=key)
    assert response.status_code == 401
    assert "expired" in error_of(response)["message"]


async def test_key_cannot_exceed_its_creator(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    # operators cannot manage keys at all
    operator = await member_headers(client, admin, "opal", role="operator")
    response = await client.post(f"{API}/api-keys", json={"name": "k"}, headers=operator)
    assert response.status_code == 403
    assert code_of(response) == "missing_permission"
    assert error_of(response)["details"]["permission"] == "apikeys:write"

    # an operator who may manage keys still cannot make one stronger than themselves
    await create_role(
        client, admin, "keyed-operator", sorted(BUILTIN_ROLES["operator"] | {"apikeys:write"})
    )
    keyed = await member_headers(client, admin, "kim", role="keyed-operator")
    response = await client.post(
        f"{API}/api-keys", json={"name": "k", "role": "admin"}, headers=keyed
    )
    assert response.status_code == 403
    assert code_of(response) == "exceeds_own_permissions"
    assert "users:write" in error_of(response)["details"]["missing"]
    response = await client.post(
        f"{API}/api-keys", json={"name": "k", "role": "owner"}, headers=keyed
    )
    assert response.status_code == 403
    # but one as strong as their own role, or weaker, is fine
    own = await create_key(client, keyed)
    assert own["role"] == "keyed-operator"
    weaker = await create_key(client, keyed, role="viewer")
    assert weaker["role"] == "viewer"
    assert (await client.get(f"{API}/api-keys", headers=admin)).status_code == 200


async def test_key_loses_permissions_with_its_creator(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    user = await add_member(client, admin, "alice", role="admin")
    alice = bearer((await login_tokens(client, "alice", PASSWORD))["access_token"])
    created = await create_key(client, alice, role="admin")
    key = bearer(created["key"])
    assert (await me(client, key))["permissions"] == sorted(BUILTIN_ROLES["admin"])
    assert (await client.get(f"{API}/users", headers=key)).status_code == 200

    response = await client.patch(
        f"{API}/users/{user['id']}", json={"role": "viewer"}, headers=admin
    )
    assert response.status_code == 200
    identity = await me(client, key)
    assert identity["role"] == "admin"  # what the key was made for...
    assert identity["permissions"] == sorted(BUILTIN_ROLES["viewer"])  # ...capped by alice now
    response = await client.get(f"{API}/users", headers=key)
    assert response.status_code == 403
    assert code_of(response) == "missing_permission"

    # promoted back, the key regains what it was given, never more than its own role
    response = await client.patch(
        f"{API}/users/{user['id']}", json={"role": "owner"}, headers=admin
    )
    assert response.status_code == 200
    assert (await me(client, key))["permissions"] == sorted(BUILTIN_ROLES["admin"])


async def test_key_dies_with_its_creators_access(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    user = await add_member(client, admin, "mallory", role="admin")
    mallory = bearer((await login_tokens(client, "mallory", PASSWORD))["access_token"])
    key = bearer((await create_key(client, mallory))["key"])
    response = await client.patch(
        f"{API}/users/{user['id']}", json={"is_active": False}, headers=admin
    )
    assert response.status_code == 200
    response = await client.get(f"{API}/auth/me", headers=key)
    assert response.status_code == 401
    assert code_of(response) == "token_revoked"

    await client.patch(f"{API}/users/{user['id']}", json={"is_active": True}, headers=admin)
    assert (await client.get(f"{API}/auth/me", headers=key)).status_code == 200
    assert (await client.delete(f"{API}/users/{user['id']}", headers=admin)).status_code == 204
    assert (await client.get(f"{API}/auth/me", headers=key)).status_code == 401


async def test_key_for_a_custom_role_follows_the_role(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    await create_role(client, admin, "auditor", ["audit:read"])
    key = bearer((await create_key(client, admin, role="auditor"))["key"])
    assert (await me(client, key))["permissions"] == ["audit:read"]
    assert (await client.get(f"{API}/audit/events", headers=key)).status_code == 200
    assert (await client.get(f"{API}/users", headers=key)).status_code == 403
    # deleting the role leaves the key with nothing
    assert (await client.delete(f"{API}/roles/auditor", headers=admin)).status_code == 204
    assert (await me(client, key))["permissions"] == []
    assert (await client.get(f"{API}/audit/events", headers=key)).status_code == 403


async def test_key_for_an_unknown_role_is_refused(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    response = await client.post(
        f"{API}/api-keys", json={"name": "k", "role": "nonexistent"}, headers=admin
    )
    assert response.status_code == 422
    assert error_of(response)["details"]["field"] == "role"


async def test_key_cannot_change_passwords(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    key = bearer((await create_key(client, admin))["key"])
    response = await client.post(
        f"{API}/auth/password",
        json={"current_password": ADMIN_PASSWORD, "new_password": "a-brand-new-password"},
        headers=key,
    )
    assert response.status_code == 422
    await login_tokens(client, "admin", ADMIN_PASSWORD)
