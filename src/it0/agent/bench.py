"""``it0 bench agent``: what the agent costs beyond the model's own time.

* turn overhead: a model that answers at once (pydantic-ai's function model, in process)
  behind a real HTTP server (uvicorn on 127.0.0.1): time from the request to the first
  Server-Sent Event byte, to ``done``, and the price of each tool call (``list_servers``,
  and a read-only ``run_command`` through the oversight path on a local sshd host);
* offline planner: a three-step diagnosis on N sshd hosts, from the question to ``done``.

It starts its own sshd processes on 127.0.0.1 (stopped by PID) and a throwaway SQLite data
directory. Figures are printed, never asserted.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import asyncssh
import httpx
import typer
from rich.console import Console
from rich.table import Table

from it0.execution._sshd import SshdServer, start_fleet, stop_fleet
from it0.execution.target import public_key_line

err = Console(stderr=True)
PASSWORD = "bench-password-123"  # noqa: S105 - a throwaway data dir's admin
RUNBOOK = {
    "id": "bench-disk",
    "title": "Disk full (benchmark)",
    "summary": "A filesystem ran out of space.",
    "symptoms": ["benchmark report"],
    "keywords": ["benchmark"],
    "diagnostics": [
        {"name": "Usage", "command": "df -h", "explain": "Use% near 100."},
        {"name": "Load", "command": "uptime", "explain": "For context."},
        {"name": "Memory", "command": "free -m", "explain": "For context."},
    ],
    "remediations": [
        {
            "name": "Vacuum the journal",
            "command": "journalctl --vacuum-size=500M",
            "risk_note": "Old entries are gone.",
            "when": "The journal is large.",
        }
    ],
    "verify": [{"name": "Usage again", "command": "df -h", "explain": "Lower."}],
}


def _say(message: str) -> None:
    err.print(f"[dim]bench:[/dim] {message}", highlight=False)


def _instant_model(plan: dict[str, Any]) -> Any:
    """A model that answers at once: ``plan["calls"]`` tool calls of ``plan["tool"]``, then text."""
    from pydantic_ai.messages import ModelMessage, ModelRequest, ToolReturnPart
    from pydantic_ai.models.function import AgentInfo, DeltaToolCall, FunctionModel

    async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[Any]:
        last = messages[-1]
        done = 0
        if isinstance(last, ModelRequest):
            done = sum(
                1
                for message in messages
                if isinstance(message, ModelRequest)
                for part in message.parts
                if isinstance(part, ToolReturnPart)
            )
        if done - plan["before"] < plan["calls"]:
            yield {
                0: DeltaToolCall(
                    name=plan["tool"],
                    json_args=json.dumps(plan["args"]),
                    tool_call_id=f"call-{done}",
                )
            }
            return
        yield "All checked."

    return FunctionModel(stream_function=stream)


async def _serve(app: Any) -> tuple[Any, asyncio.Task[None], int]:
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn offers no event for this
        await asyncio.sleep(0.01)
    return server, task, port


async def _ask(client: httpx.AsyncClient, session: str, text: str) -> tuple[float, float]:
    """Seconds to the first byte and to ``done`` of one message."""
    started = time.perf_counter()
    first = 0.0
    async with client.stream(
        "POST", f"/api/v1/agent/sessions/{session}/messages", json={"content": text}
    ) as response:
        response.raise_for_status()
        async for chunk in response.aiter_text():
            if not first:
                first = time.perf_counter() - started
            if "event: done" in chunk:
                break
    return first, time.perf_counter() - started


async def _measure(
    servers: list[SshdServer], key: asyncssh.SSHKey, rounds: int, data: Path
) -> dict[str, Any]:
    from it0.agent.conversation import Conversations
    from it0.app import create_app
    from it0.audit import install_audit_guard
    from it0.auth.bootstrap import bootstrap
    from it0.core.settings import Settings
    from it0.ops.runner import TaskRunner
    from it0.platform import Platform

    install_audit_guard()
    settings = Settings(
        data_dir=data,
        admin_password=PASSWORD,
        argon2_time_cost=1,
        argon2_memory_kib=1024,
        argon2_parallelism=1,
        exec_connect_timeout=60,
        log_level="WARNING",
    )
    p = Platform.create(settings)
    await bootstrap(p)
    runner = TaskRunner(p)
    runner.subscribe()
    await p.bus.start()
    app = create_app(platform=p)
    offline: Conversations = app.state.conversations
    server, serving, port = await _serve(app)
    figures: dict[str, Any] = {"hosts": len(servers)}
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=300) as client:
            await _setup(client, servers, key)

            async def new_session() -> str:
                response = await client.post("/api/v1/agent/sessions")
                response.raise_for_status()
                return str(response.json()["id"])

            # the offline planner: three read-only steps on every host
            _say(f"offline planner: 3 diagnostics on {len(servers)} hosts")
            times = []
            for index in range(rounds + 1):
                _, total = await _ask(
                    client, await new_session(), "benchmark report on all servers"
                )
                if index:  # the first round opens the SSH connections
                    times.append(total)
            figures["offline_3_steps_s"] = times

            # the model path with an instant model
            plan: dict[str, Any] = {"tool": "list_servers", "args": {}, "calls": 0, "before": 0}
            model_path = Conversations(p)
            model_path.use_model(_instant_model(plan))
            app.state.conversations = model_path
            for name, tool, args, calls in (
                ("no_tools", "list_servers", {}, 0),
                ("list_servers_x10", "list_servers", {"selector": ""}, 10),
                (
                    "run_command_x5",
                    "run_command",
                    {"selector": "bench-0", "command": "uptime", "reason": ""},
                    5,
                ),
            ):
                plan.update(tool=tool, args=args, calls=calls)
                _say(f"model path, instant model: {name}")
                firsts, totals = [], []
                for _ in range(rounds):
                    first, total = await _ask(client, await new_session(), "check")
                    firsts.append(first)
                    totals.append(total)
                figures[f"{name}_first_byte_s"] = firsts
                figures[f"{name}_total_s"] = totals
            await model_path.close()
    finally:
        server.should_exit = True
        await serving
        await offline.close()
        await runner.close()
        await p.close()
    return figures


async def _setup(
    client: httpx.AsyncClient, servers: list[SshdServer], key: asyncssh.SSHKey
) -> None:
    login = await client.post(
        "/api/v1/auth/login",
        json={"tenant": "default", "username": "admin", "password": PASSWORD},
    )
    login.raise_for_status()
    client.headers["Authorization"] = f"Bearer {login.json()['access_token']}"
    credential = await client.post(
        "/api/v1/credentials",
        json={
            "name": "bench",
            "kind": "ssh_key",
            "username": getpass.getuser(),
            "private_key": key.export_private_key("openssh").decode(),
        },
    )
    credential.raise_for_status()
    for i, server in enumerate(servers):
        response = await client.post(
            "/api/v1/servers",
            json={
                "name": f"bench-{i}",
                "address": server.host,
                "port": server.port,
                "credential_id": credential.json()["id"],
            },
        )
        response.raise_for_status()
    response = await client.delete("/api/v1/servers/localhost")
    with contextlib.suppress(httpx.HTTPStatusError):
        response.raise_for_status()
    put = await client.put(f"/api/v1/runbooks/{RUNBOOK['id']}", json=RUNBOOK)
    put.raise_for_status()


def agent(
    hosts: Annotated[int, typer.Option(min=1, max=200, help="sshd processes to start")] = 10,
    rounds: Annotated[int, typer.Option(min=1, help="rounds per figure (median)")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """Agent turn overhead without model time, and the offline planner on N sshd hosts."""
    key = asyncssh.generate_private_key("ssh-ed25519")
    _say(f"starting {hosts} sshd processes")
    servers = start_fleet(hosts, [public_key_line(key)])
    try:
        with tempfile.TemporaryDirectory(prefix="it0-bench-agent-") as tmp:
            figures = asyncio.run(_measure(servers, key, rounds, Path(tmp)))
    finally:
        stop_fleet(servers)
    median = {k: statistics.median(v) for k, v in figures.items() if isinstance(v, list)}
    no_tools = median["no_tools_total_s"]
    result = {
        "hosts": hosts,
        "first_byte_ms": round(median["no_tools_first_byte_s"] * 1000, 2),
        "turn_without_tools_ms": round(no_tools * 1000, 2),
        "per_list_servers_call_ms": round(
            (median["list_servers_x10_total_s"] - no_tools) / 10 * 1000, 2
        ),
        "per_read_only_run_command_ms": round(
            (median["run_command_x5_total_s"] - no_tools) / 5 * 1000, 2
        ),
        "offline_3_steps_ms": round(median["offline_3_steps_s"] * 1000, 1),
    }
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
        return
    table = Table("figure", "value", title="it0 bench agent (sqlite)")
    table.add_row("request -> first SSE byte (instant model)", f"{result['first_byte_ms']} ms")
    table.add_row(
        "turn without tool calls, request -> done", f"{result['turn_without_tools_ms']} ms"
    )
    table.add_row("per tool call: list_servers", f"{result['per_list_servers_call_ms']} ms")
    table.add_row(
        "per tool call: read-only run_command on 1 sshd host (task, policy, worker, SSH)",
        f"{result['per_read_only_run_command_ms']} ms",
    )
    table.add_row(
        f"offline planner: 3 diagnostics on {hosts} sshd hosts, question -> done",
        f"{result['offline_3_steps_ms']} ms",
    )
    Console().print(table)
