"""``it0 bench platform``: throughput figures of the foundation, on SQLite and PostgreSQL.

* audit append: events recorded through ``AuditTrail.record``, one transaction each (one
  event per API change, the realistic case) and in batches per transaction;
* audit verify: ``AuditTrail.verify`` over a long chain (built with batched appends);
* HTTP: a real ``it0 serve`` process with production argon2 cost, driven over TCP by
  concurrent clients: login followed by one authenticated GET, and GETs with an API key.

Every run uses temporary data directories and throwaway PostgreSQL databases, removed
afterwards; the server process is terminated by its PID. Nothing here is a test: the
figures depend on the machine, and are printed, not asserted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import socket
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

from it0.agent.bench import agent
from it0.execution.bench import fanout
from it0.ops.bench import oversight
from it0.voice.bench import voice

app = typer.Typer(help="Benchmarks (figures, not tests).", no_args_is_help=True)
app.command("fanout")(fanout)
app.command("oversight")(oversight)
app.command("agent")(agent)
app.command("voice")(voice)
out = Console()
err = Console(stderr=True)

DEFAULT_POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
HOST = "127.0.0.1"
SERVER_START_TIMEOUT = 90.0
ADMIN = "admin"
# cheap argon2 for the audit figures: they must not depend on password hashing at all
_CHEAP_ARGON2: dict[str, Any] = {
    "argon2_time_cost": 1,
    "argon2_memory_kib": 1024,
    "argon2_parallelism": 1,
}


@dataclass
class Figure:
    benchmark: str
    backend: str
    count: int
    seconds: float
    unit: str
    p50_ms: float | None = None
    p95_ms: float | None = None
    errors: int = 0
    note: str = ""

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rate": round(self.rate, 1), "seconds": round(self.seconds, 3)}


@dataclass
class Options:
    events: int = 5000
    batch: int = 100
    verify_events: int = 100_000
    http_iterations: int = 200
    http_requests: int = 2000
    concurrency: int = 8
    skip_postgres: bool = False
    skip_http: bool = False
    postgres_url: str = DEFAULT_POSTGRES_URL
    figures: list[Figure] = field(default_factory=list)


def _say(message: str) -> None:
    err.print(f"[dim]bench:[/dim] {message}", highlight=False)


# --- PostgreSQL throwaway databases ----------------------------------------------------------


def _asyncpg_dsn(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def _postgres_problem(url: str) -> str | None:
    """None when PostgreSQL answers at ``url``, else why not (one line)."""
    import asyncpg

    try:
        conn = await asyncpg.connect(_asyncpg_dsn(url), timeout=5)
    except Exception as exc:  # any failure: report it and skip the PostgreSQL rows
        return f"{type(exc).__name__}: {exc}".replace("\n", " ")
    await conn.close()
    return None


@asynccontextmanager
async def throwaway_database(url: str) -> AsyncIterator[str]:
    """A new, empty database next to ``url``'s; dropped (even if still in use) afterwards."""
    import asyncpg
    from sqlalchemy.engine import make_url

    name = f"it0_bench_{uuid.uuid4().hex[:12]}"
    dsn = _asyncpg_dsn(url)

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    await admin(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(url).set(database=name).render_as_string(hide_password=False)
    finally:
        await admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- audit append and verify -----------------------------------------------------------------


async def _audit_figures(
    backend: str, data_dir: Path, database_url: str | None, o: Options
) -> None:
    from it0.audit import Actor, AuditContext, install_audit_guard
    from it0.auth.service import create_tenant
    from it0.core.db import tenant_schema_name
    from it0.core.migrate import upgrade_all
    from it0.core.settings import Settings
    from it0.platform import Platform

    install_audit_guard()
    settings = Settings(data_dir=data_dir, database_url=database_url, **_CHEAP_ARGON2)
    p = Platform.create(settings)
    ctx = AuditContext(Actor.system("bench"), request_id=uuid.uuid4().hex, client_addr=HOST)
    try:
        await upgrade_all(p.db)

        async def append(slug: str, total: int, per_transaction: int) -> float:
            """Seconds to record ``total`` events, ``per_transaction`` per transaction."""
            tenant = await create_tenant(p, slug, slug, ctx)
            pair = (tenant.slug, tenant.schema_name)
            written = 0
            started = time.perf_counter()
            while written < total:
                async with p.db.session(tenant.schema_name, write=True) as session:
                    for _ in range(min(per_transaction, total - written)):
                        written += 1
                        await p.audit.record(
                            session,
                            pair,
                            ctx,
                            "bench.change",
                            "bench",
                            written,
                            {"n": written, "field": "value", "password": "never stored"},
                        )
            return time.perf_counter() - started

        _say(f"{backend}: audit append, {o.events} events, one transaction each")
        seconds = await append("bench-single", o.events, 1)
        o.figures.append(
            Figure("audit append (1 event/txn)", backend, o.events, seconds, "events/s")
        )

        _say(f"{backend}: audit append, {o.events} events, {o.batch} per transaction")
        seconds = await append("bench-batched", o.events, o.batch)
        o.figures.append(
            Figure(f"audit append ({o.batch} events/txn)", backend, o.events, seconds, "events/s")
        )

        _say(f"{backend}: building a chain of {o.verify_events} events to verify")
        build = await append("bench-verify", o.verify_events, 1000)
        _say(f"{backend}: built in {build:.1f}s; verifying")
        async with p.db.session(tenant_schema_name("bench-verify")) as session:
            started = time.perf_counter()
            result = await p.audit.verify(session, "bench-verify")
            seconds = time.perf_counter() - started
        total = o.verify_events + 1  # and the tenant's own creation event
        note = "" if result.ok and result.events == total else f"NOT OK: {result.problem}"
        o.figures.append(
            Figure(
                "audit verify",
                backend,
                result.events,
                seconds,
                "events/s",
                errors=0 if not note else 1,
                note=note or f"{result.checkpoints} checkpoints",
            )
        )
    finally:
        await p.close()


# --- HTTP against a real server ----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class RunningServer:
    """An ``it0 serve`` process: where it answers, and its PID for figures of the process itself
    (the voice bench reads its CPU time)."""

    url: str
    pid: int


@asynccontextmanager
async def running_server(data_dir: Path, env: dict[str, str]) -> AsyncIterator[RunningServer]:
    """``it0 serve`` in a subprocess on a free port of 127.0.0.1, with ``env`` (and
    ``IT0_DATA_DIR``) instead of this process's ``IT0_*`` variables; healthy when yielded,
    terminated by PID after."""
    port = _free_port()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("IT0_")}
    full_env.update(env, IT0_DATA_DIR=str(data_dir))
    log_path = data_dir.parent / f"serve-{port}.log"
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "it0",
            "serve",
            "--host",
            HOST,
            "--port",
            str(port),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=full_env,
        )
    url = f"http://{HOST}:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        async with httpx.AsyncClient(timeout=2) as probe:
            while True:
                if proc.returncode is not None:
                    tail = log_path.read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"it0 serve exited with {proc.returncode}: {tail}")
                with contextlib.suppress(httpx.TransportError):
                    if (await probe.get(f"{url}/healthz")).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"it0 serve not healthy after {SERVER_START_TIMEOUT:.0f}s")
                await asyncio.sleep(0.1)
        yield RunningServer(url, proc.pid)
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), timeout=30)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def _drive(
    count: int, concurrency: int, one: Callable[[int], Awaitable[bool]]
) -> tuple[float, list[float], int]:
    """Run ``one(i)`` ``count`` times with ``concurrency`` workers: seconds, latencies, errors."""
    latencies: list[float] = []
    errors = 0
    next_index = 0

    async def worker() -> None:
        nonlocal next_index, errors
        while next_index < count:
            index = next_index
            next_index += 1
            started = time.perf_counter()
            try:
                ok = await one(index)
            except httpx.HTTPError:
                ok = False
            latencies.append(time.perf_counter() - started)
            errors += 0 if ok else 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started, latencies, errors


