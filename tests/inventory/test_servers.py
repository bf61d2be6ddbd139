"""Servers over the API and the CLI: CRUD with audit, lists, selectors, RBAC, bootstrap."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest

from it0.audit import Actor, AuditContext
from it0.inventory.models import Credential
from it0.platform import Platform
from tests.audit.helpers import run_cli
from tests.auth.helpers import API, audit_events, code_of, error_of, member_headers

SERVERS = f"{API}/servers"


async def create(client: httpx.AsyncClient, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    body.setdefault("address", "192.0.2.10")
    response = await client.post(SERVERS, json=body, headers=headers)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def names(client: httpx.AsyncClient, headers: dict[str, str], **params: str) -> list[str]:
    response = await client.get(SERVERS, params=params, headers=headers)
    assert response.status_code == 200, response.text
    return [s["name"] for s in response.json()["items"]]


async def add_credential(platform: Platform, name: str = "deploy-key") -> uuid.UUID:
    """A row in the vault's table, as the vault would write it (its API is not ours)."""
    async with platform.db.session("t_default", write=True) as session:
        credential = Credential(name=name, kind="ssh_key", secret="v1:ciphertext")
        session.add(credential)
        await session.flush()
        await platform.audit.record(
            session,
            ("default", "t_default"),
            AuditContext(Actor.system("test")),
            "credential.create",
            "credential",
            credential.id,
            {"name": name},
        )
        return credential.id


def local(platform: Platform) -> list[str]:
    """``localhost`` is registered at bootstrap on the embedded (SQLite) default only."""
    return ["localhost"] if platform.db.is_sqlite else []


# --- CRUD -----------------------------------------------------------------------------------


async def test_create_get_update_delete_with_audit(
    client: httpx.AsyncClient, admin: dict[str, str], platform: Platform
) -> None:
    credential_id = await add_credential(platform)
    server = await create(
        client,
        admin,
        name="web-1",
        address="web-1.example.com",
        port=2222,
        username="deploy",
        environment="prod",
        labels={"role": "web", "example.com/team": "ops"},
        credential_id=str(credential_id),
    )
    assert server["name"] == "web-1"
    assert (server["address"], server["port"], server["username"]) == (
        "web-1.example.com",
        2222,
        "deploy",
    )
    assert (server["kind"], server["environment"], server["status"]) == ("ssh", "prod", "unknown")
    assert (
        server["labels"] == server["effective_labels"] == {"role": "web", "example.com/team": "ops"}
    )
    assert server["credential_id"] == str(credential_id)
    assert server["cluster"] is None
    assert server["facts"] == {}
    assert server["last_seen_at"] is None

    for ref in (server["id"], "web-1"):
        response = await client.get(f"{SERVERS}/{ref}", headers=admin)
        assert response.status_code == 200, response.text
        assert response.json() == server

    response = await client.patch(
        f"{SERVERS}/web-1",
        json={"labels": {"role": None, "tier": "gold"}, "port": 22, "username": None},
        headers=admin,
    )
    assert response.status_code == 200, response.text
    updated = response.json()
    assert updated["labels"] == {"example.com/team": "ops", "tier": "gold"}
    assert (updated["port"], updated["username"]) == (22, None)
    assert updated["updated_at"] >= server["updated_at"]

    response = await client.patch(
        f"{SERVERS}/{server['id']}", json={"name": "web-01"}, headers=admin
    )
    assert response.status_code == 200
    assert (await client.get(f"{SERVERS}/web-1", headers=admin)).status_code == 404
    assert (await client.get(f"{SERVERS}/web-01", headers=admin)).json()["id"] == server["id"]

    # a patch that changes nothing writes nothing
    before = await audit_events(client, admin, "server.*")
    response = await client.patch(f"{SERVERS}/web-01", json={"port": 22}, headers=admin)
    assert response.status_code == 200
    assert len(await audit_events(client, admin, "server.*")) == len(before)

    response = await client.delete(f"{SERVERS}/web-01", headers=admin)
    assert response.status_code == 204
    response = await client.get(f"{SERVERS}/{server['id']}", headers=admin)
    assert response.status_code == 404
    assert code_of(response) == "not_found"
    assert (await client.delete(f"{SERVERS}/web-01", headers=admin)).status_code == 404

    events = [
        e for e in await audit_events(client, admin, "server.*") if e["resource_id"] == server["id"]
    ]
    assert [e["action"] for e in reversed(events)] == [
        "server.create",
        "server.update",
        "server.update",
        "server.delete",
    ]
    create_event, first_update, rename, deletion = reversed(events)
    assert create_event["resource_type"] == "server"
    assert create_event["actor_name"] == "admin"
    assert create_event["summary"]["name"] == "web-1"
    assert create_event["summary"]["labels"] == {"role": "web", "example.com/team": "ops"}
    assert first_update["summary"]["changes"] == {
        "labels": {"example.com/team": "ops", "tier": "gold"},
        "port": 22,
        "username": None,
    }
    assert rename["summary"] == {"name": "web-01", "changes": {"name": "web-01"}}
    assert deletion["summary"] == {"name": "web-01", "address": "web-1.example.com"}
    verified = (await client.get(f"{API}/audit/verify", headers=admin)).json()
    assert verified["ok"] is True


