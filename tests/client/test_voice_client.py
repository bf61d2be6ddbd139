"""The voice call client against a small server speaking the voice protocol on 127.0.0.1.

The fake serves the three REST calls over uvicorn and the WebSocket with ``websockets``; the
test drives it (pings, audio, cuts, ``session.ended``) and controls time through the call's
injected clock and sleep, so no test waits for a backoff or a heartbeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import socket
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from it0.client.rest import ApiError, ServerUnreachable
from it0.client.voice import (
    CallNotConnected,
    CallState,
    JitterBuffer,
    StateChange,
    VoiceCall,
    VoiceSettings,
)
from it0.client.voice._api import websocket_url

KEY = "it0k-voice-test-key-7f3a"
VOICE = "/api/v1/voice"
WAIT = 5.0  # seconds any awaited condition may take before the test fails


class Changes:
    """Wakes every waiter whenever something it watches has changed."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()

    async def until(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(WAIT):
            while not predicate():
                self._event.clear()
                await self._event.wait()


# --- the fake server ----------------------------------------------------------------------------


@dataclass
class FakeSession:
    id: str
    token: str
    agent_session_id: str = ""
    connections: int = 0
    live: ServerConnection | None = None
    ended: bool = False


@dataclass
class Seen:
    method: str
    path: str
    authorization: str
    body: Any


class _Uvicorn(uvicorn.Server):
    """Stops when asked instead of on its next 0.1 s tick."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()
        self.stop = asyncio.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        self.ready.set()

    async def main_loop(self) -> None:
        await self.stop.wait()


@dataclass
class FakeVoiceServer:
    """Just enough of the voice server: sessions, reconnect, hang-up, and the WebSocket."""

    id_key: str = "session_id"
    agent_key: str | None = "agent_session_id"  # None: the grant does not name the conversation
    relative_urls: bool = False
    drop_on_delete: bool = False  # cut the socket instead of a clean session.ended
    reconnect_answers: list[int] = field(default_factory=list)  # then reconnect_default
    reconnect_default: int = 200
    requests: list[Seen] = field(default_factory=list)
    frames: list[str | bytes] = field(default_factory=list)  # what clients sent
    sessions: dict[str, FakeSession] = field(default_factory=dict)
    tokens: list[str] = field(default_factory=list)
    changes: Changes = field(default_factory=Changes)
    http_url: str = ""
    ws_url: str = ""

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[FakeVoiceServer]:
        async with serve(self._websocket, "127.0.0.1", 0, ping_interval=None) as ws_server:
            self.ws_url = f"ws://127.0.0.1:{ws_server.sockets[0].getsockname()[1]}"
            config = uvicorn.Config(
                self.app(), lifespan="off", http="h11", ws="none", log_config=None
            )
            http = _Uvicorn(config)
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                self.http_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
                serving = asyncio.create_task(http.serve(sockets=[sock]))
                try:
                    await asyncio.wait(
                        [serving, asyncio.ensure_future(http.ready.wait())],
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                    assert http.ready.is_set(), "the fake REST server did not start"
                    yield self
                finally:
                    http.stop.set()
                    await serving

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route(f"{VOICE}/sessions", self._create, methods=["POST"]),
                Route(f"{VOICE}/sessions/{{sid}}/reconnect", self._reconnect, methods=["POST"]),
                Route(f"{VOICE}/sessions/{{sid}}", self._delete, methods=["DELETE"]),
            ]
        )

    # --- what the test drives ---

    @property
    def session(self) -> FakeSession:
        (only,) = self.sessions.values()
        return only

    def seen(self, method: str, suffix: str = "") -> list[Seen]:
        return [r for r in self.requests if r.method == method and r.path.endswith(suffix)]

    def controls(self, kind: str) -> list[dict[str, Any]]:
        """The client's JSON messages of type ``kind``."""
        found = []
        for frame in self.frames:
            if isinstance(frame, str) and (message := json.loads(frame)).get("type") == kind:
                found.append(message)
        return found

    async def send(self, payload: dict[str, Any] | bytes) -> None:
        live = self.session.live
        assert live is not None, "no client is connected"
        await live.send(payload if isinstance(payload, bytes) else json.dumps(payload))

    def cut(self) -> None:
        """Drop the connection the way a dead network does: no close frame."""
        live = self.session.live
        assert live is not None, "no client is connected"
        live.transport.abort()

    async def end(self, reason: str) -> None:
        self.session.ended = True
        await self.send({"type": "session.ended", "reason": reason})
        live = self.session.live
        assert live is not None
        await live.close()

    # --- REST ---

    async def _seen(self, request: Request) -> None:
        body = json.loads(await request.body() or b"null")
        auth = request.headers.get("authorization", "")
        self.requests.append(Seen(request.method, request.url.path, auth, body))
        self.changes.notify()

    def _grant(self, session: FakeSession) -> dict[str, Any]:
        session.token = secrets.token_urlsafe(16)
        self.tokens.append(session.token)
        path = f"{VOICE}/ws/{session.id}?token={session.token}"
        url = path if self.relative_urls else self.ws_url + path
        grant: dict[str, Any] = {self.id_key: session.id, "websocket_url": url, "expires_in": 60}
        if self.agent_key is not None:
            grant[self.agent_key] = session.agent_session_id
        return grant

    async def _create(self, request: Request) -> Response:
        await self._seen(request)
        if request.headers.get("authorization") != f"Bearer {KEY}":
            return _error(401, "unauthenticated", "bad credential")
        asked = (self.requests[-1].body or {}).get("agent_session_id")
        session = FakeSession(
            id=secrets.token_hex(8), token="", agent_session_id=asked or secrets.token_hex(8)
        )
        self.sessions[session.id] = session
        return JSONResponse(self._grant(session), status_code=201)

    async def _reconnect(self, request: Request) -> Response:
        await self._seen(request)
        status = self.reconnect_answers.pop(0) if self.reconnect_answers else self.reconnect_default
        session = self.sessions.get(request.path_params["sid"])
        if session is None or session.ended or status == 404:
            return _error(404, "not_found", "no such voice session")
        if status != 200:
            return _error(status, "conflict", "the session is still connected")
        return JSONResponse(self._grant(session))

    async def _delete(self, request: Request) -> Response:
        await self._seen(request)
        session = self.sessions.get(request.path_params["sid"])
        if session is None:
            return _error(404, "not_found", "no such voice session")
        session.ended = True
        if session.live is not None:
            if self.drop_on_delete:
                session.live.transport.abort()
            else:
                await session.live.send(json.dumps({"type": "session.ended", "reason": "hangup"}))
                await session.live.close()
        return Response(status_code=204)

    # --- WebSocket ---

    async def _websocket(self, connection: ServerConnection) -> None:
        assert connection.request is not None
        target = urlsplit(connection.request.path)
        session = self.sessions.get(target.path.rsplit("/", 1)[-1])
        token = parse_qs(target.query).get("token", [""])[0]
        if session is None or session.ended or not token or token != session.token:
            await connection.close(1008, "invalid or used token")
            return
        session.token = ""
        session.connections += 1
        session.live = connection
        self.changes.notify()
        try:
            if session.connections > 1:
                await connection.send(json.dumps({"type": "session.resumed"}))
            async for frame in connection:
                self.frames.append(frame)
                if isinstance(frame, str) and json.loads(frame).get("type") == "ping":
                    await connection.send(json.dumps({"type": "pong"}))
                self.changes.notify()
        except ConnectionClosed:
            pass
        finally:
            if session.live is connection:
                session.live = None
            self.changes.notify()


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message, "details": None}}, status_code=status
    )


