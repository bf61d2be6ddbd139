"""What every executor shares: the result, output capture with a cap, and shell wrapping."""

from __future__ import annotations

import codecs
import logging
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from it0.execution.target import HostTarget

log = logging.getLogger(__name__)

Stream = Literal["stdout", "stderr"]
ChunkCallback = Callable[[Stream, str], None]
"""Called with each piece of output as it arrives (decoded UTF-8, at most the cap in total)."""

DEFAULT_OUTPUT_CAP = 1024 * 1024
PGID_MARKER = "__it0_pgid="


@dataclass(frozen=True)
class RunResult:
    """One command's outcome on one host. ``duration`` includes connecting, in seconds.

    ``host_key`` is the key the host presented (OpenSSH line); ``host_key_new`` says it was
    accepted by trust on first use and is not pinned yet: the caller should persist it.
    """

    server_id: str
    name: str
    exit_status: int | None
    signal: str | None
    stdout: str
    stderr: str
    duration: float
    truncated: bool
    host_key: str | None = None
    host_key_fingerprint: str | None = None
    host_key_new: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_status == 0


class CommandExecutor(Protocol):
    async def run_on(
        self,
        target: HostTarget,
        command: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - expiry kills the command on the host
        output_cap: int = DEFAULT_OUTPUT_CAP,
        sudo: bool = False,
        on_chunk: ChunkCallback | None = None,
    ) -> RunResult: ...

    async def close(self) -> None: ...


class StreamCapture:
    """Keeps the first ``cap`` bytes of a stream; counts, and discards, the rest."""

    def __init__(self, name: Stream, cap: int, on_chunk: ChunkCallback | None) -> None:
        self.name: Stream = name
        self.cap = cap
        self.omitted = 0
        self._parts: list[bytes] = []
        self._stored = 0
        self._on_chunk = on_chunk
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, data: bytes) -> None:
        room = self.cap - self._stored
        if room <= 0:
            self.omitted += len(data)
            return
        if len(data) > room:
            self.omitted += len(data) - room
            data = data[:room]
        self._parts.append(data)
        self._stored += len(data)
        self._emit(self._decoder.decode(data))

    def finish(self) -> None:
        """Flush the decoder and announce a truncation to the chunk callback."""
        tail = self._decoder.decode(b"", final=True)
        if self.omitted:
            tail += self.marker()
        self._emit(tail)

    def marker(self) -> str:
        return f"\n[output truncated: {self.omitted} bytes omitted]" if self.omitted else ""

    def text(self) -> str:
        return b"".join(self._parts).decode("utf-8", errors="replace") + self.marker()

    def _emit(self, text: str) -> None:
        if not text or self._on_chunk is None:
            return
        try:
            self._on_chunk(self.name, text)
        except Exception:  # a consumer's bug must not break the command or its connection
            log.exception("output callback failed; streaming stopped for this command")
            self._on_chunk = None


class PgidHeader:
    """Strips the ``__it0_pgid=<pid>`` line the remote wrapper prints first on stdout.

    Anything a login script prints before it passes through; after 4 KiB without the
    marker the search gives up (the shell is not POSIX) and everything passes through.
    """

    LIMIT = 4096

    def __init__(self) -> None:
        self.pgid: int | None = None
        self.done = False
        self._buffer = b""

    def feed(self, data: bytes) -> bytes:
        """Returns the output that belongs to the command."""
        if self.done:
            return data
        self._buffer += data
        marker = PGID_MARKER.encode()
        start = self._buffer.find(marker)
        if start >= 0:
            end = self._buffer.find(b"\n", start)
            if end < 0:
                return b""
            value = self._buffer[start + len(marker) : end]
            self.pgid = int(value) if value.isdigit() else None
            out = self._buffer[:start] + self._buffer[end + 1 :]
        elif len(self._buffer) > self.LIMIT:
            out = self._buffer
        else:
            return b""
        self.done, self._buffer = True, b""
        return out

    def flush(self) -> bytes:
        out, self._buffer, self.done = self._buffer, b"", True
        return out


def sudo_command(command: str) -> str:
    """Runs ``command`` as root; sudo reads the password from stdin, the command gets none.

    ``exec </dev/null`` means that even when sudo does not ask (NOPASSWD, cached
    credentials) the password written to stdin is never readable by the command.
    """
    return "sudo -S -p '' -- /bin/sh -c " + shlex.quote("exec </dev/null; " + command)


def remote_command(command: str, *, sudo: bool) -> str:
    """The line sent to sshd: report the session's process group first, then run.

    sshd runs a command without a PTY in a new session (setsid), so the login shell's pid
    is the process group that cancelling kills. The command itself runs in the login shell
    as with plain ``ssh host command``.
    """
    body = sudo_command(command) if sudo else command
    return f'echo "{PGID_MARKER}$$"\n{body}'


def kill_group_command(pgid: int, signal: str, *, sudo: bool) -> str:
    if sudo:  # root-owned members of the group are out of the login user's reach
        return f"sudo -S -p '' -- kill -{signal} -- -{pgid}"
    return f"kill -{signal} -{pgid} 2>/dev/null"
