"""A throwaway PulseAudio daemon for live ``it0 call`` tests: a microphone the test speaks
into and a speaker it listens to, both FIFOs, both paced in real time.

PortAudio (Debian's libportaudio2) has no PulseAudio backend of its own: it reaches the
daemon through ALSA's ``pulse`` plugin (libasound2-plugins), which the ``.asoundrc`` of a
private HOME makes ALSA's ``default`` device. ``SoundServer.env()`` is what a process needs
to use it. The daemon is a child process on a private runtime directory, stopped by its PID.

The microphone is ``module-pipe-source``: a thread writes 20 ms frames into its FIFO on the
clock, what the test said and silence otherwise. The speaker is ``module-pipe-sink`` timed by
the system clock (``use_system_clock_for_timing``): it writes what is played, and silence,
in real time, and a thread reads it all.
"""

from __future__ import annotations

import collections
import contextlib
import glob
import importlib.util
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np
import pytest

RATE = 16_000
FRAME_BYTES = 640  # 20 ms of 16 kHz, 16-bit, mono
FRAME_SECONDS = 0.02
AUDIBLE = 500  # a sample louder than this is not silence
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
STARTED = "Daemon startup complete."
PACKAGES = "libportaudio2 pulseaudio libasound2-plugins"


class Microphone:
    """Writes a frame into the source's FIFO every 20 ms: what was said, else silence.

    ``unplug`` stops the writing altogether, so the source delivers nothing, as a USB
    microphone pulled out does; ``plug`` resumes it.
    """

    def __init__(self, fifo: Path) -> None:
        # the daemon holds the FIFO open for reading, so this neither blocks nor fails
        self._fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        self._lock = threading.Lock()
        self._pending = bytearray()
        self._plugged = threading.Event()
        self._plugged.set()
        self._stop = threading.Event()
        self.broken: str | None = None  # why writing stopped, if the daemon went away
        self._thread = threading.Thread(target=self._run, name="test-microphone", daemon=True)
        self._thread.start()

    def say(self, pcm: bytes) -> None:
        """Speak ``pcm`` (16 kHz, 16-bit, mono) from the next frame on, at real-time pace."""
        with self._lock:
            self._pending += pcm

    def unplug(self) -> None:
        self._plugged.clear()

    def plug(self) -> None:
        self._plugged.set()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(STOP_TIMEOUT)
        os.close(self._fd)

    def _frame(self) -> bytes:
        with self._lock:
            frame = bytes(self._pending[:FRAME_BYTES])
            del self._pending[:FRAME_BYTES]
        return frame.ljust(FRAME_BYTES, b"\0")

    def _run(self) -> None:
        due, frame = time.monotonic(), b""
        while not self._stop.is_set():
            if self._plugged.is_set():
                frame = frame or self._frame()
                try:
                    os.write(self._fd, frame)  # atomic: less than PIPE_BUF
                    frame = b""
                except BlockingIOError:
                    pass  # the daemon is behind: the same frame on the next tick
                except OSError as exc:  # the daemon has gone
                    self.broken = str(exc)
                    return
            due += FRAME_SECONDS
            self._stop.wait(max(0.0, due - time.monotonic()))


class Speaker:
    """Everything the sink plays, read from its FIFO as it comes, with the audible part counted."""

    def __init__(self, fifo: Path) -> None:
        # the daemon holds it open for writing; without one, the reader just sees the end
        self._fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        os.set_blocking(self._fd, True)
        self._changed = threading.Condition()
        self._bytes = 0
        self._audible = 0  # samples louder than AUDIBLE, so far
        self._odd = b""
        self._thread = threading.Thread(target=self._run, name="test-speaker", daemon=True)
        self._thread.start()

    @property
    def audible_samples(self) -> int:
        with self._changed:
            return self._audible

    def wait_audible(self, seconds: float, since: int, timeout: float) -> float:
        """Wait until ``seconds`` of audible audio have played after ``since`` (a count of
        ``audible_samples``); the audible seconds by then, enough or not."""
        wanted = since + round(seconds * RATE)
        with self._changed:
            self._changed.wait_for(lambda: self._audible >= wanted, timeout)
            return (self._audible - since) / RATE

    def join(self) -> None:
        """Once the daemon has stopped: the reader sees the end of the FIFO and ends."""
        self._thread.join(STOP_TIMEOUT)
        os.close(self._fd)

    def _run(self) -> None:
        while chunk := os.read(self._fd, 8192):
            data = self._odd + chunk
            whole = len(data) - len(data) % 2
            samples = np.frombuffer(data[:whole], dtype="<i2").astype(np.int32)
            with self._changed:
                self._odd = data[whole:]
                self._bytes += len(chunk)
                self._audible += int(np.count_nonzero(np.abs(samples) > AUDIBLE))
                self._changed.notify_all()


