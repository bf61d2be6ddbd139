"""Every route declares its access exactly once: ``require(permission)`` or ``public``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI

from it0.app import create_app
from it0.auth.deps import Audit, Authenticated, Public, Require, TenantSession, public, require
from it0.auth.permissions import PERMISSIONS
from it0.auth.tokens import Principal
from tests.auth.helpers import (
    API,
    access_problems,
    api_routes,
    code_of,
    declarations,
    new_uuid,
    other_routes,
    sync_calls,
)
from tests.conftest import make_settings

ALLOWED_PUBLIC = {
    "/healthz",
    "/readyz",
    "/metrics",
    "/api/v1/auth/login",
    "/api/v1/auth/refresh",
    "/api/v1/approval-links/{token}",  # the signed link is the credential
}
DOCS = {"/docs", "/openapi.json", "/redoc", "/docs/oauth2-redirect"}
# a voice call's socket: authenticated by the short-lived token bound to that call
WEBSOCKETS = {"/api/v1/voice/ws/{session_id}"}


@pytest.fixture
def app(tmp_path: Path) -> FastAPI:
    """The full app; only its routes are inspected, so no database is involved."""
    return create_app(make_settings(tmp_path / "data", None))


def test_every_route_declares_its_access(app: FastAPI) -> None:
    routes = api_routes(app)
    assert len(routes) >= 20  # the walk did see the included routers
    assert access_problems(app, ALLOWED_PUBLIC) == {}


def test_public_routes_are_exactly_the_allowed_ones(app: FastAPI) -> None:
    public_paths = {
        route.path for route in api_routes(app) if isinstance(declarations(route)[0], Public)
    }
    assert public_paths == ALLOWED_PUBLIC


def test_no_endpoint_or_dependency_runs_in_the_thread_pool(app: FastAPI) -> None:
    """FastAPI runs a plain function in its thread pool, a hop per request and call."""
    assert sync_calls(app) == set()


def test_only_the_docs_and_sockets_are_not_api_routes(app: FastAPI) -> None:
    assert set(other_routes(app)) == DOCS | WEBSOCKETS


def test_declared_permissions_exist(app: FastAPI) -> None:
    for route in api_routes(app):
        declared = declarations(route)[0]
        if isinstance(declared, Require) and declared.permission is not None:
            assert declared.permission in PERMISSIONS, (route.path, declared.permission)


def test_known_route_permissions(app: FastAPI) -> None:
    """Spot checks that the walk reads the right declaration for the right route."""
    table = {(m, r.path): declarations(r)[0] for r in api_routes(app) for m in r.methods}
    expected = {
        ("GET", f"{API}/users"): "users:read",
        ("POST", f"{API}/users"): "users:write",
        ("PUT", f"{API}/users/{{user_id}}/password"): "users:write",
        ("POST", f"{API}/api-keys"): "apikeys:write",
        ("GET", f"{API}/audit/events"): "audit:read",
        ("POST", f"{API}/tenants"): "tenants:write",
        ("GET", f"{API}/auth/me"): None,
        ("POST", f"{API}/auth/logout"): None,
    }
    for key, permission in expected.items():
        declared = table[key]
        assert isinstance(declared, Require), key
        assert declared.permission == permission, key


# --- the walker itself catches what it must -----------------------------------------------


async def sneaky(principal: Annotated[Principal, require("audit:read")]) -> None:
    """A dependency that checks a permission of its own (module level: annotations are
    strings here, and FastAPI resolves them in the module's globals)."""
    return None


def _fresh_app(tmp_path: Path) -> FastAPI:
    return create_app(make_settings(tmp_path / "data", None))


def test_walker_flags_an_undeclared_route(tmp_path: Path) -> None:
    app = _fresh_app(tmp_path)

    @app.get("/api/v1/forgotten")
    async def forgotten(session: TenantSession) -> dict[str, str]:
        """Authenticated deep down, but the route itself declares nothing."""
        return {}

    problems = access_problems(app, ALLOWED_PUBLIC)
    assert set(problems) == {"GET /api/v1/forgotten"}
    assert "exactly one" in problems["GET /api/v1/forgotten"]


def test_walker_flags_a_bare_route(tmp_path: Path) -> None:
    app = _fresh_app(tmp_path)

    @app.delete("/api/v1/anything")
    async def anything() -> None:
        return None

    assert set(access_problems(app, ALLOWED_PUBLIC)) == {"DELETE /api/v1/anything"}


def test_walker_flags_an_undeclared_route_in_an_included_router(tmp_path: Path) -> None:
    router = APIRouter(prefix="/api/v1/extra")

    @router.get("/declared")
    async def declared(_: Annotated[Principal, require("users:read")]) -> None:
        return None

    @router.post("/undeclared")
    async def undeclared(audit: Audit) -> None:
        return None

    app = _fresh_app(tmp_path)
    app.include_router(router)
    assert set(access_problems(app, ALLOWED_PUBLIC)) == {"POST /api/v1/extra/undeclared"}


def test_walker_sees_router_level_declarations(tmp_path: Path) -> None:
    router = APIRouter(prefix="/api/v1/guarded", dependencies=[require("audit:read")])

    @router.get("/thing")
    async def thing() -> None:
        return None

    app = _fresh_app(tmp_path)
    app.include_router(router)
    assert access_problems(app, ALLOWED_PUBLIC) == {}


def test_walker_flags_double_and_contradictory_declarations(tmp_path: Path) -> None:
    app = _fresh_app(tmp_path)

    @app.get("/api/v1/twice")
    async def twice(a: Authenticated, b: Annotated[Principal, require("users:read")]) -> None:
        return None

    @app.get("/api/v1/both", dependencies=[public])
    async def both(principal: Authenticated) -> None:
        return None

    @app.get("/api/v1/open", dependencies=[public])
    async def open_route() -> None:
        return None

    @app.get("/api/v1/hidden")
    async def hidden(me: Authenticated, _: Annotated[None, Depends(sneaky)]) -> None:
        return None

    problems = access_problems(app, ALLOWED_PUBLIC)
    assert set(problems) == {
        "GET /api/v1/twice",
        "GET /api/v1/both",
        "GET /api/v1/open",
        "GET /api/v1/hidden",
    }
    assert "not in the allowed list" in problems["GET /api/v1/open"]
    assert "nested" in problems["GET /api/v1/hidden"]


# --- and at run time: nothing but the public routes answers without a credential ----------


async def test_every_non_public_route_needs_a_credential(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    app = _fresh_app(tmp_path)
    checked = 0
    for route in api_routes(app):
        if route.path in ALLOWED_PUBLIC:
            continue
        path = route.path
        for name in route.path_params:
            path = path.replace(f"{{{name}}}", new_uuid())
        for method in route.methods:
            for headers in ({}, {"Authorization": "Bearer not-a-token"}):
                response = await client.request(method, path, headers=headers)
                assert response.status_code == 401, (method, path, response.text)
                assert code_of(response) == "unauthenticated"
                assert response.headers["www-authenticate"] == "Bearer"
            checked += 1
    assert checked >= 15


async def test_public_routes_answer_without_a_credential(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await client.get("/metrics")).status_code == 200
    response = await client.get("/readyz")
    assert response.status_code == 200, response.text
    assert response.json()["checks"]["database"] == "ok"
    for path in ("/api/v1/auth/login", "/api/v1/auth/refresh"):
        response = await client.post(path, json={})
        assert response.status_code == 422  # it got as far as the body: no credential asked
    assert (await client.get("/openapi.json")).status_code == 200
