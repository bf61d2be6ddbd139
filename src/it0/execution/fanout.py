"""One command on many hosts: every host gets its own outcome, none can fail the others."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from it0.execution.errors import ExecutionError, Unreachable
from it0.execution.local import LocalExecutor
from it0.execution.pool import ConnectionPool
from it0.execution.run import (
    DEFAULT_OUTPUT_CAP,
    ChunkCallback,
    CommandExecutor,
    RunResult,
    Stream,
)
from it0.execution.ssh import SshExecutor
from it0.execution.target import HostTarget

log = logging.getLogger(__name__)

HostStatus = Literal["ok", "failed", "unreachable"]
ResultCallback = Callable[["HostResult"], Awaitable[None] | None]
HostChunkCallback = Callable[[HostTarget, Stream, str], None]


class FleetExecutor:
    """Routes each target to the SSH or the local executor by its ``kind``."""

    def __init__(
        self,
        ssh: SshExecutor | None = None,
        local: LocalExecutor | None = None,
        *,
        pool: ConnectionPool | None = None,
    ) -> None:
        self.ssh = ssh or SshExecutor(pool)
        self.local = local or LocalExecutor()

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
        executor: CommandExecutor = self.local if target.kind == "local" else self.ssh
        return await executor.run_on(
            target, command, timeout=timeout, output_cap=output_cap, sudo=sudo, on_chunk=on_chunk
        )

    async def close(self) -> None:
        await self.ssh.close()
        await self.local.close()


@dataclass(frozen=True)
class HostResult:
    target: HostTarget
    result: RunResult | None = None
    error: ExecutionError | None = None

    @property
    def status(self) -> HostStatus:
        if isinstance(self.error, Unreachable):
            return "unreachable"
        return "ok" if self.result is not None and self.result.ok else "failed"


@dataclass(frozen=True)
class FanOutResult:
    """Per-host outcomes in the order of the targets, and their counts."""

    hosts: list[HostResult]
    duration: float
    counts: dict[HostStatus, int] = field(default_factory=dict)
    error_codes: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> int:
        return self.counts.get("ok", 0)

    @property
    def failed(self) -> int:
        return self.counts.get("failed", 0)

    @property
    def unreachable(self) -> int:
        return self.counts.get("unreachable", 0)


async def fan_out(
    executor: CommandExecutor,
    targets: Sequence[HostTarget],
    command: str,
    *,
    concurrency: int = 50,
    timeout: float | None = None,  # noqa: ASYNC109 - expiry kills the command on the host
    output_cap: int = DEFAULT_OUTPUT_CAP,
    sudo: bool = False,
    on_result: ResultCallback | None = None,
    on_chunk: HostChunkCallback | None = None,
) -> FanOutResult:
    """Run ``command`` on every target, at most ``concurrency`` at a time.

    ``on_result`` is called (and awaited, if it returns an awaitable) as each host finishes.
    """
    slots = asyncio.Semaphore(concurrency)
    started = time.monotonic()

    async def one(target: HostTarget) -> HostResult:
        chunks: ChunkCallback | None = None
        if on_chunk is not None:

            def chunks(stream: Stream, text: str) -> None:
                on_chunk(target, stream, text)

        async with slots:
            try:
                outcome = HostResult(
                    target,
                    result=await executor.run_on(
                        target,
                        command,
                        timeout=timeout,
                        output_cap=output_cap,
                        sudo=sudo,
                        on_chunk=chunks,
                    ),
                )
            except ExecutionError as exc:
                outcome = HostResult(target, error=exc)
            except Exception as exc:  # a bug for one host must not sink the fleet
                log.exception("unexpected error running on %s", target.name)
                outcome = HostResult(
                    target, error=ExecutionError(f"internal error: {type(exc).__name__}", target)
                )
        if on_result is not None:
            try:
                pending = on_result(outcome)
                if inspect.isawaitable(pending):
                    await pending
            except Exception:  # progress reporting must not change the outcome
                log.exception("result callback failed for %s", target.name)
        return outcome

    hosts = list(await asyncio.gather(*(one(t) for t in targets)))
    counts: Counter[HostStatus] = Counter(h.status for h in hosts)
    codes = Counter(h.error.code for h in hosts if h.error is not None)
    return FanOutResult(
        hosts=hosts,
        duration=time.monotonic() - started,
        counts={
            "ok": counts["ok"],
            "failed": counts["failed"],
            "unreachable": counts["unreachable"],
        },
        error_codes=dict(codes),
    )
