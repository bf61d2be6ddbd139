"""Login: tokens, no user enumeration, disabled users, auditing, and the failure throttle."""

from __future__ import annotations

from datetime import timedelta

import httpx
import jwt
import pytest
from sqlalchemy import update

from it0.auth.models import LoginThrottle
from it0.core.clock import utcnow
from it0.core.security import Passwords
from it0.platform import Platform
from tests.auth.conftest import PlatformFactory
from tests.auth.helpers import (
    API,
    PASSWORD,
    add_member,
    app_client,
    audit_events,
    bearer,
    code_of,
    error_of,
    login_tokens,
    me,
    try_login,
)
from tests.conftest import ADMIN_PASSWORD


class VerifySpy:
    """Counts calls to ``Passwords.verify`` while still running the real argon2 check."""

    def __init__(self, passwords: Passwords) -> None:
        self.real = passwords.verify
        self.calls: list[tuple[str | None, str]] = []

    def __call__(self, password_hash: str | None, password: str) -> bool:
        self.calls.append((password_hash, password))
        return self.real(password_hash, password)


@pytest.fixture
def verify_spy(platform: Platform, monkeypatch: pytest.MonkeyPatch) -> VerifySpy:
    spy = VerifySpy(platform.passwords)
    monkeypatch.setattr(platform.passwords, "verify", spy)
    return spy


async def test_login_returns_access_and_refresh(client: httpx.AsyncClient) -> None:
    tokens = await login_tokens(client, "admin", ADMIN_PASSWORD)
    assert tokens["token_type"] == "bearer"
    assert tokens["expires_in"] == 900
    assert tokens["refresh_token"].startswith("default.")
    claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
    assert claims["ten"] == "default"
    assert claims["typ"] == "access"
    assert claims["exp"] - claims["iat"] == 900
    assert (await me(client, bearer(tokens["access_token"])))["username"] == "admin"


async def test_two_logins_are_independent_sessions(client: httpx.AsyncClient) -> None:
    first = await login_tokens(client, "admin", ADMIN_PASSWORD)
    second = await login_tokens(client, "admin", ADMIN_PASSWORD)
    assert first["refresh_token"] != second["refresh_token"]
    first_claims = jwt.decode(first["access_token"], options={"verify_signature": False})
    second_claims = jwt.decode(second["access_token"], options={"verify_signature": False})
    assert first_claims["fam"] != second_claims["fam"]


async def test_wrong_password_and_unknown_user_look_the_same(
    client: httpx.AsyncClient, verify_spy: VerifySpy
) -> None:
    wrong = await try_login(client, "admin", "not-the-password")
    assert len(verify_spy.calls) == 1
    assert verify_spy.calls[0][0] is not None  # the admin's real hash
    unknown = await try_login(client, "nobody-here", "not-the-password")
    assert len(verify_spy.calls) == 2  # argon2 ran for the unknown user too
    assert verify_spy.calls[1][0] is None  # against the dummy hash

    assert wrong.status_code == unknown.status_code == 401
    assert code_of(wrong) == "invalid_credentials"
    assert wrong.json() == unknown.json()
    assert wrong.headers["www-authenticate"] == unknown.headers["www-authenticate"] == "Bearer"


async def test_member_of_another_tenant_is_an_unknown_user_here(
    client: httpx.AsyncClient, admin: dict[str, str], verify_spy: VerifySpy
) -> None:
    response = await client.post(f"{API}/tenants", json={"slug": "elsewhere"}, headers=admin)
    assert response.status_code == 201, response.text
    other_admin = bearer(
        (await login_tokens(client, "admin", ADMIN_PASSWORD, "elsewhere"))["access_token"]
    )
    await add_member(client, other_admin, "elsewhere-user")
    # right password, wrong tenant: the same answer as for anybody unknown
    response = await try_login(client, "elsewhere-user", PASSWORD, tenant="default")
    assert response.status_code == 401
    assert code_of(response) == "invalid_credentials"
    assert verify_spy.calls[-1][0] is None
    await login_tokens(client, "elsewhere-user", PASSWORD, tenant="elsewhere")


@pytest.mark.parametrize("tenant", ["no-such-tenant", "Not_A_Slug", "x"])
async def test_unknown_tenant_is_404(client: httpx.AsyncClient, tenant: str) -> None:
    response = await try_login(client, "admin", ADMIN_PASSWORD, tenant=tenant)
    assert response.status_code == 404
    assert code_of(response) == "unknown_tenant"


async def test_disabled_user_cannot_log_in(
    client: httpx.AsyncClient, admin: dict[str, str], verify_spy: VerifySpy
) -> None:
    user = await add_member(client, admin, "dora")
    await login_tokens(client, "dora", PASSWORD)
    response = await client.patch(
        f"{API}/users/{user['id']}", json={"is_active": False}, headers=admin
    )
    assert response.status_code == 200, response.text
    assert response.json()["is_active"] is False
    verify_spy.calls.clear()
    disabled = await try_login(client, "dora", PASSWORD)
    unknown = await try_login(client, "nobody-here", PASSWORD)
    assert disabled.status_code == 401
    assert disabled.json() == unknown.json()  # a disabled account is not revealed either
    assert len(verify_spy.calls) == 2


