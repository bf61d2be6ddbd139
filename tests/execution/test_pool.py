"""The connection pool: one connection per host, reuse, reconnect, idle close, caps."""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from it0.execution import Cancelled, ConnectionPool, FleetExecutor
from it0.execution._sshd import SshdServer
from tests.execution.conftest import StartHosts
from tests.sshd import SshdFleet


def _children(pid: int) -> list[int]:
    """PIDs whose parent is ``pid`` (sshd forks one per connection)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


async def _until(condition: Callable[[], bool], attempts: int = 200) -> bool:
    """Polls ``condition`` (up to ~10 s): behaviour, not a timing assertion."""
    for _ in range(attempts):
        if condition():
            return True
        await asyncio.sleep(0.05)
    return False


async def test_one_connection_per_host_is_reused(
    executor: FleetExecutor, fleet: SshdFleet, sshd_hosts: StartHosts
) -> None:
    (server,) = sshd_hosts(1)
    target = fleet.target(server)
    client_ends = {
        (await executor.run_on(target, "echo $SSH_CLIENT")).stdout.split()[1] for _ in range(5)
    }
    assert len(client_ends) == 1  # the server saw one client port: one TCP connection
    assert server.pid is not None
    assert len(_children(server.pid)) == 1  # and serves one connection
    assert (executor.ssh.pool.connects, executor.ssh.pool.reuses) == (1, 4)


async def test_credentials_are_part_of_the_identity(
    executor: FleetExecutor, fleet: SshdFleet, sshd: SshdServer
) -> None:
    await executor.run_on(fleet.target(sshd), "true")
    await executor.run_on(fleet.target(sshd, private_key=fleet.keys.rsa), "true")
    assert executor.ssh.pool.connects == 2


async def test_a_broken_connection_is_replaced(
    executor: FleetExecutor, fleet: SshdFleet, sshd_hosts: StartHosts
) -> None:
    (server,) = sshd_hosts(1)
    target = fleet.target(server)
    first = (await executor.run_on(target, "echo $SSH_CLIENT")).stdout.split()[1]
    assert server.pid is not None
    for child in _children(server.pid):  # sshd's process for our connection: ours to end
        os.kill(child, 9)
    second = (await executor.run_on(target, "echo $SSH_CLIENT")).stdout.split()[1]
    assert second != first
    assert executor.ssh.pool.connects == 2


async def test_idle_connections_close(fleet: SshdFleet, sshd_hosts: StartHosts) -> None:
    (server,) = sshd_hosts(1)
    pool = ConnectionPool(idle_timeout=0.2)
    executor = FleetExecutor(pool=pool)
    try:
        await executor.run_on(fleet.target(server), "true")
        assert await _until(lambda: pool.open_connections() == 0)
        assert server.pid is not None
        assert await _until(lambda: _children(server.pid or 0) == [])  # closed server-side too
        assert (await executor.run_on(fleet.target(server), "true")).ok
        assert pool.connects == 2
    finally:
        await executor.close()


async def test_per_host_and_global_caps(fleet: SshdFleet, sshd_hosts: StartHosts) -> None:
    servers = sshd_hosts(2)
    executor = FleetExecutor(pool=ConnectionPool(per_host_concurrency=2, max_concurrency=3))
    with tempfile.TemporaryDirectory() as tmp:
        both = Path(tmp) / "all"
        both.mkdir()
        for index in range(2):
            (Path(tmp) / f"h{index}").mkdir()

        def command(index: int) -> str:
            mine = Path(tmp) / f"h{index}"
            # the sshd processes are local, so the commands share this directory
            return (
                f"touch {mine}/$$ {both}/$$; echo $(ls {mine} | wc -l) $(ls {both} | wc -l); "
                f"sleep 0.5; rm -f {mine}/$$ {both}/$$"
            )

        try:
            results = await asyncio.gather(
                *(
                    executor.run_on(fleet.target(server), command(index))
                    for index, server in enumerate(servers)
                    for _ in range(4)
                )
            )
        finally:
            await executor.close()
    counts = [tuple(int(n) for n in r.stdout.split()) for r in results]
    assert max(per_host for per_host, _ in counts) <= 2
    assert max(overall for _, overall in counts) <= 3
    assert max(overall for _, overall in counts) >= 2  # they did run side by side


async def test_closing_the_executor_kills_running_commands(
    fleet: SshdFleet, sshd: SshdServer
) -> None:
    marker = f"it0-close-{uuid.uuid4().hex}"
    executor = FleetExecutor()
    started = asyncio.Event()
    run = asyncio.create_task(
        executor.run_on(
            fleet.target(sshd),
            f"echo up; sleep 300; echo {marker}",
            on_chunk=lambda *_: started.set(),
        )
    )
    await asyncio.wait_for(started.wait(), 30)
    await executor.close()
    with pytest.raises(Cancelled):
        await run
    with pytest.raises(Cancelled):
        await executor.run_on(fleet.target(sshd), "true")
    probe = FleetExecutor()
    try:
        left = await probe.run_on(fleet.target(sshd), f"pgrep -f '[{marker[0]}]{marker[1:]}'")
    finally:
        await probe.close()
    assert left.exit_status == 1  # pgrep: no process matched
