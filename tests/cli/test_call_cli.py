"""``it0 call`` against a real ``it0 serve`` on the embedded default, offline speech and all.

The question is eSpeak NG's reading of what an operator says, written as a WAV file; the
command runs as ``python -m it0 call`` and its key is the ``cli.key`` the server wrote. The
server reads answers out briefly (``IT0_VOICE_SPOKEN_CHARS=50``) so that a call is short.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import soxr  # type: ignore[import-untyped]

from it0.auth.bootstrap import read_local_key
from it0.voice.espeak import Espeak
from tests.processes import ANSI, Server, free_port, it0_command, it0_env, server_pool
from tests.voice.proxy import Proxy

pytestmark = pytest.mark.slow

QUESTION = "check disk usage on localhost"
NO_MODEL = "no language model is configured"
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
NO_SOUND = (
    "error: no sound device here (install the 'sounddevice' package and PortAudio), "
    "or use --in/--out"
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
        "id": "quasar-full",
        "title": "Quasar volume full",
        "summary": "The quasar volume ran out of space.",
        "symptoms": ["quasar volume is full"],
        "keywords": ["quasar", "full"],
        "parameters": {
            "report": {"description": "df output", "default": str(report)},
            "marker": {"description": "what the fix creates", "default": str(marker)},
        },
        "diagnostics": [
            {
                "name": "Usage",
                "command": "cat {report}",
                "explain": "Use% near 100 is the full one.",
                "findings": [
                    {
                        "pattern": r"(?P<pct>\d+)%\s+(?P<mount>/\S*)$",
                        "group": "pct",
                        "above": 90,
                        "message": "{mount} is {pct}% full",
                        "severity": "critical",
                        "remediation": "Free the space",
                    }
                ],
            }
        ],
        "remediations": [
            {
                "name": "Free the space",
                "command": "touch {marker}",
                "risk_note": "Creates a file.",
                "when": "A filesystem is over 90% full.",
            }
        ],
        "verify": [{"name": "Again", "command": "cat {report}", "explain": "Lower."}],
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


async def _call_until(
    env: dict[str, str], *args: str, final: bool = False
) -> asyncio.subprocess.Process:
    """``it0 call --json`` with a typed question, once the answer has begun (``final``: once
    all of its text has come; its voice is still playing then)."""
    proc = await asyncio.create_subprocess_exec(
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


async def test_ctrl_c_hangs_up(site: Site) -> None:
    proc = await _call_until(site.env())
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
    env = it0_env(tmp_path / "data", IT0_API_KEY="it0_default_unused", COLUMNS="200")
    code, out, err = _call(env)
    assert code == 2
    assert (out + err).strip() == NO_SOUND
    # sounddevice installed without the PortAudio library fails the same way on import
    stub = tmp_path / "stub"
    stub.mkdir()
    (stub / "sounddevice.py").write_text('raise OSError("PortAudio library not found")\n')
    code, out, err = _call({**env, "PYTHONPATH": str(stub)})
    assert code == 2
    assert (out + err).strip() == NO_SOUND


def test_nothing_listening_is_one_line(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    env = it0_env(tmp_path / "data", COLUMNS="200")
    code, out, err = _call(env, "--url", url, "--key", "it0_default_x", "--text", QUESTION)
    assert code == 2
    assert (out + err).strip() == f"error: cannot reach {url}: All connection attempts failed"
    assert "Traceback" not in err
