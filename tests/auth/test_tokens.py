"""Access and refresh tokens: rotation, reuse detection, logout, expiry, forgery, garbage."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from datetime import timedelta
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import update

from it0.auth.models import RefreshToken
from it0.core.clock import utcnow
from it0.core.security import TokenSigner, sha256_hex
from it0.platform import Platform
from tests.auth.helpers import (
    API,
    PASSWORD,
    add_member,
    audit_events,
    bearer,
    code_of,
    create_key,
    login_tokens,
)
from tests.conftest import ADMIN_PASSWORD


async def _refresh(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.post(f"{API}/auth/refresh", json={"refresh_token": token})


async def _me_status(client: httpx.AsyncClient, access: str) -> int:
    return (await client.get(f"{API}/auth/me", headers=bearer(access))).status_code


def _claims(token: str) -> dict[str, Any]:
    claims = jwt.decode(token, options={"verify_signature": False})
    assert isinstance(claims, dict)
    return claims


async def test_refresh_rotates_the_pair(client: httpx.AsyncClient) -> None:
    first = await login_tokens(client, "admin", ADMIN_PASSWORD)
    response = await _refresh(client, first["refresh_token"])
    assert response.status_code == 200, response.text
    second = response.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert second["refresh_token"].startswith("default.")
    assert second["expires_in"] == 900
    # the same login (family) continues
    assert _claims(second["access_token"])["fam"] == _claims(first["access_token"])["fam"]
    # both access tokens work: rotation does not revoke the old one before it expires
    assert await _me_status(client, first["access_token"]) == 200
    assert await _me_status(client, second["access_token"]) == 200
    # and the new refresh token rotates again
    third = await _refresh(client, second["refresh_token"])
    assert third.status_code == 200


async def test_reused_refresh_token_revokes_the_whole_family(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    first = await login_tokens(client, "admin", ADMIN_PASSWORD)
    second = (await _refresh(client, first["refresh_token"])).json()
    third = (await _refresh(client, second["refresh_token"])).json()

    # someone presents the first refresh token again: it was stolen, or replayed
    reused = await _refresh(client, first["refresh_token"])
    assert reused.status_code == 401
    assert code_of(reused) == "token_revoked"

    # every token of that login is dead now, the newest ones included
    newest = await _refresh(client, third["refresh_token"])
    assert newest.status_code == 401
    assert code_of(newest) == "token_revoked"
    for pair in (first, second, third):
        response = await client.get(f"{API}/auth/me", headers=bearer(pair["access_token"]))
        assert response.status_code == 401
        assert code_of(response) == "token_revoked"

    # another login of the same user is untouched
    assert (await client.get(f"{API}/auth/me", headers=admin)).status_code == 200

    events = await audit_events(client, admin, "auth.refresh_token_reused")
    assert len(events) == 1
    assert events[0]["resource_type"] == "token_family"
    assert events[0]["resource_id"] == _claims(first["access_token"])["fam"]
    assert events[0]["summary"] == {"revoked": True}


async def test_concurrent_refreshes_of_one_token_let_only_one_through(
    client: httpx.AsyncClient,
) -> None:
    tokens = await login_tokens(client, "admin", ADMIN_PASSWORD)
    results = await asyncio.gather(*(_refresh(client, tokens["refresh_token"]) for _ in range(2)))
    assert sorted(r.status_code for r in results) == [200, 401]
    winner = next(r for r in results if r.status_code == 200).json()
    # the second use counts as reuse, so the winner's tokens are revoked as well
    assert (await _refresh(client, winner["refresh_token"])).status_code == 401
    assert await _me_status(client, winner["access_token"]) == 401


async def test_logout_revokes_the_family(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    tokens = await login_tokens(client, "admin", ADMIN_PASSWORD)
    access = bearer(tokens["access_token"])
    response = await client.post(f"{API}/auth/logout", headers=access)
    assert response.status_code == 204
    assert response.content == b""
    response = await client.get(f"{API}/auth/me", headers=access)
    assert response.status_code == 401
    assert code_of(response) == "token_revoked"
    response = await _refresh(client, tokens["refresh_token"])
    assert response.status_code == 401
    assert code_of(response) == "token_revoked"
    # logging out twice is not possible: the token is already revoked
    assert (await client.post(f"{API}/auth/logout", headers=access)).status_code == 401
    # other sessions stay
    assert (await client.get(f"{API}/auth/me", headers=admin)).status_code == 200
    events = await audit_events(client, admin, "auth.logout")
    assert [e["resource_id"] for e in events] == [_claims(tokens["access_token"])["fam"]]


async def test_an_api_key_cannot_log_out(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    key = await create_key(client, admin)
    response = await client.post(f"{API}/auth/logout", headers=bearer(key["key"]))
    assert response.status_code == 401
    # and the key is not affected by the attempt
    assert (await client.get(f"{API}/auth/me", headers=bearer(key["key"]))).status_code == 200


async def test_expired_access_token_is_rejected(
    client: httpx.AsyncClient, platform: Platform
) -> None:
    tokens = await login_tokens(client, "admin", ADMIN_PASSWORD)
    claims = _claims(tokens["access_token"])
    ids = {
        "user_id": claims["sub"],
        "tenant_id": claims["tid"],
        "slug": claims["ten"],
        "family_id": claims["fam"],
    }
    expired = platform.signer.issue(**ids, now=utcnow() - 2 * platform.signer.ttl)
    response = await client.get(f"{API}/auth/me", headers=bearer(expired))
    assert response.status_code == 401
    assert code_of(response) == "unauthenticated"
    assert "expired" in response.json()["error"]["message"]
    assert response.headers["www-authenticate"] == "Bearer"
    # the very same claims, issued now, are accepted: it is the expiry that matters
    fresh = platform.signer.issue(**ids, now=utcnow())
    assert await _me_status(client, fresh) == 200


async def test_token_signed_by_another_key_is_rejected(
    client: httpx.AsyncClient, platform: Platform
) -> None:
    tokens = await login_tokens(client, "admin", ADMIN_PASSWORD)
    claims = _claims(tokens["access_token"])
    forger = TokenSigner(Ed25519PrivateKey.generate(), timedelta(minutes=15))
    forged = forger.issue(
        user_id=claims["sub"],
        tenant_id=claims["tid"],
        slug=claims["ten"],
        family_id=claims["fam"],
        now=utcnow(),
    )
    response = await client.get(f"{API}/auth/me", headers=bearer(forged))
    assert response.status_code == 401
    assert code_of(response) == "unauthenticated"


def _unsigned(payload: dict[str, Any]) -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(payload)}."


def _garbage(claims: dict[str, Any]) -> list[str]:
    real = {**claims, "exp": claims["exp"] + 3600}
    return [
        "garbage",
        "a.b.c",
        "a.b",
        "...",
        "x" * 5000,
        "it0_",
        "it0_default",
        "it0_default_",
        "it0_default_deadbeef",
        "it0_default_deadbeefnotarealkey",
        "it0_no-such-tenant_deadbeefnotarealkey",
        "it0_NOT!A!SLUG_deadbeef",
        "it0_x_deadbeef",
        _unsigned(real),  # alg=none with perfectly valid claims
        _unsigned({**real, "ten": "no-such-tenant"}),
        _unsigned({**real, "ten": "../../etc"}),
        _unsigned({**real, "ten": 42}),
        _unsigned({**real, "ten": None}),
        _unsigned({k: v for k, v in real.items() if k != "ten"}),
        jwt.encode({**real, "typ": "access"}, "a-shared-secret-of-32-bytes-or-more!", "HS256"),
    ]


async def test_garbage_bearer_tokens_are_401_json(client: httpx.AsyncClient) -> None:
    tokens = await login_tokens(client, "admin", ADMIN_PASSWORD)
    for credential in _garbage(_claims(tokens["access_token"])):
        response = await client.get(f"{API}/auth/me", headers=bearer(credential))
        assert response.status_code == 401, (credential[:60], response.text)
        assert code_of(response) in {"unauthenticated", "invalid_credentials"}, credential[:60]
        assert response.headers["www-authenticate"] == "Bearer"


async def test_garbage_refresh_tokens_are_rejected_without_500(
    client: httpx.AsyncClient,
) -> None:
    tokens = await login_tokens(client, "admin", ADMIN_PASSWORD)
    candidates = [
        "garbage",
        "a.b.c",
        "default.",
        "default.not-a-real-token",
        tokens["access_token"],  # an access token is not a refresh token
    ]
    for token in candidates:
        response = await _refresh(client, token)
        assert response.status_code == 401, (token[:60], response.text)
        assert code_of(response) in {"unauthenticated", "invalid_credentials"}
    # a refresh token naming a tenant that does not exist
    for token in ("no-such-tenant.secret", "Not_A_Slug.secret", ".secret"):
        response = await _refresh(client, token)
        assert response.status_code == 404, (token, response.text)
        assert code_of(response) == "unknown_tenant"


async def test_refresh_token_of_one_tenant_is_not_valid_as_another(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    response = await client.post(f"{API}/tenants", json={"slug": "other"}, headers=admin)
    assert response.status_code == 201, response.text
    tokens = await login_tokens(client, "admin", ADMIN_PASSWORD)
    secret = tokens["refresh_token"].split(".", 1)[1]
    response = await _refresh(client, f"other.{secret}")
    assert response.status_code == 401
    assert code_of(response) == "invalid_credentials"
    # the real one is unharmed by the attempt
    assert (await _refresh(client, tokens["refresh_token"])).status_code == 200


async def test_missing_or_malformed_authorization_header(client: httpx.AsyncClient) -> None:
    tokens = await login_tokens(client, "admin", ADMIN_PASSWORD)
    for headers in (
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer    "},
        {"Authorization": f"Basic {tokens['access_token']}"},
        {"Authorization": tokens["access_token"]},
    ):
        response = await client.get(f"{API}/auth/me", headers=headers)
        assert response.status_code == 401, headers
        assert code_of(response) == "unauthenticated"
        assert response.headers["www-authenticate"] == "Bearer"
    # the scheme is case-insensitive
    response = await client.get(
        f"{API}/auth/me", headers={"Authorization": f"bearer {tokens['access_token']}"}
    )
    assert response.status_code == 200


async def test_expired_refresh_token_is_rejected(
    client: httpx.AsyncClient, platform: Platform
) -> None:
    tokens = await login_tokens(client, "admin", ADMIN_PASSWORD)
    async with platform.db.session(write=True) as session:
        await session.execute(
            update(RefreshToken)
            .where(RefreshToken.token_hash == sha256_hex(tokens["refresh_token"]))
            .values(expires_at=utcnow() - timedelta(seconds=1)),
            execution_options={"it0_audit_exempt": True},
        )
    response = await _refresh(client, tokens["refresh_token"])
    assert response.status_code == 401
    assert "expired" in response.json()["error"]["message"]


async def test_refresh_stops_when_the_user_is_disabled_or_removed(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    user = await add_member(client, admin, "carol")
    disabled = await login_tokens(client, "carol", PASSWORD)
    removed = await login_tokens(client, "carol", PASSWORD)
    response = await client.patch(
        f"{API}/users/{user['id']}", json={"is_active": False}, headers=admin
    )
    assert response.status_code == 200
    response = await _refresh(client, disabled["refresh_token"])
    assert response.status_code == 401
    assert code_of(response) == "token_revoked"

    response = await client.patch(
        f"{API}/users/{user['id']}", json={"is_active": True}, headers=admin
    )
    assert response.status_code == 200
    assert (await client.delete(f"{API}/users/{user['id']}", headers=admin)).status_code == 204
    response = await _refresh(client, removed["refresh_token"])
    assert response.status_code == 401
    assert code_of(response) == "token_revoked"
    assert await _me_status(client, removed["access_token"]) == 401


@pytest.mark.parametrize("field", ["sub", "tid", "fam"])
async def test_access_token_for_unknown_ids_is_rejected(
    client: httpx.AsyncClient, platform: Platform, field: str
) -> None:
    """Validly signed, but naming a user, tenant or login that does not exist."""
    tokens = await login_tokens(client, "admin", ADMIN_PASSWORD)
    claims = {**_claims(tokens["access_token"]), field: str(uuid.uuid4())}
    token = platform.signer.issue(
        user_id=claims["sub"],
        tenant_id=claims["tid"],
        slug=claims["ten"],
        family_id=claims["fam"],
        now=utcnow(),
    )
    response = await client.get(f"{API}/auth/me", headers=bearer(token))
    assert response.status_code == 401
    assert code_of(response) == "token_revoked"
