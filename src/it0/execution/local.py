"""Commands on the control-plane host itself, with the SSH executor's semantics.

Each command runs under ``/bin/sh -c`` in a new session (its own process group, killed
as a whole on timeout or cancellation), with an empty stdin and a minimal environment:
the control plane's own environment carries its secrets (database URL, keys).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time

from it0.execution.errors import CommandTimeout, ExecutionError
from it0.execution.run import (
    DEFAULT_OUTPUT_CAP,
    ChunkCallback,
    RunResult,
    StreamCapture,
    sudo_command,
)
from it0.execution.target import HostTarget

KILL_GRACE = 2.0
READ_SIZE = 64 * 1024
_ENV_KEPT = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ")
_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in _ENV_KEPT}
    env.setdefault("PATH", _DEFAULT_PATH)
    return env


class LocalExecutor:
    """``run_on(target, command)`` for targets of kind ``local``."""

    def __init__(self, *, max_concurrency: int = 32) -> None:
        self._slots = asyncio.Semaphore(max_concurrency)

    async def close(self) -> None:
        return None

    async def run_on(
        self,
        target: HostTarget,
        command: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - expiry kills the command on the host
        output_cap: int = DEFAULT_OUTPUT_CAP,
        sudo: bool = False,
        on_chunk: ChunkCallback | None = None,
    ) -> RunResult:
        if target.kind != "local":
            raise ExecutionError(f"{target.name} is not a local target", target)
        use_sudo = sudo and os.geteuid() != 0
        if use_sudo and target.sudo_password is None:
            raise ExecutionError(f"no sudo password for {target.name}", target)
        started = time.monotonic()
        async with self._slots:
            proc = await asyncio.create_subprocess_exec(
                "/bin/sh",
                "-c",
                sudo_command(command) if use_sudo else command,
                stdin=asyncio.subprocess.PIPE if use_sudo else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
                env=_environment(),
            )
            if use_sudo:
                assert proc.stdin is not None
                proc.stdin.write(f"{target.sudo_password}\n".encode())
                proc.stdin.close()
            stdout = StreamCapture("stdout", output_cap, on_chunk)
            stderr = StreamCapture("stderr", output_cap, on_chunk)
            assert proc.stdout is not None
            assert proc.stderr is not None
            done = asyncio.gather(
                _drain(proc.stdout, stdout), _drain(proc.stderr, stderr), proc.wait()
            )

            def result() -> RunResult:
                code = proc.returncode
                return RunResult(
                    server_id=target.server_id,
                    name=target.name,
                    exit_status=code if code is None or code >= 0 else None,
                    signal=signal.Signals(-code).name[3:]
                    if code is not None and code < 0
                    else None,
                    stdout=stdout.text(),
                    stderr=stderr.text(),
                    duration=time.monotonic() - started,
                    truncated=bool(stdout.omitted or stderr.omitted),
                )

            try:
                finished, _ = await asyncio.wait([done], timeout=timeout)
            except asyncio.CancelledError:
                await asyncio.shield(_kill(proc, done, target, use_sudo))
                raise
            if not finished:
                await asyncio.shield(_kill(proc, done, target, use_sudo))
                raise CommandTimeout(target, timeout or 0.0, result())
            return result()


async def _drain(reader: asyncio.StreamReader, capture: StreamCapture) -> None:
    while chunk := await reader.read(READ_SIZE):
        capture.feed(chunk)
    capture.finish()


async def _kill(
    proc: asyncio.subprocess.Process,
    done: asyncio.Future[tuple[None, None, int]],
    target: HostTarget,
    sudo: bool,
) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if done.done():
            return
        if sudo:  # the command runs as root: only root can signal all of its group
            killer = await asyncio.create_subprocess_exec(
                "sudo",
                "-S",
                "-p",
                "",
                "--",
                "kill",
                f"-{sig.name[3:]}",
                "--",
                f"-{proc.pid}",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            await killer.communicate(f"{target.sudo_password}\n".encode())
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
        await asyncio.wait([done], timeout=KILL_GRACE)
    if not done.done():  # a member escaped the group and holds the pipes: stop reading
        done.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await done
