"""Small helpers shared by the auth tests: HTTP shortcuts and a walk over the app's routes."""

from __future__ import annotations

import inspect
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts

from it0.app import create_app
from it0.auth.deps import Public, Require
from it0.platform import Platform

PASSWORD = "member-password-123"
API = "/api/v1"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def error_of(response: httpx.Response) -> dict[str, Any]:
    """The ``error`` object of an error response, checking the envelope on the way."""
    assert response.headers["content-type"].startswith("application/json"), response.text
    body = response.json()
    assert isinstance(body, dict), body
    assert set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error, dict), body
    assert {"code", "message", "details"} <= set(error), body
    assert "Traceback" not in response.text
    return error


def code_of(response: httpx.Response) -> str:
    return str(error_of(response)["code"])


@asynccontextmanager
async def app_client(
    platform: Platform, client_addr: tuple[str, int] = ("127.0.0.1", 123)
) -> AsyncIterator[httpx.AsyncClient]:
    """A client over a fresh app on ``platform``, seen as coming from ``client_addr``."""
    async with client_for(create_app(platform=platform), client_addr) as client:
        yield client


@asynccontextmanager
async def client_for(
    app: FastAPI, client_addr: tuple[str, int] = ("127.0.0.1", 123)
) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False, client=client_addr)
    async with httpx.AsyncClient(transport=transport, base_url="http://it0.test") as client:
        yield client


async def login_tokens(
    client: httpx.AsyncClient, username: str, password: str, tenant: str = "default"
) -> dict[str, Any]:
    """The token response of a successful login."""
    response = await client.post(
        f"{API}/auth/login", json={"tenant": tenant, "username": username, "password": password}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert isinstance(body, dict)
    return body


async def try_login(
    client: httpx.AsyncClient, username: str, password: str, tenant: str = "default"
) -> httpx.Response:
    return await client.post(
        f"{API}/auth/login", json={"tenant": tenant, "username": username, "password": password}
    )


async def add_member(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    username: str,
    role: str = "viewer",
    password: str = PASSWORD,
) -> dict[str, Any]:
    response = await client.post(
        f"{API}/users",
        json={"username": username, "password": password, "role": role},
        headers=headers,
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert isinstance(body, dict)
    return body


async def member_headers(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    username: str,
    role: str = "viewer",
    password: str = PASSWORD,
) -> dict[str, str]:
    """Add a member and return the headers of a fresh login as that member."""
    await add_member(client, admin, username, role, password)
    tokens = await login_tokens(client, username, password)
    return bearer(str(tokens["access_token"]))


async def create_key(
    client: httpx.AsyncClient, headers: dict[str, str], **body: Any
) -> dict[str, Any]:
    body.setdefault("name", "test key")
    response = await client.post(f"{API}/api-keys", json=body, headers=headers)
    assert response.status_code == 201, response.text
    created = response.json()
    assert isinstance(created, dict)
    return created


async def create_role(
    client: httpx.AsyncClient, headers: dict[str, str], name: str, permissions: list[str]
) -> dict[str, Any]:
    response = await client.post(
        f"{API}/roles", json={"name": name, "permissions": permissions}, headers=headers
    )
    assert response.status_code == 201, response.text
    role = response.json()
    assert isinstance(role, dict)
    return role


async def audit_events(
    client: httpx.AsyncClient, headers: dict[str, str], action: str | None = None
) -> list[dict[str, Any]]:
    params = {"action": action, "limit": "500"} if action else {"limit": "500"}
    response = await client.get(f"{API}/audit/events", params=params, headers=headers)
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    assert isinstance(items, list)
    return items


async def me(client: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, Any]:
    response = await client.get(f"{API}/auth/me", headers=headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert isinstance(body, dict)
    return body


# --- the route walk -------------------------------------------------------------------------


@dataclass(frozen=True)
class RouteInfo:
    path: str
    methods: frozenset[str]
    dependant: Dependant
    body_field: Any

    @property
    def path_params(self) -> list[str]:
        return [p.name for p in self.dependant.path_params]


def api_routes(app: FastAPI) -> list[RouteInfo]:
    """Every FastAPI route of the app, with included routers flattened."""
    routes = []
    for ctx in iter_route_contexts(app.routes):
        if not isinstance(ctx.original_route, APIRoute):
            continue
        routes.append(
            RouteInfo(str(ctx.path), frozenset(ctx.methods or ()), ctx.dependant, ctx.body_field)
        )
    return routes


def other_routes(app: FastAPI) -> list[str]:
    """Paths of the routes that are not FastAPI routes (the docs, served by the framework)."""
    return [
        str(ctx.path)
        for ctx in iter_route_contexts(app.routes)
        if not isinstance(ctx.original_route, APIRoute)
    ]


def _walk(dependant: Dependant, depth: int = 0) -> Iterator[tuple[int, object]]:
    for sub in dependant.dependencies:
        yield depth, sub.call
        yield from _walk(sub, depth + 1)


def sync_calls(app: FastAPI) -> set[str]:
    """Endpoints and dependencies that FastAPI would run in its thread pool (plain functions),
    each named once."""
    found = set()
    for route in api_routes(app):
        calls = [route.dependant.call, *(call for _, call in _walk(route.dependant))]
        for call in calls:
            # a dependency class instance is called through its __call__
            target = call if inspect.isfunction(call) else type(call).__call__
            if not (inspect.iscoroutinefunction(target) or inspect.isasyncgenfunction(target)):
                found.add(getattr(call, "__qualname__", type(call).__qualname__))
    return found


def declarations(route: RouteInfo) -> list[Require | Public]:
    """The access declarations of a route: Require/Public among its own dependencies."""
    return [
        call
        for depth, call in _walk(route.dependant)
        if depth == 0 and isinstance(call, Require | Public)
    ]


def access_problems(app: FastAPI, allowed_public: set[str]) -> dict[str, str]:
    """Routes whose access is not declared exactly once and unambiguously, with the reason."""
    problems: dict[str, str] = {}
    for route in api_routes(app):
        key = f"{','.join(sorted(route.methods))} {route.path}"
        declared = declarations(route)
        nested = [call for _, call in _walk(route.dependant) if isinstance(call, Require | Public)]
        if len(declared) != 1:
            problems[key] = (
                f"declares access {len(declared)} times; exactly one of require()/public"
            )
        elif isinstance(declared[0], Public):
            if route.path not in allowed_public:
                problems[key] = "is public but not in the allowed list"
            elif any(isinstance(call, Require) for call in nested):
                problems[key] = "is public yet depends on an authenticated principal"
        elif any(isinstance(call, Public) for call in nested):
            problems[key] = "requires a permission yet also declares itself public"
        elif any(
            isinstance(call, Require) and call.permission is not None
            for call in nested
            if call is not declared[0]
        ):
            problems[key] = "hides a permission check in a nested dependency"
    return problems


def new_uuid() -> str:
    return str(uuid.uuid4())
