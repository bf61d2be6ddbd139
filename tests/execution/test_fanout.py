"""Fan-out across many real hosts, and facts gathered from a real one."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import asyncssh

from it0.execution import FleetExecutor, HostResult, HostTarget, fan_out, gather_facts
from it0.execution._sshd import SshdServer
from tests.execution.conftest import StartHosts
from tests.sshd import SshdFleet


async def test_twenty_hosts_one_down(
    executor: FleetExecutor, fleet: SshdFleet, sshd_hosts: StartHosts
) -> None:
    servers = sshd_hosts(20)
    down = servers[7]
    down.stop()
    targets = [fleet.target(s, name=f"host{i}") for i, s in enumerate(servers)]
    progress: list[str] = []

    async def on_result(host: HostResult) -> None:
        progress.append(host.target.name)

    outcome = await fan_out(executor, targets, "echo $SSH_CONNECTION", on_result=on_result)
    assert (outcome.ok, outcome.failed, outcome.unreachable) == (19, 0, 1)
    assert outcome.error_codes == {"unreachable": 1}
    assert sorted(progress) == sorted(t.name for t in targets)  # reported as each finished
    assert [h.target for h in outcome.hosts] == targets  # results keep the targets' order
    for server, host in zip(servers, outcome.hosts, strict=True):
        if server is down:
            assert host.status == "unreachable"
            assert host.result is None
        else:
            assert host.status == "ok"
            assert host.result is not None
            assert host.result.stdout.split()[3] == str(server.port)  # each its own host


async def test_failures_stay_with_their_host(
    executor: FleetExecutor, fleet: SshdFleet, sshd_hosts: StartHosts
) -> None:
    servers = sshd_hosts(3)
    stranger = asyncssh.generate_private_key("ssh-ed25519").export_private_key().decode()
    targets = [
        fleet.target(servers[0]),
        fleet.target(servers[1], private_key=stranger),  # refused credential
        fleet.target(servers[2], known_host_key=servers[0].host_key),  # wrong pin
        HostTarget.local("local-1"),
    ]
    chunks: list[tuple[str, str]] = []
    outcome = await fan_out(
        executor,
        targets,
        "echo hello",
        on_chunk=lambda target, _stream, text: chunks.append((target.server_id, text)),
        on_result=lambda _host: None,
    )
    assert [h.status for h in outcome.hosts] == ["ok", "failed", "failed", "ok"]
    assert outcome.error_codes == {"auth_failed": 1, "host_key_changed": 1}
    assert sorted(chunks) == sorted([(targets[0].server_id, "hello\n"), ("local-1", "hello\n")])


async def test_non_zero_exit_counts_as_failed(
    executor: FleetExecutor, fleet: SshdFleet, sshd: SshdServer
) -> None:
    outcome = await fan_out(executor, [fleet.target(sshd), HostTarget.local("l")], "exit 4")
    assert (outcome.ok, outcome.failed) == (0, 2)
    assert all(h.result is not None and h.result.exit_status == 4 for h in outcome.hosts)


def _local_facts() -> tuple[str, int]:
    """This machine's OS id and MemTotal in bytes."""
    release = dict(
        line.split("=", 1)
        for line in Path("/etc/os-release").read_text().splitlines()
        if "=" in line
    )
    meminfo = Path("/proc/meminfo").read_text().split("\n", 1)[0].split()
    return release["ID"].strip('"'), int(meminfo[1]) * 1024


async def test_facts_from_a_real_host(
    executor: FleetExecutor, fleet: SshdFleet, sshd: SshdServer
) -> None:
    facts = await gather_facts(executor, fleet.target(sshd))
    # the sshd runs on this machine, so its facts are this machine's
    os_id, mem_total = _local_facts()
    assert facts["os"]["id"] == os_id
    assert facts["kernel"] == platform.release()
    assert facts["arch"] == platform.machine()
    assert facts["cpu_count"] == len(os.sched_getaffinity(0))
    assert facts["memory_total_bytes"] == mem_total
    uptime = facts["uptime_seconds"]
    assert uptime is not None
    assert uptime > 0
    root = [d for d in facts["disks"] if d["mountpoint"] == "/"]
    assert len(root) == 1
    assert root[0]["size_bytes"] >= root[0]["used_bytes"] > 0


async def test_facts_local(executor: FleetExecutor) -> None:
    facts = await gather_facts(executor, HostTarget.local("l"))
    assert facts["kernel"] == platform.release()
