"""Voice fixtures: real IT0 servers (uvicorn on 127.0.0.1, WebSockets and all) with short
protocol timers, and a raw WebSocket client for the protocol tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from it0.audit import install_audit_guard
from it0.auth.bootstrap import bootstrap
from it0.platform import Platform
from it0.voice.bench import serve_in_process
from it0.voice.gateway import VoiceGateway
from tests.conftest import ADMIN_PASSWORD, make_settings

SESSIONS = "/api/v1/voice/sessions"

# short timers, so that drops and timeouts happen within a test; the session TTL leaves a
# loaded machine time to reconnect, and the expiry tests shorten it (``SHORT_TTL``)
TIMERS = {
    "voice_heartbeat_interval": 0.25,
    "voice_heartbeat_timeout": 3.0,
    "voice_session_ttl": 10.0,
    "voice_cleanup_interval": 0.25,
}
SHORT_TTL = 2.0


@pytest.fixture(params=["sqlite"])
def backend(request: pytest.FixtureRequest) -> str:
    """Voice keeps its sessions out of the database: one backend is enough, except where a
    test asks for PostgreSQL (replicas)."""
    return str(request.param)


@dataclass
class VoiceServer:
    url: str
    platform: Platform
    gateway: VoiceGateway
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, headers=self.headers, timeout=30)

    async def create(self, base: str | None = None, **body: Any) -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=base or self.url, timeout=30) as http:
            response = await http.post(SESSIONS, json=body or None, headers=self.headers)
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        return created


@contextlib.asynccontextmanager
async def serving(platform: Platform) -> AsyncIterator[tuple[str, VoiceGateway]]:
    """The whole app (every role) on a free port of 127.0.0.1, lifespan and all."""
    async with serve_in_process(platform) as (url, app):
        yield url, app.state.voice


StartVoice = Callable[..., Awaitable[VoiceServer]]


@pytest.fixture
async def start_voice(tmp_path: Path, database_url: str | None) -> AsyncIterator[StartVoice]:
    """Start servers with the given setting overrides (on top of ``TIMERS``)."""
    install_audit_guard()
    stack = contextlib.AsyncExitStack()
    count = 0

    async def start(data_dir: Path | None = None, **overrides: Any) -> VoiceServer:
        nonlocal count
        count += 1
        settings = make_settings(
            data_dir or tmp_path / f"data{count}", database_url, **{**TIMERS, **overrides}
        )
        platform = Platform.create(settings)
        await bootstrap(platform)
        stack.push_async_callback(platform.close)
        url, gateway = await stack.enter_async_context(serving(platform))
        server = VoiceServer(url, platform, gateway)
        async with httpx.AsyncClient(base_url=url) as http:
            response = await http.post(
                "/api/v1/auth/login",
                json={"tenant": "default", "username": "admin", "password": ADMIN_PASSWORD},
            )
        assert response.status_code == 200, response.text
        server.headers = {"Authorization": f"Bearer {response.json()['access_token']}"}
        return server

    async with stack:
        yield start


@pytest.fixture
async def voice(start_voice: StartVoice) -> VoiceServer:
    return await start_voice()


class Socket:
    """A raw protocol client: what a misbehaving or minimal client sends and sees."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.audio = bytearray()

    async def send(self, message: dict[str, Any] | str | bytes) -> None:
        await self.ws.send(json.dumps(message) if isinstance(message, dict) else message)

    async def next(self, kind: str, limit: float = 30, answer_pings: bool = True) -> dict[str, Any]:
        """The next control message of this type (audio is collected, pings answered)."""
        async with asyncio.timeout(limit):
            while True:
                frame = await self.ws.recv()
                if isinstance(frame, bytes):
                    self.audio.extend(frame)
                    continue
                message: dict[str, Any] = json.loads(frame)
                if message["type"] == "ping" and answer_pings and kind != "ping":
                    await self.send({"type": "pong"})
                if message["type"] == kind:
                    return message


@contextlib.asynccontextmanager
async def socket(url: str) -> AsyncIterator[Socket]:
    async with connect(url, max_size=None) as ws:
        yield Socket(ws)
