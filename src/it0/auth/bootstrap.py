"""First start: migrate, then create tenant ``default`` and its owner ``admin`` (and, on the
embedded SQLite default, server ``localhost``: the control-plane host itself)."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from it0.audit import Actor, AuditContext
from it0.auth import service
from it0.auth.models import Tenant, User
from it0.auth.permissions import TENANT_PERMISSIONS
from it0.auth.tokens import TenantRef
from it0.core.errors import ConflictError
from it0.core.migrate import upgrade_all
from it0.inventory.service import TenantRecorder, register_control_plane
from it0.platform import Platform

DEFAULT_TENANT = "default"
ADMIN = "admin"


LOCAL_KEY_FILE = "cli.key"


def write_local_key(data_dir: Path, key: str) -> None:
    """The admin's API key for the CLI on this machine, readable by this user only.

    Only on the embedded default, where whoever can read the data dir can read the whole
    database anyway; ``it0 ask`` and the other remote commands use it when no key is given.
    """
    path = data_dir / LOCAL_KEY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(key + "\n")


def read_local_key(data_dir: Path) -> str | None:
    try:
        return (data_dir / LOCAL_KEY_FILE).read_text().strip() or None
    except OSError:
        return None


@dataclass(frozen=True)
class Bootstrap:
    created: bool
    admin_password: str | None  # set only when it was generated now; shown once


async def bootstrap_with_cli_key(p: Platform) -> Bootstrap:
    """``bootstrap``, and on the embedded default's first start the admin's key for the CLI."""
    return await bootstrap(p, cli_key=True)


async def bootstrap(p: Platform, *, cli_key: bool = False) -> Bootstrap:
    await upgrade_all(p.db)
    async with p.db.session() as session:
        if await session.scalar(select(Tenant.id).where(Tenant.slug == DEFAULT_TENANT)):
            return Bootstrap(created=False, admin_password=None)
    ctx = AuditContext(Actor.system("bootstrap"))
    try:
        tenant = await service.create_tenant(p, DEFAULT_TENANT, "Default", ctx)
    except ConflictError:  # another process bootstrapped first
        return Bootstrap(created=False, admin_password=None)
    given = p.settings.admin_password
    password = given.get_secret_value() if given else secrets.token_urlsafe(15)
    ref = TenantRef(tenant.id, tenant.slug, tenant.schema_name)
    async with p.db.session(ref.schema, write=True) as session:
        existing = await session.scalar(select(User).where(User.username == ADMIN))
        user = await service.add_member(
            p,
            session,
            ref,
            ctx,
            username=ADMIN,
            password=None if existing else password,
            role="owner",
            display_name="Administrator",
            granter=TENANT_PERMISSIONS,
            may_adopt=True,
        )
        user.is_platform_admin = True
        if p.db.is_sqlite:  # the embedded default: the host IT0 runs on is there to look at
            await register_control_plane(TenantRecorder(p, session, ref.pair, ctx))
        if p.db.is_sqlite and cli_key:
            _, key = await service.create_api_key(
                p,
                session,
                ref,
                ctx,
                user_id=user.id,
                name="local cli",
                role="admin",
                granter=TENANT_PERMISSIONS,
                expires_at=None,
            )
            write_local_key(p.settings.data_dir, key)
    return Bootstrap(created=True, admin_password=None if (given or existing) else password)
