"""Voice to voice latency: a real server in this process (uvicorn on 127.0.0.1, a throwaway
SQLite data dir, the offline stack: Silero VAD, Whisper, the offline agent, eSpeak NG) and one
call through the SDK.

A microphone streams 20 ms frames at real-time pace, silence between questions; each question
is eSpeak's reading of a line an operator says. The figure is the time from the last speech
frame sent to the first byte of the answer's audio, split where the protocol shows it (the
transcript, the first ``agent.text``). A turn starts only once the previous answer's audio has
stopped and the conversation is idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from it0.voice.bench.common import (
    CHEAP_ARGON2,
    FRAME_BYTES,
    FRAME_SECONDS,
    PASSWORD,
    RATE,
    ms,
    percentile,
    say,
    serve_in_process,
)

if TYPE_CHECKING:
    from it0.client.voice import VoiceCall

SILENCE = bytes(FRAME_BYTES)
QUESTIONS = ("check disk usage on localhost", "how much memory is free on localhost")
TARGET_SECONDS = 1.0  # voice to voice, median, from the issue
AUDIO_IDLE_SECONDS = 0.5  # no audio for this long after the final text: the answer is over
TURN_TIMEOUT = 60.0
SPOKEN_CHARS = 50  # answers read out briefly: the figure is the first byte, not the reading


def speech(text: str) -> bytes:
    """eSpeak's reading of ``text`` as 16 kHz PCM, without the silence around it."""
    import numpy as np

    from it0.voice.espeak import Espeak

    pcm = Espeak().synthesize(text, RATE)
    samples = np.frombuffer(pcm, dtype="<i2")
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > 300)
    if loud.size == 0:
        return pcm
    start = int(loud[0]) - int(loud[0]) % (FRAME_BYTES // 2)
    return samples[start : int(loud[-1]) + 1].tobytes()


class Microphone:
    """Sends 20 ms frames at real-time pace as a sound card would: a queued question's frames,
    silence otherwise. ``spoke_at`` is when the last frame of the latest question went out."""

    def __init__(self, call: VoiceCall) -> None:
        self.call = call
        self.spoke_at: float | None = None
        self.spoken = asyncio.Event()
        self._frames: deque[bytes] = deque()

    def say(self, pcm: bytes) -> None:
        self.spoke_at = None
        self.spoken.clear()
        for start in range(0, len(pcm), FRAME_BYTES):
            self._frames.append(pcm[start : start + FRAME_BYTES].ljust(FRAME_BYTES, b"\0"))

    async def run(self) -> None:
        started, sent = time.perf_counter(), 0
        while True:
            speaking = bool(self._frames)
            await self.call.send_audio(self._frames.popleft() if speaking else SILENCE)
            if speaking and not self._frames:
                self.spoke_at = time.perf_counter()
                self.spoken.set()
            sent += 1
            due = started + sent * FRAME_SECONDS
            now = time.perf_counter()
            if now - due > 5 * FRAME_SECONDS:  # fell behind: a sound card drops, not bursts
                started, sent, due = now, 0, now
            await asyncio.sleep(max(0.0, due - now))


@dataclass
class Turn:
    question: str
    spoke_at: float | None = None
    heard: str | None = None
    transcript_at: float | None = None
    first_text_at: float | None = None
    first_audio_at: float | None = None
    final_at: float | None = None

    def figures(self) -> dict[str, Any]:
        def since(moment: float | None, start: float | None) -> float | None:
            return None if moment is None or start is None else moment - start

        return {
            "question": self.question,
            "heard": self.heard,
            "latency_ms": ms(since(self.first_audio_at, self.spoke_at)),
            "to_transcript_ms": ms(since(self.transcript_at, self.spoke_at)),
            "transcript_to_text_ms": ms(since(self.first_text_at, self.transcript_at)),
            "text_to_audio_ms": ms(since(self.first_audio_at, self.first_text_at)),
        }


class Listener:
    """Stamps what the call receives onto the current turn."""

    def __init__(self) -> None:
        self.turn: Turn | None = None
        self.last_audio = 0.0
        self.errors: list[str] = []

    def on_audio(self, pcm: bytes) -> None:
        now = time.perf_counter()
        self.last_audio = now
        turn = self.turn
        if turn is not None and turn.spoke_at is not None and turn.first_audio_at is None:
            turn.first_audio_at = now

    def on_message(self, message: dict[str, Any]) -> None:
        now, turn, kind = time.perf_counter(), self.turn, message["type"]
        if kind == "error":
            self.errors.append(str(message.get("message", "")))
        if turn is None:
            return
        if kind == "transcript" and turn.transcript_at is None:
            turn.transcript_at, turn.heard = now, str(message.get("text", ""))
        elif kind == "agent.text":
            if message.get("text") and turn.first_text_at is None:
                turn.first_text_at = now
            if message.get("final"):
                turn.final_at = now

    async def quiet(self) -> None:
        """Until no audio has come for ``AUDIO_IDLE_SECONDS``."""
        while True:
            wait = self.last_audio + AUDIO_IDLE_SECONDS - time.perf_counter()
            if wait <= 0:
                return
            await asyncio.sleep(wait)

    async def answered(self, turn: Turn) -> None:
        """Until the final text came and the answer's audio has stopped."""
        while True:
            if turn.final_at is not None and turn.first_audio_at is not None:
                quiet = time.perf_counter() - max(self.last_audio, turn.final_at)
                if quiet >= AUDIO_IDLE_SECONDS:
                    return
            await asyncio.sleep(0.05)


async def _idle(http: httpx.AsyncClient, agent_session: str) -> None:
    """Until the agent conversation is idle (its last turn stored)."""
    for _ in range(300):
        response = await http.get(f"/api/v1/agent/sessions/{agent_session}")
        response.raise_for_status()
        if response.json()["status"] == "idle":
            return
        await asyncio.sleep(0.1)
    raise RuntimeError("the agent conversation did not become idle")


async def measure_latency(turns: int, data: Path) -> dict[str, Any]:
    from it0.audit import install_audit_guard
    from it0.auth.bootstrap import bootstrap
    from it0.client.voice import VoiceCall
    from it0.core.settings import Settings
    from it0.platform import Platform

    install_audit_guard()
    settings = Settings(
        data_dir=data,
        database_url=None,
        redis_url=None,
        admin_password=PASSWORD,
        agent_model="offline",
        voice_echo=False,
        voice_spoken_chars=SPOKEN_CHARS,
        log_level="WARNING",
        **CHEAP_ARGON2,
    )
    say("latency: synthesizing the questions with eSpeak NG")
    questions = [(text, speech(text)) for text in QUESTIONS]
    p = Platform.create(settings)
    await bootstrap(p)
    done: list[Turn] = []
    listener = Listener()
    try:
        async with serve_in_process(p) as (url, app):
            say("latency: loading the speech model")
            await app.state.voice.warm_up()
            async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                login = await http.post(
                    "/api/v1/auth/login",
                    json={"tenant": "default", "username": "admin", "password": PASSWORD},
                )
                login.raise_for_status()
                token = login.json()["access_token"]
                http.headers["Authorization"] = f"Bearer {token}"
                created = await http.post("/api/v1/agent/sessions", json={"title": "bench"})
                created.raise_for_status()
                agent_session = str(created.json()["id"])
                call = VoiceCall(
                    url,
                    token,
                    agent_session_id=agent_session,
                    on_audio=listener.on_audio,
                    on_message=listener.on_message,
                )
                await call.start()
                microphone = Microphone(call)
                streaming = asyncio.create_task(microphone.run(), name="it0-bench-microphone")
                try:
                    done = await _turns(microphone, http, agent_session, listener, questions, turns)
                finally:
                    streaming.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await streaming
                    await call.hangup()
    finally:
        await p.close()
    vad = (settings.voice_vad_stop_secs, settings.voice_vad_pause_secs)
    return _latency_figures(done, turns, vad, listener.errors)


async def _turns(
    microphone: Microphone,
    http: httpx.AsyncClient,
    agent_session: str,
    listener: Listener,
    questions: list[tuple[str, bytes]],
    count: int,
) -> list[Turn]:
    done: list[Turn] = []
    for index in range(count):
        text, pcm = questions[index % len(questions)]
        await _idle(http, agent_session)
        await listener.quiet()
        turn = listener.turn = Turn(text)
        microphone.say(pcm)
        try:
            async with asyncio.timeout(TURN_TIMEOUT):
                await microphone.spoken.wait()
                turn.spoke_at = microphone.spoke_at
                await listener.answered(turn)
        except TimeoutError:
            say(f"latency: turn {index + 1} got no answer within {TURN_TIMEOUT:.0f} s")
        listener.turn = None
        done.append(turn)
        figures = turn.figures()
        say(
            f"latency: turn {index + 1}/{count}: {figures['latency_ms']} ms "
            f"(heard {figures['heard']!r})"
        )
    return done


def _latency_figures(
    turns: list[Turn], asked: int, vad: tuple[float, float], errors: list[str]
) -> dict[str, Any]:
    rows = [t.figures() for t in turns]

    def values(key: str) -> list[float]:
        return [float(r[key]) for r in rows if r[key] is not None]

    latencies = values("latency_ms")
    median = round(statistics.median(latencies), 1) if latencies else None
    return {
        "server": "in-process: uvicorn on 127.0.0.1 in the bench process, one call",
        "stack": "Silero VAD, Whisper tiny.en, offline agent, eSpeak NG",
        "vad_stop_secs": vad[0],
        "vad_pause_secs": vad[1],
        "spoken_chars": SPOKEN_CHARS,
        "turns": asked,
        "answered": len(latencies),
        "median_ms": median,
        "min_ms": min(latencies) if latencies else None,
        "p90_ms": percentile(latencies, 90),
        "max_ms": max(latencies) if latencies else None,
        "split_median_ms": {
            key: round(statistics.median(values(key)), 1) if values(key) else None
            for key in ("to_transcript_ms", "transcript_to_text_ms", "text_to_audio_ms")
        },
        "target_ms": TARGET_SECONDS * 1000,
        "target_met": median is not None and median < TARGET_SECONDS * 1000,
        "per_turn": rows,
        "errors": errors,
    }
