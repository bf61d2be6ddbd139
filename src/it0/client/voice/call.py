"""``VoiceCall``: one voice call with the agent, kept alive across dropped connections.

The call creates a session over REST, then speaks the voice protocol on a WebSocket:
binary frames are PCM (16 kHz, 16-bit, mono, little-endian) both ways, text frames are
JSON control messages. Incoming audio goes to ``call.buffer`` (a ``JitterBuffer``) for a
speaker to pull; every control message and every state change is handed to the caller's
callbacks.

When the connection drops, or the server's pings stop for ``heartbeat_timeout``, the call
reconnects with exponential backoff (1, 2, 4, 8, 16 s by default) through the session's
``/reconnect`` endpoint, and gives up as ``failed`` after the last attempt. A call the user
hung up, or that the server ended, is never reconnected.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, TypeVar

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidURI, WebSocketException

from it0.client.rest import ApiError, ServerUnreachable
from it0.client.voice._api import RedactTokens, VoiceApi, redact, redact_tokens
from it0.client.voice.jitter import DEFAULT_THRESHOLD, JitterBuffer
from it0.client.voice.state import CallState, StateChange

logger = logging.getLogger("it0.client.voice")
# The WebSocket library logs its request line, token included, at debug level.
_wire_logger = logging.getLogger("it0.client.voice.wire")
_wire_logger.addFilter(RedactTokens())

Message = dict[str, Any]
_T = TypeVar("_T")
_Outcome = Literal["lost", "ended", "hung_up"]


class VoiceCallError(Exception):
    """A call that cannot do what was asked; ``code`` is stable."""

    code = "voice_call_error"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class CallNotConnected(VoiceCallError):
    """No live connection right now: the call is reconnecting, or over."""

    code = "not_connected"


@dataclass(frozen=True)
class VoiceSettings:
    """Timings of the protocol; the defaults are the server's."""

    heartbeat_timeout: float = 45.0
    # How often the heartbeat monitor reads the clock when no deadline is near.
    heartbeat_check_interval: float = 1.0
    backoff: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0)
    max_attempts: int = 5
    jitter_threshold: int = DEFAULT_THRESHOLD
    jitter_capacity: int | None = None
    http_timeout: float = 10.0
    open_timeout: float = 10.0
    close_timeout: float = 2.0

    def __post_init__(self) -> None:
        if not self.backoff or self.max_attempts < 1:
            raise ValueError("backoff needs a delay and max_attempts must be at least 1")

    def delay(self, attempt: int) -> float:
        """The wait before reconnect ``attempt`` (1-based); the last delay repeats."""
        return self.backoff[min(attempt, len(self.backoff)) - 1]


@dataclass
class CallCounters:
    """What the call did, for a UI or a benchmark."""

    audio_bytes_sent: int = 0
    audio_bytes_dropped: int = 0  # microphone audio offered while there was no connection
    audio_bytes_received: int = 0
    pings_answered: int = 0
    reconnects: int = 0


