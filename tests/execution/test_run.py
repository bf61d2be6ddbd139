"""Running commands over SSH: results, streaming, caps, timeouts, cancellation, sudo."""

from __future__ import annotations

import asyncio
import tracemalloc
import uuid
from pathlib import Path

import pytest

from it0.execution import CommandTimeout, FleetExecutor, HostTarget, Stream
from it0.execution._sshd import SshdServer
from tests.sshd import TEST_PASSWORD, SshdFleet


async def _alive(executor: FleetExecutor, target: HostTarget, marker: str) -> str:
    """Processes on the host whose command line holds ``marker`` (the bracket keeps the
    probe from matching itself)."""
    pattern = f"[{marker[0]}]{marker[1:]}"
    result = await executor.run_on(target, f"pgrep -af '{pattern}' || true")
    assert result.ok, result.stderr
    return result.stdout


async def test_exit_status_stdout_and_stderr(
    executor: FleetExecutor, fleet: SshdFleet, sshd: SshdServer
) -> None:
    result = await executor.run_on(fleet.target(sshd), "echo out; echo err >&2; exit 3")
    assert (result.exit_status, result.signal) == (3, None)
    assert (result.stdout, result.stderr) == ("out\n", "err\n")
    assert not result.ok
    assert not result.truncated
    assert result.duration > 0


async def test_exit_by_signal(executor: FleetExecutor, fleet: SshdFleet, sshd: SshdServer) -> None:
    result = await executor.run_on(fleet.target(sshd), "kill -KILL $$")
    assert (result.exit_status, result.signal) == (None, "KILL")


async def test_stdin_is_empty(executor: FleetExecutor, fleet: SshdFleet, sshd: SshdServer) -> None:
    result = await executor.run_on(fleet.target(sshd), "cat; echo done", timeout=30)
    assert result.stdout == "done\n"


async def test_chunks_stream_as_they_arrive(
    executor: FleetExecutor, fleet: SshdFleet, sshd: SshdServer, tmp_path: Path
) -> None:
    seen: list[tuple[Stream, str]] = []
    first = asyncio.Event()

    def on_chunk(stream: Stream, text: str) -> None:
        seen.append((stream, text))
        first.set()

    # the command waits until the first chunk has reached the caller
    flag = tmp_path / "flag"  # the host is this machine
    command = f"echo one; echo two >&2; while [ ! -e {flag} ]; do sleep 0.05; done; echo three"
    run = asyncio.create_task(executor.run_on(fleet.target(sshd), command, on_chunk=on_chunk))
    await asyncio.wait_for(first.wait(), 30)
    assert not run.done()
    await executor.run_on(fleet.target(sshd), f"touch {flag}")
    result = await run
    assert "".join(t for s, t in seen if s == "stdout") == result.stdout == "one\nthree\n"
    assert "".join(t for s, t in seen if s == "stderr") == result.stderr == "two\n"


async def test_output_cap_marks_truncation_and_bounds_memory(
    executor: FleetExecutor, fleet: SshdFleet, sshd: SshdServer
) -> None:
    cap = 1024 * 1024
    chunks: list[str] = []
    tracemalloc.start()
    try:
        result = await executor.run_on(
            fleet.target(sshd),
            "yes | head -c 50000000",
            output_cap=cap,
            on_chunk=lambda _stream, text: chunks.append(text),
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.ok
    assert result.truncated
    omitted = 50_000_000 - cap
    marker = f"\n[output truncated: {omitted} bytes omitted]"
    assert result.stdout.endswith(marker)
    assert len(result.stdout) == cap + len(marker)
    assert "".join(chunks) == result.stdout  # the stream ends with the same marker
    # 50 MB went through; what stayed is the cap plus buffers, not the output
    assert peak < 12 * cap


async def test_command_timeout_kills_the_remote_command(
    executor: FleetExecutor, fleet: SshdFleet, sshd: SshdServer
) -> None:
    marker = f"it0-timeout-{uuid.uuid4().hex}"
    target = fleet.target(sshd)
    with pytest.raises(CommandTimeout) as caught:
        await executor.run_on(target, f"echo started; sleep 300; echo {marker}", timeout=1)
    assert caught.value.code == "command_timeout"
    assert caught.value.partial.stdout == "started\n"
    assert await _alive(executor, target, marker) == ""


async def test_cancelling_the_task_kills_the_remote_command(
    executor: FleetExecutor, fleet: SshdFleet, sshd: SshdServer
) -> None:
    marker = f"it0-cancel-{uuid.uuid4().hex}"
    target = fleet.target(sshd)
    started = asyncio.Event()
    run = asyncio.create_task(
        executor.run_on(
            target, f"echo up; sleep 300; echo {marker}", on_chunk=lambda *_: started.set()
        )
    )
    await asyncio.wait_for(started.wait(), 30)
    assert marker in await _alive(executor, target, marker)  # running, really
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert await _alive(executor, target, marker) == ""
    assert (await executor.run_on(target, "echo still usable")).ok  # the connection survives


async def test_sudo_reads_the_password_from_stdin_only(
    executor: FleetExecutor, fleet: SshdFleet, sshd: SshdServer, test_user: str
) -> None:
    target = fleet.target(
        sshd,
        username=test_user,
        private_key=None,
        password=TEST_PASSWORD,
        sudo_password=TEST_PASSWORD,
    )
    assert (await executor.run_on(target, "id -u")).stdout.strip() != "0"
    result = await executor.run_on(target, "id -u; cat; ps -eo args", sudo=True)
    assert result.ok, result.stderr
    uid, *processes = result.stdout.splitlines()
    assert uid == "0"
    assert any("sudo -S" in line for line in processes)  # it is in that list ...
    assert not any(TEST_PASSWORD in line for line in processes)  # ... but not the password
    assert TEST_PASSWORD not in result.stdout + result.stderr  # nor on the command's stdin


async def test_sudo_with_a_wrong_password_fails(
    executor: FleetExecutor, fleet: SshdFleet, sshd: SshdServer, test_user: str
) -> None:
    target = fleet.target(
        sshd, username=test_user, private_key=None, password=TEST_PASSWORD, sudo_password="nope"
    )
    result = await executor.run_on(target, "id -u", sudo=True, timeout=30)
    assert result.exit_status != 0
    assert result.stdout == ""


async def test_cancelling_a_sudo_command_kills_it_as_root(
    executor: FleetExecutor, fleet: SshdFleet, sshd: SshdServer, test_user: str
) -> None:
    marker = f"it0-sudo-cancel-{uuid.uuid4().hex}"
    target = fleet.target(
        sshd,
        username=test_user,
        private_key=None,
        password=TEST_PASSWORD,
        sudo_password=TEST_PASSWORD,
    )
    started = asyncio.Event()
    run = asyncio.create_task(
        executor.run_on(
            target,
            f"echo up; sleep 300; echo {marker}",
            sudo=True,
            on_chunk=lambda *_: started.set(),
        )
    )
    await asyncio.wait_for(started.wait(), 30)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert await _alive(executor, target, marker) == ""