# --- the client's side --------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Sleeps:
    """Records each backoff delay; returns at once, or once ``gate`` opens."""

    def __init__(self, *, gated: bool = False) -> None:
        self.slept: list[float] = []
        self.gate = asyncio.Event()
        if not gated:
            self.gate.set()

    async def __call__(self, delay: float) -> None:
        self.slept.append(delay)
        await self.gate.wait()


@dataclass
class CallLog:
    """What the call reported through its callbacks."""

    changes: Changes = field(default_factory=Changes)
    states: list[StateChange] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    audio: list[bytes] = field(default_factory=list)

    def on_state(self, change: StateChange) -> None:
        self.states.append(change)
        self.changes.notify()

    def on_message(self, message: dict[str, Any]) -> None:
        self.messages.append(message)
        self.changes.notify()

    def on_audio(self, pcm: bytes) -> None:
        self.audio.append(pcm)
        self.changes.notify()

    @property
    def kinds(self) -> list[CallState]:
        return [change.state for change in self.states]

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [message for message in self.messages if message.get("type") == kind]

    async def reached(self, state: CallState) -> None:
        await self.changes.until(lambda: state in self.kinds)


class MakeCall(Protocol):
    def __call__(
        self, *, base_url: str | None = None, key: str = KEY, **kwargs: Any
    ) -> tuple[VoiceCall, CallLog]: ...


