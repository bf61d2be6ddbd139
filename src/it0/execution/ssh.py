"""Commands on remote hosts over pooled asyncssh connections.

A run that times out or whose task is cancelled is killed on the host, not abandoned: the
remote wrapper reports the process group of the session first, and the executor signals
that group (TERM, then KILL after a grace period) over the same connection.
"""

from __future__ import annotations

import asyncio
import logging
import time

import asyncssh

from it0.execution.errors import Cancelled, CommandTimeout, ExecutionError, Unreachable
from it0.execution.pool import ConnectionPool, PooledConnection
from it0.execution.run import (
    DEFAULT_OUTPUT_CAP,
    ChunkCallback,
    PgidHeader,
    RunResult,
    StreamCapture,
    kill_group_command,
    remote_command,
)
from it0.execution.target import HostTarget

log = logging.getLogger(__name__)

KILL_GRACE = 2.0  # seconds between TERM and KILL
STOP_TIMEOUT = 5.0  # bound on each step of killing a remote command


class _CommandSession(asyncssh.SSHClientSession[bytes]):
    """One command on one host: the asyncssh session and everything needed to stop it."""

    def __init__(
        self,
        target: HostTarget,
        pooled: PooledConnection,
        sudo: bool,
        output_cap: int,
        on_chunk: ChunkCallback | None,
        started: float,
    ) -> None:
        self.target = target
        self.pooled = pooled
        self.sudo = sudo
        self.started = started
        self.stdout = StreamCapture("stdout", output_cap, on_chunk)
        self.stderr = StreamCapture("stderr", output_cap, on_chunk)
        self.header = PgidHeader()
        self.chan: asyncssh.SSHClientChannel[bytes] | None = None
        self.exit_status: int | None = None
        self.exit_signal: str | None = None
        self.lost: Exception | None = None
        loop = asyncio.get_running_loop()
        self.done: asyncio.Future[None] = loop.create_future()
        self.pgid_known: asyncio.Future[None] = loop.create_future()

    def itself(self) -> _CommandSession:
        """The session factory asyncssh calls: this very session."""
        return self

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if datatype == asyncssh.EXTENDED_DATA_STDERR:
            self.stderr.feed(data)
            return
        if not self.header.done:
            data = self.header.feed(data)
            if self.header.done and not self.pgid_known.done():
                self.pgid_known.set_result(None)
        if data:
            self.stdout.feed(data)

    def exit_status_received(self, status: int) -> None:
        self.exit_status = status

    def exit_signal_received(self, signal: str, core_dumped: bool, msg: str, lang: str) -> None:
        self.exit_signal = signal

    def connection_lost(self, exc: Exception | None) -> None:
        rest = self.header.flush()
        if rest:
            self.stdout.feed(rest)
        self.stdout.finish()
        self.stderr.finish()
        self.lost = exc
        for future in (self.done, self.pgid_known):
            if not future.done():
                future.set_result(None)

    def result(self) -> RunResult:
        pooled = self.pooled
        return RunResult(
            server_id=self.target.server_id,
            name=self.target.name,
            exit_status=self.exit_status,
            signal=self.exit_signal,
            stdout=self.stdout.text(),
            stderr=self.stderr.text(),
            duration=time.monotonic() - self.started,
            truncated=bool(self.stdout.omitted or self.stderr.omitted),
            host_key=pooled.host_key,
            host_key_fingerprint=pooled.host_key_fingerprint,
            host_key_new=pooled.host_key_new and self.target.known_host_key is None,
        )


class SshExecutor:
    """``run_on(target, command)`` for targets of kind ``ssh``."""

    def __init__(self, pool: ConnectionPool | None = None) -> None:
        self.pool = pool or ConnectionPool()
        self.closing = False
        self._running: set[_CommandSession] = set()
        self._stopping: dict[_CommandSession, asyncio.Task[None]] = {}

    async def close(self) -> None:
        """Kill every command still running, then close the connections."""
        self.closing = True
        for run in list(self._running):
            self._stop_in_background(run)
        if self._stopping:
            await asyncio.gather(*self._stopping.values(), return_exceptions=True)
        await self.pool.close()

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
        if target.kind != "ssh":
            raise ExecutionError(f"{target.name} is not an ssh target", target)
        if self.closing:
            raise Cancelled(f"the executor is closed: nothing runs on {target.name}", target)
        use_sudo = sudo and target.username != "root"  # root's sudo would change nothing
        if use_sudo and target.sudo_password is None:
            raise ExecutionError(f"no sudo password for {target.name}", target)
        started = time.monotonic()
        for attempt in range(2):
            async with self.pool.lease(target) as pooled:
                assert pooled.conn is not None
                run = _CommandSession(target, pooled, use_sudo, output_cap, on_chunk, started)
                try:
                    run.chan, _ = await pooled.conn.create_session(
                        run.itself, remote_command(command, sudo=use_sudo), encoding=None
                    )
                except (asyncssh.Error, OSError) as exc:
                    self.pool.discard(pooled)
                    if pooled.reused and attempt == 0:  # a pooled connection went stale
                        continue
                    raise Unreachable(f"cannot start a command on {target.name}", target) from exc
                if use_sudo:
                    run.chan.write(f"{target.sudo_password}\n".encode())
                run.chan.write_eof()
                self._running.add(run)
                try:
                    return await self._wait(run, timeout)
                finally:
                    self._running.discard(run)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _wait(self, run: _CommandSession, limit: float | None) -> RunResult:
        target = run.target
        try:
            finished, _ = await asyncio.wait([run.done], timeout=limit)
        except asyncio.CancelledError:
            await asyncio.shield(self._stop_in_background(run))
            raise
        if not finished:
            await asyncio.shield(self._stop_in_background(run))
            raise CommandTimeout(target, limit or 0.0, run.result())
        if self.closing or self.pool.closed:
            raise Cancelled(f"the run on {target.name} was stopped: executor closed", target)
        if run.lost is not None or (run.exit_status is None and run.exit_signal is None):
            self.pool.discard(run.pooled)
            raise Unreachable(f"connection to {target.name} lost during the command", target)
        return run.result()

    def _stop_in_background(self, run: _CommandSession) -> asyncio.Task[None]:
        """One kill per run, in a task: a second cancellation of the caller cannot stop it."""
        task = self._stopping.get(run)
        if task is None:
            task = self._stopping[run] = asyncio.create_task(self._stop(run))
            task.add_done_callback(lambda _: self._stopping.pop(run, None))
        return task

    async def _stop(self, run: _CommandSession) -> None:
        conn, chan = run.pooled.conn, run.chan
        try:
            await asyncio.wait([run.pgid_known], timeout=STOP_TIMEOUT)
            pgid = run.header.pgid
            if conn is None or pgid is None:
                if chan is not None:
                    chan.send_signal("KILL")  # best effort: reaches the login shell only
                return
            for signal in ("TERM", "KILL"):
                if run.done.done():
                    break
                password = f"{run.target.sudo_password}\n" if run.sudo else None
                await conn.run(
                    kill_group_command(pgid, signal, sudo=run.sudo),
                    input=password,
                    check=False,
                    timeout=STOP_TIMEOUT,
                )
                await asyncio.wait([run.done], timeout=KILL_GRACE)
        except (asyncssh.Error, OSError, TimeoutError) as exc:
            log.warning("could not kill a command on %s: %s", run.target.name, type(exc).__name__)
        finally:
            if chan is not None:
                chan.close()
