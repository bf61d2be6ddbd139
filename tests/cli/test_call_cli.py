"""``it0 call`` against a real ``it0 serve`` on the embedded default, offline speech and all.

The question is eSpeak NG's reading of what an operator says, written as a WAV file; the
command runs as ``python -m it0 call`` and its key is the ``cli.key`` the server wrote. The
server reads answers out briefly (``IT0_VOICE_SPOKEN_CHARS=50``) so that a call is short.
Live calls use a microphone and a speaker on a throwaway PulseAudio daemon (``tests.sound``).
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import threading
import wave
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import httpx
import numpy as np
import pytest
import soxr  # type: ignore[import-untyped]

from it0.auth.bootstrap import read_local_key
from it0.cli.call import MIC_BACKLOG, Microphone
from it0.client.voice import VoiceCall
from it0.voice.espeak import Espeak
from tests.agent.prepared import fixture_runbook
from tests.processes import ANSI, Server, free_port, it0_command, it0_env, server_pool
from tests.sound import SoundServer, sound_server
from tests.voice.proxy import Proxy

pytestmark = pytest.mark.slow

QUESTION = "check disk usage on localhost"
NO_MODEL = "no language model is configured"
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
NO_SOUND = (
    "error: no sound device here (install the 'sounddevice' package and PortAudio), "
    "or use --in/--out"
)
LIVE = "speak when you like; Ctrl-C hangs up"
CONVERSATION = re.compile(
    rf"^conversation ({UUID}) \(go on with it later: it0 chat --session ({UUID})\)$", re.MULTILINE
)


@dataclass(frozen=True)
class Site:
    server: Server
    data: Path

    @property
    def port(self) -> int:
        return self.server.port

    def env(self, **extra: str) -> dict[str, str]:
        """The CLI's environment: no key given, so it uses the server's local cli.key."""
        return it0_env(self.data, **{"IT0_URL": self.server.url, "COLUMNS": "200", **extra})


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    work = tmp_path_factory.mktemp("call-cli")
    with server_pool(work) as start:
        server = start(work / "data", IT0_VOICE_SPOKEN_CHARS="50")
        yield Site(server, work / "data")
        server.stop()
        assert "Traceback" not in server.stderr(), server.stderr()[-3000:]


def _call(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    done = subprocess.run(
        it0_command("call", *args),
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    return done.returncode, ANSI.sub("", done.stdout), ANSI.sub("", done.stderr)


def _write_wav(path: Path, samples: np.ndarray, rate: int, channels: int) -> Path:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(samples.astype("<i2").tobytes())
    return path


@pytest.fixture(scope="module")
def question() -> np.ndarray:
    return np.frombuffer(Espeak().synthesize(QUESTION, 16_000), dtype="<i2")


def _heard(stdout: str) -> str:
    lines = [line for line in stdout.splitlines() if line.startswith("you: ")]
    assert len(lines) == 1, stdout
    return lines[0].lower()


def _spoken_seconds(path: Path) -> float:
    """Seconds of audible audio in a WAV file, which must be 16 kHz, mono, 16-bit."""
    with wave.open(str(path), "rb") as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (16_000, 1, 2)
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    return int(np.count_nonzero(np.abs(samples.astype(np.int32)) > 500)) / 16_000


def test_a_spoken_question_gets_a_spoken_answer(
    site: Site, question: np.ndarray, tmp_path: Path
) -> None:
    asked = _write_wav(tmp_path / "question.wav", question, 16_000, 1)
    answer = tmp_path / "answer.wav"
    code, out, err = _call(site.env(), "--in", str(asked), "--out", str(answer))
    assert code == 0, out + err
    assert "disk" in _heard(out)
    assert "agent: " in out
    assert NO_MODEL in out.lower()
    assert _spoken_seconds(answer) >= 0.5
    assert "of the agent's voice in" in out
    assert "error" not in err


def test_a_stereo_44k_question_is_converted(
    site: Site, question: np.ndarray, tmp_path: Path
) -> None:
    louder = soxr.resample(question.astype(np.float32), 16_000, 44_100)
    stereo = np.stack([louder, louder * 0.5], axis=1).round()
    asked = _write_wav(tmp_path / "stereo.wav", stereo, 44_100, 2)
    code, out, err = _call(site.env(), "--in", str(asked))
    assert code == 0, out + err
    assert "disk" in _heard(out)
    assert NO_MODEL in out.lower()


def test_a_typed_question_prints_the_control_messages_as_json(site: Site, tmp_path: Path) -> None:
    answer = tmp_path / "answer.wav"
    code, out, err = _call(
        site.env(), "--text", "how much memory is free on localhost", "--json", "--out", str(answer)
    )
    assert code == 0, out + err
    messages = [json.loads(line) for line in out.splitlines()]
    texts = [m for m in messages if m["type"] == "agent.text"]
    assert texts[-1] == {"type": "agent.text", "text": "", "final": True}
    assert NO_MODEL in " ".join(m["text"] for m in texts).lower()
    assert not [m for m in messages if m["type"] in ("transcript", "error")]
    assert _spoken_seconds(answer) >= 0.5
    assert "on the line: call" in err  # the notes go to stderr with --json
    headers = {"Authorization": f"Bearer {read_local_key(site.data)}"}
    with httpx.Client(base_url=site.server.url, headers=headers, timeout=30) as http:
        detail = http.get(f"/api/v1/agent/sessions/{_conversation(err)}")
    assert detail.status_code == 200, detail.text
    asked = [m["content"] for m in detail.json()["messages"] if m["role"] == "user"]
    assert asked == ["how much memory is free on localhost"]


def test_a_call_continues_a_conversation(site: Site) -> None:
    env = site.env()
    headers = {"Authorization": f"Bearer {read_local_key(site.data)}"}
    with httpx.Client(base_url=site.server.url, headers=headers, timeout=30) as http:
        created = http.post("/api/v1/agent/sessions", json={"title": "typed first"})
        assert created.status_code == 201, created.text
        conversation = created.json()["id"]
        code, out, err = _call(env, "--session", conversation, "--text", QUESTION)
        assert code == 0, out + err
        assert NO_MODEL in out.lower()
        assert _conversation(out) == conversation
        detail = http.get(f"/api/v1/agent/sessions/{conversation}").json()
    asked = [m["content"] for m in detail["messages"] if m["role"] == "user"]
    assert asked == [QUESTION]

    code, out, err = _call(env, "--session", "0190a1b2-c3d4-7e5f-8000-000000000000", "--text", "x")
    assert code == 2
    assert err.strip() == "error 404: no such conversation"


def test_a_command_that_needs_approval_shows_how_to_approve(site: Site, tmp_path: Path) -> None:
    report, marker = tmp_path / "df.txt", tmp_path / "marker"
    report.write_text(
        "Filesystem     Type  Size  Used Avail Use% Mounted on\n"
        "/dev/sda1      ext4   50G   48G  1.0G  98% /quasar\n"
    )
    runbook = {
        **fixture_runbook(report, marker),
        "id": "quasar-full",
        "title": "Quasar volume full",
        "summary": "The quasar volume ran out of space.",
        "symptoms": ["quasar volume is full"],
        "keywords": ["quasar", "full"],
    }
    headers = {"Authorization": f"Bearer {read_local_key(site.data)}"}
    with httpx.Client(base_url=site.server.url, headers=headers, timeout=30) as http:
        put = http.put("/api/v1/runbooks/quasar-full", json=runbook)
    assert put.status_code in (200, 201), put.text
    code, out, err = _call(site.env(), "--text", "the quasar volume is full on localhost")
    assert code == 0, out + err
    found = re.search(
        rf"^approval required: touch {marker} on localhost \(\w+\), approval ({UUID}) — "
        rf"a person approves with `it0 approvals approve ({UUID})`$",
        out,
        re.MULTILINE,
    )
    assert found, out
    assert found.group(1) == found.group(2)
    assert not marker.exists()


# runs the rest of its arguments with SIGINT ignored, as a non-interactive shell starts a
# background job
SIGINT_IGNORED = [
    sys.executable,
    "-c",
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
    "os.execv(sys.argv[1], sys.argv[1:])",
]


async def _call_until(
    env: dict[str, str], *args: str, final: bool = False, sigint_ignored: bool = False
) -> asyncio.subprocess.Process:
    """``it0 call --json`` with a typed question, once the answer has begun (``final``: once
    all of its text has come; its voice is still playing then)."""
    prefix = SIGINT_IGNORED if sigint_ignored else []
    proc = await asyncio.create_subprocess_exec(
        *prefix,
        *it0_command("call", "--text", QUESTION, "--json", *args),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(60):
            while True:
                line = await proc.stdout.readline()
                assert line, "the call ended before its answer"
                message = json.loads(line)
                if message["type"] == "agent.text" and (message["final"] or not final):
                    return proc
    except BaseException:
        proc.kill()
        await proc.wait()
        raise


async def _finish(proc: asyncio.subprocess.Process, limit: float) -> tuple[str, str]:
    """What the call printed from then on, stdout and stderr, by the time it ended."""
    try:
        async with asyncio.timeout(limit):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return out.decode(), ANSI.sub("", err.decode())


def _call_id(notes: str) -> str:
    found = re.search(rf"on the line: call ({UUID})", notes)
    assert found, notes
    return found.group(1)


def _conversation(notes: str) -> str:
    """The agent conversation ``it0 call`` said the call belongs to."""
    found = CONVERSATION.search(notes)
    assert found, notes
    assert found.group(1) == found.group(2)
    return found.group(1)


@pytest.mark.parametrize(
    ("lang", "banner"), [("en", "reconnecting… (1/5)"), ("zh", "重新连接中... (1/5)")]
)
async def test_a_dropped_line_shows_the_banner_and_the_call_goes_on(
    site: Site, lang: str, banner: str
) -> None:
    proxy = Proxy(site.port)
    await proxy.start()
    try:
        proc = await _call_until(site.env(IT0_URL=proxy.url), "--lang", lang, final=True)
        proxy.cut()
        out, notes = await _finish(proc, 60)
    finally:
        await proxy.close()
    assert proc.returncode == 0, notes
    assert banner in notes.splitlines()
    assert "reconnected — the conversation goes on" in notes
    assert "session.resumed" in [json.loads(line)["type"] for line in out.splitlines()]


async def test_a_call_the_server_ends_exits_with_the_reason(site: Site) -> None:
    proc = await _call_until(site.env())
    assert proc.stderr is not None
    call_id = _call_id((await proc.stderr.readline()).decode())
    headers = {"Authorization": f"Bearer {read_local_key(site.data)}"}
    async with httpx.AsyncClient(base_url=site.server.url, headers=headers) as http:
        ended = await http.delete(f"/api/v1/voice/sessions/{call_id}")  # from elsewhere
    assert ended.status_code == 204
    _, notes = await _finish(proc, 30)
    assert proc.returncode == 0, notes
    assert notes.splitlines()[-1] == "call ended by the server: hangup"


async def test_a_line_that_stays_down_fails_after_five_attempts(site: Site) -> None:
    proxy = Proxy(site.port)
    await proxy.start()
    try:
        proc = await _call_until(site.env(IT0_URL=proxy.url))
        proxy.down = True
        proxy.cut()
        _, notes = await _finish(proc, 60)  # the backoff: 1 + 2 + 4 + 8 + 16 s
    finally:
        await proxy.close()
    assert proc.returncode == 1, notes
    lines = notes.splitlines()
    assert [line for line in lines if line.startswith("reconnecting")] == [
        f"reconnecting… ({n}/5)" for n in range(1, 6)
    ]
    assert lines[-1] == "error: connection failed: no connection after 5 attempts"


@pytest.mark.parametrize("ignored", [False, True], ids=["sigint", "sigint-ignored-at-start"])
async def test_ctrl_c_hangs_up(site: Site, ignored: bool) -> None:
    proc = await _call_until(site.env(), sigint_ignored=ignored)
    proc.send_signal(signal.SIGINT)
    _, notes = await _finish(proc, 30)
    assert proc.returncode == 130, notes
    assert notes.splitlines()[-1] == "hung up"
    headers = {"Authorization": f"Bearer {read_local_key(site.data)}"}
    async with httpx.AsyncClient(base_url=site.server.url, headers=headers) as http:
        again = await http.post(f"/api/v1/voice/sessions/{_call_id(notes)}/reconnect")
    assert again.status_code == 404  # ended for good, not waiting for a reconnect


def test_a_file_that_is_not_a_wav_is_one_line(site: Site, tmp_path: Path) -> None:
    text = tmp_path / "notes.wav"
    text.write_text("not audio at all\n")
    code, out, err = _call(site.env(), "--in", str(text))
    assert code == 2
    assert (
        out + err
    ).strip() == f"error: {text} is not a PCM WAV file (file does not start with RIFF id)"
    code, out, err = _call(site.env(), "--in", str(tmp_path / "missing.wav"))
    assert code == 2
    assert (out + err).strip().startswith("error: cannot read ")
    code, out, err = _call(site.env(), "--in", str(text), "--text", "hi")
    assert code == 2
    assert (out + err).strip() == "error: use --in or --text, not both"


def test_without_a_sound_device_a_live_call_is_one_line(tmp_path: Path) -> None:
    # sounddevice and PortAudio are installed (the dev extra), and this machine has no device
    env = it0_env(tmp_path / "data", IT0_API_KEY="it0_default_unused", COLUMNS="200")
    code, out, err = _call(env)
    assert code == 2
    assert (out + err).strip() == NO_SOUND
    for missing in (
        "raise ModuleNotFoundError(\"No module named 'sounddevice'\")",  # not installed
        'raise OSError("PortAudio library not found")',  # installed without PortAudio
    ):
        code, out, err = _call({**env, "PYTHONPATH": str(_stub(tmp_path, missing))})
        assert code == 2
        assert (out + err).strip() == NO_SOUND


STUB = """
class PortAudioError(Exception):
    pass

