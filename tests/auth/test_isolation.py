"""Tenants are isolated: probed generically over every route of the app.

Tenant ``other`` gets a member, a custom role, an API key, a cluster, a server in it and
audit events. The bootstrap
admin, acting in ``default`` (where it is owner, and a platform administrator), then
addresses each of ``other``'s resources through every route that takes a path parameter:
each must be 404 (not 403, which would confirm that the resource exists, and certainly not
200). Every list route must not mention any of them.
"""

from __future__ import annotations

import types
import typing
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import BaseModel

from it0.agent.runbooks import load_builtin
from it0.app import create_app
from it0.platform import Platform
from tests.auth.helpers import (
    API,
    PASSWORD,
    RouteInfo,
    add_member,
    api_routes,
    audit_events,
    bearer,
    client_for,
    code_of,
    create_key,
    create_role,
    error_of,
    login_tokens,
    me,
    member_headers,
)
from tests.conftest import ADMIN_PASSWORD

# routes whose path carries a signed token instead of naming a resource (tested on their own)
TOKEN_ROUTES = frozenset({f"{API}/approval-links/{{token}}"})
# PUT creates what it names in the caller's tenant: a 201 there is no leak (GET/DELETE are probed)
UPSERT_ROUTES = frozenset({("PUT", f"{API}/runbooks/{{runbook_id}}")})

# values for the body fields of mutating routes; valid, and damaging if they ever applied
SAMPLE_FIELDS: dict[str, Any] = {
    "password": "probe-password-123",
    "role": "owner",
    "display_name": "probed",
    "is_active": False,
    "name": "probed",
    "address": "198.51.100.66",
    "description": "probed",
    "version": 1,
}


@dataclass
class Other:
    """What tenant ``other`` holds."""

    member_id: str
    member_name: str
    role_name: str
    key_id: str
    key_prefix: str
    key: str
    audit_ids: list[str]
    admin: dict[str, str]
    server_id: str
    server_name: str
    cluster_id: str
    cluster_name: str
    task_id: str
    approval_id: str
    order_id: str
    order_name: str
    runbook_id: str

    @property
    def uuids(self) -> list[str]:
        return [
            self.member_id,
            self.key_id,
            self.server_id,
            self.cluster_id,
            self.task_id,
            self.approval_id,
            self.order_id,
            *self.audit_ids[:3],
        ]

    @property
    def strings(self) -> list[str]:
        return [
            self.role_name,
            self.member_name,
            self.key_prefix,
            self.server_name,
            self.cluster_name,
            self.order_name,
            self.runbook_id,
            self.task_id[:13],
        ]

    @property
    def secrets(self) -> list[str]:
        """Strings that no response in tenant ``default`` may contain."""
        return [
            self.member_id,
            self.member_name,
            self.role_name,
            self.key_id,
            self.key_prefix,
            self.server_id,
            self.server_name,
            self.cluster_id,
            self.cluster_name,
            self.task_id,
            self.approval_id,
            self.order_id,
            self.order_name,
            *self.audit_ids,
        ]


async def _setup_other(client: httpx.AsyncClient, admin: dict[str, str]) -> Other:
    response = await client.post(
        f"{API}/tenants", json={"slug": "other", "name": "Other"}, headers=admin
    )
    assert response.status_code == 201, response.text
    assert response.json()["slug"] == "other"
    other_admin = bearer(
        (await login_tokens(client, "admin", ADMIN_PASSWORD, "other"))["access_token"]
    )
    assert (await me(client, other_admin))["tenant"] == "other"
    member = await add_member(client, other_admin, "olivia-other", role="viewer")
    role = await create_role(client, other_admin, "other-auditor", ["audit:read"])
    key = await create_key(client, other_admin, name="other key", role="viewer")
    assert key["prefix"].startswith("it0_other_")
    response = await client.post(
        f"{API}/clusters",
        json={"name": "other-cluster", "labels": {"region": "other"}},
        headers=other_admin,
    )
    assert response.status_code == 201, response.text
    cluster = response.json()
    response = await client.post(
        f"{API}/servers",
        json={"name": "other-db-1", "address": "203.0.113.77", "cluster": "other-cluster"},
        headers=other_admin,
    )
    assert response.status_code == 201, response.text
    server = response.json()
    task, order = await _other_oversight(client, other_admin)
    runbook = {**load_builtin()[0].model_dump(mode="json"), "id": "other-runbook"}
    response = await client.put(f"{API}/runbooks/other-runbook", json=runbook, headers=other_admin)
    assert response.status_code == 201, response.text
    events = await audit_events(client, other_admin)
    assert {
        "tenant.create",
        "auth.login",
        "user.add",
        "role.create",
        "apikey.create",
        "cluster.create",
        "server.create",
    } <= {e["action"] for e in events}
    return Other(
        member_id=member["id"],
        member_name=member["username"],
        role_name=role["name"],
        key_id=key["id"],
        key_prefix=key["prefix"],
        key=key["key"],
        audit_ids=[e["id"] for e in events],
        admin=other_admin,
        server_id=server["id"],
        server_name=server["name"],
        cluster_id=cluster["id"],
        cluster_name=cluster["name"],
        task_id=task["id"],
        approval_id=task["approval_id"],
        order_id=order["id"],
        order_name=order["name"],
        runbook_id="other-runbook",
    )


