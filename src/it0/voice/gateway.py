"""Voice calls: sessions that survive dropped connections, and one pipeline per connection.

A call is a voice session bound to one of the user's agent conversations. Each WebSocket
connection to it builds a fresh pipeline; when the connection drops the session waits
``session_ttl`` seconds for a reconnect, which resumes the same conversation. Next to the
pipeline run a heartbeat (a ``ping`` every ``heartbeat_interval``; a failed send means the
connection is dead) and a watchdog (no client traffic for ``heartbeat_timeout`` is dead too).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from starlette.websockets import WebSocket, WebSocketState

from it0.agent.conversation import Conversations, Live, own_session
from it0.audit import AuditContext
from it0.auth.deps import AuditLog
from it0.auth.errors import MissingPermission
from it0.auth.tokens import Principal, user_principal
from it0.core.clock import utcnow
from it0.core.errors import AuthenticationError, ConflictError, IT0Error, NotFoundError
from it0.platform import Platform
from it0.voice.protocol import error
from it0.voice.registry import Registry, VoiceSession, create_registry

if TYPE_CHECKING:  # pipecat loads with the first call, not with the app
    from pipecat.pipeline.worker import PipelineWorker
    from pipecat.processors.frame_processor import FrameProcessor

log = logging.getLogger("it0.voice")

CLAIMS_TYPE = "voice"
PERMISSIONS = ("voice:use", "agent:use")
# WebSocket close codes (4000-4999 are the application's)
CLOSE_UNAUTHORIZED, CLOSE_FORBIDDEN, CLOSE_GONE, CLOSE_CONNECTED = 4401, 4403, 4404, 4409
CLOSE_ENDED, CLOSE_DEAD = 4000, 4408
PIPELINE_STOP_SECS = 5.0  # how long a cancelled pipeline may take to wind down

Speech = Callable[[], "tuple[FrameProcessor, FrameProcessor]"]


class VoiceSessionNotFound(NotFoundError):
    """No such call, it expired, or it is another user's (the code stays ``not_found``)."""


class VoiceSessionConnected(ConflictError):
    """The call still has a live connection, so there is nothing to reconnect yet."""

    code = "voice_session_connected"