async def test_login_failures_are_audited(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    await try_login(client, "admin", "wrong-password-1")
    await try_login(client, "ghost", "wrong-password-2")
    events = await audit_events(client, admin, "auth.login_failed")
    assert {e["summary"]["username"] for e in events} == {"admin", "ghost"}
    for event in events:
        assert event["action"] == "auth.login_failed"
        assert event["actor_type"] == "anonymous"
        assert event["client_addr"] == "127.0.0.1"
    by_name = {e["summary"]["username"]: e for e in events}
    admin_id = (await me(client, admin))["user_id"]
    assert by_name["admin"]["resource_id"] == admin_id
    assert by_name["ghost"]["resource_id"] is None
    # the passwords that were tried are not kept anywhere in the trail
    body = (await client.get(f"{API}/audit/events", headers=admin)).text
    assert "wrong-password-1" not in body
    assert "wrong-password-2" not in body
    # and successful logins are audited as such
    assert await audit_events(client, admin, "auth.login")


async def test_login_rejects_extra_fields_and_empty_password(client: httpx.AsyncClient) -> None:
    response = await client.post(
        f"{API}/auth/login",
        json={"tenant": "default", "username": "admin", "password": ADMIN_PASSWORD, "admin": True},
    )
    assert response.status_code == 422
    assert code_of(response) == "validation_error"
    response = await try_login(client, "admin", "")
    assert response.status_code == 422
    assert [f["field"] for f in error_of(response)["details"]["fields"]] == ["password"]


# --- throttling -----------------------------------------------------------------------------


async def test_failures_for_one_username_are_throttled(
    client: httpx.AsyncClient, admin: dict[str, str], platform: Platform
) -> None:
    limit = platform.settings.login_max_failures
    await add_member(client, admin, "bob")
    for _ in range(limit):
        response = await try_login(client, "bob", "not-bobs-password")
        assert response.status_code == 401
    # now even the right password is refused, with a hint when to retry
    response = await try_login(client, "bob", PASSWORD)
    assert response.status_code == 429
    assert code_of(response) == "rate_limited"
    retry_after = response.headers["retry-after"]
    assert retry_after.isdigit()
    assert 0 < int(retry_after) <= platform.settings.login_failure_window + 1
    assert error_of(response)["details"]["retry_after"] == int(retry_after)
    # the throttle is per username: others still log in (same client address)
    await login_tokens(client, "admin", ADMIN_PASSWORD)
    # usernames are throttled case-insensitively, so a case change does not get around it
    response = await try_login(client, "BOB", PASSWORD)
    assert response.status_code == 429


async def test_unknown_usernames_are_throttled_too(
    client: httpx.AsyncClient, platform: Platform
) -> None:
    for _ in range(platform.settings.login_max_failures):
        assert (await try_login(client, "ghost", "whatever")).status_code == 401
    response = await try_login(client, "ghost", "whatever")
    assert response.status_code == 429
    assert code_of(response) == "rate_limited"


async def test_successful_login_resets_the_username_counter(
    client: httpx.AsyncClient, platform: Platform
) -> None:
    limit = platform.settings.login_max_failures
    for _ in range(limit - 1):
        assert (await try_login(client, "admin", "wrong-password")).status_code == 401
    await login_tokens(client, "admin", ADMIN_PASSWORD)
    for _ in range(limit - 1):
        assert (await try_login(client, "admin", "wrong-password")).status_code == 401
    await login_tokens(client, "admin", ADMIN_PASSWORD)


async def test_throttled_attempt_does_not_run_argon2(
    platform_factory: PlatformFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = await platform_factory(login_max_failures=2)
    spy = VerifySpy(p.passwords)
    monkeypatch.setattr(p.passwords, "verify", spy)
    async with app_client(p) as client:
        for _ in range(2):
            assert (await try_login(client, "admin", "wrong-password")).status_code == 401
        assert len(spy.calls) == 2
        response = await try_login(client, "admin", ADMIN_PASSWORD)
        assert response.status_code == 429
        assert len(spy.calls) == 2


async def test_failures_per_client_address_are_throttled(
    platform_factory: PlatformFactory,
) -> None:
    p = await platform_factory(login_max_failures=100, login_max_failures_per_ip=3)
    async with (
        app_client(p, ("10.0.0.1", 4000)) as attacker,
        app_client(p, ("10.0.0.2", 4000)) as bystander,
    ):
        # spread over usernames, so no single username reaches its own limit
        for name in ("user-a", "user-b", "user-c"):
            assert (await try_login(attacker, name, "guess")).status_code == 401
        response = await try_login(attacker, "admin", ADMIN_PASSWORD)
        assert response.status_code == 429
        assert code_of(response) == "rate_limited"
        assert int(response.headers["retry-after"]) > 0
        # another address is not affected, for the same account
        await login_tokens(bystander, "admin", ADMIN_PASSWORD)
        # a success elsewhere does not lift the address's throttle
        assert (await try_login(attacker, "admin", ADMIN_PASSWORD)).status_code == 429


async def test_throttle_window_expires(platform_factory: PlatformFactory) -> None:
    """A failure window that has passed counts as no failures (window rewritten in the DB)."""
    p = await platform_factory(login_max_failures=2, login_failure_window=60)
    async with app_client(p) as client:
        for _ in range(2):
            assert (await try_login(client, "admin", "wrong-password")).status_code == 401
        assert (await try_login(client, "admin", ADMIN_PASSWORD)).status_code == 429
        async with p.db.session(write=True) as session:
            rows = await session.execute(
                update(LoginThrottle).values(window_start=utcnow() - timedelta(seconds=61)),
                execution_options={"it0_audit_exempt": True},
            )
            assert rows.rowcount >= 1  # type: ignore[attr-defined]
        await login_tokens(client, "admin", ADMIN_PASSWORD)