class VoiceCall:
    """A voice call with the agent: ``await call.start()`` ... ``await call.hangup()``.

    ``credential`` is an access token or an API key; both go as ``Authorization: Bearer``.
    Callbacks run on the event loop, in order, and must not block: ``on_audio`` gets each
    PCM chunk as it arrives (it is also queued in ``buffer``), ``on_message`` every JSON
    control message after the call has handled it, ``on_state`` every ``StateChange``.
    An exception raised by a callback is logged and otherwise ignored.

    ``clock`` (monotonic seconds) times the heartbeat; ``sleep`` is awaited for each
    reconnect backoff delay and nothing else, so a test can record and skip the waits.

    ``session_id`` is the voice session's id once ``start`` has created it.
    ``agent_session_id`` is the agent conversation the call belongs to, to go on with in a
    typed chat afterwards: the one the server names at ``start``, else the one asked for
    (None when neither is known).

    A call belongs to one event loop; a microphone thread hands its audio over with
    ``loop.call_soon_threadsafe`` to a queue that one task sends with ``send_audio``, in
    order (``it0.cli.call.Microphone`` does). Only ``buffer`` is safe to use from another
    thread directly.
    """

    def __init__(
        self,
        base_url: str,
        credential: str,
        *,
        agent_session_id: str | None = None,
        on_audio: Callable[[bytes], object] | None = None,
        on_message: Callable[[Message], object] | None = None,
        on_state: Callable[[StateChange], object] | None = None,
        settings: VoiceSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not base_url.lower().startswith(("http://", "https://")):
            raise ValueError("base_url must be an http:// or https:// URL")
        self.settings = settings or VoiceSettings()
        self.buffer = JitterBuffer(
            self.settings.jitter_threshold, capacity=self.settings.jitter_capacity
        )
        self.counters = CallCounters()
        self.session_id: str | None = None
        self.agent_session_id: str | None = agent_session_id
        self._base_url = base_url
        self._credential = credential
        self._agent_session_id = agent_session_id
        self._on_audio = on_audio
        self._on_message = on_message
        self._on_state = on_state
        self._clock = clock
        self._sleep = sleep
        self._transport = transport
        self._status = StateChange(CallState.CONNECTING)
        self._api: VoiceApi | None = None
        self._ws: ClientConnection | None = None  # None while (re)connecting and once over
        self._task: asyncio.Task[None] | None = None
        self._started = False
        self._user_ended = False
        self._server_ended: str | None = None  # the reason, once the server ended the session
        self._finishing = False
        self._closed = asyncio.Event()
        self._last_ping = 0.0

    # --- the caller's side ------------------------------------------------------------------

    @property
    def status(self) -> StateChange:
        """The latest state change (``connecting`` until ``start`` has connected)."""
        return self._status

    @property
    def state(self) -> CallState:
        return self._status.state

    @property
    def connected(self) -> bool:
        """Whether audio sent now would reach the server."""
        return self._ws is not None and not self._user_ended

    async def start(self) -> None:
        """Create the session and connect; raises ``ApiError`` (or ``ServerUnreachable``)."""
        if self._started or self._user_ended:
            raise VoiceCallError("a call starts once, and not after hangup()", "already_started")
        self._started = True
        self._emit(StateChange(CallState.CONNECTING))
        api = self._api = VoiceApi(
            self._base_url,
            self._credential,
            timeout=self.settings.http_timeout,
            transport=self._transport,
        )
        session_id: str | None = None
        try:
            grant = await api.create(self._agent_session_id)
            session_id = self.session_id = grant.session_id
            if grant.agent_session_id is not None:
                self.agent_session_id = grant.agent_session_id
            ws = await self._open(grant.websocket_url)
        except BaseException as exc:
            if session_id is not None and isinstance(exc, Exception):
                await self._end_on_server(api, session_id)
            await self._finish(CallState.FAILED, _describe(exc))
            raise
        if self._user_ended:  # hung up while connecting
            await self._close(ws)
            return
        logger.info("voice call %s connected", session_id)
        self._ws = ws
        self._emit(StateChange(CallState.CONNECTED))
        self._task = asyncio.create_task(
            self._run(ws, api, session_id), name=f"it0.voice.call.{session_id}"
        )

    async def send_audio(self, pcm: bytes) -> bool:
        """Send microphone PCM; False when it was dropped.

        Audio offered while reconnecting, or after the call is over, is dropped (and counted
        in ``counters.audio_bytes_dropped``), as a phone does: speech from seconds ago is
        worth less than a prompt resumption.
        """
        ws = self._ws
        if ws is None or self._user_ended:
            self.counters.audio_bytes_dropped += len(pcm)
            return False
        try:
            await ws.send(pcm)
        except ConnectionClosed:
            self.counters.audio_bytes_dropped += len(pcm)
            return False
        self.counters.audio_bytes_sent += len(pcm)
        return True

    async def send_text(self, text: str) -> None:
        """Ask a typed question inside the call; raises ``CallNotConnected`` when offline."""
        await self._send_control({"type": "text", "text": text})

    async def ping(self) -> None:
        """Ask the server for a ``pong`` (delivered to ``on_message``)."""
        await self._send_control({"type": "ping"})

    async def hangup(self) -> None:
        """End the call for good: nothing reconnects afterwards, whatever happens."""
        self._user_ended = True
        if not self._finishing and self._api is not None and self.session_id is not None:
            await self._end_on_server(self._api, self.session_id)
        task = self._task
        if task is not None and task is not asyncio.current_task():
            if not self._finishing:
                task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self._finish(CallState.ENDED, "hangup")

    async def wait_closed(self) -> StateChange:
        """Wait until the call has ended or failed and every task of it has stopped."""
        await self._closed.wait()
        task = self._task
        if task is not None and task is not asyncio.current_task():
            await asyncio.gather(task, return_exceptions=True)
        return self._status

    async def __aenter__(self) -> VoiceCall:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.hangup()

    # --- one connection ---------------------------------------------------------------------

    async def _run(self, ws: ClientConnection, api: VoiceApi, session_id: str) -> None:
        try:
            while True:
                outcome = await self._serve(ws)
                if outcome == "hung_up":
                    return
                if outcome == "ended":
                    await self._finish(CallState.ENDED, self._server_ended or "")
                    return
                reconnected = await self._reconnect(api, session_id)
                if reconnected is None:
                    if not self._user_ended:
                        attempts = self.settings.max_attempts
                        await self._finish(
                            CallState.FAILED, f"no connection after {attempts} attempts"
                        )
                    return
                ws = reconnected
        except Exception as exc:
            logger.exception("voice call %s stopped on an unexpected error", self.session_id)
            await self._finish(CallState.FAILED, _describe(exc))

    async def _serve(self, ws: ClientConnection) -> _Outcome:
        """Receive on ``ws`` until it closes, the heartbeat stops or the server ends."""
        self._ws = ws
        self._last_ping = self._clock()
        receiver = asyncio.create_task(self._receive(ws), name="it0.voice.receive")
        monitor = asyncio.create_task(self._watch_heartbeat(), name="it0.voice.heartbeat")
        try:
            done, _ = await asyncio.wait((receiver, monitor), return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._ws = None
            receiver.cancel()
            monitor.cancel()
            await asyncio.gather(receiver, monitor, return_exceptions=True)
            await self._close(ws)
        if self._user_ended:
            return "hung_up"
        if self._server_ended is not None:
            return "ended"
        if monitor in done:
            logger.warning(
                "voice call %s: no ping from the server for %.0f s",
                self.session_id,
                self.settings.heartbeat_timeout,
            )
        elif isinstance(error := receiver.exception(), ConnectionClosed):
            logger.warning("voice call %s: connection lost: %s", self.session_id, error)
        elif error is not None:
            logger.error("voice call %s: receiving failed", self.session_id, exc_info=error)
        else:
            logger.warning("voice call %s: the server closed the connection", self.session_id)
        return "lost"

    async def _receive(self, ws: ClientConnection) -> None:
        async for frame in ws:
            if isinstance(frame, bytes):
                self.counters.audio_bytes_received += len(frame)
                self.buffer.write(frame)
                self._notify(self._on_audio, frame)
            else:
                await self._control(ws, frame)
                if self._server_ended is not None:
                    return

    async def _control(self, ws: ClientConnection, text: str) -> None:
        try:
            message = json.loads(text)
        except ValueError:
            message = None
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            logger.warning("voice call %s: ignored a malformed control frame", self.session_id)
            return
        kind = message["type"]
        if kind == "ping":
            self._last_ping = self._clock()
            await ws.send(json.dumps({"type": "pong"}))
            self.counters.pings_answered += 1
        elif kind == "audio.clear":
            self.buffer.clear()
        elif kind == "session.resumed":
            self._emit(StateChange(CallState.RESUMED))
        elif kind == "session.ended":
            self._server_ended = str(message.get("reason") or "ended by the server")
        elif kind == "error":
            logger.warning(
                "voice call %s: server error %s: %s",
                self.session_id,
                message.get("code"),
                message.get("message"),
            )
        self._notify(self._on_message, message)

    async def _watch_heartbeat(self) -> None:
        """Return once the server has not pinged for ``heartbeat_timeout`` seconds."""
        timeout = self.settings.heartbeat_timeout
        while True:
            silent = self._clock() - self._last_ping
            if silent >= timeout:
                return
            await asyncio.sleep(min(timeout - silent, self.settings.heartbeat_check_interval))

    # --- reconnecting -----------------------------------------------------------------------

    async def _reconnect(self, api: VoiceApi, session_id: str) -> ClientConnection | None:
        """A new connection to the session, or None once every attempt failed."""
        attempts = self.settings.max_attempts
        for attempt in range(1, attempts + 1):
            if self._user_ended:
                return None
            self._emit(StateChange(CallState.RECONNECTING, attempt, attempts))
            await self._sleep(self.settings.delay(attempt))
            if self._user_ended:
                return None
            try:
                grant = await api.reconnect(session_id)
                ws = await self._open(grant.websocket_url)
            except ApiError as exc:  # 404 expired, 409 not yet disconnected, unreachable
                logger.warning(
                    "voice call %s: reconnect attempt %d/%d failed: %s",
                    self.session_id,
                    attempt,
                    attempts,
                    exc,
                )
                continue
            if self._user_ended:
                await self._close(ws)
                return None
            logger.info("voice call %s reconnected (attempt %d)", self.session_id, attempt)
            self.buffer.reset()
            self.counters.reconnects += 1
            self._emit(StateChange(CallState.CONNECTED))
            return ws
        return None

    # --- plumbing ---------------------------------------------------------------------------

    async def _open(self, url: str) -> ClientConnection:
        try:
            return await connect(
                url,
                compression=None,  # PCM hardly compresses; deflate would only add latency
                ping_interval=None,  # liveness is the protocol's own ping, see _watch_heartbeat
                open_timeout=self.settings.open_timeout,
                close_timeout=self.settings.close_timeout,
                logger=_wire_logger,
            )
        except (OSError, TimeoutError, WebSocketException) as exc:
            reason = type(exc).__name__ if isinstance(exc, InvalidURI) else _describe(exc)
            raise ServerUnreachable(redact(url), redact_tokens(reason)) from exc

    async def _close(self, ws: ClientConnection) -> None:
        try:
            await ws.close()
        except (OSError, WebSocketException):
            logger.debug("voice call %s: closing the connection failed", self.session_id)

    async def _send_control(self, message: Message) -> None:
        ws = self._ws
        if ws is None or self._user_ended:
            raise CallNotConnected(f"the call is {self.state}, nothing was sent")
        try:
            await ws.send(json.dumps(message))
        except ConnectionClosed as exc:
            raise CallNotConnected("the connection dropped, nothing was sent") from exc

    async def _end_on_server(self, api: VoiceApi, session_id: str) -> None:
        try:
            await api.end(session_id)
        except ApiError as exc:
            logger.warning("voice call %s: ending the session failed: %s", self.session_id, exc)

    async def _finish(self, state: CallState, reason: str) -> None:
        """Enter ``ended`` or ``failed`` once, after releasing the HTTP client."""
        if self._finishing:
            await self._closed.wait()
            return
        self._finishing = True
        self._ws = None
        try:
            if self._api is not None:
                await self._api.aclose()
        finally:
            logger.info("voice call %s %s: %s", self.session_id, state, reason)
            self._emit(StateChange(state, reason=reason))
            self._closed.set()

    def _emit(self, change: StateChange) -> None:
        self._status = change
        self._notify(self._on_state, change)

    def _notify(self, callback: Callable[[_T], object] | None, value: _T) -> None:
        if callback is None:
            return
        try:
            callback(value)
        except Exception:
            logger.exception("voice call %s: a callback failed", self.session_id)


def _describe(exc: BaseException) -> str:
    return redact_tokens(str(exc) or type(exc).__name__)
