"""``create_app``: the FastAPI application of the roles this process runs."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import timedelta

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import delete, select

from it0 import __version__
from it0.agent.api import router as agent_router
from it0.agent.conversation import Conversations
from it0.audit import install_audit_guard
from it0.audit.api import router as audit_router
from it0.auth.api import router as auth_router
from it0.auth.deps import PlatformDep, public
from it0.auth.models import LoginThrottle, RefreshToken, Tenant
from it0.core.clock import utcnow
from it0.core.http import Metrics, RequestMiddleware, install_error_handlers
from it0.core.settings import ALL_ROLES, Role, Settings
from it0.inventory.api import router as inventory_router
from it0.inventory.credentials import router as credentials_router
from it0.inventory.facts import subscribe_fact_gathering
from it0.ops.api import router as ops_router
from it0.ops.policy import Policy
from it0.ops.runner import TaskRunner
from it0.ops.scheduler import Scheduler
from it0.platform import Platform
from it0.voice.api import router as voice_router
from it0.voice.api import socket_router as voice_socket_router
from it0.voice.gateway import VoiceGateway

log = logging.getLogger("it0")


def freeze_startup_heap() -> None:
    """Take what start-up built (modules, models, the policy, the platform) out of the
    garbage collector's sight, once per process. A full collection otherwise rescans those
    few hundred thousand long-lived objects: measured 100-300 ms, in the middle of a request
    (about 50 ms once frozen)."""
    if gc.get_freeze_count() == 0:
        gc.collect()
        gc.freeze()


def create_app(
    settings: Settings | None = None,
    roles: Iterable[Role] = ALL_ROLES,
    platform: Platform | None = None,
) -> FastAPI:
    """Build the app; ``platform`` may be passed in by tests that share one."""
    settings = settings or (platform.settings if platform else Settings())
    roles = frozenset(roles)
    install_audit_guard()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = platform is None
        p = platform or Platform.create(settings)
        app.state.platform = p
        Policy.default()  # load the rules now, not on the first request
        runner = TaskRunner(p)
        if "worker" in roles:
            subscribe_fact_gathering(p)
            runner.subscribe()
        scheduler = Scheduler(p)
        if "scheduler" in roles:
            scheduler.subscribe_events()
        conversations = app.state.conversations = Conversations(p)
        if "worker" in roles:
            conversations.subscribe()
        voice = app.state.voice = _voice_gateway(app, p)
        await p.bus.start()
        loops = []
        if "worker" in roles:
            loops.append(asyncio.create_task(conversations.loop(), name="it0-agent-resume"))
        if "voice" in roles:
            loops.append(asyncio.create_task(voice.cleanup_loop(), name="it0-voice-cleanup"))
        if "scheduler" in roles:
            loops.append(asyncio.create_task(_housekeeping(p), name="it0-housekeeping"))
            loops.append(asyncio.create_task(scheduler.loop(), name="it0-scheduler"))
        freeze_startup_heap()
        log.info("started", extra={"actor": ",".join(sorted(roles))})
        try:
            yield
        finally:
            for task in loops:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await voice.close()
            await conversations.close()
            await runner.close()
            await checkpoint_all(p)
            if owned:
                await p.close()

    app = FastAPI(
        title="IT0",
        version=__version__,
        description="AI-powered operations platform for server clusters, with people in control.",
        lifespan=lifespan,
    )
    app.state.roles = roles
    if platform is not None:  # usable without running the lifespan (in-process test clients)
        app.state.platform = platform
        app.state.conversations = Conversations(platform)
        app.state.voice = _voice_gateway(app, platform)
    app.state.metrics = metrics
    install_error_handlers(app)
    app.add_middleware(RequestMiddleware, metrics=metrics)

    @app.get("/healthz", tags=["ops"], dependencies=[public])
    async def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"], dependencies=[public])
    async def readyz(p: PlatformDep) -> JSONResponse:
        """The database (and Redis, when configured) answer."""
        checks: dict[str, str] = {}
        for name, probe in (("database", p.db.ping), ("bus", p.bus.ping)):
            try:
                await asyncio.wait_for(probe(), timeout=3)
                checks[name] = "ok"
            except Exception as exc:
                checks[name] = f"unavailable: {type(exc).__name__}"
        ready = all(v == "ok" for v in checks.values())
        return JSONResponse(
            {"status": "ready" if ready else "not_ready", "checks": checks},
            status_code=200 if ready else 503,
        )

    @app.get("/metrics", tags=["ops"], dependencies=[public], include_in_schema=False)
    async def prometheus(request: Request, p: PlatformDep) -> Response:
        with contextlib.suppress(Exception):
            for (topic, group), lag in (await p.bus.lag()).items():
                metrics.bus_lag.labels(topic, group).set(lag)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    if "api" in roles:
        app.include_router(auth_router)
        app.include_router(audit_router)
        app.include_router(inventory_router)
        app.include_router(credentials_router)
        app.include_router(ops_router)
        app.include_router(agent_router)
        app.include_router(voice_router)
    if "voice" in roles:
        app.include_router(voice_socket_router)
    return app


def _voice_gateway(app: FastAPI, p: Platform) -> VoiceGateway:
    """Voice calls talk to whichever conversations the app holds at the time."""
    return VoiceGateway(p, lambda: app.state.conversations)


async def checkpoint_all(p: Platform) -> int:
    """Sign the head of every tenant's chain that moved since its last checkpoint."""
    written = 0
    try:
        async with p.db.session() as session:
            tenants = (await session.execute(select(Tenant.slug, Tenant.schema_name))).all()
        for slug, schema in tenants:
            async with p.db.session(schema, write=True) as session:
                if await p.audit.checkpoint(session, (slug, schema)) is not None:
                    written += 1
    except Exception:  # shutdown must finish even when the database is gone
        log.exception("audit checkpoint at shutdown failed")
    return written


async def _housekeeping(p: Platform, every: float = 300.0) -> None:
    """Drop expired refresh tokens and stale login-failure windows."""
    while True:
        await asyncio.sleep(every)
        try:
            now = utcnow()
            window = timedelta(seconds=p.settings.login_failure_window)
            async with p.db.session(write=True) as session:
                await session.execute(delete(RefreshToken).where(RefreshToken.expires_at < now))
                await session.execute(
                    delete(LoginThrottle).where(LoginThrottle.window_start < now - window)
                )
        except Exception:
            log.exception("housekeeping failed")
