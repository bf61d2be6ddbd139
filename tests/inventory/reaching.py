"""Helpers of the facts and host-key tests: a credential and servers on real sshd hosts."""

from __future__ import annotations

import getpass
from typing import Any

import httpx

from it0.execution._sshd import SshdServer
from tests.auth.helpers import API
from tests.sshd import ClientKeys

SERVERS = f"{API}/servers"


async def add_key_credential(
    client: httpx.AsyncClient, headers: dict[str, str], keys: ClientKeys, name: str = "ssh-key"
) -> str:
    response = await client.post(
        f"{API}/credentials",
        json={
            "name": name,
            "kind": "ssh_key",
            "username": getpass.getuser(),
            "private_key": keys.ed25519,
        },
        headers=headers,
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def add_server(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    name: str,
    host: SshdServer,
    credential_id: str | None,
    **fields: Any,
) -> dict[str, Any]:
    body = {"name": name, "address": host.host, "port": host.port, **fields}
    if credential_id is not None:
        body["credential_id"] = credential_id
    response = await client.post(SERVERS, json=body, headers=headers)
    assert response.status_code == 201, response.text
    server: dict[str, Any] = response.json()
    return server


async def facts(client: httpx.AsyncClient, headers: dict[str, str], ref: str) -> httpx.Response:
    return await client.post(f"{SERVERS}/{ref}/facts", headers=headers)


async def host_key(client: httpx.AsyncClient, headers: dict[str, str], ref: str) -> dict[str, Any]:
    response = await client.get(f"{SERVERS}/{ref}/host-key", headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def key_body(private_key: str) -> list[str]:
    """The secret lines of a private key (what must never show anywhere)."""
    return [line for line in private_key.splitlines() if line and not line.startswith("-----")]
