"""Shared helpers of the audit tests: appending, reading, tampering and the in-process CLI."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession
from typer.testing import CliRunner, Result

from it0.audit import Actor, AuditContext, VerifyResult
from it0.audit.chain import load_public_key
from it0.audit.models import AuditCheckpoint, AuditEvent
from it0.cli import app as cli_app
from it0.core.settings import Settings
from it0.platform import Platform

SLUG = "default"
SCHEMA = "t_default"
TENANT = (SLUG, SCHEMA)
APPEND_ONLY = ("audit_events", "audit_checkpoints")

TESTER = AuditContext(Actor(type="user", id="u-tester", name="tester"), "req-tester", "10.0.0.1")


async def append(
    platform: Platform,
    count: int = 1,
    *,
    action: str = "test.event",
    resource_type: str = "thing",
    ctx: AuditContext = TESTER,
    tenant: tuple[str, str] = TENANT,
) -> list[AuditEvent]:
    """Record ``count`` events, each in its own write transaction, as a route would."""
    written = []
    for i in range(count):
        async with platform.db.session(tenant[1], write=True) as session:
            written.append(
                await platform.audit.record(
                    session, tenant, ctx, action, resource_type, f"r-{i}", {"n": i}
                )
            )
    return written


async def all_events(platform: Platform, schema: str = SCHEMA) -> list[AuditEvent]:
    async with platform.db.session(schema) as session:
        return list((await session.scalars(select(AuditEvent).order_by(AuditEvent.seq))).all())


async def all_checkpoints(platform: Platform, schema: str = SCHEMA) -> list[AuditCheckpoint]:
    async with platform.db.session(schema) as session:
        query = select(AuditCheckpoint).order_by(AuditCheckpoint.seq)
        return list((await session.scalars(query)).all())


async def head_seq(platform: Platform) -> int:
    events = await all_events(platform)
    return events[-1].seq if events else 0


async def verify(
    platform: Platform,
    exported: Sequence[dict[str, Any]] = (),
    key: Ed25519PublicKey | None = None,
    slug: str = SLUG,
    schema: str = SCHEMA,
) -> VerifyResult:
    async with platform.db.session(schema) as session:
        return await platform.audit.verify(session, slug, exported, key)


async def sign_head(platform: Platform, tenant: tuple[str, str] = TENANT) -> AuditCheckpoint | None:
    async with platform.db.session(tenant[1], write=True) as session:
        return await platform.audit.checkpoint(session, tenant)


async def export_checkpoints(
    platform: Platform, slug: str = SLUG, schema: str = SCHEMA
) -> list[str]:
    async with platform.db.session(schema) as session:
        return await platform.audit.export_checkpoints(session, slug)


def parse_export(lines: Sequence[str]) -> tuple[list[dict[str, Any]], Ed25519PublicKey]:
    """The exported checkpoints and the public key named in the header line."""
    items = [json.loads(line) for line in lines if line.strip()]
    header = items[0]
    assert header["type"] == "it0.audit.checkpoints"
    return [x for x in items[1:] if "signature" in x], load_public_key(header["public_key"])


@asynccontextmanager
async def superuser(platform: Platform, schema: str = SCHEMA) -> AsyncIterator[AsyncSession]:
    """A write session on the tenant with the append-only triggers out of the way.

    This is what someone with the database's superuser (or the SQLite file) can do; the
    triggers stop the application and mistakes, the hash chain catches the rest.
    """
    async with platform.db.session(schema, write=True) as session:
        if platform.db.is_sqlite:
            for table in APPEND_ONLY:
                for verb in ("update", "delete"):
                    await session.execute(
                        text(f'DROP TRIGGER IF EXISTS "{schema}".{table}_no_{verb}')
                    )
        else:
            for table in APPEND_ONLY:
                await session.execute(text(f'ALTER TABLE "{schema}".{table} DISABLE TRIGGER USER'))
        yield session


# --- the CLI, in-process ---------------------------------------------------------------------


def cli_env(settings: Settings) -> dict[str, str | None]:
    """Environment that makes ``it0`` open the same database as the test's platform."""
    return {
        "IT0_DATABASE_URL": settings.database_url,
        "IT0_REDIS_URL": None,
        "IT0_ADMIN_PASSWORD": None,
        "IT0_AUDIT_CHECKPOINT_EVERY": str(settings.audit_checkpoint_every),
        "IT0_ARGON2_TIME_COST": "1",
        "IT0_ARGON2_MEMORY_KIB": "1024",
        "IT0_ARGON2_PARALLELISM": "1",
        "COLUMNS": "400",
    }


async def run_cli(settings: Settings, *args: str | Path) -> Result:
    """Run ``it0 <args> --data-dir <the test's data dir>`` (it runs its own event loop)."""
    argv = [str(a) for a in args] + ["--data-dir", str(settings.data_dir)]
    env = cli_env(settings)

    def invoke() -> Result:
        return CliRunner().invoke(cli_app, argv, env=env)

    return await asyncio.to_thread(invoke)


def one_line(output: str) -> str:
    return re.sub(r"\s+", " ", output)
