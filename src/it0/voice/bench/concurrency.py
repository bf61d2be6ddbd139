"""Concurrent calls: ``it0 serve`` in a subprocess with ``IT0_VOICE_ECHO=true`` (calls echo
their audio, no speech services), and N calls from this process, each streaming 20 ms frames at
real-time pace.

A frame is late when its echo arrives more than 100 ms after it was sent, or never. N ramps up
until a level has 1% of its frames late.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
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
)

if TYPE_CHECKING:
    from it0.client.voice import VoiceCall

LATE_SECONDS = 0.1
UNDER_LATE_PCT = 1.0
RAMP = (10, 25, 50, 75, 100, 150, 200, 300, 400, 600, 800, 1000)
PHASES = 4  # offsets of the calls' 20 ms clocks, a quarter period apart
MAGIC = b"IT0\xec"  # opens every echo-test frame, then its sequence number


def _quiet_sdk_logs() -> None:
    # dropped connections of an overloaded level are counted below, not logged one by one
    logging.getLogger("it0.client.voice").addHandler(logging.NullHandler())


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
    """``it0 serve`` with ``IT0_VOICE_ECHO=true`` on a free port, logged in as its admin."""
    # not at the top: it0.bench imports this package for its ``voice`` command
    from it0.bench import running_server

    env = {
        "IT0_VOICE_ECHO": "true",
        "IT0_LOG_LEVEL": "WARNING",
        "IT0_ADMIN_PASSWORD": PASSWORD,
        **{f"IT0_{name.upper()}": str(value) for name, value in CHEAP_ARGON2.items()},
    }
    async with running_server(data, env) as server:
        async with httpx.AsyncClient() as http:
            token = await _login(http, server.url)
        yield EchoServer(server.url, token, server.pid)


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
        p50_ms=ms(percentile(delays, 50)),
        p99_ms=ms(percentile(delays, 99)),
        server_cpu_pct=server_cpu,
        bench_cpu_pct=round(100 * (bench_after - bench_before) / wall, 1),
        send_lag_p99_ms=ms(percentile(lags, 99)),
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
    say("concurrency: starting `it0 serve` with IT0_VOICE_ECHO=true")
    async with echo_server(data) as server:

        async def level(n: int) -> Level:
            say(f"concurrency: {n} calls for {seconds:g} s")
            result = await run_level(server, n, seconds)
            levels.append(result)
            say(
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
