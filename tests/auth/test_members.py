"""Members of a tenant: add, list, get, change, disable, remove, passwords."""

from __future__ import annotations

import logging
import uuid

import httpx
import pytest

from tests.auth.helpers import (
    API,
    PASSWORD,
    add_member,
    audit_events,
    bearer,
    code_of,
    error_of,
    login_tokens,
    me,
    try_login,
)
from tests.conftest import ADMIN_PASSWORD

MEMBER_FIELDS = {"id", "username", "display_name", "role", "is_active", "created_at"}


async def test_add_list_get(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    response = await client.post(
        f"{API}/users",
        json={"username": "bea", "password": PASSWORD, "role": "operator", "display_name": "Bea"},
        headers=admin,
    )
    assert response.status_code == 201
    bea = response.json()
    assert set(bea) == MEMBER_FIELDS
    assert (bea["username"], bea["role"], bea["display_name"], bea["is_active"]) == (
        "bea",
        "operator",
        "Bea",
        True,
    )
    uuid.UUID(bea["id"])

    listed = (await client.get(f"{API}/users", headers=admin)).json()
    assert [u["username"] for u in listed] == ["admin", "bea"]
    assert {u["id"]: u["role"] for u in listed}[bea["id"]] == "operator"

    response = await client.get(f"{API}/users/{bea['id']}", headers=admin)
    assert response.status_code == 200
    assert response.json() == bea

    response = await client.get(f"{API}/users/{uuid.uuid4()}", headers=admin)
    assert response.status_code == 404
    assert code_of(response) == "not_found"
    response = await client.get(f"{API}/users/not-a-uuid", headers=admin)
    assert response.status_code == 422
    assert code_of(response) == "validation_error"

    [event] = [
        e for e in await audit_events(client, admin, "user.add") if e["resource_id"] == bea["id"]
    ]
    assert event["summary"] == {"username": "bea", "role": "operator", "created": True}


async def test_role_defaults_to_viewer(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    response = await client.post(
        f"{API}/users", json={"username": "val", "password": PASSWORD}, headers=admin
    )
    assert response.status_code == 201
    assert response.json()["role"] == "viewer"


async def test_duplicate_username_conflicts(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    await add_member(client, admin, "dup")
    response = await client.post(
        f"{API}/users", json={"username": "dup", "password": PASSWORD}, headers=admin
    )
    assert response.status_code == 409
    assert code_of(response) == "conflict"
    # a tenant admin who is no platform administrator cannot adopt accounts either
    await add_member(client, admin, "ada", role="admin")
    ada = bearer((await login_tokens(client, "ada", PASSWORD))["access_token"])
    response = await client.post(
        f"{API}/users", json={"username": "dup", "password": PASSWORD}, headers=ada
    )
    assert response.status_code == 409
    assert len((await client.get(f"{API}/users", headers=admin)).json()) == 3


async def test_new_user_needs_a_password(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    response = await client.post(f"{API}/users", json={"username": "nopass"}, headers=admin)
    assert response.status_code == 422
    assert error_of(response)["details"]["field"] == "password"


async def test_patch_role_and_display_name(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    user = await add_member(client, admin, "pat")
    response = await client.patch(
        f"{API}/users/{user['id']}", json={"role": "operator", "display_name": "Pat"}, headers=admin
    )
    assert response.status_code == 200
    assert (response.json()["role"], response.json()["display_name"]) == ("operator", "Pat")
    fetched = (await client.get(f"{API}/users/{user['id']}", headers=admin)).json()
    assert (fetched["role"], fetched["display_name"]) == ("operator", "Pat")
    [event] = [
        e
        for e in await audit_events(client, admin, "user.update")
        if e["resource_id"] == user["id"]
    ]
    assert event["summary"] == {"role": "operator", "display_name": "Pat"}
    # nothing to patch on someone unknown
    response = await client.patch(
        f"{API}/users/{uuid.uuid4()}", json={"role": "viewer"}, headers=admin
    )
    assert response.status_code == 404


async def test_disable_rejects_tokens_and_login(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    user = await add_member(client, admin, "dan")
    tokens = await login_tokens(client, "dan", PASSWORD)
    dan = bearer(tokens["access_token"])
    assert (await client.get(f"{API}/auth/me", headers=dan)).status_code == 200

    response = await client.patch(
        f"{API}/users/{user['id']}", json={"is_active": False}, headers=admin
    )
    assert response.status_code == 200
    assert response.json()["is_active"] is False
    response = await client.get(f"{API}/auth/me", headers=dan)
    assert response.status_code == 401
    assert code_of(response) == "token_revoked"
    response = await try_login(client, "dan", PASSWORD)
    assert response.status_code == 401
    assert code_of(response) == "invalid_credentials"

    # enabled again, the same login works again
    response = await client.patch(
        f"{API}/users/{user['id']}", json={"is_active": True}, headers=admin
    )
    assert response.status_code == 200
    assert (await client.get(f"{API}/auth/me", headers=dan)).status_code == 200
    await login_tokens(client, "dan", PASSWORD)


async def test_remove_membership(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    user = await add_member(client, admin, "rex")
    rex = bearer((await login_tokens(client, "rex", PASSWORD))["access_token"])
    response = await client.delete(f"{API}/users/{user['id']}", headers=admin)
    assert response.status_code == 204
    assert response.content == b""
    assert (await client.get(f"{API}/users/{user['id']}", headers=admin)).status_code == 404
    assert "rex" not in [
        u["username"] for u in (await client.get(f"{API}/users", headers=admin)).json()
    ]
    response = await client.get(f"{API}/auth/me", headers=rex)
    assert response.status_code == 401
    assert (await try_login(client, "rex", PASSWORD)).status_code == 401
    assert (await client.delete(f"{API}/users/{user['id']}", headers=admin)).status_code == 404
    [event] = await audit_events(client, admin, "user.remove")
    assert event["summary"] == {"username": "rex"}
    # the platform administrator may take the (still existing) account back in
    response = await client.post(
        f"{API}/users", json={"username": "rex", "role": "viewer"}, headers=admin
    )
    assert response.status_code == 201, response.text
    assert response.json()["id"] == user["id"]
    await login_tokens(client, "rex", PASSWORD)


async def test_set_password_then_log_in_with_it(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    user = await add_member(client, admin, "sam")
    new_password = "sams-new-password-42"
    response = await client.put(
        f"{API}/users/{user['id']}/password", json={"password": new_password}, headers=admin
    )
    assert response.status_code == 204
    assert response.content == b""
    await login_tokens(client, "sam", new_password)
    response = await try_login(client, "sam", PASSWORD)
    assert response.status_code == 401
    [event] = await audit_events(client, admin, "user.password")
    assert event["resource_id"] == user["id"]
    assert event["summary"] == {"username": "sam", "sessions_ended": 0}


async def test_password_reset_ends_every_login(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    user = await add_member(client, admin, "tom")
    first = await login_tokens(client, "tom", PASSWORD)
    second = await login_tokens(client, "tom", PASSWORD)
    response = await client.put(
        f"{API}/users/{user['id']}/password", json={"password": "toms-new-password"}, headers=admin
    )
    assert response.status_code == 204
    for tokens in (first, second):
        response = await client.get(f"{API}/auth/me", headers=bearer(tokens["access_token"]))
        assert response.status_code == 401
        assert code_of(response) == "token_revoked"
        response = await client.post(
            f"{API}/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
        )
        assert code_of(response) == "token_revoked"


async def test_change_own_password(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    await add_member(client, admin, "cleo")
    cleo = bearer((await login_tokens(client, "cleo", PASSWORD))["access_token"])
    other = bearer((await login_tokens(client, "cleo", PASSWORD))["access_token"])
    response = await client.post(
        f"{API}/auth/password",
        json={"current_password": "not-my-password", "new_password": "cleos-new-password"},
        headers=cleo,
    )
    assert response.status_code == 401
    assert code_of(response) == "invalid_credentials"
    await login_tokens(client, "cleo", PASSWORD)

    response = await client.post(
        f"{API}/auth/password",
        json={"current_password": PASSWORD, "new_password": "cleos-new-password"},
        headers=cleo,
    )
    assert response.status_code == 204
    await login_tokens(client, "cleo", "cleos-new-password")
    assert (await try_login(client, "cleo", PASSWORD)).status_code == 401
    # the session that changed the password goes on; the user's other logins end
    assert (await client.get(f"{API}/auth/me", headers=cleo)).status_code == 200
    assert (await client.get(f"{API}/auth/me", headers=other)).status_code == 401


@pytest.mark.parametrize("password", ["", "short", "123456789"])
async def test_short_passwords_are_refused(
    client: httpx.AsyncClient, admin: dict[str, str], password: str
) -> None:
    user = await add_member(client, admin, "shorty")
    for method, path, body, field in (
        ("POST", "/users", {"username": "tiny", "password": password}, "password"),
        ("PUT", f"/users/{user['id']}/password", {"password": password}, "password"),
        (
            "POST",
            "/auth/password",
            {"current_password": ADMIN_PASSWORD, "new_password": password},
            "new_password",
        ),
    ):
        response = await client.request(method, f"{API}{path}", json=body, headers=admin)
        assert response.status_code == 422, (method, path, response.text)
        error = error_of(response)
        assert error["code"] == "validation_error"
        assert field in [f["field"] for f in error["details"]["fields"]]
    await login_tokens(client, "shorty", PASSWORD)
    await login_tokens(client, "admin", ADMIN_PASSWORD)


async def test_exactly_ten_characters_is_enough(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    await add_member(client, admin, "tenchar", password="0123456789")
    await login_tokens(client, "tenchar", "0123456789")


async def test_passwords_never_leave_the_server(
    client: httpx.AsyncClient, admin: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    first, second, third = ("first-secret-pw-1", "second-secret-pw-2", "third-secret-pw-3")
    bodies: list[str] = []

    response = await client.post(
        f"{API}/users", json={"username": "paula", "password": first}, headers=admin
    )
    bodies.append(response.text)
    user_id = response.json()["id"]
    response = await client.put(
        f"{API}/users/{user_id}/password", json={"password": second}, headers=admin
    )
    bodies.append(response.text)
    tokens = await login_tokens(client, "paula", second)
    response = await client.post(
        f"{API}/auth/password",
        json={"current_password": second, "new_password": third},
        headers=bearer(tokens["access_token"]),
    )
    bodies.append(response.text)
    bodies.append((await try_login(client, "paula", first)).text)
    # a validation error must not echo the input back either
    response = await client.post(
        f"{API}/users", json={"username": "bad name!", "password": first}, headers=admin
    )
    assert response.status_code == 422
    bodies.append(response.text)
    response = await client.post(
        f"{API}/auth/login",
        json={"tenant": "default", "username": "paula", "password": third, "extra": third},
    )
    assert response.status_code == 422
    bodies.append(response.text.replace('"extra"', ""))
    for path in ("/users", f"/users/{user_id}", "/audit/events?limit=500", "/auth/me"):
        bodies.append((await client.get(f"{API}{path}", headers=admin)).text)

    assert len(await audit_events(client, admin, "user.password")) == 2
    for secret in (first, second, third):
        for body in bodies:
            assert secret not in body
        assert secret not in caplog.text
        for record in caplog.records:
            assert secret not in repr(record.__dict__)


async def test_username_rules(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    for username in ("", "has space", "-leading", "x" * 65, "semi;colon", "ünïcode"):
        response = await client.post(
            f"{API}/users", json={"username": username, "password": PASSWORD}, headers=admin
        )
        assert response.status_code == 422, username
        fields = [f["field"] for f in error_of(response)["details"]["fields"]]
        assert fields == ["username"]
    for username in ("a", "first.last", "x@example.com", "A_b-9"):
        await add_member(client, admin, username)


async def test_me_of_a_member(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    user = await add_member(client, admin, "mia", role="operator")
    identity = await me(
        client, bearer((await login_tokens(client, "mia", PASSWORD))["access_token"])
    )
    assert identity["user_id"] == user["id"]
    assert (identity["username"], identity["tenant"], identity["role"]) == (
        "mia",
        "default",
        "operator",
    )


async def test_adopting_an_existing_account_is_audited_as_such(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    """A platform administrator adds an existing account: no new user, no new password."""
    response = await client.post(f"{API}/tenants", json={"slug": "second"}, headers=admin)
    assert response.status_code == 201
    second = bearer((await login_tokens(client, "admin", ADMIN_PASSWORD, "second"))["access_token"])
    original = await add_member(client, second, "shared-sue")
    response = await client.post(
        f"{API}/users",
        json={"username": "shared-sue", "password": "an-ignored-password", "role": "operator"},
        headers=admin,
    )
    assert response.status_code == 201, response.text
    assert response.json()["id"] == original["id"]
    assert response.json()["role"] == "operator"
    # the account's password was not replaced by the adoption
    await login_tokens(client, "shared-sue", PASSWORD, "default")
    assert (await try_login(client, "shared-sue", "an-ignored-password")).status_code == 401
    [event] = [
        e
        for e in await audit_events(client, admin, "user.add")
        if e["resource_id"] == original["id"]
    ]
    assert event["summary"] == {"username": "shared-sue", "role": "operator", "created": False}
