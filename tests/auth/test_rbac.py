"""Roles and permissions: built-in roles, custom roles, and nobody granting more than they hold."""

from __future__ import annotations

import httpx
import pytest

from it0.auth.permissions import BUILTIN_ROLES, PERMISSIONS, TENANT_PERMISSIONS
from tests.auth.helpers import (
    API,
    PASSWORD,
    add_member,
    bearer,
    code_of,
    create_role,
    error_of,
    login_tokens,
    me,
    member_headers,
)
from tests.conftest import ADMIN_PASSWORD


async def test_builtin_roles_are_listed(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    response = await client.get(f"{API}/roles", headers=admin)
    assert response.status_code == 200
    roles = {r["name"]: r for r in response.json()}
    assert set(roles) == {"owner", "admin", "operator", "viewer"}
    for name, perms in BUILTIN_ROLES.items():
        assert roles[name]["builtin"] is True
        assert roles[name]["permissions"] == sorted(perms)


def test_builtin_roles_nest() -> None:
    """viewer < operator < admin < owner, and no tenant role carries platform permissions."""
    viewer, operator, admin, owner = (
        BUILTIN_ROLES[r] for r in ("viewer", "operator", "admin", "owner")
    )
    assert viewer < operator < admin < owner
    assert owner == TENANT_PERMISSIONS
    assert owner - admin == {"tenant:admin"}
    assert not owner & {"tenants:read", "tenants:write"}
    assert set(PERMISSIONS) - owner == {"tenants:read", "tenants:write"}


async def test_me_reports_the_role_and_its_permissions(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    identity = await me(client, admin)
    assert identity["role"] == "owner"
    # the bootstrap admin is also a platform administrator
    assert identity["permissions"] == sorted(TENANT_PERMISSIONS | {"tenants:read", "tenants:write"})
    assert identity["via_api_key"] is None
    for role in ("viewer", "operator", "admin"):
        headers = await member_headers(client, admin, f"{role}-user", role=role)
        identity = await me(client, headers)
        assert identity["role"] == role
        assert identity["permissions"] == sorted(BUILTIN_ROLES[role])


@pytest.mark.parametrize(
    ("method", "path", "permission"),
    [
        ("POST", "/users", "users:write"),
        ("GET", "/users", "users:read"),
        ("GET", "/roles", "roles:read"),
        ("POST", "/roles", "roles:write"),
        ("GET", "/api-keys", "apikeys:read"),
        ("POST", "/api-keys", "apikeys:write"),
        ("GET", "/audit/events", "audit:read"),
        ("GET", "/tenants", "tenants:read"),
        ("POST", "/tenants", "tenants:write"),
    ],
)
async def test_viewer_is_refused_naming_the_permission(
    client: httpx.AsyncClient, admin: dict[str, str], method: str, path: str, permission: str
) -> None:
    viewer = await member_headers(client, admin, "vera", role="viewer")
    body = {"username": "x-user", "password": PASSWORD} if method == "POST" else None
    response = await client.request(method, f"{API}{path}", json=body, headers=viewer)
    assert response.status_code == 403, response.text
    error = error_of(response)
    assert error["code"] == "missing_permission"
    assert error["details"] == {"permission": permission}
    assert permission in error["message"]


async def test_viewer_cannot_add_users_and_nothing_changes(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    viewer = await member_headers(client, admin, "vera", role="viewer")
    response = await client.post(
        f"{API}/users", json={"username": "sneaky", "password": PASSWORD}, headers=viewer
    )
    assert response.status_code == 403
    usernames = [u["username"] for u in (await client.get(f"{API}/users", headers=admin)).json()]
    assert "sneaky" not in usernames


async def test_custom_role_grants_exactly_its_permissions(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    role = await create_role(client, admin, "auditor", ["audit:read"])
    assert role == {
        "name": "auditor",
        "description": "",
        "permissions": ["audit:read"],
        "builtin": False,
    }
    roles = (await client.get(f"{API}/roles", headers=admin)).json()
    assert {
        "name": "auditor",
        "description": "",
        "permissions": ["audit:read"],
        "builtin": False,
    } in roles

    auditor = await member_headers(client, admin, "audrey", role="auditor")
    assert (await me(client, auditor))["permissions"] == ["audit:read"]
    assert (await client.get(f"{API}/audit/events", headers=auditor)).status_code == 200
    assert (await client.get(f"{API}/audit/verify", headers=auditor)).status_code == 200
    response = await client.get(f"{API}/users", headers=auditor)
    assert response.status_code == 403
    assert error_of(response)["details"]["permission"] == "users:read"


async def test_deleting_a_role_takes_its_permissions_away(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    await create_role(client, admin, "auditor", ["audit:read"])
    auditor = await member_headers(client, admin, "audrey", role="auditor")
    assert (await client.delete(f"{API}/roles/auditor", headers=admin)).status_code == 204
    assert (await me(client, auditor))["permissions"] == []
    assert (await client.get(f"{API}/audit/events", headers=auditor)).status_code == 403
    assert (await client.delete(f"{API}/roles/auditor", headers=admin)).status_code == 404
    assert (await client.delete(f"{API}/roles/viewer", headers=admin)).status_code == 404


async def test_role_validation(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    async def post(name: str, permissions: list[str]) -> httpx.Response:
        return await client.post(
            f"{API}/roles", json={"name": name, "permissions": permissions}, headers=admin
        )

    response = await post("weird", ["audit:read", "audit:destroy", "nonsense"])
    assert response.status_code == 422
    error = error_of(response)
    assert error["code"] == "unknown_permission"
    assert error["details"]["unknown"] == ["audit:destroy", "nonsense"]
    # platform permissions are not tenant permissions: no role can hold them
    response = await post("tenant-maker", ["tenants:write"])
    assert response.status_code == 422
    assert code_of(response) == "unknown_permission"
    # built-in names are taken
    response = await post("admin", ["audit:read"])
    assert response.status_code == 422
    assert error_of(response)["details"]["field"] == "name"
    # names follow a pattern
    response = await post("Bad Name", ["audit:read"])
    assert response.status_code == 422
    assert code_of(response) == "validation_error"
    # duplicates conflict
    await create_role(client, admin, "auditor", ["audit:read"])
    response = await post("auditor", ["audit:read"])
    assert response.status_code == 409
    assert code_of(response) == "conflict"
    # permissions are deduplicated and sorted
    role = await create_role(client, admin, "reader", ["users:read", "audit:read", "users:read"])
    assert role["permissions"] == ["audit:read", "users:read"]


async def test_cannot_create_a_role_stronger_than_yourself(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    admin_user = await member_headers(client, admin, "adam", role="admin")
    response = await client.post(
        f"{API}/roles",
        json={"name": "grand", "permissions": ["audit:read", "tenant:admin"]},
        headers=admin_user,
    )
    assert response.status_code == 403
    error = error_of(response)
    assert error["code"] == "exceeds_own_permissions"
    assert error["details"]["missing"] == ["tenant:admin"]
    # a narrower custom role holder, allowed to manage roles, stays within its own set
    await create_role(client, admin, "role-manager", ["roles:read", "roles:write", "audit:read"])
    manager = await member_headers(client, admin, "rory", role="role-manager")
    response = await client.post(
        f"{API}/roles",
        json={"name": "user-admin", "permissions": ["users:write"]},
        headers=manager,
    )
    assert response.status_code == 403
    assert error_of(response)["details"]["missing"] == ["users:write"]
    await create_role(client, manager, "audit-only", ["audit:read"])
    names = [r["name"] for r in (await client.get(f"{API}/roles", headers=admin)).json()]
    assert "user-admin" not in names
    assert "audit-only" in names


async def test_admin_cannot_create_or_touch_owners(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    owner_id = (await me(client, admin))["user_id"]
    target = await add_member(client, admin, "tess", role="viewer")
    adam = await member_headers(client, admin, "adam", role="admin")

    # no promoting to owner, no adding owners
    response = await client.patch(
        f"{API}/users/{target['id']}", json={"role": "owner"}, headers=adam
    )
    assert response.status_code == 403
    assert code_of(response) == "exceeds_own_permissions"
    response = await client.post(
        f"{API}/users",
        json={"username": "new-owner", "password": PASSWORD, "role": "owner"},
        headers=adam,
    )
    assert response.status_code == 403
    assert code_of(response) == "exceeds_own_permissions"

    # no changing an owner's role, password, status or membership
    for method, path, body in (
        ("PATCH", f"/users/{owner_id}", {"role": "viewer"}),
        ("PATCH", f"/users/{owner_id}", {"is_active": False}),
        ("PATCH", f"/users/{owner_id}", {"display_name": "pwned"}),
        ("PUT", f"/users/{owner_id}/password", {"password": "taken-over-password"}),
        ("DELETE", f"/users/{owner_id}", None),
    ):
        response = await client.request(method, f"{API}{path}", json=body, headers=adam)
        assert response.status_code == 403, (method, path, response.text)
        assert code_of(response) == "exceeds_own_permissions"

    # the owner is intact
    await login_tokens(client, "admin", ADMIN_PASSWORD)
    owner = (await client.get(f"{API}/users/{owner_id}", headers=admin)).json()
    assert owner["role"] == "owner"
    assert owner["is_active"] is True
    assert owner["display_name"] == "Administrator"

    # but an admin does manage people below them
    response = await client.patch(
        f"{API}/users/{target['id']}", json={"role": "operator"}, headers=adam
    )
    assert response.status_code == 200
    assert response.json()["role"] == "operator"


async def test_owner_can_promote_to_owner(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    target = await add_member(client, admin, "olga", role="admin")
    response = await client.patch(
        f"{API}/users/{target['id']}", json={"role": "owner"}, headers=admin
    )
    assert response.status_code == 200
    assert response.json()["role"] == "owner"
    olga = bearer((await login_tokens(client, "olga", PASSWORD))["access_token"])
    assert "tenant:admin" in (await me(client, olga))["permissions"]
    # a tenant owner is not a platform administrator
    assert (await client.get(f"{API}/tenants", headers=olga)).status_code == 403


async def test_cannot_raise_your_own_role(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    target = await add_member(client, admin, "ivan", role="admin")
    ivan = bearer((await login_tokens(client, "ivan", PASSWORD))["access_token"])
    response = await client.patch(
        f"{API}/users/{target['id']}", json={"role": "owner"}, headers=ivan
    )
    assert response.status_code == 403
    assert (await me(client, ivan))["role"] == "admin"


async def test_role_changes_apply_to_existing_tokens(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    target = await add_member(client, admin, "uma", role="admin")
    uma = bearer((await login_tokens(client, "uma", PASSWORD))["access_token"])
    assert (await client.get(f"{API}/users", headers=uma)).status_code == 200
    await client.patch(f"{API}/users/{target['id']}", json={"role": "viewer"}, headers=admin)
    # no need to log in again: permissions are read on every request
    assert (await client.get(f"{API}/users", headers=uma)).status_code == 403


async def test_unknown_role_cannot_be_assigned(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    response = await client.post(
        f"{API}/users",
        json={"username": "nora", "password": PASSWORD, "role": "no-such-role"},
        headers=admin,
    )
    assert response.status_code == 422
    assert error_of(response)["details"]["field"] == "role"
