"""Shared fixtures. Real servers come from tests/services.py; missing ones fail, never skip."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from pydantic import SecretStr

from it0.app import create_app
from it0.audit import install_audit_guard
from it0.auth.bootstrap import bootstrap
from it0.core.settings import Settings
from it0.platform import Platform
from tests import netguard
from tests.services import ServerHandle, postgres_server, redis_server


@pytest.fixture(scope="session", autouse=True)
def network_guard() -> Iterator[None]:
    """Nothing in the suite reaches beyond this machine: a real model API call fails."""
    with netguard.guarded():
        yield


def _serve(start: Callable[[], ServerHandle]) -> Iterator[str]:
    try:
        handle = start()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield handle.url
    finally:
        handle.stop()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """postgresql+asyncpg:// URL of a real PostgreSQL (database ``test``)."""
    yield from _serve(postgres_server)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """redis:// URL of a real Redis."""
    yield from _serve(redis_server)


# --- the platform on both databases ---------------------------------------------------------

ADMIN_PASSWORD = "admin-password-for-tests"
BACKENDS = ["sqlite", "postgresql"]


def _asyncpg_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def database_url(backend: str, request: pytest.FixtureRequest) -> AsyncIterator[str | None]:
    """None for SQLite (files under the data dir); a fresh PostgreSQL database otherwise."""
    if backend == "sqlite":
        yield None
        return
    base: str = request.getfixturevalue("postgres_url")
    name = f"it0_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(_asyncpg_dsn(base))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield base.rsplit("/", 1)[0] + "/" + name
    admin = await asyncpg.connect(_asyncpg_dsn(base))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def make_settings(data_dir: Path, database_url: str | None, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "data_dir": data_dir,
        "database_url": database_url,
        "admin_password": SecretStr(ADMIN_PASSWORD),
        # cheap argon2 so the suite stays fast; production cost is tested in test_security
        "argon2_time_cost": 1,
        "argon2_memory_kib": 1024,
        "argon2_parallelism": 1,
        "log_json": True,
        **overrides,
    }
    return Settings.model_validate(values)


@pytest.fixture
def settings(tmp_path: Path, database_url: str | None) -> Settings:
    return make_settings(tmp_path / "data", database_url)


@pytest.fixture
async def platform(settings: Settings) -> AsyncIterator[Platform]:
    install_audit_guard()
    p = Platform.create(settings)
    await bootstrap(p)
    try:
        yield p
    finally:
        await p.close()


@pytest.fixture
async def client(platform: Platform) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(platform=platform)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://it0.test") as c:
        yield c


async def login(
    client: httpx.AsyncClient,
    username: str = "admin",
    password: str = ADMIN_PASSWORD,
    tenant: str = "default",
) -> dict[str, str]:
    """Authorization headers for a fresh login."""
    response = await client.post(
        "/api/v1/auth/login", json={"tenant": tenant, "username": username, "password": password}
    )
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


@pytest.fixture
async def admin(client: httpx.AsyncClient) -> dict[str, str]:
    return await login(client)
