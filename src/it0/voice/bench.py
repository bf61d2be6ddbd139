"""``it0 bench voice``: how soon the agent answers a spoken question, and how many calls a
server carries.

* latency: a real server in this process (uvicorn on 127.0.0.1, a throwaway SQLite data dir,
  the offline stack: Silero VAD, Whisper, the offline agent, eSpeak NG) and one call through
  the SDK. A microphone streams 20 ms frames at real-time pace, silence between questions;
  each question is eSpeak's reading of a line an operator says. The figure is the time from
  the last speech frame sent to the first byte of the answer's audio, split where the
  protocol shows it (the transcript, the first ``agent.text``). A turn starts only once the
  previous answer's audio has stopped and the conversation is idle.
* concurrency: ``it0 serve`` in a subprocess with ``IT0_VOICE_ECHO=true`` (calls echo their
  audio, no speech services), and N calls from this process, each streaming 20 ms frames at
  real-time pace. A frame is late when its echo arrives more than 100 ms after it was sent,
  or never. N ramps up until a level has 1% of its frames late.

Everything listens on 127.0.0.1 and is stopped afterwards (the server by its PID). Figures are
printed, never asserted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import socket
import statistics
import struct
import sys
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from it0.client.voice import VoiceCall
    from it0.platform import Platform

err = Console(stderr=True)

HOST = "127.0.0.1"
PASSWORD = "bench-password-123"  # noqa: S105 - a throwaway data dir's admin
RATE = 16_000
FRAME_SECONDS = 0.02
FRAME_BYTES = 640
SILENCE = bytes(FRAME_BYTES)
QUESTIONS = ("check disk usage on localhost", "how much memory is free on localhost")
TARGET_SECONDS = 1.0  # voice to voice, median, from the issue
AUDIO_IDLE_SECONDS = 0.5  # no audio for this long after the final text: the answer is over
TURN_TIMEOUT = 60.0
SPOKEN_CHARS = 50  # answers read out briefly: the figure is the first byte, not the reading
LATE_SECONDS = 0.1
UNDER_LATE_PCT = 1.0
RAMP = (10, 25, 50, 75, 100, 150, 200, 300, 400, 600, 800, 1000)
PHASES = 4  # offsets of the calls' 20 ms clocks, a quarter period apart
MAGIC = b"IT0\xec"  # opens every echo-test frame, then its sequence number
SERVER_START_TIMEOUT = 90.0
CHEAP_ARGON2: dict[str, Any] = {
    "argon2_time_cost": 1,
    "argon2_memory_kib": 1024,
    "argon2_parallelism": 1,
}


class _Progress:
    """Progress lines on stderr, with the seconds since the run started."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def say(self, message: str) -> None:
        elapsed = time.monotonic() - self.started
        err.print(f"[dim]bench {elapsed:5.1f}s:[/dim] {message}", highlight=False)


