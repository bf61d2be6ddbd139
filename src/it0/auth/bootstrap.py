"""First start: migrate, then create tenant ``default`` and its owner ``admin`` (and, on the
embedded SQLite default, server ``localhost``: the control-plane host itself)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Bootstrap:
    created: bool
    admin_password: str | None  # set only when it was generated now; shown once


async def bootstrap(p: Platform) -> Bootstrap:
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
    return Bootstrap(created=True, admin_password=None if (given or existing) else password)