async def test_a_local_server_defaults_to_the_loopback_address(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    response = await client.post(SERVERS, json={"name": "control", "kind": "local"}, headers=admin)
    assert response.status_code == 201, response.text
    assert (response.json()["address"], response.json()["kind"]) == ("127.0.0.1", "local")


async def test_duplicate_names_are_409(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    await create(client, admin, name="web-1")
    await create(client, admin, name="web-2")
    response = await client.post(SERVERS, json={"name": "web-1", "address": "x"}, headers=admin)
    assert response.status_code == 409
    assert code_of(response) == "name_taken"
    assert error_of(response)["details"] == {"field": "name"}
    response = await client.patch(f"{SERVERS}/web-2", json={"name": "web-1"}, headers=admin)
    assert response.status_code == 409
    # renaming a server to its own name is no conflict
    response = await client.patch(f"{SERVERS}/web-2", json={"name": "web-2"}, headers=admin)
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "bad name", "address": "x"}, "name"),
        ({"name": "-web", "address": "x"}, "name"),
        ({"name": "w" * 129, "address": "x"}, "name"),
        ({"name": "web"}, "address"),  # ssh needs one
        ({"name": "web", "address": "http://x"}, "address"),
        ({"name": "web", "address": "x", "port": 0}, "port"),
        ({"name": "web", "address": "x", "port": 65536}, "port"),
        ({"name": "web", "address": "x", "kind": "winrm"}, "kind"),
        ({"name": "web", "address": "x", "environment": "Prod"}, "environment"),
        ({"name": "web", "address": "x", "username": "a b"}, "username"),
        ({"name": "web", "address": "x", "labels": {"env": "prod"}}, "labels"),
        ({"name": "web", "address": "x", "labels": {"cluster": "x"}}, "labels"),
        ({"name": "web", "address": "x", "labels": {"a b": "c"}}, "labels"),
        ({"name": "web", "address": "x", "labels": {"role": "a,b"}}, "labels"),
        ({"name": "web", "address": "x", "labels": {"role": ""}}, "labels"),
        ({"name": "web", "address": "x", "cluster": "nowhere"}, "cluster"),
        ({"name": "web", "address": "x", "credential_id": str(uuid.uuid4())}, "credential_id"),
        ({"name": "web", "address": "x", "facts": {"os": "x"}}, "facts"),  # read-only
        ({"name": "web", "address": "x", "status": "online"}, "status"),
    ],
)
async def test_invalid_bodies_are_422_naming_the_field(
    client: httpx.AsyncClient, admin: dict[str, str], body: dict[str, Any], field: str
) -> None:
    response = await client.post(SERVERS, json=body, headers=admin)
    assert response.status_code == 422, response.text
    details = error_of(response)["details"]
    named = details.get("field") or details["fields"][0]["field"]
    assert named.split(".")[0] == field, details


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": None}, "name"),
        ({"address": None}, "address"),
        ({"labels": None}, "labels"),
        ({"port": -1}, "port"),
        ({"environment": None}, "environment"),
        ({"cluster": "nowhere"}, "cluster"),
        ({"labels": {"kind": "x"}}, "labels"),
        ({"id": str(uuid.uuid4())}, "id"),
    ],
)
async def test_invalid_patches_are_422_naming_the_field(
    client: httpx.AsyncClient, admin: dict[str, str], body: dict[str, Any], field: str
) -> None:
    await create(client, admin, name="web-1")
    response = await client.patch(f"{SERVERS}/web-1", json=body, headers=admin)
    assert response.status_code == 422, response.text
    details = error_of(response)["details"]
    named = details.get("field") or details["fields"][0]["field"]
    assert named.split(".")[0] == field, details


