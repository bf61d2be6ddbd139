"""Real ``it0 serve`` processes: bootstrap, two API replicas on one database, roles, ops routes.

The processes come from tests/processes.py; each test's servers stop at its teardown.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import stat
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.processes import (
    ANSI,
    HOST,
    Server,
    StartServer,
    free_port,
    it0_command,
    it0_env,
    server_pool,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[StartServer]:
    """start_server(data_dir, *extra_args, wait=True, **env) -> Server; all stopped at teardown."""
    with server_pool(tmp_path) as start:
        yield start


@pytest.fixture
def pg_database(postgres_url: str) -> Iterator[str]:
    """A fresh PostgreSQL database (dropped afterwards) for processes to share."""
    name = f"it0_proc_{uuid.uuid4().hex[:12]}"
    dsn = postgres_url.replace("postgresql+asyncpg://", "postgresql://", 1)

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield postgres_url.rsplit("/", 1)[0] + "/" + name
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _login(client: httpx.Client, password: str) -> dict[str, Any]:
    response = client.post(
        "/api/v1/auth/login",
        json={"tenant": "default", "username": "admin", "password": password},
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _stop_cleanly(server: Server) -> None:
    """Stop, and check the shutdown (including the final audit checkpoint) went well."""
    # uvicorn finishes the lifespan shutdown, then re-raises the SIGTERM it caught
    assert server.stop() in (0, -signal.SIGTERM)
    text = server.stderr()
    assert "Application shutdown complete" in text
    assert "Traceback" not in text
    errors = [line for line in text.splitlines() if '"level": "error"' in line]
    assert not errors, errors


def _error_code(response: httpx.Response) -> str:
    return str(response.json()["error"]["code"])


# --- bootstrap ----------------------------------------------------------------------------


def test_first_start_prints_the_admin_password_once(
    tmp_path: Path, start_server: StartServer
) -> None:
    data_dir = tmp_path / "data"
    first = start_server(data_dir)
    password = first.printed_password()
    assert password, first.stderr()
    with first.client() as client:
        _login(client, password)
    _stop_cleanly(first)
    assert first.stderr().count(password) == 1  # the banner only, never a log line

    keys = sorted((data_dir / "keys").iterdir())
    assert [k.name for k in keys] == ["audit-checkpoint.key", "master.key", "signing.key"]
    for key in keys:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key.name
    assert stat.S_IMODE((data_dir / "keys").stat().st_mode) == 0o700

    second = start_server(data_dir)
    with second.client() as client:
        _login(client, password)
    assert second.printed_password() is None
    assert password not in second.stderr()
    assert "IT0 is set up" not in second.stderr()
    _stop_cleanly(second)


def test_given_admin_password_is_used_and_not_printed(
    tmp_path: Path, start_server: StartServer
) -> None:
    given = "given-admin-password-4711"
    server = start_server(tmp_path / "data", IT0_ADMIN_PASSWORD=given)
    with server.client() as client:
        _login(client, given)
    _stop_cleanly(server)
    assert server.printed_password() is None
    assert given not in server.stderr()


# --- two API replicas on one PostgreSQL + Redis --------------------------------------------


def test_two_api_processes_share_sessions(
    pg_database: str, redis_url: str, tmp_path: Path, start_server: StartServer
) -> None:
    data_dir = tmp_path / "data"
    shared = {"IT0_DATABASE_URL": pg_database, "IT0_REDIS_URL": redis_url}
    migrated = subprocess.run(
        it0_command("migrate"),
        env=it0_env(data_dir, **shared),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert migrated.returncode == 0, migrated.stderr
    assert "migrated platform schema" in migrated.stdout

    a = start_server(data_dir, "--roles", "api", **shared)
    b = start_server(data_dir, "--roles", "api", **shared)
    password = a.printed_password()
    assert password, a.stderr()
    assert b.printed_password() is None

    with a.client() as on_a, b.client() as on_b:
        for client in (on_a, on_b):
            ready = client.get("/readyz")
            assert ready.status_code == 200, ready.text
            assert ready.json()["checks"] == {"database": "ok", "bus": "ok"}

        first = _login(on_a, password)
        me = on_b.get("/api/v1/auth/me", headers=_bearer(first["access_token"]))
        assert me.status_code == 200, me.text
        assert me.json()["username"] == "admin"

        refreshed = on_b.post(
            "/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]}
        )
        assert refreshed.status_code == 200, refreshed.text
        second = refreshed.json()
        assert second["refresh_token"] != first["refresh_token"]
        assert on_a.get("/api/v1/auth/me", headers=_bearer(second["access_token"])).is_success

        created = on_a.post(
            "/api/v1/api-keys", json={"name": "cross"}, headers=_bearer(second["access_token"])
        )
        assert created.status_code == 201, created.text
        key = created.json()
        via_key = on_b.get("/api/v1/auth/me", headers=_bearer(key["key"]))
        assert via_key.status_code == 200, via_key.text
        assert via_key.json()["via_api_key"] == key["id"]

        # the first refresh token again, on the other replica: the whole family is revoked
        reused = on_a.post("/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
        assert reused.status_code == 401
        assert _error_code(reused) == "token_revoked"
        for token in (first["access_token"], second["access_token"]):
            revoked = on_b.get("/api/v1/auth/me", headers=_bearer(token))
            assert revoked.status_code == 401
            assert _error_code(revoked) == "token_revoked"
        again = on_b.post("/api/v1/auth/refresh", json={"refresh_token": second["refresh_token"]})
        assert again.status_code == 401

        # the API key is not part of the login's family, and both replicas see one chain
        events = on_a.get(
            "/api/v1/audit/events",
            params={"action": "auth.refresh_token_reused"},
            headers=_bearer(key["key"]),
        )
        assert events.status_code == 200, events.text
        assert len(events.json()["items"]) == 1
        verified = on_b.get("/api/v1/audit/verify", headers=_bearer(key["key"]))
        assert verified.status_code == 200
        assert verified.json()["ok"] is True
    for server in (a, b):
        _stop_cleanly(server)


def test_two_api_processes_started_at_once(
    pg_database: str, redis_url: str, tmp_path: Path, start_server: StartServer
) -> None:
    # no prior `it0 migrate` and an empty data dir: both race for the key files, the
    # migrations and the bootstrap
    data_dir = tmp_path / "data"
    shared = {"IT0_DATABASE_URL": pg_database, "IT0_REDIS_URL": redis_url}
    servers = [start_server(data_dir, "--roles", "api", wait=False, **shared) for _ in range(2)]
    for server in servers:
        server.wait_healthy()

    printed = [p for p in (s.printed_password() for s in servers) if p is not None]
    assert len(printed) == 1, [s.stderr()[-2000:] for s in servers]
    password = printed[0]
    with servers[0].client() as on_a, servers[1].client() as on_b:
        tokens = _login(on_b, password)
        me = on_a.get("/api/v1/auth/me", headers=_bearer(tokens["access_token"]))
        assert me.status_code == 200, me.text
        _login(on_a, password)
        tenants = on_b.get("/api/v1/tenants", headers=_bearer(tokens["access_token"]))
        assert [t["slug"] for t in tenants.json()] == ["default"]
    for server in servers:
        _stop_cleanly(server)


# --- roles --------------------------------------------------------------------------------


def test_worker_and_scheduler_roles_serve_no_api(tmp_path: Path, start_server: StartServer) -> None:
    server = start_server(tmp_path / "data", "--roles", "worker,scheduler")
    with server.client() as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200
        assert client.get("/api/v1/auth/me").status_code == 404
        login = client.post(
            "/api/v1/auth/login", json={"tenant": "default", "username": "a", "password": "b"}
        )
        assert login.status_code == 404
    _stop_cleanly(server)


def test_unknown_role_exits_with_a_clear_message(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    done = subprocess.run(
        it0_command("serve", "--port", str(free_port()), "--roles", "api,bogus"),
        env=it0_env(data_dir),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode != 0
    message = ANSI.sub("", done.stderr)
    assert "unknown role" in message
    assert "bogus" in message
    assert "Traceback" not in message


# --- ops routes and logs ------------------------------------------------------------------


def test_readyz_reports_an_unreachable_bus(tmp_path: Path, start_server: StartServer) -> None:
    closed = free_port()  # nothing listens there
    server = start_server(tmp_path / "data", IT0_REDIS_URL=f"redis://{HOST}:{closed}/0")
    with server.client() as client:
        assert client.get("/healthz").status_code == 200
        ready = client.get("/readyz")
    assert ready.status_code == 503
    body = ready.json()
    assert body["status"] == "not_ready"
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["bus"].startswith("unavailable")
    _stop_cleanly(server)


def test_metrics_and_json_logs(tmp_path: Path, start_server: StartServer) -> None:
    password = "log-test-admin-password"
    wrong = "wrong-password-never-logged"
    server = start_server(tmp_path / "data", IT0_ADMIN_PASSWORD=password)
    with server.client() as client:
        tokens = _login(client, password)
        bad = client.post(
            "/api/v1/auth/login",
            json={"tenant": "default", "username": "admin", "password": wrong},
        )
        assert bad.status_code == 401
        # a token in a query string must not reach the log either
        me = client.get(
            "/api/v1/auth/me",
            params={"token": tokens["access_token"]},
            headers=_bearer(tokens["access_token"]),
        )
        assert me.status_code == 200
        request_id = me.headers["x-request-id"]
        metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert "# TYPE it0_http_requests_total counter" in metrics.text
    assert re.search(
        r'it0_http_requests_total\{method="POST",route="/api/v1/auth/login",status="401"\} 1\.0',
        metrics.text,
    ), metrics.text
    _stop_cleanly(server)

    text = server.stderr()
    for secret in (password, wrong, tokens["access_token"], tokens["refresh_token"]):
        assert secret not in text
    assert "Traceback" not in text
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    requests = [line for line in lines if line.get("message") == "request"]
    assert {r["path"] for r in requests} >= {"/healthz", "/api/v1/auth/login", "/metrics"}
    assert all(r.get("request_id") and r.get("status") for r in requests)
    assert any(r["request_id"] == request_id and r["path"] == "/api/v1/auth/me" for r in requests)