class VoiceGateway:
    """The voice sessions of this replica, and the connections it holds."""

    def __init__(
        self,
        p: Platform,
        conversations: Callable[[], Conversations],
        speech: Speech | None = None,
        registry: Registry | None = None,
    ) -> None:
        s = p.settings
        self.p, self._conversations = p, conversations
        self.registry = registry or create_registry(
            s.redis_url, s.voice_session_ttl, s.voice_heartbeat_timeout
        )
        self._speech = speech or default_speech(p)
        self._live: dict[uuid.UUID, Connection] = {}
        self.clock: Callable[[], datetime] = utcnow

    @property
    def conversations(self) -> Conversations:
        return self._conversations()

    # --- sessions (the REST side) -----------------------------------------------------------

    async def create(
        self, audit: AuditLog, principal: Principal, agent_session_id: uuid.UUID | None
    ) -> VoiceSession:
        if "agent:use" not in principal.permissions:
            raise MissingPermission(
                "a voice call talks to the agent: this needs the permission 'agent:use'",
                details={"permission": "agent:use"},
            )
        if agent_session_id is None:
            row = await self.conversations.create(audit, principal, "Voice call")
            agent_session_id = row.id
        else:
            await own_session(audit.session, principal, agent_session_id)
        session = VoiceSession(
            id=uuid.uuid4(),
            tenant_id=principal.tenant.id,
            tenant_slug=principal.tenant.slug,
            user_id=principal.user_id,
            agent_session_id=agent_session_id,
            created_at=self.clock(),
        )
        await audit.record(
            "voice.session.created",
            "voice_session",
            session.id,
            {"agent_session": str(agent_session_id)},
        )
        await self.registry.put(session)
        return session

    async def own(self, principal: Principal, session_id: uuid.UUID) -> VoiceSession:
        session = await self.registry.get(session_id)
        now = self.clock()
        if (
            session is None
            or session.user_id != principal.user_id
            or session.tenant_id != principal.tenant.id
            or session.expired(now, self.p.settings.voice_session_ttl)
        ):
            raise VoiceSessionNotFound("no such voice session, or it expired")
        return session

    async def reconnectable(self, principal: Principal, session_id: uuid.UUID) -> VoiceSession:
        session = await self.own(principal, session_id)
        if session.alive(self.clock(), self.p.settings.voice_heartbeat_timeout):
            raise VoiceSessionConnected(
                "the call is still connected; reconnect once its connection has dropped",
                details={"status": session.status},
            )
        return session

    async def end(self, audit: AuditLog, principal: Principal, session_id: uuid.UUID) -> None:
        await self.own(principal, session_id)
        await self.registry.end(session_id)
        await audit.record("voice.session.ended", "voice_session", session_id, {"by": "user"})
        connection = self._live.get(session_id)
        if connection is not None:
            await connection.stop(ended="hangup")

    def token(self, session: VoiceSession) -> str:
        expires = self.clock() + timedelta(seconds=self.p.settings.voice_token_ttl)
        claims = {
            "sid": str(session.id),
            "sub": str(session.user_id),
            "tid": str(session.tenant_id),
            "jti": uuid.uuid4().hex,
        }
        return self.p.signer.issue_claims(claims, typ=CLAIMS_TYPE, expires_at=expires)

    # --- connections (the WebSocket side) ---------------------------------------------------

    async def serve(self, websocket: WebSocket, session_id: uuid.UUID, token: str | None) -> None:
        """Run one connection to the call until it drops, is replaced or ends."""
        await websocket.accept()
        try:
            principal = await self._admit(session_id, token)
        except _Refused as refused:
            await _refuse(websocket, refused)
            return
        now = self.clock()
        claimed = await self.registry.claim(session_id, now)
        if claimed is None:
            gone = await self.registry.get(session_id)
            await _refuse(
                websocket,
                _Refused(CLOSE_CONNECTED, "voice_session_connected", "the call is connected")
                if gone is not None and gone.status == "connected"
                else _Refused(CLOSE_GONE, "not_found", "no such voice session, or it expired"),
            )
            return
        stale = self._live.pop(session_id, None)
        if stale is not None:
            await stale.stop()
        connection = Connection(self, websocket, claimed, principal)
        self._live[session_id] = connection
        try:
            await connection.run(resumed=claimed.generation > 1)
        finally:
            if self._live.get(session_id) is connection:
                del self._live[session_id]
            if connection.ended is None:
                await self.registry.release(
                    session_id, claimed.generation, self.clock(), connection.delivered_seq
                )

    async def _admit(self, session_id: uuid.UUID, token: str | None) -> Principal:
        if not token:
            raise _Refused(CLOSE_UNAUTHORIZED, "unauthenticated", "missing ?token=")
        try:
            claims = self.p.signer.verify_claims(token, typ=CLAIMS_TYPE)
        except AuthenticationError as exc:
            message = "token expired" if "expired" in exc.message else "invalid token"
            raise _Refused(CLOSE_UNAUTHORIZED, "unauthenticated", message) from exc
        if claims.get("sid") != str(session_id):
            raise _Refused(CLOSE_UNAUTHORIZED, "unauthenticated", "the token is for another call")
        session = await self.registry.get(session_id)
        if session is None or session.expired(self.clock(), self.p.settings.voice_session_ttl):
            raise _Refused(CLOSE_GONE, "not_found", "no such voice session, or it expired")
        async with self.p.db.session() as db:
            principal = await user_principal(db, session.tenant_id, session.user_id)
        if principal is None or not all(p in principal.permissions for p in PERMISSIONS):
            raise _Refused(CLOSE_FORBIDDEN, "forbidden", "this user may not call the agent")
        return principal

    def connected(self, session_id: uuid.UUID) -> bool:
        """Whether this replica holds the call's connection now."""
        return session_id in self._live

    def speech(self) -> tuple[FrameProcessor, FrameProcessor]:
        return self._speech()

    async def sweep(self) -> int:
        """Remove the sessions disconnected longer than the TTL."""
        gone = await self.registry.sweep(self.clock())
        for session in gone:
            log.info("voice session expired", extra={"actor": str(session.id)})
        return len(gone)

    async def warm_up(self) -> None:
        """Load the offline speech model now, so the first call does not wait for it."""
        settings = self.p.settings
        if settings.voice_echo or settings.voice_stt != "whisper":
            return

        def load() -> None:  # the import too: pipecat takes a moment to load
            from it0.voice.speech import load_whisper_model

            load_whisper_model(settings.voice_whisper_model)

        try:
            await asyncio.to_thread(load)
        except Exception as exc:  # the first call reports it to its caller
            log.warning("speech model not loaded: %s", exc)

    async def cleanup_loop(self) -> None:
        await self.warm_up()
        while True:
            await asyncio.sleep(self.p.settings.voice_cleanup_interval)
            try:
                await self.sweep()
            except Exception:
                log.exception("voice session cleanup failed")

    async def close(self) -> None:
        for connection in list(self._live.values()):
            await connection.stop()
        await self.registry.close()