def voice_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("it0.voice") and not t.done()]


@pytest.fixture
async def server() -> AsyncIterator[FakeVoiceServer]:
    async with FakeVoiceServer().running() as fake:
        yield fake


@pytest.fixture
async def make_call(server: FakeVoiceServer) -> AsyncIterator[MakeCall]:
    """Calls wired to a ``CallLog``, a fake clock and recorded sleeps; hung up at the end."""
    calls: list[VoiceCall] = []

    def make(
        *, base_url: str | None = None, key: str = KEY, **kwargs: Any
    ) -> tuple[VoiceCall, CallLog]:
        log = CallLog()
        kwargs.setdefault("clock", FakeClock())
        kwargs.setdefault("sleep", Sleeps())
        kwargs.setdefault("settings", VoiceSettings(heartbeat_check_interval=0.005))
        call = VoiceCall(
            base_url or server.http_url,
            key,
            on_state=log.on_state,
            on_message=log.on_message,
            on_audio=log.on_audio,
            **kwargs,
        )
        calls.append(call)
        return call, log

    yield make
    for call in calls:
        await call.hangup()
    assert voice_tasks() == []


# --- the jitter buffer --------------------------------------------------------------------------


def test_nothing_plays_before_the_threshold() -> None:
    buffer = JitterBuffer()
    buffer.write(b"\x01" * 4798)
    assert buffer.read(640) is None
    assert not buffer.playing
    buffer.write(b"\x02\x02")
    assert buffer.playing
    assert buffer.read(640) == b"\x01" * 640
    assert buffer.stats().bytes_out == 640


def test_an_underrun_goes_back_to_buffering() -> None:
    buffer = JitterBuffer(threshold=1000)
    buffer.write(bytes(1000))
    assert buffer.stats().buffered_ms == 31.25
    assert buffer.read(600) == bytes(600)
    assert buffer.read(600) == bytes(400)  # what was left, then buffering again
    assert not buffer.playing
    assert buffer.stats().underruns == 1
    buffer.write(bytes(999))
    assert buffer.read(2) is None
    buffer.write(bytes(1))
    assert buffer.read(2) == bytes(2)


def test_running_dry_exactly_is_an_underrun_on_the_next_read() -> None:
    buffer = JitterBuffer(threshold=640)
    buffer.write(bytes(640))
    assert buffer.read(640) == bytes(640)
    assert buffer.playing
    assert buffer.read(640) is None
    assert not buffer.playing
    assert buffer.stats().underruns == 1


@pytest.mark.parametrize("method", ["reset", "clear"])
def test_reset_and_clear_drop_everything(method: str) -> None:
    buffer = JitterBuffer(threshold=100)
    buffer.write(bytes(300))
    assert buffer.playing
    getattr(buffer, method)()
    assert buffer.buffered == 0
    assert not buffer.playing
    buffer.write(bytes(98))
    assert buffer.read(2) is None  # the threshold applies again
    stats = buffer.stats()
    assert stats.dropped == 300
    assert (stats.resets, stats.clears) == ((1, 0) if method == "reset" else (0, 1))


