"""Real ``it0 serve`` processes: bootstrap, two API replicas on one database, roles, ops routes.

Every server is started as ``python -m it0 serve`` on a free port with its own data dir and
cheap argon2 settings, polled until /healthz answers, and terminated by its PID at teardown.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

pytestmark = pytest.mark.slow

HOST = "127.0.0.1"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
CHEAP_ARGON2 = {
    "IT0_ARGON2_TIME_COST": "1",
    "IT0_ARGON2_MEMORY_KIB": "1024",
    "IT0_ARGON2_PARALLELISM": "1",
}
_PASSWORD_LINE = re.compile(r"password: (\S+)")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    """The parent's environment without any IT0_ setting, plus the given ones."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IT0_")}
    env.update(CHEAP_ARGON2, IT0_DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1", **extra)
    return env


def _it0(*args: str) -> list[str]:
    return [sys.executable, "-m", "it0", *args]


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    _stopped: bool = field(default=False, repr=False)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def stderr(self) -> str:
        return _ANSI.sub("", self.log_path.read_text(errors="replace"))

    def printed_password(self) -> str | None:
        found = _PASSWORD_LINE.search(self.stderr())
        return found.group(1) if found else None

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30)

    def wait_healthy(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(
                    f"it0 serve exited with {self.proc.returncode}:\n{self.stderr()[-3000:]}"
                )
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        pytest.fail(f"it0 serve not healthy after {timeout:.0f}s:\n{self.stderr()[-3000:]}")

    def stop(self) -> int | None:
        """SIGTERM this server's PID (SIGKILL if it does not stop); its exit code."""
        if self._stopped:
            return self.proc.returncode
        self._stopped = True
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


StartServer = Callable[..., Server]


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[StartServer]:
    """start_server(data_dir, *extra_args, wait=True, **env) -> Server; all stopped at teardown."""
    started: list[Server] = []

    def start(data_dir: Path, *args: str, wait: bool = True, **env: str) -> Server:
        port = _free_port()
        log_path = tmp_path / f"serve-{port}-{len(started)}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                _it0("serve", "--port", str(port), *args),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_env(data_dir, **env),
                cwd=tmp_path,
            )
        server = Server(proc, port, log_path)
        started.append(server)
        if wait:
            server.wait_healthy()
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()


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
        _it0("migrate"),
        env=_env(data_dir, **shared),
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
        _it0("serve", "--port", str(_free_port()), "--roles", "api,bogus"),
        env=_env(data_dir),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode != 0
    message = _ANSI.sub("", done.stderr)
    assert "unknown role" in message
    assert "bogus" in message
    assert "Traceback" not in message


# --- ops routes and logs ------------------------------------------------------------------


def test_readyz_reports_an_unreachable_bus(tmp_path: Path, start_server: StartServer) -> None:
    closed = _free_port()  # nothing listens there
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
