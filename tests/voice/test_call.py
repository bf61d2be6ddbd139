"""The client SDK against a real server: drops through a TCP proxy, resume, expiry, the
heartbeat on both sides, hang-up, a second replica on Redis, and a spoken question end to
end with the offline speech stack."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from it0.client.voice import CallState, StateChange, VoiceCall, VoiceSettings
from it0.voice.espeak import Espeak
from it0.voice.protocol import FRAME_BYTES
from tests.voice.conftest import SESSIONS, SHORT_TTL, StartVoice, VoiceServer
from tests.voice.proxy import Proxy


@dataclasses.dataclass
class Recorder:
    """What a call showed its user: states, control messages, audio."""

    states: list[StateChange] = dataclasses.field(default_factory=list)
    messages: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    audio: bytearray = dataclasses.field(default_factory=bytearray)

    def kinds(self) -> list[str]:
        return [m["type"] for m in self.messages]

    def seen(self, state: CallState) -> bool:
        return any(s.state == state for s in self.states)

    async def until(self, predicate: Any, limit: float = 30) -> None:
        async with asyncio.timeout(limit):
            while not predicate():  # noqa: ASYNC110 - the server's state, seen from outside
                await asyncio.sleep(0.02)

    def answers(self) -> int:
        return sum(1 for m in self.messages if m["type"] == "agent.text" and m["final"])


def make_call(base: str, server: VoiceServer, recorder: Recorder, **kwargs: Any) -> VoiceCall:
    token = server.headers["Authorization"].split(" ", 1)[1]
    return VoiceCall(
        base,
        token,
        on_audio=recorder.audio.extend,
        on_message=recorder.messages.append,
        on_state=recorder.states.append,
        **kwargs,
    )


@contextlib.asynccontextmanager
async def proxied(server: VoiceServer) -> AsyncIterator[Proxy]:
    proxy = Proxy(int(server.url.rsplit(":", 1)[1]))
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()


async def ask(call: VoiceCall, recorder: Recorder, text: str) -> None:
    before = recorder.answers()
    await call.send_text(text)
    await recorder.until(lambda: recorder.answers() > before)


async def questions(server: VoiceServer, agent_session_id: str) -> list[str]:
    async with server.http as http:
        detail = await http.get(f"/api/v1/agent/sessions/{agent_session_id}")
    return [m["content"] for m in detail.json()["messages"] if m["role"] == "user"]


async def test_a_cut_network_reconnects_and_the_conversation_goes_on(voice: VoiceServer) -> None:
    recorder, slept = Recorder(), []

    async def sleep(delay: float) -> None:
        slept.append(delay)
        await asyncio.sleep(0.01)

    async with proxied(voice) as proxy:
        call = make_call(proxy.url, voice, recorder, sleep=sleep)
        await call.start()
        await ask(call, recorder, "check disk usage on localhost")
        proxy.cut()
        await recorder.until(lambda: recorder.seen(CallState.RESUMED))
        assert recorder.seen(CallState.RECONNECTING)
        assert "session.resumed" in recorder.kinds()
        assert slept[0] == 1.0
        await ask(call, recorder, "how much memory is free on localhost")
        await call.hangup()
    created = await voice.gateway.registry.get(_uuid(call.session_id))
    assert created is None  # hung up: gone
    detail = [
        m for m in recorder.messages if m["type"] == "agent.text" and "memory" in m["text"].lower()
    ]
    assert detail, recorder.messages


def _uuid(value: str | None) -> Any:
    import uuid

    assert value is not None
    return uuid.UUID(value)


async def test_the_agent_session_carries_the_history_across_the_drop(voice: VoiceServer) -> None:
    created = await voice.create()
    agent_session = created["agent_session_id"]
    recorder = Recorder()
    async with proxied(voice) as proxy:
        call = make_call(proxy.url, voice, recorder, agent_session_id=agent_session)
        await call.start()
        await ask(call, recorder, "check disk usage on localhost")
        proxy.cut()
        await recorder.until(lambda: recorder.seen(CallState.RESUMED))
        await ask(call, recorder, "how much memory is free on localhost")
        await call.hangup()
    assert await questions(voice, agent_session) == [
        "check disk usage on localhost",
        "how much memory is free on localhost",
    ]


async def test_after_the_ttl_the_client_gives_up_after_five_attempts(
    start_voice: StartVoice,
) -> None:
    """The session expires while the client backs off: every /reconnect answers 404, the
    client waited 1, 2, 4, 8, 16 s (on its injected clock) and reports ``failed``."""
    voice = await start_voice(voice_session_ttl=SHORT_TTL)
    recorder, slept = Recorder(), []
    expired = asyncio.Event()

    async def sleep(delay: float) -> None:
        slept.append(delay)
        await expired.wait()

    async with proxied(voice) as proxy:
        call = make_call(proxy.url, voice, recorder, sleep=sleep)
        await call.start()
        session_id = _uuid(call.session_id)
        proxy.cut()
        await recorder.until(lambda: slept)
        async with asyncio.timeout(10):
            while await voice.gateway.registry.get(session_id) is not None:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        expired.set()
        await recorder.until(lambda: recorder.seen(CallState.FAILED))
        assert await voice.gateway.registry.get(session_id) is None
    assert slept == [1.0, 2.0, 4.0, 8.0, 16.0]
    attempts = [s.attempt for s in recorder.states if s.state == CallState.RECONNECTING]
    assert attempts == [1, 2, 3, 4, 5]
    assert [s.max_attempts for s in recorder.states if s.state == CallState.RECONNECTING] == [5] * 5
    assert recorder.states[-1].state == CallState.FAILED


async def test_no_server_ping_makes_the_client_reconnect(start_voice: StartVoice) -> None:
    """The server pings every 30 s here, the client expects one within 1 s."""
    server = await start_voice(voice_heartbeat_interval=30.0, voice_heartbeat_timeout=60.0)
    recorder = Recorder()

    async def sleep(_delay: float) -> None:
        await asyncio.sleep(0.01)

    settings = VoiceSettings(heartbeat_timeout=1.0, heartbeat_check_interval=0.1)
    call = make_call(server.url, server, recorder, settings=settings, sleep=sleep)
    await call.start()
    await recorder.until(lambda: recorder.seen(CallState.RESUMED))
    assert recorder.seen(CallState.RECONNECTING)
    await call.hangup()


async def test_the_server_drops_a_client_that_stops_answering(start_voice: StartVoice) -> None:
    """A client that goes quiet (no audio, no pongs) is closed after heartbeat_timeout; the
    session waits, disconnected, for the client to come back."""
    server = await start_voice()
    created = await server.create()
    session_id = _uuid(created["session_id"])
    from websockets.asyncio.client import connect

    async with connect(created["websocket_url"]) as ws:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(10):
                async for _ in ws:
                    pass
    async with asyncio.timeout(10):  # released once the pipeline has stopped
        while (session := await server.gateway.registry.get(session_id)) is not None:
            if session.status == "disconnected":
                break
            await asyncio.sleep(0.05)
    assert session is not None
    assert session.disconnected_at is not None


async def test_hang_up_never_reconnects(voice: VoiceServer) -> None:
    recorder = Recorder()
    async with proxied(voice) as proxy:
        call = make_call(proxy.url, voice, recorder)
        await call.start()
        session_id = call.session_id
        await call.hangup()
        proxy.cut()
        await asyncio.sleep(0.5)
        assert proxy.accepted == 2  # the WebSocket and the DELETE, nothing after
    assert not recorder.seen(CallState.RECONNECTING)
    assert recorder.states[-1].state == CallState.ENDED
    async with voice.http as http:
        gone = await http.post(f"{SESSIONS}/{session_id}/reconnect")
    assert gone.status_code == 404


async def test_ended_by_the_server_is_not_reconnected(voice: VoiceServer) -> None:
    recorder = Recorder()
    call = make_call(voice.url, voice, recorder)
    await call.start()
    await recorder.until(lambda: voice.gateway.connected(_uuid(call.session_id)))
    async with voice.http as http:
        assert (await http.delete(f"{SESSIONS}/{call.session_id}")).status_code == 204
    await recorder.until(lambda: recorder.seen(CallState.ENDED))
    assert "session.ended" in recorder.kinds()
    await asyncio.sleep(0.3)
    assert not recorder.seen(CallState.RECONNECTING)


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
async def test_reconnect_through_another_replica_with_the_redis_registry(
    start_voice: StartVoice, redis_url: str
) -> None:
    """Two voice replicas on one PostgreSQL and one Redis: the call moves from A to B."""
    a = await start_voice(redis_url=redis_url)
    b = await start_voice(data_dir=a.platform.settings.data_dir, redis_url=redis_url)
    recorder = Recorder()

    async def sleep(_delay: float) -> None:
        await asyncio.sleep(0.01)

    async with proxied(a) as proxy:
        call = make_call(proxy.url, a, recorder, sleep=sleep)
        await call.start()
        await ask(call, recorder, "check disk usage on localhost")
        proxy.target = int(b.url.rsplit(":", 1)[1])
        proxy.cut()
        await recorder.until(lambda: recorder.seen(CallState.RESUMED))
        assert b.gateway.connected(_uuid(call.session_id))
        assert not a.gateway.connected(_uuid(call.session_id))
        await ask(call, recorder, "how much memory is free on localhost")
        moved = await b.gateway.registry.get(_uuid(call.session_id))
        assert moved is not None
        await call.hangup()
    assert await questions(b, str(moved.agent_session_id)) == [
        "check disk usage on localhost",
        "how much memory is free on localhost",
    ]


async def stream(call: VoiceCall, pcm: bytes, silence: float = 0.8) -> None:
    """Send speech in 20 ms frames at real-time pace, then a tail of silence."""
    pcm = pcm + bytes(int(16_000 * 2 * silence) // FRAME_BYTES * FRAME_BYTES)
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i, offset in enumerate(range(0, len(pcm), FRAME_BYTES)):
        await call.send_audio(pcm[offset : offset + FRAME_BYTES])
        await asyncio.sleep(max(0.0, start + (i + 1) * 0.02 - loop.time()))


async def test_a_spoken_question_gets_a_spoken_answer(voice: VoiceServer) -> None:
    """eSpeak NG says the question, Whisper hears it, the offline agent answers, eSpeak
    NG says the answer back: all offline."""
    speech = await Espeak().asynthesize("check disk usage on localhost")
    recorder = Recorder()
    call = make_call(voice.url, voice, recorder)
    await call.start()
    await stream(call, speech)
    await recorder.until(lambda: recorder.answers() >= 1, limit=60)
    transcript = next(m for m in recorder.messages if m["type"] == "transcript")
    assert "disk" in transcript["text"].lower()
    answer = " ".join(m["text"] for m in recorder.messages if m["type"] == "agent.text")
    assert "no language model is configured" in answer.lower()
    await recorder.until(lambda: len(recorder.audio) > 16_000 * 2, limit=30)  # over a second
    samples = memoryview(bytes(recorder.audio[: len(recorder.audio) // 2 * 2])).cast("h")
    assert max(abs(v) for v in samples) > 1000
    await call.hangup()


async def test_speaking_over_the_agent_stops_its_audio(voice: VoiceServer) -> None:
    """Barge-in: user speech while the agent talks sends ``audio.clear``."""
    question = await Espeak().asynthesize("check disk usage on localhost")
    recorder = Recorder()
    call = make_call(voice.url, voice, recorder)
    await call.start()
    await stream(call, question)
    await recorder.until(lambda: len(recorder.audio) > 16_000, limit=60)  # it is talking
    await stream(call, await Espeak().asynthesize("stop, stop, wait a moment please"))
    await recorder.until(lambda: "audio.clear" in recorder.kinds(), limit=30)
    await call.hangup()


async def test_create_is_refused_without_a_credential(voice: VoiceServer) -> None:
    async with httpx.AsyncClient(base_url=voice.url) as http:
        response = await http.post(SESSIONS)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthenticated"


async def test_a_network_down_for_a_while_is_ridden_out(start_voice: StartVoice) -> None:
    """The network is gone for a while (scaled: 2 s against backoff 0.1 … 1.6 s and a 6 s
    TTL, as 20 s is against 1 … 16 s and 60 s): the attempts made meanwhile fail, a later
    one resumes the call."""
    voice = await start_voice(voice_session_ttl=6.0)
    recorder = Recorder()
    settings = VoiceSettings(backoff=(0.1, 0.2, 0.4, 0.8, 1.6))
    async with proxied(voice) as proxy:
        call = make_call(proxy.url, voice, recorder, settings=settings)
        await call.start()
        await ask(call, recorder, "check disk usage on localhost")
        proxy.down = True
        proxy.cut()
        await asyncio.sleep(2.0)
        failed_meanwhile = sum(1 for s in recorder.states if s.state == CallState.RECONNECTING)
        proxy.down = False
        await recorder.until(lambda: recorder.seen(CallState.RESUMED))
        assert failed_meanwhile >= 3
        await ask(call, recorder, "how much memory is free on localhost")
        await call.hangup()


async def test_a_command_waiting_for_approval_is_announced(voice: VoiceServer) -> None:
    """What the agent's ``approval_required`` event carries reaches the caller as
    ``approval.required``, and is said out loud."""
    from it0.agent.conversation import Live

    created = await voice.create()
    recorder = Recorder()
    call = make_call(voice.url, voice, recorder, agent_session_id=created["agent_session_id"])
    await call.start()
    await recorder.until(lambda: voice.gateway.connected(_uuid(call.session_id)))
    event = {
        "tool_call_id": "c1",
        "task_id": "0192f7a0-0000-7000-8000-000000000001",
        "approval_id": "0192f7a0-0000-7000-8000-000000000002",
        "risk": "high",
        "command": "systemctl restart nginx",
    }
    voice.gateway.conversations.broadcast(
        _uuid(created["agent_session_id"]), Live("approval_required", event, 7)
    )
    await recorder.until(lambda: "approval.required" in recorder.kinds())
    announced = next(m for m in recorder.messages if m["type"] == "approval.required")
    assert announced["approval_id"] == event["approval_id"]
    assert announced["command"] == "systemctl restart nginx"
    await recorder.until(lambda: len(recorder.audio) > 8000)  # "This needs approval…"
    await call.hangup()