def test_odd_chunk_sizes_come_out_in_order_and_in_whole_samples() -> None:
    stream = bytes(i % 251 for i in range(20_001))
    buffer = JitterBuffer()
    written, played = 0, bytearray()
    for size in [1, 7, 333, 1001, 4799, 3, 2048, 999]:
        buffer.write(stream[written : written + size])
        written += size
        while (block := buffer.read(640)) is not None:
            played += block
    assert bytes(played) == stream[: len(played)]
    assert len(played) % 2 == 0
    assert buffer.stats().bytes_in == written == len(played) + buffer.buffered


def test_an_odd_byte_left_alone_is_kept_for_its_sample() -> None:
    buffer = JitterBuffer(threshold=4)
    buffer.write(b"abcde")
    assert buffer.read(4) == b"abcd"
    assert buffer.read(4) is None
    assert buffer.buffered == 1
    buffer.write(b"f" + bytes(4))
    assert buffer.read(2) == b"ef"


def test_read_or_silence_always_fills_the_block() -> None:
    buffer = JitterBuffer(threshold=4)
    assert buffer.read_or_silence(8) == bytes(8)
    buffer.write(b"\x01" * 6)
    assert buffer.read_or_silence(8) == b"\x01" * 6 + bytes(2)


def test_a_full_buffer_drops_the_oldest_audio() -> None:
    buffer = JitterBuffer(threshold=4, capacity=8)
    buffer.write(b"0123456789")
    assert buffer.buffered == 8
    assert buffer.read(8) == b"23456789"
    assert buffer.stats().dropped == 2


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        JitterBuffer(threshold=0)
    with pytest.raises(ValueError, match="capacity"):
        JitterBuffer(threshold=100, capacity=50)
    with pytest.raises(ValueError, match="multiple"):
        JitterBuffer().read(3)


