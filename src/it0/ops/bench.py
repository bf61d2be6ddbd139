"""``it0 bench oversight``: what the oversight path costs.

* classification: command lines classified per second by the risk policy, on the corpus;
* end to end: a read-only task on N local sshd hosts through the API (in process), the
  policy, the task, the worker and the executor until its results are stored, next to the
  bare executor (``fan_out``) running the same command on the same hosts. Both warm: the
  connections are open, so the ratio is the price of the path, not of SSH handshakes.

It starts its own sshd processes on 127.0.0.1 (stopped by PID) and a throwaway SQLite data
directory. Figures are printed, never asserted.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import asyncssh
import httpx
import typer
from rich.console import Console
from rich.table import Table

from it0.core.bus import Message
from it0.execution._sshd import SshdServer, start_fleet, stop_fleet
from it0.execution.fanout import FleetExecutor, fan_out
from it0.execution.pool import ConnectionPool
from it0.execution.target import HostTarget, public_key_line

err = Console(stderr=True)
PASSWORD = "bench-password-123"  # noqa: S105 - a throwaway data dir's admin


def _say(message: str) -> None:
    err.print(f"[dim]bench:[/dim] {message}", highlight=False)


def classification_rate(seconds: float) -> tuple[int, float]:
    from it0.ops.policy import bench_classify, corpus

    lines = [line for group in corpus().values() for line in group]
    return len(lines), bench_classify(lines, seconds=seconds)


async def _end_to_end(
    servers: list[SshdServer],
    key: asyncssh.SSHKey,
    command: str,
    rounds: int,
    data: Path,
    postgres_url: str | None = None,
) -> dict[str, Any]:
    if postgres_url is None:
        return await _measure(servers, key, command, rounds, data, None)
    from it0.bench import throwaway_database  # the platform bench's helper

    async with throwaway_database(postgres_url) as url:
        return await _measure(servers, key, command, rounds, data, url)


async def _measure(
    servers: list[SshdServer],
    key: asyncssh.SSHKey,
    command: str,
    rounds: int,
    data: Path,
    database_url: str | None,
) -> dict[str, Any]:
    from it0.app import create_app, freeze_startup_heap
    from it0.audit import install_audit_guard
    from it0.auth.bootstrap import bootstrap
    from it0.core.settings import Settings
    from it0.ops.runner import TaskRunner
    from it0.ops.tasks import TASK_FINISHED
    from it0.platform import Platform

    install_audit_guard()
    n = len(servers)
    settings = Settings(
        data_dir=data,
        database_url=database_url,
        admin_password=PASSWORD,
        argon2_time_cost=1,
        argon2_memory_kib=1024,
        argon2_parallelism=1,
        exec_connect_timeout=60,
        task_batch_concurrency=n,
        log_level="WARNING",
    )
    p = Platform.create(settings)
    await bootstrap(p)
    finished: dict[str, asyncio.Future[str]] = {}

    async def on_finished(message: Message) -> None:
        waiter = finished.get(str(message.payload.get("task_id")))
        if waiter is not None and not waiter.done():
            waiter.set_result(str(message.payload.get("status")))

    runner = TaskRunner(p)
    runner.subscribe()
    p.bus.subscribe(TASK_FINISHED, "bench", on_finished)
    await p.bus.start()
    private = key.export_private_key("openssh").decode()
    app = create_app(platform=p)
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            headers = await _setup(client, servers, private, n)
            freeze_startup_heap()  # as the server does once it has started

            async def oversight_round() -> int:
                response = await client.post(
                    "/api/v1/tasks",
                    json={"targets": "role=bench", "command": command},
                    headers=headers,
                )
                response.raise_for_status()
                task = response.json()
                waiter = finished.setdefault(task["id"], asyncio.get_running_loop().create_future())
                status = await asyncio.wait_for(waiter, timeout=300)
                return 0 if status == "succeeded" else 1

            _say("oversight path: a first round pins the host keys")
            errors = await oversight_round()
            path_cold, path_warm, bare_cold, bare_warm = [], [], [], []
            async with _Bare(servers, private, command) as bare:
                # the two sides alternate round by round, so both meet the same machine
                for index in range(rounds):
                    _say(f"round {index + 1}/{rounds}: path cold and warm, bare cold and warm")
                    stale, p.executor = p.executor, _fleet(n)  # no open connections
                    await stale.close()
                    started = time.perf_counter()
                    errors += await oversight_round()
                    path_cold.append(time.perf_counter() - started)
                    started = time.perf_counter()
                    errors += await oversight_round()
                    path_warm.append(time.perf_counter() - started)
                    cold, warm = await bare.round()
                    bare_cold.append(cold)
                    bare_warm.append(warm)
                errors += bare.errors
    finally:
        await runner.close()
        await p.close()
    return {
        "hosts": n,
        "path_cold": path_cold,
        "path_warm": path_warm,
        "bare_cold": bare_cold,
        "bare_warm": bare_warm,
        "errors": errors,
    }


async def _setup(
    client: httpx.AsyncClient, servers: list[SshdServer], private: str, n: int
) -> dict[str, str]:
    login = await client.post(
        "/api/v1/auth/login",
        json={"tenant": "default", "username": "admin", "password": PASSWORD},
    )
    login.raise_for_status()
    headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
    credential = await client.post(
        "/api/v1/credentials",
        json={
            "name": "bench",
            "kind": "ssh_key",
            "username": getpass.getuser(),
            "private_key": private,
        },
        headers=headers,
    )
    credential.raise_for_status()
    _say(f"registering {n} servers")
    for i, server in enumerate(servers):
        response = await client.post(
            "/api/v1/servers",
            json={
                "name": f"bench-{i}",
                "address": server.host,
                "port": server.port,
                "labels": {"role": "bench"},
                "credential_id": credential.json()["id"],
            },
            headers=headers,
        )
        response.raise_for_status()
    return headers


def _fleet(n: int) -> FleetExecutor:
    return FleetExecutor(pool=ConnectionPool(max_concurrency=n, connect_timeout=60))


class _Bare:
    """``fan_out`` on the same hosts: cold (a fresh pool per round) and warm (open pool)."""

    def __init__(self, servers: list[SshdServer], private: str, command: str) -> None:
        self.targets = [
            HostTarget(
                f"bare-{i}",
                f"bare{i}",
                s.host,
                s.port,
                getpass.getuser(),
                private_key=private,
                known_host_key=s.host_key,
            )
            for i, s in enumerate(servers)
        ]
        self.command = command
        self.pooled = _fleet(len(self.targets))
        self.errors = 0

    async def __aenter__(self) -> _Bare:
        await self._run(self.pooled)  # opens the connections
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.pooled.close()

    async def round(self) -> tuple[float, float]:
        fresh = _fleet(len(self.targets))
        try:
            cold = await self._run(fresh)
        finally:
            await fresh.close()
        return cold, await self._run(self.pooled)

    async def _run(self, executor: FleetExecutor) -> float:
        n = len(self.targets)
        started = time.perf_counter()
        outcome = await fan_out(executor, self.targets, self.command, concurrency=n)
        elapsed = time.perf_counter() - started
        self.errors += n - outcome.ok
        return elapsed


def oversight(
    hosts: Annotated[int, typer.Option(min=1, max=1000, help="sshd processes to start")] = 50,
    rounds: Annotated[int, typer.Option(min=1, help="rounds of each side (median)")] = 9,
    command: Annotated[str, typer.Option(help="read-only command run on every host")] = "uptime",
    seconds: Annotated[float, typer.Option(help="classification measuring time")] = 3.0,
    postgres_url: Annotated[
        str | None,
        typer.Option(help="run on a throwaway database of this PostgreSQL server (default SQLite)"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """Policy classification rate, and a read-only task through the whole oversight path
    on N sshd hosts against the bare executor."""
    count, rate = classification_rate(seconds)
    _say(f"classified {count} corpus lines at {rate:,.0f} lines/s")
    key = asyncssh.generate_private_key("ssh-ed25519")
    _say(f"starting {hosts} sshd processes")
    servers = start_fleet(hosts, [public_key_line(key)])
    try:
        with tempfile.TemporaryDirectory(prefix="it0-bench-oversight-") as tmp:
            figures = asyncio.run(
                _end_to_end(servers, key, command, rounds, Path(tmp), postgres_url)
            )
    finally:
        stop_fleet(servers)
    medians = {k: statistics.median(figures[k]) for k in ("path_cold", "path_warm")}
    medians |= {k: statistics.median(figures[k]) for k in ("bare_cold", "bare_warm")}
    result = {
        "corpus_lines": count,
        "classified_per_second": round(rate),
        "hosts": hosts,
        "database": "postgresql" if postgres_url else "sqlite",
        **{f"{k}_median_s": round(v, 4) for k, v in medians.items()},
        "ratio_cold": round(medians["path_cold"] / medians["bare_cold"], 3),
        "ratio_warm": round(medians["path_warm"] / medians["bare_warm"], 3),
        "errors": figures["errors"],
    }
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
    else:
        _print(result)
    if figures["errors"]:
        raise typer.Exit(1)


def _print(result: dict[str, Any]) -> None:
    console = Console()
    table = Table("figure", "value", "target", title=f"it0 bench oversight ({result['database']})")
    table.add_row(
        f"classification ({result['corpus_lines']} corpus lines)",
        f"{result['classified_per_second']:,} lines/s",
        "> 5,000 lines/s",
    )
    hosts = result["hosts"]
    for mode in ("cold", "warm"):
        path, bare = result[f"path_{mode}_median_s"], result[f"bare_{mode}_median_s"]
        table.add_row(
            f"read-only task, {hosts} hosts, API -> results stored ({mode})",
            f"{path * 1000:.1f} ms",
            "",
        )
        table.add_row(f"bare executor fan_out, {hosts} hosts ({mode})", f"{bare * 1000:.1f} ms", "")
        table.add_row(f"ratio path / bare ({mode})", f"{result[f'ratio_{mode}']:.2f}x", "<= 1.3x")
    console.print(table)
    console.print(
        "[dim]cold: no open SSH connections on either side; warm: pooled connections open[/dim]"
    )
