"""``it0 bench fanout``: one command on N local sshd hosts, IT0's executor next to its peers.

Rows, each the median of ``--rounds`` rounds on the same servers in the same run:

* IT0 cold: a fresh executor per round (connect, authenticate, pin-check, run, close);
* IT0 warm: one executor whose pooled connections are already open;
* asyncssh gather: the bare library, ``asyncio.gather`` of connect + run per host;
* Ansible ad-hoc and parallel-ssh, when installed (they are not dependencies).

It starts its own sshd processes on 127.0.0.1 and stops them by PID. Figures depend on the
machine; they are printed, never asserted.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import asyncssh
import typer
from rich.console import Console
from rich.table import Table

from it0.execution._sshd import SshdServer, start_fleet, stop_fleet
from it0.execution.fanout import FleetExecutor, fan_out
from it0.execution.pool import ConnectionPool
from it0.execution.target import HostTarget, public_key_line

err = Console(stderr=True)


@dataclass
class Row:
    name: str
    rounds: list[float] = field(default_factory=list)
    errors: int = 0
    note: str = ""
    baseline: Row | None = field(default=None, repr=False)

    @property
    def median(self) -> float | None:
        return statistics.median(self.rounds) if self.rounds else None


def _say(message: str) -> None:
    err.print(f"[dim]bench:[/dim] {message}", highlight=False)


async def _timed(round_: Callable[[], Awaitable[int]], row: Row) -> None:
    started = time.perf_counter()
    row.errors += await round_()
    row.rounds.append(time.perf_counter() - started)


async def _measure(
    servers: list[SshdServer], key: asyncssh.SSHKey, command: str, rounds: int
) -> list[Row]:
    user = getpass.getuser()
    private = key.export_private_key("openssh").decode()
    targets = [
        HostTarget(
            f"bench-{i}",
            f"bench{i}",
            s.host,
            s.port,
            user,
            private_key=private,
            known_host_key=s.host_key,
        )
        for i, s in enumerate(servers)
    ]
    n = len(targets)

    def executor() -> FleetExecutor:
        return FleetExecutor(pool=ConnectionPool(max_concurrency=n, connect_timeout=60))

    async def it0_cold() -> int:
        fleet = executor()
        try:
            outcome = await fan_out(fleet, targets, command, concurrency=n)
        finally:
            await fleet.close()
        return n - outcome.ok

    async def bare() -> int:
        async def one(server: SshdServer) -> bool:
            async with asyncssh.connect(
                server.host, server.port, username=user, client_keys=[key], known_hosts=None
            ) as conn:
                return (await conn.run(command)).exit_status == 0

        done = await asyncio.gather(*(one(s) for s in servers), return_exceptions=True)
        return sum(1 for d in done if d is not True)

    cold, warm = Row("IT0 executor, cold"), Row("IT0 executor, warm")
    gather, gather_warm = Row("asyncssh gather (connect+run)"), Row("asyncssh gather, open conns")
    for index in range(rounds):
        _say(f"round {index + 1}/{rounds}: cold and bare asyncssh")
        await _timed(it0_cold, cold)
        await _timed(bare, gather)
    pooled = executor()
    try:
        await fan_out(pooled, targets, command, concurrency=n)  # opens the connections

        async def it0_warm() -> int:
            return n - (await fan_out(pooled, targets, command, concurrency=n)).ok

        _say(f"{rounds} warm rounds")
        for _ in range(rounds):
            await _timed(it0_warm, warm)
        warm.note = f"{pooled.ssh.pool.connects} connections for {rounds + 1} rounds"
    finally:
        await pooled.close()
    conns = await asyncio.gather(
        *(
            asyncssh.connect(s.host, s.port, username=user, client_keys=[key], known_hosts=None)
            for s in servers
        )
    )
    try:

        async def bare_warm() -> int:
            done = await asyncio.gather(*(c.run(command) for c in conns))
            return sum(1 for d in done if d.exit_status != 0)

        await bare_warm()
        for _ in range(rounds):
            await _timed(bare_warm, gather_warm)
    finally:
        for conn in conns:
            conn.close()
    cold.baseline, warm.baseline, gather_warm.baseline = gather, gather_warm, gather_warm
    cold.note = "fresh pool per round, host keys pinned and checked"
    gather.note = "host keys not checked"
    gather_warm.note = "the floor for a warm round: library and sshd only"
    return [cold, warm, gather, gather_warm]


def _external(servers: list[SshdServer], key_file: Path, command: str, rounds: int) -> list[Row]:
    """Ansible ad-hoc and parallel-ssh, run as the user would, when installed."""
    n, user, work = len(servers), getpass.getuser(), key_file.parent
    ssh_options = "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
    rows: list[Row] = []
    runs: list[tuple[str, list[str], dict[str, str]]] = []
    if ansible := shutil.which("ansible"):
        inventory = work / "inventory.ini"
        inventory.write_text(
            "".join(
                f"h{i} ansible_host={s.host} ansible_port={s.port} ansible_user={user} "
                f"ansible_ssh_private_key_file={key_file}\n"
                for i, s in enumerate(servers)
            )
        )
        args = [ansible, "all", "-i", str(inventory), "-m", "command", "-a", command, "-f", str(n)]
        env = {"ANSIBLE_HOST_KEY_CHECKING": "False", "ANSIBLE_SSH_ARGS": ssh_options}
        runs.append((f"Ansible ad-hoc (-f {n})", args, env))
    else:
        rows.append(Row("Ansible ad-hoc", note="not installed"))
    if pssh := shutil.which("parallel-ssh") or shutil.which("pssh"):
        hosts = work / "hosts.txt"
        hosts.write_text("".join(f"{s.host}:{s.port}\n" for s in servers))
        extra = f"-i {key_file} {ssh_options}"
        args = [pssh, "-h", str(hosts), "-l", user, "-p", str(n), "-x", extra, command]
        runs.append((f"parallel-ssh (-p {n})", args, {}))
    else:
        rows.append(Row("parallel-ssh", note="not installed"))
    for name, args, env in runs:
        row = Row(name)
        for index in range(rounds):
            _say(f"{name}: round {index + 1}/{rounds}")
            started = time.perf_counter()
            done = subprocess.run(  # noqa: S603 - a tool found on PATH, our own arguments
                args, capture_output=True, env={**os.environ, **env}, check=False, timeout=600
            )
            row.rounds.append(time.perf_counter() - started)
            row.errors += int(done.returncode != 0)
        rows.append(row)
    return rows


def _print(rows: list[Row], hosts: int) -> None:
    table = Table(title=f"uptime on {hosts} hosts (sshd on 127.0.0.1), median of rounds")
    for column in (
        "runner",
        "median s",
        "min s",
        "max s",
        "ms/host",
        "x asyncssh",
        "errors",
        "note",
    ):
        table.add_column(column, justify="left" if column in {"runner", "note"} else "right")
    bare = rows[2]
    for row in rows:
        m = row.median
        if m is None:
            table.add_row(row.name, "", "", "", "", "", "", row.note)
            continue
        base = (row.baseline or bare).median
        ratio = f"{m / base:.2f}" if base else ""
        table.add_row(
            row.name,
            f"{m:.3f}",
            f"{min(row.rounds):.3f}",
            f"{max(row.rounds):.3f}",
            f"{m / hosts * 1000:.1f}",
            ratio,
            str(row.errors),
            row.note,
        )
    console = Console() if sys.stdout.isatty() else Console(width=160)
    console.print(table)
    console.print(
        f"[dim]{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
        f"asyncssh {asyncssh.__version__}[/dim]"
    )


def fanout(
    hosts: Annotated[int, typer.Option(min=1, max=1000, help="sshd processes to start")] = 50,
    rounds: Annotated[int, typer.Option(min=1, help="rounds per runner (median)")] = 5,
    command: Annotated[str, typer.Option(help="command run on every host")] = "uptime",
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """One command on N local sshd hosts: IT0 cold and warm vs asyncssh, Ansible, parallel-ssh."""
    key = asyncssh.generate_private_key("ssh-ed25519")
    _say(f"starting {hosts} sshd processes")
    servers = start_fleet(hosts, [public_key_line(key)])
    try:
        with tempfile.TemporaryDirectory(prefix="it0-bench-fanout-") as tmp:
            key_file = Path(tmp) / "id_ed25519"
            key_file.write_bytes(key.export_private_key("openssh"))
            key_file.chmod(0o600)
            rows = asyncio.run(_measure(servers, key, command, rounds))
            rows += _external(servers, key_file, command, rounds)
    finally:
        stop_fleet(servers)
    if as_json:
        out = [
            {
                "name": r.name,
                "rounds": r.rounds,
                "median": r.median,
                "errors": r.errors,
                "note": r.note,
            }
            for r in rows
        ]
        sys.stdout.write(json.dumps({"hosts": hosts, "rows": out}, indent=2) + "\n")
    else:
        _print(rows, hosts)
    if any(r.errors for r in rows):
        raise typer.Exit(1)