async def _other_oversight(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A task waiting for approval and a proposed standing order in tenant ``other``."""
    response = await client.post(
        f"{API}/tasks",
        json={"targets": "other-db-1", "command": "reboot", "reason": "probe"},
        headers=admin,
    )
    assert response.status_code == 201, response.text
    task = response.json()
    assert task["approval_id"] is not None
    response = await client.post(
        f"{API}/standing-orders",
        json={
            "name": "other-order",
            "scope": {
                "targets": "other-db-1",
                "commands": [{"template": "systemctl restart nginx", "params": {}}],
            },
            "expires_at": "2099-01-01T00:00:00Z",
        },
        headers=admin,
    )
    assert response.status_code == 201, response.text
    return task, response.json()


def _body_for(route: RouteInfo) -> dict[str, Any] | None:
    if route.body_field is None:
        return None
    model = route.body_field.field_info.annotation
    if isinstance(model, types.UnionType):  # an optional body: ``Model | None``
        model = next(a for a in typing.get_args(model) if a is not type(None))
    assert isinstance(model, type)
    assert issubclass(model, BaseModel), route.path
    body: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        if name in SAMPLE_FIELDS:
            body[name] = SAMPLE_FIELDS[name]
        else:
            assert not field.is_required(), (
                f"{route.path}: add a sample value for the body field {name!r} to SAMPLE_FIELDS"
            )
    return body


def _candidates(route: RouteInfo, other: Other) -> list[dict[str, str]]:
    """Every substitution of ``other``'s identifiers into the route's path parameters."""
    substitutions: list[dict[str, str]] = [{}]
    for param in route.dependant.path_params:
        if param.field_info.annotation is uuid.UUID:
            values = other.uuids
        else:
            values = other.strings + other.uuids
        substitutions = [{**s, param.name: v} for s in substitutions for v in values]
    return substitutions


async def test_other_tenants_resources_are_not_found_through_any_route(
    platform: Platform,
) -> None:
    app = create_app(platform=platform)
    async with client_for(app) as client:
        admin = bearer((await login_tokens(client, "admin", ADMIN_PASSWORD))["access_token"])
        other = await _setup_other(client, admin)
        default_key = bearer((await create_key(client, admin, role="admin"))["key"])

        probed = 0
        for route in api_routes(app):
            if not route.path_params or route.path in TOKEN_ROUTES:
                continue
            if any((method, route.path) in UPSERT_ROUTES for method in route.methods):
                continue
            body = _body_for(route)
            for substitution in _candidates(route, other):
                path = route.path.format(**substitution)
                for method in sorted(route.methods):
                    for headers in (admin, default_key):
                        response = await client.request(method, path, json=body, headers=headers)
                        assert response.status_code == 404, (method, path, response.text)
                        error = error_of(response)
                        assert error["code"] == "not_found", (method, path)
                        # the resource was not found, not the route (whose 404 says this)
                        assert error["message"] != "Not Found", (method, path)
                        probed += 1
        assert probed >= 30

        # nothing of other's was touched by any of that
        olivia = await client.get(f"{API}/users/{other.member_id}", headers=other.admin)
        assert olivia.status_code == 200
        assert olivia.json()["role"] == "viewer"
        assert olivia.json()["is_active"] is True
        assert olivia.json()["display_name"] == ""
        await login_tokens(client, other.member_name, PASSWORD, "other")
        roles = (await client.get(f"{API}/roles", headers=other.admin)).json()
        assert other.role_name in [r["name"] for r in roles]
        keys = (await client.get(f"{API}/api-keys", headers=other.admin)).json()
        assert [k["revoked_at"] for k in keys if k["id"] == other.key_id] == [None]
        assert (await me(client, bearer(other.key)))["tenant"] == "other"
        server = (await client.get(f"{API}/servers/{other.server_id}", headers=other.admin)).json()
        assert (server["name"], server["address"], server["cluster"]) == (
            other.server_name,
            "203.0.113.77",
            other.cluster_name,
        )
        cluster = await client.get(f"{API}/clusters/{other.cluster_id}", headers=other.admin)
        assert cluster.json()["name"] == other.cluster_name
        assert cluster.json()["description"] == ""
        task = (await client.get(f"{API}/tasks/{other.task_id}", headers=other.admin)).json()
        assert task["status"] == "pending_approval"
        approval = await client.get(f"{API}/approvals/{other.approval_id}", headers=other.admin)
        assert approval.json()["votes"] == []
        order = await client.get(f"{API}/standing-orders/{other.order_id}", headers=other.admin)
        assert order.json()["status"] == "pending_approval"
        assert order.json()["description"] == ""


async def test_list_routes_do_not_show_other_tenants_data(platform: Platform) -> None:
    app = create_app(platform=platform)
    async with client_for(app) as client:
        admin = bearer((await login_tokens(client, "admin", ADMIN_PASSWORD))["access_token"])
        other = await _setup_other(client, admin)
        default_key = bearer((await create_key(client, admin, role="admin"))["key"])
        # default has data of its own of the same kinds, so the lists are not trivially empty
        await add_member(client, admin, "dave-default")
        await create_role(client, admin, "default-auditor", ["audit:read"])
        cluster = {"name": "dave-default-cluster"}
        assert (await client.post(f"{API}/clusters", json=cluster, headers=admin)).is_success
        server = {"name": "dave-default-web", "address": "192.0.2.1", "cluster": cluster["name"]}
        assert (await client.post(f"{API}/servers", json=server, headers=admin)).is_success

        listed = 0
        for route in api_routes(app):
            if route.path_params or "GET" not in route.methods:
                continue
            for headers in (admin, default_key):
                response = await client.get(route.path, headers=headers)
                if route.path == f"{API}/tenants" and headers is default_key:
                    assert response.status_code == 403  # keys never administer the platform
                    continue
                assert response.status_code == 200, (route.path, response.text)
                for secret in other.secrets:
                    assert secret not in response.text, (route.path, secret)
                listed += 1
        assert listed >= 10

        users = (await client.get(f"{API}/users", headers=admin)).text
        assert "dave-default" in users
        roles = (await client.get(f"{API}/roles", headers=admin)).text
        assert "default-auditor" in roles
        assert "dave-default-web" in (await client.get(f"{API}/servers", headers=admin)).text
        keys = (await client.get(f"{API}/api-keys", headers=admin)).json()
        assert len(keys) == 1
        # the other way round: other's lists do not show default's data either
        for path in ("/users", "/roles", "/api-keys", "/audit/events", "/servers", "/clusters"):
            text = (await client.get(f"{API}{path}", headers=other.admin)).text
            assert "dave-default" not in text
            assert "default-auditor" not in text
            assert keys[0]["prefix"] not in text


async def test_api_key_with_a_tampered_tenant_is_rejected(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    other = await _setup_other(client, admin)
    key = (await create_key(client, admin, role="admin"))["key"]
    assert key.startswith("it0_default_")
    assert (await client.get(f"{API}/auth/me", headers=bearer(key))).status_code == 200
    for slug in ("other", "no-such-tenant"):
        tampered = key.replace("it0_default_", f"it0_{slug}_", 1)
        response = await client.get(f"{API}/users", headers=bearer(tampered))
        assert response.status_code == 401, (slug, response.text)
        assert code_of(response) == "invalid_credentials"
    # and the other way round
    tampered = other.key.replace("it0_other_", "it0_default_", 1)
    assert (await client.get(f"{API}/auth/me", headers=bearer(tampered))).status_code == 401


async def test_access_token_of_one_tenant_acts_only_there(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    other = await _setup_other(client, admin)
    # the same person, two logins: each sees its own tenant only
    default_users = {
        u["username"] for u in (await client.get(f"{API}/users", headers=admin)).json()
    }
    other_users = {
        u["username"] for u in (await client.get(f"{API}/users", headers=other.admin)).json()
    }
    assert default_users == {"admin"}
    assert other_users == {"admin", "olivia-other"}
    # a member of other only is nobody in default
    olivia = bearer((await login_tokens(client, "olivia-other", PASSWORD, "other"))["access_token"])
    assert (await me(client, olivia))["tenant"] == "other"
    response = await client.post(
        f"{API}/auth/login",
        json={"tenant": "default", "username": "olivia-other", "password": PASSWORD},
    )
    assert response.status_code == 401


async def test_tenant_admin_of_other_cannot_list_or_create_tenants(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    other = await _setup_other(client, admin)
    response = await client.patch(
        f"{API}/users/{other.member_id}", json={"role": "admin"}, headers=other.admin
    )
    assert response.status_code == 200
    olivia = bearer((await login_tokens(client, "olivia-other", PASSWORD, "other"))["access_token"])
    for method, body in (("GET", None), ("POST", {"slug": "third"})):
        response = await client.request(method, f"{API}/tenants", json=body, headers=olivia)
        assert response.status_code == 403
    assert [t["slug"] for t in (await client.get(f"{API}/tenants", headers=admin)).json()] == [
        "default",
        "other",
    ]


async def test_owner_of_one_tenant_cannot_take_over_accounts_shared_with_another(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    """Users are platform-wide; a tenant's owner must not change what works everywhere.

    The bootstrap admin (owner of ``default``, platform administrator) also owns ``other``.
    Olivia, made owner of ``other`` too, may manage her tenant, but changing the admin's
    password or disabling the account would hand her ``default`` and the platform.
    """
    other = await _setup_other(client, admin)
    response = await client.patch(
        f"{API}/users/{other.member_id}", json={"role": "owner"}, headers=other.admin
    )
    assert response.status_code == 200
    olivia = bearer((await login_tokens(client, "olivia-other", PASSWORD, "other"))["access_token"])
    admin_id = (await me(client, admin))["user_id"]
    for method, path, body in (
        ("PUT", f"/users/{admin_id}/password", {"password": "olivia-owns-you-now"}),
        ("PATCH", f"/users/{admin_id}", {"is_active": False}),
        ("PATCH", f"/users/{admin_id}", {"display_name": "pwned"}),
    ):
        response = await client.request(method, f"{API}{path}", json=body, headers=olivia)
        assert response.status_code == 403, (method, path, response.text)
    await login_tokens(client, "admin", ADMIN_PASSWORD)
    assert (await client.get(f"{API}/auth/me", headers=admin)).status_code == 200
    assert (await me(client, admin))["username"] == "admin"
    response = await client.get(f"{API}/users/{admin_id}", headers=admin)
    assert response.json()["display_name"] == "Administrator"
    # what is hers to decide stays possible: the admin's role in her tenant
    response = await client.patch(f"{API}/users/{admin_id}", json={"role": "admin"}, headers=olivia)
    assert response.status_code == 200, response.text
    # a platform administrator may change shared accounts: adopt olivia into default, too
    response = await client.post(
        f"{API}/users", json={"username": "olivia-other", "role": "viewer"}, headers=admin
    )
    assert response.status_code == 201, response.text
    response = await client.patch(
        f"{API}/users/{other.member_id}", json={"display_name": "Olivia"}, headers=admin
    )
    assert response.status_code == 200, response.text
    assert response.json()["display_name"] == "Olivia"
    # while an admin of default who is no platform administrator may not
    adam = await member_headers(client, admin, "adam-default", role="admin")
    for method, path, body in (
        ("PUT", f"/users/{other.member_id}/password", {"password": "adam-owns-olivia"}),
        ("PATCH", f"/users/{other.member_id}", {"is_active": False}),
    ):
        response = await client.request(method, f"{API}{path}", json=body, headers=adam)
        assert response.status_code == 403, (method, path, response.text)
        assert code_of(response) == "exceeds_own_permissions"
    # her role in default, though, is default's business
    response = await client.patch(
        f"{API}/users/{other.member_id}", json={"role": "operator"}, headers=adam
    )
    assert response.status_code == 200, response.text
    await login_tokens(client, "olivia-other", PASSWORD, "other")
