"""Real PostgreSQL and Redis servers for the test session.

Resolution order for each server:
  (a) IT0_TEST_POSTGRES_URL / IT0_TEST_REDIS_URL when set;
  (b) a server already running on 127.0.0.1 (5432: user postgres, trust auth, db ``test``;
      6379: answers PING);
  (c) a throwaway server started from the installed binaries on a free port in a temp dir.
IT0_TEST_FORCE_THROWAWAY=1 skips (a) and (b), to exercise (c).
When none works a RuntimeError with one explanatory line is raised (conftest fails on it).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

__all__ = ["ServerHandle", "postgres_server", "redis_server"]

HOST = "127.0.0.1"
PG_PORT = 5432
REDIS_PORT = 6379
PG_DATABASE = "test"
START_TIMEOUT = 30.0
_HINT = "or run scripts/test-services.sh"

T = TypeVar("T")


@dataclass
class ServerHandle:
    """URL of a usable server; stop() ends it only if this module started it."""

    url: str
    _stop: Callable[[], None] | None = field(default=None, repr=False)

    def stop(self) -> None:
        stop, self._stop = self._stop, None
        if stop is not None:
            stop()


def _forced_throwaway() -> bool:
    return os.environ.get("IT0_TEST_FORCE_THROWAWAY", "").lower() in {"1", "true", "yes"}


def _tcp_open(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def _run_async(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    # A thread of its own: callers may be inside a running event loop (async fixtures).
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


# --- PostgreSQL -------------------------------------------------------------------------


def _pg_url(port: int) -> str:
    return f"postgresql+asyncpg://postgres@{HOST}:{port}/{PG_DATABASE}"


async def _pg_prepare(port: int) -> None:
    """Connect as postgres and make sure database ``test`` exists."""
    try:
        conn = await asyncpg.connect(
            host=HOST, port=port, user="postgres", database=PG_DATABASE, timeout=3
        )
    except asyncpg.InvalidCatalogNameError:
        conn = await asyncpg.connect(
            host=HOST, port=port, user="postgres", database="postgres", timeout=3
        )
        try:
            # Another session may create it concurrently.
            with contextlib.suppress(asyncpg.DuplicateDatabaseError):
                await conn.execute(f'CREATE DATABASE "{PG_DATABASE}"')
        finally:
            await conn.close()
        return
    await conn.close()


def _pg_usable(port: int) -> str | None:
    """None when usable, else why not."""
    if not _tcp_open(port):
        return "not running"
    try:
        _run_async(lambda: _pg_prepare(port))
    except Exception as exc:
        return f"not usable ({type(exc).__name__}: {exc})".replace("\n", " ")
    return None


def _pg_bindir() -> Path | None:
    def version(path: str) -> tuple[int, ...]:
        parts = Path(path).parts[-3].split(".")
        return tuple(int(p) for p in parts if p.isdigit())

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=version)
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("postgres")
    if on_path and shutil.which("initdb"):
        return Path(on_path).parent
    return None


def _as_postgres_user() -> dict[str, Any]:
    """Popen kwargs: initdb/postgres refuse to run as root, so drop to the postgres user."""
    if os.geteuid() != 0:
        return {}
    try:
        pw = pwd.getpwnam("postgres")
    except KeyError:
        raise RuntimeError(
            "running as root and there is no 'postgres' system user to run PostgreSQL as "
            f"(install Debian package postgresql, {_HINT})"
        ) from None
    env = {**os.environ, "HOME": pw.pw_dir, "USER": "postgres", "LOGNAME": "postgres"}
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": [], "env": env}


def _start_postgres(bindir: Path) -> ServerHandle:
    tmp = Path(tempfile.mkdtemp(prefix="it0-test-pg-"))
    creds = _as_postgres_user()
    if creds:
        os.chown(tmp, creds["user"], creds["group"])
    log_path = tmp / "postgres.log"
    proc: subprocess.Popen[bytes] | None = None

    def stop() -> None:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # "fast" shutdown; SIGTERM waits for clients
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)

    try:
        with log_path.open("ab") as log:
            initdb = [str(bindir / "initdb"), "-D", str(tmp / "data"), "-A", "trust"]
            initdb += ["-U", "postgres", "-E", "UTF8", "--no-sync"]
            done = subprocess.run(
                initdb,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=tmp,
                timeout=120,
                check=False,
                **creds,
            )
            if done.returncode != 0:
                raise RuntimeError(f"initdb failed: {_last_line(log_path)}")
            port = _free_port()
            server = [str(bindir / "postgres"), "-D", str(tmp / "data"), "-k", str(tmp)]
            server += ["-p", str(port), "-c", f"listen_addresses={HOST}", "-F"]
            # Throwaway data: durability settings off for speed.
            server += ["-c", "full_page_writes=off", "-c", "synchronous_commit=off"]
            proc = subprocess.Popen(server, stdout=log, stderr=subprocess.STDOUT, cwd=tmp, **creds)
        _wait_ready(proc, lambda: _pg_usable(port) is None, "PostgreSQL", log_path)
    except BaseException:
        stop()
        raise
    atexit.register(stop)  # a session that dies early must not leave a server behind
    return ServerHandle(_pg_url(port), stop)


def postgres_server() -> ServerHandle:
    """A usable PostgreSQL; URL form postgresql+asyncpg://postgres@127.0.0.1:PORT/test."""
    forced = _forced_throwaway()
    problem: str | None = "not checked"
    if not forced:
        if url := os.environ.get("IT0_TEST_POSTGRES_URL"):
            return ServerHandle(url)
        problem = _pg_usable(PG_PORT)
        if problem is None:
            return ServerHandle(_pg_url(PG_PORT))
    bindir = _pg_bindir()
    if bindir is None:
        where = (
            "IT0_TEST_FORCE_THROWAWAY is set"
            if forced
            else f"PostgreSQL is {problem} on {HOST}:{PG_PORT}"
        )
        raise RuntimeError(
            f"{where} and no PostgreSQL binaries found (install Debian package postgresql, {_HINT})"
        )
    return _start_postgres(bindir)