_progress = _Progress()
_say = _progress.say


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def _percentile(values: list[float], q: float) -> float | None:
    """The ``q``-th percentile (nearest rank on the sorted values); None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def _quiet_sdk_logs() -> None:
    # dropped connections of an overloaded level are counted below, not logged one by one
    logging.getLogger("it0.client.voice").addHandler(logging.NullHandler())


# --- latency: one call, question after question ---------------------------------------------


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
            "latency_ms": _ms(since(self.first_audio_at, self.spoke_at)),
            "to_transcript_ms": _ms(since(self.transcript_at, self.spoke_at)),
            "transcript_to_text_ms": _ms(since(self.first_text_at, self.transcript_at)),
            "text_to_audio_ms": _ms(since(self.first_audio_at, self.first_text_at)),
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


@contextlib.asynccontextmanager
async def serve_in_process(p: Platform) -> AsyncIterator[tuple[str, Any]]:
    """The whole app on a free port of 127.0.0.1, in this process, lifespan and all."""
    import uvicorn

    from it0.app import create_app

    app = create_app(platform=p)
    config = uvicorn.Config(
        app,
        host=HOST,
        port=0,
        log_config=None,
        access_log=False,
        ws="websockets-sansio",
        lifespan="on",
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            raise RuntimeError("the in-process server did not start")
        await asyncio.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{HOST}:{port}", app
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


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
    _say("latency: synthesizing the questions with eSpeak NG")
    questions = [(text, speech(text)) for text in QUESTIONS]
    p = Platform.create(settings)
    await bootstrap(p)
    done: list[Turn] = []
    listener = Listener()
    try:
        async with serve_in_process(p) as (url, app):
            _say("latency: loading the speech model")
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
    return _latency_figures(done, turns, settings.voice_vad_stop_secs, listener.errors)


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
            _say(f"latency: turn {index + 1} got no answer within {TURN_TIMEOUT:.0f} s")
        listener.turn = None
        done.append(turn)
        figures = turn.figures()
        _say(
            f"latency: turn {index + 1}/{count}: {figures['latency_ms']} ms "
            f"(heard {figures['heard']!r})"
        )
    return done


def _latency_figures(
    turns: list[Turn], asked: int, vad_stop_secs: float, errors: list[str]
) -> dict[str, Any]:
    rows = [t.figures() for t in turns]

    def values(key: str) -> list[float]:
        return [float(r[key]) for r in rows if r[key] is not None]

    latencies = values("latency_ms")
    median = round(statistics.median(latencies), 1) if latencies else None
    return {
        "server": "in-process: uvicorn on 127.0.0.1 in the bench process, one call",
        "stack": "Silero VAD, Whisper tiny.en, offline agent, eSpeak NG",
        "vad_stop_secs": vad_stop_secs,
        "spoken_chars": SPOKEN_CHARS,
        "turns": asked,
        "answered": len(latencies),
        "median_ms": median,
        "min_ms": min(latencies) if latencies else None,
        "p90_ms": _percentile(latencies, 90),
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


# --- concurrency: echo calls against a server in another process ---------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


async def _login(http: httpx.AsyncClient, url: str) -> str:
    """An access token of the throwaway admin. Not an API key: a burst of requests with a key
    unused for a minute exhausts the SQLite pool (each one refreshes the key's last use)."""
    response = await http.post(
        f"{url}/api/v1/auth/login",
        json={"tenant": "default", "username": "admin", "password": PASSWORD},
        timeout=30,
    )
    response.raise_for_status()
    return str(response.json()["access_token"])


@dataclass
class EchoServer:
    url: str
    token: str
    pid: int

    def cpu_seconds(self) -> float | None:
        """CPU time the server process has used (Linux), for its share per level."""
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.asynccontextmanager
async def echo_server(data: Path) -> AsyncIterator[EchoServer]:
    """``it0 serve`` with ``IT0_VOICE_ECHO=true`` on a free port; terminated by PID after."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("IT0_")}
    env.update(
        IT0_DATA_DIR=str(data),
        IT0_VOICE_ECHO="true",
        IT0_LOG_LEVEL="WARNING",
        IT0_ADMIN_PASSWORD=PASSWORD,
        **{f"IT0_{name.upper()}": str(value) for name, value in CHEAP_ARGON2.items()},
    )
    log_path = data.parent / "serve.log"
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "it0",
            "serve",
            "--host",
            HOST,
            "--port",
            str(port),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=env,
        )
    url = f"http://{HOST}:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        async with httpx.AsyncClient(timeout=2) as probe:
            while True:
                if proc.returncode is not None:
                    tail = log_path.read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"it0 serve exited with {proc.returncode}: {tail}")
                with contextlib.suppress(httpx.TransportError):
                    if (await probe.get(f"{url}/healthz")).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"it0 serve not healthy after {SERVER_START_TIMEOUT:.0f} s")
                await asyncio.sleep(0.1)
            token = await _login(probe, url)
        yield EchoServer(url, token, proc.pid)
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), timeout=30)
            except TimeoutError:
                proc.kill()
                await proc.wait()


class EchoProbe:
    """One call's frames: when each was sent, and how long its echo took."""

    def __init__(self, frames: int) -> None:
        self.sent_at = [0.0] * frames
        self.delays: list[float] = []
        self._pending = bytearray()

    def frame(self, seq: int, body: bytes) -> bytes:
        self.sent_at[seq] = time.perf_counter()
        return MAGIC + struct.pack("<I", seq) + body

    def on_audio(self, pcm: bytes) -> None:
        now = time.perf_counter()
        self._pending += pcm
        while len(self._pending) >= FRAME_BYTES:
            if not self._pending.startswith(MAGIC):  # bytes lost on the way: find the next frame
                found = self._pending.find(MAGIC, 1)
                del self._pending[: found if found > 0 else len(self._pending) - len(MAGIC) + 1]
                continue
            (seq,) = struct.unpack_from("<I", self._pending, len(MAGIC))
            del self._pending[:FRAME_BYTES]
            if seq < len(self.sent_at) and self.sent_at[seq]:
                self.delays.append(now - self.sent_at[seq])


@dataclass
class Level:
    sessions: int
    frames: int
    echoed: int
    late: int  # echoed after LATE_SECONDS, or never
    lost: int
    late_pct: float
    p50_ms: float | None
    p99_ms: float | None
    server_cpu_pct: float | None
    bench_cpu_pct: float
    send_lag_p99_ms: float | None
    reconnects: int
    failed_calls: int = 0


def _tone() -> bytes:
    """The body of every echo frame: a quiet 440 Hz tone, as a microphone would send."""
    count = (FRAME_BYTES - len(MAGIC) - 4) // 2
    samples = (int(2000 * math.sin(2 * math.pi * 440 * i / RATE)) for i in range(count))
    return struct.pack(f"<{count}h", *samples)


async def _open_calls(server: EchoServer, probes: list[EchoProbe]) -> list[VoiceCall]:
    from it0.client.voice import VoiceCall, VoiceSettings

    settings = VoiceSettings(jitter_capacity=RATE * 2)  # nobody plays this audio
    gate = asyncio.Semaphore(50)

    async def one(probe: EchoProbe) -> VoiceCall:
        async with gate:
            call = VoiceCall(server.url, server.token, on_audio=probe.on_audio, settings=settings)
            await call.start()
            return call

    return list(await asyncio.gather(*(one(probe) for probe in probes)))


async def run_level(server: EchoServer, sessions: int, seconds: float) -> Level:
    frames = max(1, round(seconds / FRAME_SECONDS))
    probes = [EchoProbe(frames) for _ in range(sessions)]
    calls = await _open_calls(server, probes)
    await _settle(server)  # the calls' pipelines have started before the clock does
    body = _tone()
    lags: list[float] = []
    cpu_before, bench_before = server.cpu_seconds(), time.process_time()
    # calls are not in step with each other: each phase of them sends a quarter period later
    phases = [list(zip(probes, calls, strict=True))[i::PHASES] for i in range(PHASES)]
    started = time.perf_counter() + 0.05
    try:
        for seq in range(frames):
            for index, phase in enumerate(phases):
                due = started + (seq + index / PHASES) * FRAME_SECONDS
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                for probe, call in phase:
                    await call.send_audio(probe.frame(seq, body))
                lags.append(time.perf_counter() - due)
        wall = time.perf_counter() - started
        cpu_after, bench_after = server.cpu_seconds(), time.process_time()
        drain_until = time.perf_counter() + 1.0  # anything later than this is lost
        while time.perf_counter() < drain_until:
            if all(len(p.delays) >= frames for p in probes):
                break
            await asyncio.sleep(0.05)
    finally:
        await asyncio.gather(*(call.hangup() for call in calls), return_exceptions=True)
    delays = [d for p in probes for d in p.delays]
    total = sessions * frames
    lost = max(0, total - len(delays))
    late = sum(1 for d in delays if d > LATE_SECONDS) + lost
    server_cpu = None
    if cpu_before is not None and cpu_after is not None:
        server_cpu = round(100 * (cpu_after - cpu_before) / wall, 1)
    return Level(
        sessions=sessions,
        frames=total,
        echoed=len(delays),
        late=late,
        lost=lost,
        late_pct=round(100 * late / total, 2),
        p50_ms=_ms(_percentile(delays, 50)),
        p99_ms=_ms(_percentile(delays, 99)),
        server_cpu_pct=server_cpu,
        bench_cpu_pct=round(100 * (bench_after - bench_before) / wall, 1),
        send_lag_p99_ms=_ms(_percentile(lags, 99)),
        reconnects=sum(call.counters.reconnects for call in calls),
        failed_calls=sum(1 for call in calls if call.state == "failed"),
    )


async def _settle(server: EchoServer, limit: float = 10.0) -> None:
    """Until the server has worked off the last level (its CPU at rest)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        before = server.cpu_seconds()
        await asyncio.sleep(0.25)
        after = server.cpu_seconds()
        if before is None or after is None or (after - before) / 0.25 < 0.15:
            return


def ramp(max_sessions: int) -> list[int]:
    return [n for n in RAMP if n < max_sessions] + [max_sessions]


async def measure_concurrency(
    max_sessions: int, seconds: float, refine: int, data: Path
) -> dict[str, Any]:
    _quiet_sdk_logs()
    levels: list[Level] = []
    stopped = ""
    _say("concurrency: starting `it0 serve` with IT0_VOICE_ECHO=true")
    async with echo_server(data) as server:

        async def level(n: int) -> Level:
            _say(f"concurrency: {n} calls for {seconds:g} s")
            result = await run_level(server, n, seconds)
            levels.append(result)
            _say(
                f"concurrency: {n} calls: {result.late_pct}% late, "
                f"p99 {result.p99_ms} ms, server CPU {result.server_cpu_pct}%"
            )
            await _settle(server)
            return result

        for n in ramp(max_sessions):
            if (await level(n)).late_pct >= UNDER_LATE_PCT:  # more calls can only be later
                stopped = (
                    f"The ramp stopped at {n} calls, the first level over {UNDER_LATE_PCT:g}%."
                )
                break
        for _ in range(refine):
            good = [lv.sessions for lv in levels if lv.late_pct < UNDER_LATE_PCT]
            bad = [lv.sessions for lv in levels if lv.late_pct >= UNDER_LATE_PCT]
            low, high = max(good, default=0), min(bad, default=0)
            if not bad or high - low < 4 or low > high:
                break
            await level((low + high) // 2)
    levels.sort(key=lambda lv: lv.sessions)
    good = [lv.sessions for lv in levels if lv.late_pct < UNDER_LATE_PCT]
    bad = [lv.sessions for lv in levels if lv.late_pct >= UNDER_LATE_PCT]
    best = max(good, default=0)
    first_bad = min((n for n in bad if n > best), default=None)
    return {
        "server": "subprocess: python -m it0 serve (IT0_VOICE_ECHO=true, SQLite), "
        "the calls from the bench process",
        "seconds": seconds,
        "late_after_ms": LATE_SECONDS * 1000,
        "late_means": f"echo later than {LATE_SECONDS * 1000:.0f} ms after sending, or never",
        "phases": PHASES,
        "levels": [asdict(lv) for lv in levels],
        "max_sessions_under_1pct_late": best,
        "first_level_over": first_bad,
        "stopped": stopped,
    }


# --- the command ---------------------------------------------------------------------------


async def _run(
    turns: int, max_sessions: int, seconds: float, refine: int, root: Path
) -> dict[str, Any]:
    result: dict[str, Any] = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    if turns:
        (root / "latency").mkdir()
        result["latency"] = await measure_latency(turns, root / "latency" / "data")
    if max_sessions:
        (root / "echo").mkdir()
        result["concurrency"] = await measure_concurrency(
            max_sessions, seconds, refine, root / "echo" / "data"
        )
    return result


def _text(value: Any, unit: str = "") -> str:
    return "-" if value is None else f"{value}{unit}"


LATENCY_ROWS = (
    ("end of speech -> first answer audio byte, median", "median_ms"),
    ("  end of speech -> transcript (VAD stop + Whisper)", "to_transcript_ms"),
    ("  transcript -> first agent.text (offline agent)", "transcript_to_text_ms"),
    ("  first agent.text -> first audio byte (eSpeak NG)", "text_to_audio_ms"),
)
LEVEL_COLUMNS = (
    ("calls", "sessions", ""),
    ("frames", "frames", ""),
    ("late %", "late_pct", ""),
    ("lost", "lost", ""),
    ("echo p50", "p50_ms", " ms"),
    ("echo p99", "p99_ms", " ms"),
    ("server CPU", "server_cpu_pct", "%"),
    ("bench CPU", "bench_cpu_pct", "%"),
    ("send lag p99", "send_lag_p99_ms", " ms"),
    ("reconnects", "reconnects", ""),
)


def _print(result: dict[str, Any]) -> None:
    console = Console() if Console().is_terminal else Console(width=160)
    if (latency := result.get("latency")) is not None:
        table = Table("figure", "value", title="it0 bench voice: voice to voice (offline stack)")
        figures = {**latency, **latency["split_median_ms"]}
        for label, key in LATENCY_ROWS:
            table.add_row(label, _text(figures[key], " ms"))
            if key == "median_ms":
                spread = (_text(latency[k], " ms") for k in ("min_ms", "p90_ms", "max_ms"))
                table.add_row("min / p90 / max", " / ".join(spread))
        table.add_row("turns answered", f"{latency['answered']} of {latency['turns']}")
        met = "[green]met[/green]" if latency["target_met"] else "[red]not met[/red]"
        table.add_row(f"target: median under {latency['target_ms']:.0f} ms", met)
        console.print(table)
        console.print(
            f"[dim]{latency['server']}; {latency['stack']}; VAD stop {latency['vad_stop_secs']} "
            f"s; answers read out to {latency['spoken_chars']} characters[/dim]"
        )
    if (concurrency := result.get("concurrency")) is not None:
        title = "it0 bench voice: concurrent echo calls, 20 ms frames at real-time pace"
        table = Table(*(name for name, _, _ in LEVEL_COLUMNS), title=title)
        for level in concurrency["levels"]:
            style = "green" if level["late_pct"] < UNDER_LATE_PCT else "red"
            cells = [_text(level[key], unit) for _, key, unit in LEVEL_COLUMNS]
            cells[2] = f"[{style}]{cells[2]}[/{style}]"
            table.add_row(*cells)
        console.print(table)
        over = concurrency["first_level_over"]
        console.print(
            f"largest number of calls with under {UNDER_LATE_PCT:g}% late frames: "
            f"[bold]{concurrency['max_sessions_under_1pct_late']}[/bold]"
            + (f" ({over} calls were over)" if over else "")
        )
        console.print(
            f"[dim]late: {concurrency['late_means']}; {concurrency['server']}; the calls' "
            f"clocks spread over {concurrency['phases']} phases of the 20 ms period; CPU 100% = "
            f"one core. {concurrency['stopped']}[/dim]"
        )
    console.print(f"[dim]{result['cpus']} CPUs, Python {result['python']}[/dim]")


def voice(
    turns: Annotated[
        int, typer.Option(min=0, help="questions asked for the latency figure (0: skip)")
    ] = 10,
    max_sessions: Annotated[
        int, typer.Option(min=0, help="most concurrent echo calls to ramp to (0: skip)")
    ] = 200,
    seconds: Annotated[
        float, typer.Option(min=0.1, help="seconds each concurrency level streams")
    ] = 10.0,
    refine: Annotated[
        int, typer.Option(min=0, help="extra levels between the last good and first bad one")
    ] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of tables")] = False,
) -> None:
    """Voice-to-voice latency of the offline stack, and concurrent calls one server carries."""
    _progress.started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="it0-bench-voice-") as tmp:
        result = asyncio.run(_run(turns, max_sessions, seconds, refine, Path(tmp)))
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
        return
    _print(result)