def query_devices(kind=None):
    return {{"name": "stub"}}

def check_input_settings(**settings):
    {check}

def check_output_settings(**settings):
    pass

class _Stream:
    def abort(self, ignore_errors=True):
        pass

    close = abort

class RawInputStream(_Stream):
    def __init__(self, **settings):
        {microphone}

class RawOutputStream(_Stream):
    def __init__(self, **settings):
        {speaker}
"""
FINE = "pass"


def _stub(tmp_path: Path, source: str) -> Path:
    """A directory whose ``sounddevice`` module is ``source``, to put on PYTHONPATH."""
    stub = tmp_path / f"stub-{len(list(tmp_path.glob('stub-*')))}"
    stub.mkdir()
    (stub / "sounddevice.py").write_text(source + "\n")
    return stub


@pytest.mark.parametrize(
    ("check", "microphone", "speaker", "line"),
    [
        (
            'raise PortAudioError("Invalid sample rate [PaErrorCode -9997]")',
            FINE,
            FINE,
            "error: the sound device cannot do 16 kHz mono 16-bit audio: "
            "Invalid sample rate [PaErrorCode -9997]",
        ),
        (
            FINE,
            'raise PortAudioError("Error opening RawInputStream: Device unavailable")',
            FINE,
            "error: cannot open the microphone: Error opening RawInputStream: Device unavailable",
        ),
        (
            FINE,
            FINE,
            'raise PortAudioError("Error opening RawOutputStream: Device unavailable")',
            "error: cannot open the speaker: Error opening RawOutputStream: Device unavailable",
        ),
    ],
    ids=["no-16-khz", "microphone-busy", "speaker-busy"],
)
def test_a_sound_device_that_cannot_take_the_call_is_one_line(
    tmp_path: Path, check: str, microphone: str, speaker: str, line: str
) -> None:
    """Found before the call is placed: nothing listens at the URL."""
    url = f"http://127.0.0.1:{free_port()}"
    source = STUB.format(check=check, microphone=microphone, speaker=speaker)
    env = it0_env(
        tmp_path / "data",
        IT0_API_KEY="it0_default_unused",
        COLUMNS="200",
        PYTHONPATH=str(_stub(tmp_path, source)),
    )
    code, out, err = _call(env, "--url", url)
    assert code == 2
    assert (out + err).strip() == line


def test_nothing_listening_is_one_line(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    env = it0_env(tmp_path / "data", COLUMNS="200")
    code, out, err = _call(env, "--url", url, "--key", "it0_default_x", "--text", QUESTION)
    assert code == 2
    assert (out + err).strip() == f"error: cannot reach {url}: All connection attempts failed"
    assert "Traceback" not in err


# --- live: a microphone and a speaker on a real (throwaway) PulseAudio daemon -------------------


class _Sent:
    """Stands in for the call: what the microphone sent, and when the expected count is in."""

    def __init__(self, expected: int) -> None:
        self.blocks: list[bytes] = []
        self.expected = expected
        self.all_in = asyncio.Event()

    async def send_audio(self, pcm: bytes) -> bool:
        self.blocks.append(pcm)
        if len(self.blocks) == self.expected:
            self.all_in.set()
        return True


async def test_the_microphone_hands_blocks_over_in_order_and_drops_the_oldest() -> None:
    microphone = Microphone(asyncio.get_running_loop())
    blocks = [n.to_bytes(2, "little") * 320 for n in range(MIC_BACKLOG + 10)]

    def portaudio() -> None:  # the callbacks come from another thread
        for block in blocks:
            microphone.callback(memoryview(block), 320, None, None)

    recorder = threading.Thread(target=portaudio)
    recorder.start()
    # its hand-overs were queued on the loop before this await's own result is
    await asyncio.to_thread(recorder.join)
    sent = _Sent(MIC_BACKLOG)
    sender = asyncio.create_task(microphone.send_to(cast(VoiceCall, sent)))
    try:
        async with asyncio.timeout(30):
            await sent.all_in.wait()
        assert sent.blocks == blocks[10:]  # the newest second, in order
        assert microphone.dropped == 10
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)


def test_the_microphone_stops_quietly_once_the_loop_has_closed() -> None:
    loop = asyncio.new_event_loop()
    microphone = Microphone(loop)
    loop.close()
    microphone.callback(memoryview(bytes(640)), 320, None, None)  # no exception in PortAudio


@pytest.fixture(scope="module")
def sound() -> Iterator[SoundServer]:
    with sound_server() as server:
        yield server


@dataclass
class LiveCall:
    """A running ``it0 call`` without --in/--text: its output lines, collected as they come."""

    proc: asyncio.subprocess.Process
    out: list[str] = field(default_factory=list)
    err: list[str] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    readers: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    async def start(cls, env: dict[str, str]) -> LiveCall:
        proc = await asyncio.create_subprocess_exec(
            *it0_command("call"),
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        call = cls(proc)
        assert proc.stdout is not None
        assert proc.stderr is not None
        call.readers = [
            asyncio.create_task(call._read(proc.stdout, call.out)),
            asyncio.create_task(call._read(proc.stderr, call.err)),
        ]
        return call

    async def _read(self, stream: asyncio.StreamReader, lines: list[str]) -> None:
        try:
            while line := await stream.readline():
                lines.append(ANSI.sub("", line.decode()).rstrip("\n"))
                self.changed.set()
        finally:
            self.changed.set()

    def printed(self) -> str:
        return "\n".join([*self.out, "--- stderr:", *self.err])

    async def line(self, pattern: str, limit: float = 120) -> str:
        """The first line on stdout that ``pattern`` matches (case-insensitive), once printed."""
        wanted = re.compile(pattern, re.IGNORECASE)
        try:
            async with asyncio.timeout(limit):
                while True:
                    self.changed.clear()
                    found = [line for line in self.out if wanted.match(line)]
                    if found:
                        return found[0]
                    if all(reader.done() for reader in self.readers):
                        pytest.fail(f"it0 call ended without {pattern!r}:\n{self.printed()}")
                    await self.changed.wait()
        except TimeoutError:
            pytest.fail(f"no {pattern!r} from it0 call within {limit:g} s:\n{self.printed()}")

    async def hang_up(self, limit: float = 60) -> int:
        """Ctrl-C; the exit code, once the command and its output have ended."""
        self.proc.send_signal(signal.SIGINT)
        try:
            async with asyncio.timeout(limit):
                code = await self.proc.wait()
                await asyncio.gather(*self.readers)
        except TimeoutError:
            pytest.fail(f"it0 call still running {limit:g} s after Ctrl-C:\n{self.printed()}")
        return code

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        for reader in self.readers:
            reader.cancel()
        await asyncio.gather(*self.readers, return_exceptions=True)


async def _voice_session_is_over(site: Site, call_id: str) -> bool:
    headers = {"Authorization": f"Bearer {read_local_key(site.data)}"}
    async with httpx.AsyncClient(base_url=site.server.url, headers=headers) as http:
        again = await http.post(f"/api/v1/voice/sessions/{call_id}/reconnect")
    return again.status_code == 404  # ended for good, not waiting for a reconnect


async def test_a_live_call_hears_the_microphone_and_plays_the_answer(
    site: Site, sound: SoundServer, question: np.ndarray
) -> None:
    played_before = sound.speaker.audible_samples
    call = await LiveCall.start(site.env(**sound.env()))
    try:
        await call.line(re.escape(LIVE))  # on the line, microphone and speaker started
        # half a second of silence first, then the question; silence goes on after it
        sound.microphone.say(bytes(16_000) + question.astype("<i2").tobytes())
        heard = await call.line("you: ")
        await call.line(rf".*{NO_MODEL}")  # the answer, after the agent's progress notes
        played = await asyncio.to_thread(sound.speaker.wait_audible, 0.5, played_before, 120)
        assert played >= 0.5, f"{played:.2f} s of the answer reached the speaker"
        code = await call.hang_up()
    finally:
        await call.kill()
    assert code == 0, call.printed()
    assert "disk" in heard.lower()
    out = call.out
    assert re.fullmatch(rf"on the line: call {UUID}", out[0]), call.printed()
    assert out[2] == LIVE
    assert out[-1] == "hung up"
    assert not [line for line in call.err if "error" in line.lower() or "Traceback" in line]
    assert sound.microphone.broken is None

    # the server heard the question in the conversation the call named
    conversation = _conversation(out[1])
    headers = {"Authorization": f"Bearer {read_local_key(site.data)}"}
    async with httpx.AsyncClient(base_url=site.server.url, headers=headers) as http:
        detail = await http.get(f"/api/v1/agent/sessions/{conversation}")
    asked = [m["content"] for m in detail.json()["messages"] if m["role"] == "user"]
    assert len(asked) == 1, detail.text
    assert "disk" in asked[0].lower()
    assert await _voice_session_is_over(site, _call_id(out[0]))


async def test_ctrl_c_hangs_up_even_when_the_microphone_delivers_nothing(
    site: Site, sound: SoundServer
) -> None:
    """A microphone pulled out: PortAudio waits for a block that never comes."""
    sound.microphone.unplug()
    try:
        call = await LiveCall.start(site.env(**sound.env()))
        try:
            await call.line(re.escape(LIVE))
            code = await call.hang_up()
        finally:
            await call.kill()
    finally:
        sound.microphone.plug()
    assert code == 0, call.printed()
    assert call.out[-1] == "hung up"
    assert await _voice_session_is_over(site, _call_id(call.out[0]))