async def _probe_health(
    client: httpx.AsyncClient, every: float = 0.05
) -> tuple[float, list[float], int]:
    """GET /healthz every ``every`` seconds until cancelled: seconds, latencies, errors."""
    latencies: list[float] = []
    errors = 0
    started = time.perf_counter()
    with contextlib.suppress(asyncio.CancelledError):
        while True:
            sent = time.perf_counter()
            try:
                ok = (await client.get("/healthz")).status_code == 200
            except httpx.HTTPError:
                ok = False
            latencies.append(time.perf_counter() - sent)
            errors += 0 if ok else 1
            await asyncio.sleep(every)
    return time.perf_counter() - started, latencies, errors


def _percentile(values: list[float], q: float) -> float | None:
    if len(values) < 2:
        return values[0] * 1000 if values else None
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] * 1000


def _timed_figure(
    name: str,
    backend: str,
    count: int,
    unit: str,
    result: tuple[float, list[float], int],
    note: str = "",
) -> Figure:
    seconds, latencies, errors = result
    return Figure(
        name,
        backend,
        count,
        seconds,
        unit,
        _percentile(latencies, 50),
        _percentile(latencies, 95),
        errors,
        note,
    )


async def _http_figures(backend: str, data_dir: Path, database_url: str | None, o: Options) -> None:
    password = secrets.token_urlsafe(18)
    env = {"IT0_ADMIN_PASSWORD": password}
    if database_url:
        env["IT0_DATABASE_URL"] = database_url
    _say(f"{backend}: starting it0 serve (production argon2 cost)")
    async with (
        running_server(data_dir, env) as server,
        httpx.AsyncClient(
            base_url=server.url, timeout=120, limits=httpx.Limits(max_connections=o.concurrency * 2)
        ) as client,
    ):
        credentials = {"tenant": "default", "username": ADMIN, "password": password}

        async def login_and_get(_: int) -> bool:
            login = await client.post("/api/v1/auth/login", json=credentials)
            if login.status_code != 200:
                return False
            token = login.json()["access_token"]
            me = await client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"})
            return me.status_code == 200

        await login_and_get(0)  # warm up (connections, caches)
        _say(f"{backend}: {o.http_iterations} x (login + GET), concurrency {o.concurrency}")
        probing = asyncio.create_task(_probe_health(client))
        try:
            result = await _drive(o.http_iterations, o.concurrency, login_and_get)
        finally:
            probing.cancel()
        probes = await probing
        o.figures.append(
            _timed_figure(
                "HTTP login + GET",
                backend,
                o.http_iterations,
                "logins/s",
                result,
                note=f"concurrency {o.concurrency}",
            )
        )
        o.figures.append(
            _timed_figure(
                "HTTP /healthz during logins",
                backend,
                len(probes[1]),
                "probes/s",
                probes,
                note="latency while the logins run",
            )
        )

        login = await client.post("/api/v1/auth/login", json=credentials)
        login.raise_for_status()
        created = await client.post(
            "/api/v1/api-keys",
            json={"name": "bench"},
            headers={"Authorization": f"Bearer {login.json()['access_token']}"},
        )
        created.raise_for_status()
        key_headers = {"Authorization": f"Bearer {created.json()['key']}"}

        async def get_with_key(_: int) -> bool:
            return (await client.get("/api/v1/auth/me", headers=key_headers)).status_code == 200

        await get_with_key(0)
        _say(f"{backend}: {o.http_requests} x GET with an API key, concurrency {o.concurrency}")
        result = await _drive(o.http_requests, o.concurrency, get_with_key)
        o.figures.append(
            _timed_figure(
                "HTTP GET (API key)",
                backend,
                o.http_requests,
                "requests/s",
                result,
                note=f"concurrency {o.concurrency}",
            )
        )