class _Refused(Exception):
    def __init__(self, close_code: int, code: str, message: str) -> None:
        super().__init__(message)
        self.close_code, self.code, self.message = close_code, code, message


async def _refuse(websocket: WebSocket, refused: _Refused) -> None:
    with contextlib.suppress(Exception):
        await websocket.send_text(json.dumps(error(refused.code, refused.message)))
        await websocket.close(code=refused.close_code, reason=refused.message[:120])


class Connection:
    """One WebSocket of a call: its pipeline, heartbeat, watchdog and the agent's voice."""

    def __init__(
        self,
        gateway: VoiceGateway,
        websocket: WebSocket,
        session: VoiceSession,
        principal: Principal,
    ) -> None:
        self.g, self.ws, self.session, self.principal = gateway, websocket, session, principal
        self.settings = gateway.p.settings
        self.ended: str | None = None
        self._closed = asyncio.Event()
        self._last_heard = time.monotonic()
        self._send_lock = asyncio.Lock()
        self._worker: PipelineWorker | None = None
        self._asking: set[asyncio.Task[None]] = set()
        self._muted = False  # the user barged in: the rest of this answer is not read out
        self._spoken = 0
        self.delivered_seq = session.delivered_seq

    # --- the connection's life ---------------------------------------------------------------

    async def run(self, *, resumed: bool) -> None:
        from pipecat.workers.runner import WorkerRunner

        from it0.voice.pipeline import TurnTaker, VoiceSerializer, build_worker

        serializer = VoiceSerializer(
            on_control=self._on_control,
            on_error=self.send,
            on_traffic=self._heard,
            max_frame_bytes=self.settings.voice_max_frame_bytes,
        )
        stages: list[FrameProcessor] | None = None
        if not self.settings.voice_echo:
            stt, tts = self.g.speech()
            stages = [stt, TurnTaker(self._on_utterance, self._on_barge_in), tts]
        worker, transport = build_worker(
            self.ws,
            serializer,
            stages,
            vad_stop_secs=self.settings.voice_vad_stop_secs,
            vad_pause_secs=self.settings.voice_vad_pause_secs,
        )
        self._worker = worker

        @transport.event_handler("on_client_disconnected")  # type: ignore[untyped-decorator]
        async def _gone(_transport: Any, _ws: Any) -> None:
            self._closed.set()

        conversations = self.g.conversations
        queue = conversations.subscribe_live(self.session.agent_session_id)
        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(worker)
        tasks = [
            asyncio.create_task(runner.run(), name="it0-voice-pipeline"),
            asyncio.create_task(self._heartbeat(), name="it0-voice-heartbeat"),
            asyncio.create_task(self._watchdog(), name="it0-voice-watchdog"),
            asyncio.create_task(self._follow(queue), name="it0-voice-agent"),
        ]
        closed = asyncio.create_task(self._closed.wait())
        try:
            if resumed:
                await self.send({"type": "session.resumed", "session_id": str(self.session.id)})
                await self._catch_up()
            log.info(
                "voice connection %s",
                "resumed" if resumed else "opened",
                extra={"actor": str(self.session.id)},
            )
            await asyncio.wait([tasks[0], closed], return_when=asyncio.FIRST_COMPLETED)
        finally:
            conversations.unsubscribe_live(self.session.agent_session_id, queue)
            with contextlib.suppress(Exception):
                await worker.cancel(reason="connection closed")
            if self._asking:  # a question asked just before the drop still reaches the agent
                await asyncio.wait(self._asking, timeout=10)
            for task in [*tasks[1:], closed, *self._asking]:
                task.cancel()
            await asyncio.gather(*tasks[1:], closed, return_exceptions=True)
            await stop_pipeline(tasks[0], PIPELINE_STOP_SECS)
            await self._close_socket(1000)

    async def stop(self, ended: str | None = None) -> None:
        """End this connection: the call ended (``ended`` says why) or it was replaced."""
        if ended is not None:
            self.ended = ended
            await self.send({"type": "session.ended", "reason": ended})
            await self._close_socket(CLOSE_ENDED)
        self._closed.set()

    async def _close_socket(self, code: int) -> None:
        if self.ws.application_state != WebSocketState.DISCONNECTED:
            with contextlib.suppress(Exception):
                await self.ws.close(code=CLOSE_ENDED if self.ended else code)

    def _heard(self) -> None:
        self._last_heard = time.monotonic()

    async def send(self, message: dict[str, Any]) -> None:
        """A control message; a failed send means the connection is dead."""
        try:
            async with self._send_lock:
                await self.ws.send_text(json.dumps(message))
        except Exception:
            self._closed.set()

    async def _heartbeat(self) -> None:
        interval = self.settings.voice_heartbeat_interval
        while not self._closed.is_set():
            await asyncio.sleep(interval)
            await self.send({"type": "ping", "ts": round(time.time(), 3)})
            if self._closed.is_set():
                log.info("voice heartbeat failed", extra={"actor": str(self.session.id)})
                return
            current = await self.g.registry.touch(
                self.session.id, self.session.generation, self.g.clock()
            )
            if not current:  # ended elsewhere, or another connection took over
                found = await self.g.registry.get(self.session.id)
                if found is None or found.status == "ended":
                    await self.stop(ended="ended")
                else:
                    self._closed.set()
                return

    async def _watchdog(self) -> None:
        timeout = self.settings.voice_heartbeat_timeout
        while not self._closed.is_set():
            silent = time.monotonic() - self._last_heard
            if silent > timeout:
                log.info("voice client silent", extra={"actor": str(self.session.id)})
                # reconnectable before the client hears the close, so it may resume at once
                await self.g.registry.release(
                    self.session.id, self.session.generation, self.g.clock(), self.delivered_seq
                )
                await self._close_socket(CLOSE_DEAD)
                self._closed.set()
                return
            await asyncio.sleep(min(1.0, max(0.05, timeout - silent)))

    # --- what the client says ------------------------------------------------------------------

    async def _on_control(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "ping":
            await self.send({"type": "pong"})
        elif kind == "text":
            await self._on_utterance(str(message["text"]), spoken=False)

    async def _on_utterance(self, text: str, spoken: bool = True) -> None:
        if spoken:
            await self.send({"type": "transcript", "text": text})
        task = asyncio.create_task(self._ask(text), name="it0-voice-ask")
        self._asking.add(task)
        task.add_done_callback(self._asking.discard)

    def _on_barge_in(self) -> None:
        self._muted = True

    async def _ask(self, text: str) -> None:
        """Start the agent's turn; its answer arrives through ``_follow``."""
        p, c = self.g.p, self.g.conversations
        self._muted, self._spoken = False, 0
        try:
            async with p.db.session(self.principal.tenant.schema, write=True) as db:
                audit = AuditLog(p, db, self.principal, AuditContext(self.principal.actor))
                row = await c.begin(audit, self.principal, self.session.agent_session_id, text)
            c.start(self.principal.tenant, row, prompt=text)
        except IT0Error as exc:
            await self.send(error(exc.code, exc.message))
            await self.say(exc.message)
        except Exception:
            log.exception("voice turn failed to start")
            await self.send(error("agent_error", "the agent could not take the question"))

    async def _follow(self, queue: asyncio.Queue[Live]) -> None:
        """Read the agent's events out as they come: its own turns and resumed ones."""
        from it0.voice.pipeline import Sentences

        sentences = Sentences()
        while True:
            event = await queue.get()
            if event.type == "text":
                for sentence in sentences.feed(str(event.data.get("delta", ""))):
                    await self._answer(sentence)
            elif event.type == "approval_required":
                await self.send({"type": "approval.required", **event.data})
                task = str(event.data.get("task_id", ""))[:8]
                await self.say(f"This needs approval. Task {task} is waiting for a person.")
            elif event.type == "resumed":
                self._muted, self._spoken = False, 0
                await self.say("A decision came in; going on.")
            elif event.type == "error":
                message = str(event.data.get("message", "the turn failed"))
                await self.send(error(str(event.data.get("code", "agent_error")), message))
                await self.say(message)
            elif event.type == "done":
                if event.seq is not None and event.seq <= self.delivered_seq:
                    continue  # caught up with already
                for sentence in sentences.rest():
                    await self._answer(sentence)
                await self.send({"type": "agent.text", "text": "", "final": True})
                self.delivered_seq = max(self.delivered_seq, event.seq or 0)

    async def _catch_up(self) -> None:
        """Deliver the answers that finished while the line was down."""
        from sqlalchemy import select

        from it0.agent.models import AgentEvent
        from it0.voice.pipeline import Sentences

        async with self.g.p.db.session(self.principal.tenant.schema) as db:
            rows = (
                await db.scalars(
                    select(AgentEvent)
                    .where(
                        AgentEvent.session_id == self.session.agent_session_id,
                        AgentEvent.seq > self.delivered_seq,
                    )
                    .order_by(AgentEvent.seq)
                )
            ).all()
        turns: dict[int, list[AgentEvent]] = {}
        for row in rows:
            turns.setdefault(row.turn, []).append(row)
        for events in turns.values():
            done = [e for e in events if e.type == "done"]
            if not done:
                continue  # still answering: the rest arrives live
            text = "".join(str(e.data.get("content", "")) for e in events if e.type == "text")
            for e in events:
                if e.type == "approval_required":
                    await self.send({"type": "approval.required", **e.data})
            await self.send({"type": "agent.text", "text": text, "final": False})
            await self.send({"type": "agent.text", "text": "", "final": True})
            self._muted, self._spoken = False, 0
            await self.say("While the line was down, the answer came.")
            sentences = Sentences()  # read out within the same cap as a live answer
            for sentence in [*sentences.feed(text), *sentences.rest()]:
                await self._answer_spoken(sentence)
            self.delivered_seq = max(self.delivered_seq, done[-1].seq)

    async def _answer(self, sentence: str) -> None:
        await self.send({"type": "agent.text", "text": sentence, "final": False})
        await self._answer_spoken(sentence)

    async def _answer_spoken(self, sentence: str) -> None:
        from it0.voice.pipeline import speakable

        limit = self.settings.voice_spoken_chars
        if self._spoken >= limit:
            return
        spoken = speakable(sentence)
        self._spoken += len(spoken)
        if self._spoken >= limit:
            spoken += " The rest of the answer is in the conversation."
        await self.say(spoken)

    async def say(self, text: str) -> None:
        from pipecat.frames.frames import TTSSpeakFrame

        if self._muted or not text.strip() or self._worker is None:
            return
        await self._worker.queue_frame(TTSSpeakFrame(text=text))


def default_speech(p: Platform) -> Speech:
    """The configured speech services, built per connection (the models load once)."""
    settings = p.settings

    def build() -> tuple[FrameProcessor, FrameProcessor]:
        from it0.voice.speech import build_stt, build_tts

        stt = build_stt(settings.voice_stt, model_dir=settings.voice_whisper_model)
        tts = build_tts(settings.voice_tts, sample_rate=16_000)
        return stt, tts

    return build


async def stop_pipeline(pipeline: asyncio.Task[Any], limit: float) -> bool:
    """Wait up to ``limit`` for a pipeline that was asked to cancel to wind down, then cancel
    its task and wait as long again: a processor that never passes the cancel on must not
    keep the connection, and the server's shutdown, waiting forever. False if it is still
    running after that (it is left behind, logged)."""
    done, _ = await asyncio.wait({pipeline}, timeout=limit)
    if not done:
        log.warning("voice pipeline still running %.1f s after the cancel: cancelling it", limit)
        pipeline.cancel()
        done, _ = await asyncio.wait({pipeline}, timeout=limit)
    if not done:
        log.error("voice pipeline ignored its cancellation: left behind")
        return False
    if not pipeline.cancelled() and (exc := pipeline.exception()) is not None:
        log.debug("voice pipeline ended with %r", exc)
    return True