# --- Redis ------------------------------------------------------------------------------


def _redis_ping(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5) as s:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _start_redis(binary: str) -> ServerHandle:
    tmp = Path(tempfile.mkdtemp(prefix="it0-test-redis-"))
    log_path = tmp / "redis.log"
    port = _free_port()
    with log_path.open("ab") as log:
        args = [binary, "--port", str(port), "--bind", HOST, "--save", ""]
        args += ["--appendonly", "no", "--daemonize", "no", "--dir", str(tmp)]
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=tmp)

    def stop() -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)

    try:
        _wait_ready(proc, lambda: _redis_ping(port), "redis-server", log_path)
    except BaseException:
        stop()
        raise
    atexit.register(stop)
    return ServerHandle(f"redis://{HOST}:{port}/0", stop)


def redis_server() -> ServerHandle:
    """A usable Redis; URL form redis://127.0.0.1:PORT/0."""
    forced = _forced_throwaway()
    if not forced:
        if url := os.environ.get("IT0_TEST_REDIS_URL"):
            return ServerHandle(url)
        if _redis_ping(REDIS_PORT):
            return ServerHandle(f"redis://{HOST}:{REDIS_PORT}/0")
    binary = shutil.which("redis-server") or next(
        (p for p in ("/usr/bin/redis-server", "/usr/sbin/redis-server") if os.access(p, os.X_OK)),
        None,
    )
    if binary is None:
        where = (
            "IT0_TEST_FORCE_THROWAWAY is set"
            if forced
            else f"Redis is not running on {HOST}:{REDIS_PORT}"
        )
        raise RuntimeError(
            f"{where} and redis-server was not found (install Debian package redis-server, {_HINT})"
        )
    return _start_redis(binary)


# --- shared -----------------------------------------------------------------------------


def _wait_ready(
    proc: subprocess.Popen[bytes], ready: Callable[[], bool], what: str, log_path: Path
) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"throwaway {what} exited with code {proc.returncode}: {_last_line(log_path)}"
            )
        if ready():
            return
        time.sleep(0.1)
    raise RuntimeError(
        f"throwaway {what} not ready after {START_TIMEOUT:.0f}s: {_last_line(log_path)}"
    )


def _last_line(path: Path) -> str:
    with contextlib.suppress(OSError):
        lines = path.read_text(errors="replace").strip().splitlines()
        if lines:
            return lines[-1]
    return "(no output)"