# --- running it all ------------------------------------------------------------------------------


async def run(o: Options) -> list[Figure]:
    postgres: str | None = None
    if not o.skip_postgres:
        problem = await _postgres_problem(o.postgres_url)
        if problem is None:
            postgres = o.postgres_url
        else:
            err.print(
                f"[yellow]PostgreSQL unreachable at {_redacted(o.postgres_url)} ({problem}); "
                "skipping the PostgreSQL rows[/yellow]",
                highlight=False,
            )

    sections: list[tuple[str, Callable[[str, Path, str | None, Options], Awaitable[None]]]] = [
        ("audit", _audit_figures)
    ]
    if not o.skip_http:
        sections.append(("http", _http_figures))
    for _name, section in sections:
        with tempfile.TemporaryDirectory(prefix="it0-bench-") as tmp:
            await section("sqlite", Path(tmp) / "data", None, o)
        if postgres is not None:
            with tempfile.TemporaryDirectory(prefix="it0-bench-") as tmp:
                async with throwaway_database(postgres) as url:
                    await section("postgresql", Path(tmp) / "data", url, o)
    return o.figures


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _print_table(figures: list[Figure]) -> None:
    table = Table(title="IT0 platform benchmark")
    for column in (
        "benchmark",
        "backend",
        "n",
        "seconds",
        "rate",
        "unit",
        "p50 ms",
        "p95 ms",
        "errors",
        "note",
    ):
        table.add_column(
            column,
            justify="right" if column not in {"benchmark", "backend", "unit", "note"} else "left",
        )

    def ms(value: float | None) -> str:
        return "" if value is None else f"{value:.1f}"

    for f in figures:
        table.add_row(
            f.benchmark,
            f.backend,
            str(f.count),
            f"{f.seconds:.2f}",
            f"{f.rate:,.0f}" if f.rate >= 100 else f"{f.rate:.1f}",
            f.unit,
            ms(f.p50_ms),
            ms(f.p95_ms),
            str(f.errors),
            f.note,
        )
    # not a terminal (a pipe, a log): wide enough that no figure is wrapped or cut
    console = out if out.is_terminal else Console(width=160)
    console.print(table)
    console.print(f"[dim]{os.cpu_count()} CPUs, Python {sys.version.split()[0]}[/dim]")