# --- lists ----------------------------------------------------------------------------------


async def test_pages_have_no_duplicates_and_miss_nothing(
    client: httpx.AsyncClient, admin: dict[str, str], platform: Platform
) -> None:
    for i in range(23):
        await create(
            client, admin, name=f"node-{i:02d}", labels={"parity": "even" if i % 2 == 0 else "odd"}
        )
    for params, expected in (
        ({}, sorted([f"node-{i:02d}" for i in range(23)] + local(platform))),
        ({"selector": "parity=odd"}, [f"node-{i:02d}" for i in range(1, 23, 2)]),
    ):
        for limit in (1, 5, 11, 500):
            seen: list[str] = []
            cursor: str | None = None
            while True:
                query = {**params, "limit": str(limit)}
                if cursor:
                    query["cursor"] = cursor
                response = await client.get(SERVERS, params=query, headers=admin)
                assert response.status_code == 200, response.text
                page = response.json()
                assert len(page["items"]) <= limit
                seen += [s["name"] for s in page["items"]]
                cursor = page["next_cursor"]
                if cursor is None:
                    break
            assert seen == expected, (params, limit)


async def test_list_with_a_selector(
    client: httpx.AsyncClient, admin: dict[str, str], platform: Platform
) -> None:
    await create(client, admin, name="web-1", environment="prod", labels={"role": "web"})
    await create(
        client, admin, name="web-2", environment="prod", labels={"role": "web", "canary": "1"}
    )
    await create(client, admin, name="api-1", environment="staging", labels={"role": "api"})
    assert await names(client, admin, selector="env=prod,role in (web,api),!canary") == ["web-1"]
    assert await names(client, admin, selector="role") == []  # a name, and there is none
    assert await names(client, admin, selector="role=*") == ["api-1", "web-1", "web-2"]
    assert await names(client, admin, selector="web-2 api-1") == ["api-1", "web-2"]
    assert await names(client, admin, selector="") == sorted(
        ["api-1", "web-1", "web-2", *local(platform)]
    )