def test_a_reader_thread_and_a_writer_thread_share_the_buffer() -> None:
    stream = bytes(i % 253 for i in range(400_000))
    buffer = JitterBuffer(threshold=4800)
    played = bytearray()
    written = threading.Event()

    def write() -> None:
        for start in range(0, len(stream), 777):
            buffer.write(stream[start : start + 777])
        written.set()

    def read() -> None:
        while not (written.is_set() and buffer.buffered < 4800):
            block = buffer.read(640)
            if block is not None:
                played.extend(block)

    threads = [threading.Thread(target=write), threading.Thread(target=read)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert bytes(played) == stream[: len(played)]
    stats = buffer.stats()
    assert stats.bytes_in == len(stream)
    assert stats.bytes_out == len(played) == len(stream) - stats.buffered


# --- states -------------------------------------------------------------------------------------


def test_the_reconnecting_banner_counts_attempts() -> None:
    change = StateChange(CallState.RECONNECTING, attempt=2, max_attempts=5)
    assert change.banner() == "重新连接中... (2/5)"
    assert change.banner("en") == "reconnecting… (2/5)"
    assert StateChange(CallState.CONNECTED).banner() is None
    assert StateChange(CallState.RESUMED).banner("en") is None
    assert StateChange(CallState.FAILED).banner("en") == "connection failed"
    assert CallState.ENDED.final
    assert not CallState.RECONNECTING.final


@pytest.mark.parametrize(
    ("url", "base", "expected"),
    [
        ("wss://voice.test/ws/1?token=t", "https://it0.test", "wss://voice.test/ws/1?token=t"),
        ("/ws/1?token=t", "https://it0.test", "wss://it0.test/ws/1?token=t"),
        ("ws/1?token=t", "http://h:8000/it0/", "ws://h:8000/it0/ws/1?token=t"),
        ("https://voice.test/ws/1?token=t", "http://h", "wss://voice.test/ws/1?token=t"),
    ],
)
def test_websocket_urls_are_made_absolute(url: str, base: str, expected: str) -> None:
    assert websocket_url(url, base) == expected


# --- a call -------------------------------------------------------------------------------------


@pytest.mark.parametrize("id_key", ["session_id", "sessionId", "id"])
async def test_the_session_id_is_read_from_any_of_its_names(
    server: FakeVoiceServer, make_call: MakeCall, id_key: str
) -> None:
    server.id_key = id_key
    call, log = make_call(agent_session_id="agent-42")
    await call.start()
    assert call.session_id == server.session.id
    assert call.state is CallState.CONNECTED
    assert log.kinds == [CallState.CONNECTING, CallState.CONNECTED]
    (created,) = server.seen("POST", "/sessions")
    assert created.authorization == f"Bearer {KEY}"
    assert created.body == {"agent_session_id": "agent-42"}
    await server.changes.until(lambda: server.session.live is not None)


@pytest.mark.parametrize("agent_key", ["agent_session_id", "agentSessionId"])
async def test_the_call_knows_its_agent_conversation(
    server: FakeVoiceServer, make_call: MakeCall, agent_key: str
) -> None:
    server.agent_key = agent_key
    call, _ = make_call()
    assert call.agent_session_id is None
    await call.start()
    assert call.agent_session_id == server.session.agent_session_id
    assert call.agent_session_id
    (created,) = server.seen("POST", "/sessions")
    assert created.body == {"agent_session_id": None}

    asked, _ = make_call(agent_session_id="agent-42")
    await asked.start()
    assert asked.agent_session_id == "agent-42"
    assert server.seen("POST", "/sessions")[-1].body == {"agent_session_id": "agent-42"}


async def test_a_server_that_does_not_name_the_conversation(
    server: FakeVoiceServer, make_call: MakeCall
) -> None:
    server.agent_key = None
    call, _ = make_call()
    await call.start()
    assert call.state is CallState.CONNECTED
    assert call.agent_session_id is None
    asked, _ = make_call(agent_session_id="agent-42")
    await asked.start()
    assert asked.agent_session_id == "agent-42"  # the one asked for: the server did not object


async def test_a_relative_websocket_url_is_joined_to_the_base_url(
    server: FakeVoiceServer, make_call: MakeCall
) -> None:
    server.relative_urls = True
    # The REST calls go to the app in process, so the base URL can be the WebSocket's port.
    base = server.ws_url.replace("ws://", "http://")
    call, _ = make_call(base_url=base, transport=httpx.ASGITransport(app=server.app()))
    await call.start()
    await server.changes.until(lambda: server.session.live is not None)
    assert call.connected


async def test_every_server_ping_is_answered_with_a_pong(
    server: FakeVoiceServer, make_call: MakeCall
) -> None:
    call, log = make_call()
    await call.start()
    for _ in range(3):
        await server.send({"type": "ping"})
    await server.changes.until(lambda: len(server.controls("pong")) == 3)
    assert call.counters.pings_answered == 3
    await call.ping()
    await log.changes.until(lambda: bool(log.of_type("pong")))


async def test_audio_goes_to_the_buffer_both_ways_and_audio_clear_empties_it(
    server: FakeVoiceServer, make_call: MakeCall
) -> None:
    call, log = make_call()
    await call.start()
    await server.send(bytes(3000))
    await log.changes.until(lambda: len(log.audio) == 1)
    assert call.buffer.read(640) is None
    await server.send(b"\x01" * 2000)
    await log.changes.until(lambda: len(log.audio) == 2)
    assert call.buffer.read(640) == bytes(640)
    assert call.counters.audio_bytes_received == 5000

    assert await call.send_audio(b"\x02" * 640)
    await server.changes.until(lambda: b"\x02" * 640 in server.frames)
    await call.send_text("how full is /var on web-1?")
    await server.changes.until(lambda: bool(server.controls("text")))
    assert server.controls("text") == [{"type": "text", "text": "how full is /var on web-1?"}]

    await server.send({"type": "audio.clear"})
    await log.changes.until(lambda: bool(log.of_type("audio.clear")))
    assert call.buffer.buffered == 0
    assert call.buffer.stats().clears == 1


async def test_a_cut_connection_is_resumed(server: FakeVoiceServer, make_call: MakeCall) -> None:
    sleeps = Sleeps()
    call, log = make_call(sleep=sleeps)
    await call.start()
    await server.send(bytes(1000))
    await log.changes.until(lambda: call.buffer.buffered == 1000)
    server.cut()
    await log.reached(CallState.RESUMED)
    assert log.states[2:] == [
        StateChange(CallState.RECONNECTING, 1, 5),
        StateChange(CallState.CONNECTED),
        StateChange(CallState.RESUMED),
    ]
    assert sleeps.slept == [1.0]
    assert len(server.seen("POST", "/reconnect")) == 1
    assert call.buffer.buffered == 0
    assert call.buffer.stats().resets == 1
    assert call.counters.reconnects == 1
    await server.changes.until(lambda: server.session.live is not None)
    assert await call.send_audio(bytes(640))


async def test_a_409_is_retried_at_the_next_step(
    server: FakeVoiceServer, make_call: MakeCall
) -> None:
    sleeps = Sleeps()
    call, log = make_call(sleep=sleeps)
    server.reconnect_answers = [409, 404]
    await call.start()
    server.cut()
    await log.reached(CallState.RESUMED)
    assert sleeps.slept == [1.0, 2.0, 4.0]
    assert [c.attempt for c in log.states if c.state is CallState.RECONNECTING] == [1, 2, 3]


async def test_five_failed_reconnects_end_in_failed(
    server: FakeVoiceServer, make_call: MakeCall
) -> None:
    sleeps = Sleeps()
    call, log = make_call(sleep=sleeps)
    server.reconnect_default = 404
    await call.start()
    server.cut()
    final = await call.wait_closed()
    assert final.state is CallState.FAILED
    assert sleeps.slept == [1.0, 2.0, 4.0, 8.0, 16.0]
    assert len(server.seen("POST", "/reconnect")) == 5
    reconnecting = [c for c in log.states if c.state is CallState.RECONNECTING]
    assert [c.banner() for c in reconnecting] == [f"重新连接中... ({n}/5)" for n in range(1, 6)]
    assert log.kinds[-1] is CallState.FAILED
    assert voice_tasks() == []
    assert not await call.send_audio(bytes(640))


async def test_a_silent_server_is_reconnected_after_the_heartbeat_timeout(
    server: FakeVoiceServer, make_call: MakeCall
) -> None:
    clock, sleeps = FakeClock(), Sleeps()
    call, log = make_call(clock=clock, sleep=sleeps)
    await call.start()
    clock.now += 40
    await server.send({"type": "ping"})
    await server.changes.until(lambda: len(server.controls("pong")) == 1)
    clock.now += 40  # 80 s since connecting, but 40 s since the last ping
    await asyncio.sleep(0.05)
    assert CallState.RECONNECTING not in log.kinds
    clock.now += 6
    await log.reached(CallState.RESUMED)
    assert sleeps.slept == [1.0]
    assert server.session.connections == 2


async def test_after_hangup_nothing_reconnects(
    server: FakeVoiceServer, make_call: MakeCall
) -> None:
    sleeps = Sleeps()
    call, log = make_call(sleep=sleeps)
    server.drop_on_delete = True  # the socket drops before the DELETE is even answered
    await call.start()
    await call.hangup()
    assert call.status == StateChange(CallState.ENDED, reason="hangup")
    assert len(server.seen("DELETE")) == 1
    await server.changes.until(lambda: server.session.live is None)
    assert server.seen("POST", "/reconnect") == []
    assert sleeps.slept == []
    assert CallState.RECONNECTING not in log.kinds
    assert voice_tasks() == []
    assert not await call.send_audio(bytes(640))
    with pytest.raises(CallNotConnected):
        await call.send_text("still there?")


async def test_hangup_while_reconnecting_stops_the_attempts(
    server: FakeVoiceServer, make_call: MakeCall
) -> None:
    sleeps = Sleeps(gated=True)
    call, log = make_call(sleep=sleeps)
    await call.start()
    server.cut()
    await log.reached(CallState.RECONNECTING)
    assert not await call.send_audio(bytes(640))
    assert call.counters.audio_bytes_dropped == 640
    with pytest.raises(CallNotConnected):
        await call.send_text("are you there?")
    await call.hangup()
    sleeps.gate.set()
    assert call.state is CallState.ENDED
    assert server.seen("POST", "/reconnect") == []
    assert len(server.seen("DELETE")) == 1
    assert voice_tasks() == []


async def test_session_ended_by_the_server_is_not_reconnected(
    server: FakeVoiceServer, make_call: MakeCall
) -> None:
    sleeps = Sleeps()
    call, log = make_call(sleep=sleeps)
    await call.start()
    await server.end("ttl")
    final = await call.wait_closed()
    assert final == StateChange(CallState.ENDED, reason="ttl")
    assert log.of_type("session.ended") == [{"type": "session.ended", "reason": "ttl"}]
    assert server.seen("POST", "/reconnect") == []
    assert sleeps.slept == []
    assert voice_tasks() == []


async def test_an_error_message_does_not_end_the_call(
    server: FakeVoiceServer, make_call: MakeCall
) -> None:
    call, log = make_call()
    await call.start()
    await server.send({"type": "error", "code": "stt_failed", "message": "try again"})
    await server.send({"type": "transcript", "text": "restart nginx"})
    await log.changes.until(lambda: bool(log.of_type("transcript")))
    assert log.of_type("error")[0]["code"] == "stt_failed"
    assert call.state is CallState.CONNECTED
    await call.send_text("and now?")
    await server.changes.until(lambda: bool(server.controls("text")))


async def test_a_rejected_credential_fails_the_start(make_call: MakeCall) -> None:
    call, log = make_call(key="wrong")
    with pytest.raises(ApiError) as raised:
        await call.start()
    assert (raised.value.status, raised.value.code) == (401, "unauthenticated")
    assert log.kinds == [CallState.CONNECTING, CallState.FAILED]
    assert (await call.wait_closed()).state is CallState.FAILED


async def test_an_unreachable_websocket_fails_the_start_and_ends_the_session(
    server: FakeVoiceServer, make_call: MakeCall
) -> None:
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        server.ws_url = f"ws://127.0.0.1:{closed.getsockname()[1]}"
        call, log = make_call()
        with pytest.raises(ServerUnreachable) as raised:
            await call.start()
    assert server.tokens[0] not in str(raised.value)
    assert len(server.seen("DELETE")) == 1
    assert log.kinds == [CallState.CONNECTING, CallState.FAILED]


async def test_a_failing_callback_does_not_break_the_call(
    server: FakeVoiceServer, caplog: pytest.LogCaptureFixture
) -> None:
    def explode(message: dict[str, Any]) -> None:
        raise RuntimeError("the UI is broken")

    async with VoiceCall(server.http_url, KEY, on_message=explode) as call:
        await server.send({"type": "ping"})
        await server.send({"type": "ping"})
        await server.changes.until(lambda: len(server.controls("pong")) == 2)
        assert call.state is CallState.CONNECTED
    assert "a callback failed" in caplog.text


async def test_the_context_manager_hangs_up(server: FakeVoiceServer) -> None:
    async with VoiceCall(server.http_url, KEY) as call:
        assert call.state is CallState.CONNECTED
    assert (await call.wait_closed()).state is CallState.ENDED
    assert len(server.seen("DELETE")) == 1
    assert voice_tasks() == []


async def test_neither_token_nor_key_is_logged(
    server: FakeVoiceServer, make_call: MakeCall, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    call, log = make_call()
    await call.start()
    server.cut()
    await log.reached(CallState.RESUMED)
    await call.hangup()
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("it0.client")]
    assert any("token=***" in message for message in ours)  # the library's request line
    for secret in [KEY, *server.tokens]:
        assert not any(secret in message for message in ours)
