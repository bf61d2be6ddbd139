"""The local executor: same results, caps, timeouts and cancellation as over SSH."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from it0.execution import CommandTimeout, ExecutionError, HostTarget, LocalExecutor

LOCAL = HostTarget.local("local-1")


def _alive(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in cmdline:
                found.append(int(entry.name))
    return found


async def test_result() -> None:
    result = await LocalExecutor().run_on(LOCAL, "echo out; echo err >&2; exit 2")
    assert (result.exit_status, result.stdout, result.stderr) == (2, "out\n", "err\n")
    assert result.host_key is None


async def test_killed_by_signal() -> None:
    result = await LocalExecutor().run_on(LOCAL, "kill -TERM $$")
    assert (result.exit_status, result.signal) == (None, "TERM")


async def test_environment_is_minimal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IT0_DATABASE_URL", "postgresql://user:secret@db/it0")
    result = await LocalExecutor().run_on(LOCAL, "env; cat")
    assert "secret" not in result.stdout
    assert "PATH=" in result.stdout


async def test_output_cap() -> None:
    result = await LocalExecutor().run_on(LOCAL, "yes | head -c 3000000", output_cap=1000)
    assert result.truncated
    assert result.stdout.endswith("\n[output truncated: 2999000 bytes omitted]")


async def test_timeout_kills_the_process_group() -> None:
    marker = f"it0-local-{uuid.uuid4().hex}"
    with pytest.raises(CommandTimeout) as caught:
        await LocalExecutor().run_on(LOCAL, f"echo up; sleep 300; echo {marker}", timeout=0.5)
    assert caught.value.partial.stdout == "up\n"
    assert _alive(marker) == []


async def test_cancel_kills_the_process_group() -> None:
    marker = f"it0-local-{uuid.uuid4().hex}"
    started = asyncio.Event()
    run = asyncio.create_task(
        LocalExecutor().run_on(
            LOCAL, f"echo up; sleep 300; echo {marker}", on_chunk=lambda *_: started.set()
        )
    )
    await asyncio.wait_for(started.wait(), 30)
    assert _alive(marker) != []
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert _alive(marker) == []


async def test_refuses_ssh_targets() -> None:
    with pytest.raises(ExecutionError):
        await LocalExecutor().run_on(HostTarget("s", "n", "127.0.0.1"), "true")