class SoundServer:
    """The daemon's process, its microphone and its speaker."""

    def __init__(self, root: Path, proc: subprocess.Popen[bytes], log: collections.deque[str]):
        self.root, self.proc, self._log = root, proc, log
        self.microphone = Microphone(root / "microphone")
        self.speaker = Speaker(root / "speaker")

    @property
    def home(self) -> Path:
        return self.root / "home"

    def env(self) -> dict[str, str]:
        """What a client process needs to record from and play to this daemon."""
        return {
            "HOME": str(self.home),  # for ~/.asoundrc
            "PULSE_SERVER": f"unix:{self.root / 'native'}",
            "PULSE_CLIENTCONFIG": str(self.root / "client.conf"),
        }

    def log(self) -> str:
        return "\n".join(self._log)


def _config(root: Path) -> None:
    (root / "home").mkdir()
    (root / "run").mkdir()
    (root / "state").mkdir()
    (root / "daemon.pa").write_text(
        f"load-module module-native-protocol-unix socket={root / 'native'} auth-anonymous=1\n"
        f"load-module module-pipe-source source_name=microphone file={root / 'microphone'}"
        f" format=s16le rate={RATE} channels=1\n"
        f"load-module module-pipe-sink sink_name=speaker file={root / 'speaker'}"
        f" format=s16le rate={RATE} channels=1 use_system_clock_for_timing=yes\n"
        "set-default-source microphone\n"
        "set-default-sink speaker\n"
    )
    # ALSA's default device is the daemon, whatever the system's ALSA configuration says
    (root / "home" / ".asoundrc").write_text(
        "pcm.!default { type pulse }\nctl.!default { type pulse }\n"
    )
    (root / "client.conf").write_text("autospawn = no\n")


def _check_installed() -> str:
    """The pulseaudio binary; fails the test with one line when a part is missing."""
    run = f"run scripts/test-services.sh ({PACKAGES})"
    binary = shutil.which("pulseaudio")
    if binary is None:
        pytest.fail(f"pulseaudio is not installed: {run}", pytrace=False)
    if not glob.glob("/usr/lib/*/alsa-lib/libasound_module_pcm_pulse.so"):
        pytest.fail(f"ALSA's pulse plugin is not installed: {run}", pytrace=False)
    if not glob.glob("/usr/lib/*/libportaudio.so.2*"):
        pytest.fail(f"PortAudio is not installed: {run}", pytrace=False)
    if importlib.util.find_spec("sounddevice") is None:
        pytest.fail("sounddevice is not installed: pip install -e '.[dev]'", pytrace=False)
    return binary


def _follow_log(
    stream: IO[bytes],
    log: collections.deque[str],
    started: threading.Event,
    settled: threading.Event,
) -> None:
    """Keep the daemon's last lines; ``settled`` once it has started, or once it has gone."""
    for raw in stream:
        line = raw.decode(errors="replace").rstrip()
        log.append(line)
        if line.endswith(STARTED):
            started.set()
            settled.set()
    settled.set()


@contextlib.contextmanager
def sound_server() -> Iterator[SoundServer]:
    """A started daemon; stopped, and its directory removed, on exit."""
    binary = _check_installed()
    # a short path: the socket's must fit in sun_path (108 bytes)
    root = Path(tempfile.mkdtemp(prefix="it0-pulse-"))
    proc: subprocess.Popen[bytes] | None = None
    reader: threading.Thread | None = None
    server: SoundServer | None = None
    try:
        _config(root)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C",
            "HOME": str(root / "home"),
            "XDG_CONFIG_HOME": str(root / "home" / ".config"),
            "XDG_RUNTIME_DIR": str(root / "run"),
            "PULSE_RUNTIME_PATH": str(root / "run"),
            "PULSE_STATE_PATH": str(root / "state"),
        }
        proc = subprocess.Popen(
            [
                binary,
                "--no-cpu-limit",  # a loaded machine is not a runaway daemon
                "-n",  # no default.pa: only the modules of daemon.pa
                "-F",
                str(root / "daemon.pa"),
                "--daemonize=no",
                "--system=false",  # also when the tests run as root
                "--exit-idle-time=-1",
                "--use-pid-file=no",
                "--realtime=no",
                "--high-priority=no",
                "--log-target=stderr",
                "--log-level=info",  # for the line saying the startup is complete
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            cwd=root,
        )
        log: collections.deque[str] = collections.deque(maxlen=200)
        started, settled = threading.Event(), threading.Event()
        reader = threading.Thread(
            target=_follow_log,
            args=(proc.stderr, log, started, settled),
            name="test-pulseaudio-log",
            daemon=True,
        )
        reader.start()
        settled.wait(START_TIMEOUT)
        # a module that fails to load does not stop the daemon: what they make must be there
        parts = [root / "native", root / "microphone", root / "speaker"]
        if not started.is_set() or proc.poll() is not None or not all(p.exists() for p in parts):
            errors = [line for line in log if line.startswith("E: ")] or list(log)[-1:]
            why = errors[0] if errors else f"nothing logged in {START_TIMEOUT:.0f} s"
            pytest.fail(f"PulseAudio did not start: {why}", pytrace=False)
        server = SoundServer(root, proc, log)
        yield server
    finally:
        if server is not None:
            server.microphone.close()
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if reader is not None:
                reader.join(STOP_TIMEOUT)
            if proc.stderr is not None:
                proc.stderr.close()
        if server is not None:
            server.speaker.join()
        shutil.rmtree(root, ignore_errors=True)