async def test_a_bad_selector_is_422_naming_the_position(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    response = await client.get(
        SERVERS, params={"selector": "env=prod,role in (web"}, headers=admin
    )
    assert response.status_code == 422
    error = error_of(response)
    assert error["code"] == "invalid_selector"
    assert error["details"]["field"] == "selector"
    assert error["details"]["position"] == 21
    assert error["details"]["expected"] == "',' or ')'"
    assert "position 21" in error["message"]


# --- the control-plane host -----------------------------------------------------------------


async def test_localhost_is_registered_at_first_start_on_sqlite(
    client: httpx.AsyncClient, admin: dict[str, str], platform: Platform
) -> None:
    response = await client.get(f"{SERVERS}/localhost", headers=admin)
    events = await audit_events(client, admin, "server.create")
    if not platform.db.is_sqlite:
        assert response.status_code == 404
        assert events == []
        return
    assert response.status_code == 200, response.text
    server = response.json()
    assert (server["kind"], server["address"], server["environment"]) == (
        "local",
        "127.0.0.1",
        "dev",
    )
    assert [e["resource_id"] for e in events] == [server["id"]]
    assert events[0]["actor_type"] == "system"
    assert events[0]["actor_name"] == "bootstrap"


# --- access ---------------------------------------------------------------------------------


async def test_viewer_reads_but_does_not_write(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    await create(client, admin, name="web-1")
    viewer = await member_headers(client, admin, "vera", role="viewer")
    assert "web-1" in await names(client, viewer)
    assert (await client.get(f"{SERVERS}/web-1", headers=viewer)).status_code == 200
    for method, path, body in (
        ("POST", SERVERS, {"name": "web-2", "address": "x"}),
        ("PATCH", f"{SERVERS}/web-1", {"port": 2200}),
        ("DELETE", f"{SERVERS}/web-1", None),
    ):
        response = await client.request(method, path, json=body, headers=viewer)
        assert response.status_code == 403, (method, response.text)
        assert code_of(response) == "missing_permission"
    assert (await client.get(f"{SERVERS}/web-1", headers=admin)).json()["port"] == 22
    operator = await member_headers(client, admin, "otto", role="operator")
    response = await client.patch(f"{SERVERS}/web-1", json={"port": 2200}, headers=operator)
    assert response.status_code == 200


async def test_without_a_credential_nothing_is_shown(client: httpx.AsyncClient) -> None:
    for path in (SERVERS, f"{SERVERS}/localhost"):
        assert (await client.get(path)).status_code == 401


# --- the CLI --------------------------------------------------------------------------------


async def test_cli_add_list_show_edit_rm(
    client: httpx.AsyncClient, admin: dict[str, str], platform: Platform
) -> None:
    settings = platform.settings
    await add_credential(platform, "ops-key")
    result = await run_cli(settings, "clusters", "add", "eu-1", "--label", "region=eu")
    assert result.exit_code == 0, result.output
    result = await run_cli(
        settings, "servers", "add", "web-1", "--address", "10.0.0.1", "--port", "2222",
        "--user", "deploy", "--env", "prod", "--label", "role=web", "-l", "tier=gold",
        "--cluster", "eu-1", "--credential", "ops-key",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    result = await run_cli(settings, "servers", "add", "web-1", "--address", "10.0.0.9")
    assert result.exit_code == 2
    assert "already exists" in result.output

    result = await run_cli(settings, "servers", "list", "--selector", "region=eu", "--json")
    assert result.exit_code == 0, result.output
    listed = json.loads(result.output)
    assert [s["name"] for s in listed] == ["web-1"]
    assert listed[0]["effective_labels"] == {"region": "eu", "role": "web", "tier": "gold"}
    assert listed[0]["credential_id"] is not None
    result = await run_cli(settings, "servers", "list")
    assert result.exit_code == 0
    assert "web-1" in result.output

    result = await run_cli(settings, "servers", "list", "--selector", "env=prod,role in (web")
    assert result.exit_code == 2
    assert "position 21" in result.output

    result = await run_cli(
        settings, "servers", "edit", "web-1", "--port", "22", "--remove-label", "tier",
        "--no-cluster", "--no-credential", "--rename", "web-01",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    result = await run_cli(settings, "servers", "show", "web-01", "--json")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert (shown["port"], shown["labels"], shown["cluster"], shown["credential_id"]) == (
        22,
        {"role": "web"},
        None,
        None,
    )
    result = await run_cli(settings, "servers", "edit", "web-01", "--port", "0")
    assert result.exit_code == 2
    assert "port" in result.output

    result = await run_cli(settings, "servers", "rm", "web-01")
    assert result.exit_code == 0, result.output
    result = await run_cli(settings, "servers", "show", "web-01")
    assert result.exit_code == 2
    assert "not found" in result.output

    events = await audit_events(client, admin, "server.*")
    ours = [e for e in events if e["summary"].get("name") in ("web-1", "web-01")]
    assert [e["action"] for e in reversed(ours)] == [
        "server.create",
        "server.update",
        "server.delete",
    ]
    assert all(e["actor_name"].startswith("cli:") for e in ours)