@app.command("platform")
def platform(
    events: Annotated[int, typer.Option(min=1, help="audit events to append per variant")] = 5000,
    batch: Annotated[
        int, typer.Option(min=1, help="events per transaction, batched variant")
    ] = 100,
    verify_events: Annotated[int, typer.Option(min=1, help="chain length to verify")] = 100_000,
    http_iterations: Annotated[int, typer.Option(min=1, help="login + GET iterations")] = 200,
    http_requests: Annotated[int, typer.Option(min=1, help="API-key GETs")] = 2000,
    concurrency: Annotated[int, typer.Option(min=1, help="concurrent HTTP clients")] = 8,
    skip_postgres: Annotated[bool, typer.Option(help="SQLite only")] = False,
    skip_http: Annotated[bool, typer.Option(help="no server process, audit figures only")] = False,
    postgres_url: Annotated[
        str,
        typer.Option(
            envvar="IT0_BENCH_POSTGRES_URL", help="server to create a throwaway database on"
        ),
    ] = DEFAULT_POSTGRES_URL,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """Audit append/verify rates and HTTP auth throughput on SQLite and PostgreSQL."""
    if not postgres_url.startswith("postgresql+asyncpg://"):
        err.print("[red]error:[/red] --postgres-url must start with postgresql+asyncpg://")
        raise typer.Exit(2)
    options = Options(
        events=events,
        batch=batch,
        verify_events=verify_events,
        http_iterations=http_iterations,
        http_requests=http_requests,
        concurrency=concurrency,
        skip_postgres=skip_postgres,
        skip_http=skip_http,
        postgres_url=postgres_url,
    )
    figures = asyncio.run(run(options))
    if as_json:
        sys.stdout.write(json.dumps([f.as_dict() for f in figures], indent=2) + "\n")
    else:
        _print_table(figures)
    if any(f.errors for f in figures):
        raise typer.Exit(1)
