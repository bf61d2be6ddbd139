"""Clusters over the API and the CLI: CRUD with audit, inherited labels, deletion rules."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from it0.platform import Platform
from tests.audit.helpers import run_cli
from tests.auth.helpers import API, audit_events, code_of, error_of, member_headers
from tests.inventory.test_servers import SERVERS, create, names

CLUSTERS = f"{API}/clusters"


async def create_cluster(
    client: httpx.AsyncClient, headers: dict[str, str], **body: Any
) -> dict[str, Any]:
    response = await client.post(CLUSTERS, json=body, headers=headers)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def test_create_get_update_delete_with_audit(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    cluster = await create_cluster(
        client, admin, name="eu-1", description="Frankfurt", labels={"region": "eu"}
    )
    assert (cluster["name"], cluster["description"], cluster["labels"], cluster["servers"]) == (
        "eu-1",
        "Frankfurt",
        {"region": "eu"},
        0,
    )
    for ref in (cluster["id"], "eu-1"):
        response = await client.get(f"{CLUSTERS}/{ref}", headers=admin)
        assert response.status_code == 200
        assert response.json() == cluster

    response = await client.patch(
        f"{CLUSTERS}/eu-1",
        json={"name": "eu-central", "labels": {"region": None, "tier": "gold"}},
        headers=admin,
    )
    assert response.status_code == 200, response.text
    assert (response.json()["name"], response.json()["labels"]) == ("eu-central", {"tier": "gold"})
    assert (await client.get(f"{CLUSTERS}/eu-1", headers=admin)).status_code == 404

    response = await client.delete(f"{CLUSTERS}/eu-central", headers=admin)
    assert response.status_code == 204
    response = await client.get(f"{CLUSTERS}/{cluster['id']}", headers=admin)
    assert response.status_code == 404
    assert code_of(response) == "not_found"

    events = list(reversed(await audit_events(client, admin, "cluster.*")))
    assert [e["action"] for e in events] == ["cluster.create", "cluster.update", "cluster.delete"]
    assert all(e["resource_id"] == cluster["id"] for e in events)
    assert events[0]["summary"] == {
        "name": "eu-1",
        "description": "Frankfurt",
        "labels": {"region": "eu"},
    }
    assert events[1]["summary"] == {
        "name": "eu-central",
        "changes": {"name": "eu-central", "labels": {"tier": "gold"}},
    }
    assert events[2]["summary"] == {"name": "eu-central", "detached": 0}


async def test_servers_inherit_the_clusters_labels_unless_they_override_them(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    eu = await create_cluster(client, admin, name="eu-1", labels={"region": "eu", "tier": "gold"})
    web1 = await create(client, admin, name="web-1", cluster="eu-1", labels={"role": "web"})
    web2 = await create(client, admin, name="web-2", cluster=eu["id"], labels={"tier": "silver"})
    assert (web1["cluster"], web1["cluster_id"]) == ("eu-1", eu["id"])
    assert web1["labels"] == {"role": "web"}
    assert web1["effective_labels"] == {"region": "eu", "tier": "gold", "role": "web"}
    assert web2["effective_labels"] == {"region": "eu", "tier": "silver"}
    assert await names(client, admin, selector="tier=gold") == ["web-1"]
    assert await names(client, admin, selector="cluster=eu-1,region=eu") == ["web-1", "web-2"]

    # a change to the cluster's labels reaches its servers
    response = await client.patch(
        f"{CLUSTERS}/eu-1", json={"labels": {"tier": None}}, headers=admin
    )
    assert response.status_code == 200
    assert await names(client, admin, selector="tier=gold") == []
    shown = (await client.get(f"{SERVERS}/web-1", headers=admin)).json()
    assert shown["effective_labels"] == {"region": "eu", "role": "web"}

    # and a server taken out of it loses them
    response = await client.patch(f"{SERVERS}/web-1", json={"cluster": None}, headers=admin)
    assert response.status_code == 200
    assert response.json()["effective_labels"] == {"role": "web"}
    assert response.json()["cluster"] is None
    assert (await client.get(f"{CLUSTERS}/eu-1", headers=admin)).json()["servers"] == 1
    response = await client.patch(f"{SERVERS}/web-2", json={"cluster": None}, headers=admin)
    response = await client.patch(f"{SERVERS}/web-2", json={"cluster": eu["id"]}, headers=admin)
    assert response.json()["cluster"] == "eu-1"
    moves = [e["summary"] for e in await audit_events(client, admin, "server.update")]
    assert moves == [
        {"name": "web-2", "changes": {"cluster": "eu-1"}},  # by name, though given by id
        {"name": "web-2", "changes": {"cluster": None}},
        {"name": "web-1", "changes": {"cluster": None}},
    ]


async def test_a_cluster_with_servers_is_kept_unless_forced(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    await create_cluster(client, admin, name="eu-1", labels={"region": "eu"})
    await create(client, admin, name="web-1", cluster="eu-1")
    await create(client, admin, name="web-2", cluster="eu-1")
    response = await client.delete(f"{CLUSTERS}/eu-1", headers=admin)
    assert response.status_code == 409
    assert code_of(response) == "cluster_in_use"
    assert error_of(response)["details"] == {"servers": 2}

    response = await client.delete(f"{CLUSTERS}/eu-1", params={"force": "true"}, headers=admin)
    assert response.status_code == 204
    for name in ("web-1", "web-2"):
        server = (await client.get(f"{SERVERS}/{name}", headers=admin)).json()
        assert (server["cluster"], server["cluster_id"]) == (None, None)
        assert server["effective_labels"] == {}
    [event] = await audit_events(client, admin, "cluster.delete")
    assert event["summary"] == {"name": "eu-1", "detached": 2}


async def test_duplicates_and_invalid_bodies(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    await create_cluster(client, admin, name="eu-1")
    await create_cluster(client, admin, name="us-1")
    response = await client.post(CLUSTERS, json={"name": "eu-1"}, headers=admin)
    assert response.status_code == 409
    assert code_of(response) == "name_taken"
    response = await client.patch(f"{CLUSTERS}/us-1", json={"name": "eu-1"}, headers=admin)
    assert response.status_code == 409
    for body, field in (
        ({"name": "eu 2"}, "name"),
        ({"name": "eu-2", "labels": {"env": "prod"}}, "labels"),
        ({"name": "eu-2", "description": "d" * 501}, "description"),
        ({"name": "eu-2", "servers": 3}, "servers"),
    ):
        response = await client.post(CLUSTERS, json=body, headers=admin)
        assert response.status_code == 422, response.text
        assert error_of(response)["details"]["fields"][0]["field"].split(".")[0] == field
    response = await client.patch(f"{CLUSTERS}/eu-1", json={"description": None}, headers=admin)
    assert response.status_code == 422
    assert error_of(response)["details"]["field"] == "description"


async def test_list_pages_and_selector(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    for i in range(7):
        await create_cluster(
            client, admin, name=f"c-{i}", labels={"region": "eu" if i % 2 else "us"}
        )
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params = {"limit": "3", **({"cursor": cursor} if cursor else {})}
        page = (await client.get(CLUSTERS, params=params, headers=admin)).json()
        seen += [c["name"] for c in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"c-{i}" for i in range(7)]
    response = await client.get(CLUSTERS, params={"selector": "region=eu"}, headers=admin)
    assert [c["name"] for c in response.json()["items"]] == ["c-1", "c-3", "c-5"]
    response = await client.get(CLUSTERS, params={"selector": "c-1 c-2"}, headers=admin)
    assert [c["name"] for c in response.json()["items"]] == ["c-1", "c-2"]
    response = await client.get(CLUSTERS, params={"selector": "region in (eu"}, headers=admin)
    assert response.status_code == 422
    assert error_of(response)["details"]["position"] == 13


async def test_viewer_reads_but_does_not_write(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    await create_cluster(client, admin, name="eu-1")
    viewer = await member_headers(client, admin, "vera", role="viewer")
    assert (await client.get(f"{CLUSTERS}/eu-1", headers=viewer)).status_code == 200
    assert (await client.get(CLUSTERS, headers=viewer)).status_code == 200
    for method, path, body in (
        ("POST", CLUSTERS, {"name": "eu-2"}),
        ("PATCH", f"{CLUSTERS}/eu-1", {"description": "x"}),
        ("DELETE", f"{CLUSTERS}/eu-1", None),
    ):
        response = await client.request(method, path, json=body, headers=viewer)
        assert response.status_code == 403, (method, response.text)
        assert code_of(response) == "missing_permission"


@pytest.mark.parametrize("force", [False, True])
async def test_cli(
    client: httpx.AsyncClient, admin: dict[str, str], platform: Platform, force: bool
) -> None:
    settings = platform.settings
    result = await run_cli(
        settings, "clusters", "add", "eu-1", "--description", "Frankfurt", "-l", "region=eu"
    )
    assert result.exit_code == 0, result.output
    result = await run_cli(settings, "clusters", "add", "eu-1")
    assert result.exit_code == 2
    result = await run_cli(settings, "clusters", "edit", "eu-1", "-l", "tier=gold")
    assert result.exit_code == 0, result.output
    result = await run_cli(
        settings, "servers", "add", "web-1", "--address", "x", "--cluster", "eu-1"
    )
    assert result.exit_code == 0, result.output
    result = await run_cli(settings, "clusters", "list", "--json")
    assert result.exit_code == 0, result.output
    [listed] = json.loads(result.output)
    assert (listed["name"], listed["labels"], listed["servers"]) == (
        "eu-1",
        {"region": "eu", "tier": "gold"},
        1,
    )
    result = await run_cli(settings, "clusters", "show", "eu-1")
    assert result.exit_code == 0
    assert "Frankfurt" in result.output
    args = ["clusters", "rm", "eu-1", *(["--force"] if force else [])]
    result = await run_cli(settings, *args)
    if not force:
        assert result.exit_code == 2
        assert "has 1 server" in result.output
        assert (await client.get(f"{CLUSTERS}/eu-1", headers=admin)).status_code == 200
        return
    assert result.exit_code == 0, result.output
    assert "1 server(s) detached" in result.output
    assert (await client.get(f"{CLUSTERS}/eu-1", headers=admin)).status_code == 404
    assert (await client.get(f"{SERVERS}/web-1", headers=admin)).json()["cluster"] is None
