"""Real ``it0 serve`` processes for the tests that need a whole server.

Every server is started as ``python -m it0 serve`` on a free port with its own data dir and
cheap argon2 settings, polled until /healthz answers, and terminated by its PID when the
``server_pool`` that started it closes.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

HOST = "127.0.0.1"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
CHEAP_ARGON2 = {
    "IT0_ARGON2_TIME_COST": "1",
    "IT0_ARGON2_MEMORY_KIB": "1024",
    "IT0_ARGON2_PARALLELISM": "1",
}
PASSWORD_LINE = re.compile(r"password: (\S+)")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def it0_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """The parent's environment without any IT0_ setting, plus the given ones."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IT0_")}
    env.update(CHEAP_ARGON2, IT0_DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1", **extra)
    return env


def it0_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "it0", *args]


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    _stopped: bool = field(default=False, repr=False)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def stderr(self) -> str:
        return ANSI.sub("", self.log_path.read_text(errors="replace"))

    def printed_password(self) -> str | None:
        found = PASSWORD_LINE.search(self.stderr())
        return found.group(1) if found else None

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30)

    def wait_healthy(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(
                    f"it0 serve exited with {self.proc.returncode}:\n{self.stderr()[-3000:]}"
                )
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        pytest.fail(f"it0 serve not healthy after {timeout:.0f}s:\n{self.stderr()[-3000:]}")

    def stop(self) -> int | None:
        """SIGTERM this server's PID (SIGKILL if it does not stop); its exit code."""
        if self._stopped:
            return self.proc.returncode
        self._stopped = True
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


StartServer = Callable[..., Server]


@contextmanager
def server_pool(work_dir: Path) -> Iterator[StartServer]:
    """start(data_dir, *extra_args, wait=True, **env) -> Server; all stopped on exit.

    Logs and the servers' working directory are in ``work_dir``.
    """
    started: list[Server] = []

    def start(data_dir: Path, *args: str, wait: bool = True, **env: str) -> Server:
        port = free_port()
        log_path = work_dir / f"serve-{port}-{len(started)}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                it0_command("serve", "--port", str(port), *args),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=it0_env(data_dir, **env),
                cwd=work_dir,
            )
        server = Server(proc, port, log_path)
        started.append(server)
        if wait:
            server.wait_healthy()
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()
