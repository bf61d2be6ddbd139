"""Tenants, members and API keys: the changes, each audited in its own transaction."""

from __future__ import annotations

import asyncio
import re
import secrets
import uuid
from datetime import datetime

from sqlalchemy import select, true, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from it0.audit import AuditContext
from it0.auth.errors import RoleTooStrong
from it0.auth.models import ApiKey, Membership, Tenant, TokenFamily, User
from it0.auth.roles import ensure_grantable
from it0.auth.schemas import SLUG
from it0.auth.tokens import API_KEY_MARK, TenantRef
from it0.core.clock import utcnow
from it0.core.db import tenant_schema_name
from it0.core.errors import ConflictError, NotFoundError, ValidationFailed
from it0.core.migrate import upgrade_tenant
from it0.core.security import sha256_hex
from it0.platform import Platform

_SLUG = re.compile(SLUG)


async def create_tenant(
    p: Platform,
    slug: str,
    name: str,
    ctx: AuditContext,
    *,
    owner_id: uuid.UUID | None = None,
    requester: TenantRef | None = None,
) -> Tenant:
    """Create and migrate a tenant's schema, then record it; ``owner_id`` becomes its owner."""
    if not _SLUG.match(slug):
        raise ValidationFailed("invalid tenant slug", details={"field": "slug"})
    schema = tenant_schema_name(slug)
    async with p.db.session() as session:
        if await session.scalar(select(Tenant.id).where(Tenant.slug == slug)) is not None:
            raise ConflictError(f"tenant {slug!r} already exists")
    await upgrade_tenant(p.db, schema, create=True)
    tenant = Tenant(slug=slug, name=name or slug, schema_name=schema)
    try:
        async with p.db.session(schema, write=True) as session:
            session.add(tenant)
            await session.flush()
            if owner_id is not None:
                session.add(Membership(user_id=owner_id, tenant_id=tenant.id, role="owner"))
            await p.audit.record(
                session,
                (slug, schema),
                ctx,
                "tenant.create",
                "tenant",
                tenant.id,
                {"slug": slug, "name": tenant.name, "owner": str(owner_id) if owner_id else None},
            )
    except IntegrityError as exc:  # lost a race with another request creating the same slug
        raise ConflictError(f"tenant {slug!r} already exists") from exc
    if requester is not None and requester.schema != schema:
        async with p.db.session(requester.schema, write=True) as session:
            await p.audit.record(
                session, requester.pair, ctx, "tenant.create", "tenant", tenant.id, {"slug": slug}
            )
    return tenant


async def list_tenants(p: Platform) -> list[Tenant]:
    async with p.db.session() as session:
        return list((await session.scalars(select(Tenant).order_by(Tenant.slug))).all())


async def members(session: AsyncSession, tenant_id: uuid.UUID) -> list[tuple[User, str]]:
    rows = await session.execute(
        select(User, Membership.role)
        .join(Membership, Membership.user_id == User.id)
        .where(Membership.tenant_id == tenant_id)
        .order_by(User.username)
    )
    return [(user, role) for user, role in rows]


async def member(
    session: AsyncSession, tenant_id: uuid.UUID, user_id: uuid.UUID
) -> tuple[User, Membership]:
    """A member of this tenant; users of other tenants are simply not found."""
    row = (
        await session.execute(
            select(User, Membership)
            .join(Membership, Membership.user_id == User.id)
            .where(Membership.tenant_id == tenant_id, User.id == user_id)
        )
    ).first()
    if row is None:
        raise NotFoundError("user not found")
    return row[0], row[1]


async def ensure_account_in_reach(
    session: AsyncSession, tenant_id: uuid.UUID, user: User, *, platform_admin: bool
) -> None:
    """Users are platform-wide: the password, status or name of an account that is also a
    member elsewhere (or a platform administrator) is changed by platform administrators only,
    or one tenant's owner could take over the account in every other tenant."""
    if platform_admin:
        return
    elsewhere = await session.scalar(
        select(Membership.id)
        .where(Membership.user_id == user.id, Membership.tenant_id != tenant_id)
        .limit(1)
    )
    if user.is_platform_admin or elsewhere is not None:
        raise RoleTooStrong(
            "this account is shared with other tenants; only a platform administrator can "
            "change its password, status or name"
        )


async def add_member(
    p: Platform,
    session: AsyncSession,
    tenant: TenantRef,
    ctx: AuditContext,
    *,
    username: str,
    password: str | None,
    role: str,
    display_name: str = "",
    granter: frozenset[str] | set[str],
    may_adopt: bool = False,
) -> User:
    """Create a user with a membership, or (for platform admins) add an existing user."""
    # hashed before the first query, so the (SQLite) write lock is not held while hashing
    password_hash = await asyncio.to_thread(p.passwords.hash, password) if password else None
    await ensure_grantable(session, role, granter)
    user = await session.scalar(select(User).where(User.username == username))
    created = user is None
    if user is None:
        if password_hash is None:
            raise ValidationFailed("a new user needs a password", details={"field": "password"})
        user = User(
            username=username,
            display_name=display_name,
            password_hash=password_hash,
        )
        session.add(user)
        await session.flush()
    elif not may_adopt:
        raise ConflictError(f"username {username!r} is taken")
    elif (
        await session.scalar(
            select(Membership.id).where(
                Membership.user_id == user.id, Membership.tenant_id == tenant.id
            )
        )
        is not None
    ):
        raise ConflictError(f"{username!r} is already a member")
    session.add(Membership(user_id=user.id, tenant_id=tenant.id, role=role))
    await p.audit.record(
        session,
        tenant.pair,
        ctx,
        "user.add",
        "user",
        user.id,
        {"username": username, "role": role, "created": created},
    )
    return user


async def set_password(
    p: Platform,
    session: AsyncSession,
    tenant: TenantRef,
    ctx: AuditContext,
    user: User,
    password: str,
    *,
    keep_family: uuid.UUID | None = None,
) -> None:
    """Set the password and end every login of the user (but ``keep_family``, the caller's)."""
    user.password_hash = await asyncio.to_thread(p.passwords.hash, password)
    user.password_changed_at = now = utcnow()
    ended = await session.execute(
        update(TokenFamily)
        .where(
            TokenFamily.user_id == user.id,
            TokenFamily.revoked_at.is_(None),
            TokenFamily.id != keep_family if keep_family else true(),
        )
        .values(revoked_at=now, revoked_reason="password_changed")
    )
    await p.audit.record(
        session,
        tenant.pair,
        ctx,
        "user.password",
        "user",
        user.id,
        {"username": user.username, "sessions_ended": ended.rowcount},  # type: ignore[attr-defined]
    )


async def create_api_key(
    p: Platform,
    session: AsyncSession,
    tenant: TenantRef,
    ctx: AuditContext,
    *,
    user_id: uuid.UUID,
    name: str,
    role: str,
    granter: frozenset[str] | set[str],
    expires_at: datetime | None,
) -> tuple[ApiKey, str]:
    """A new key and its plaintext, which is never stored and never shown again."""
    await ensure_grantable(session, role, granter)
    if expires_at is not None and expires_at <= utcnow():
        raise ValidationFailed("expires_at is in the past", details={"field": "expires_at"})
    prefix = f"{API_KEY_MARK}{tenant.slug}_{secrets.token_hex(4)}"
    plaintext = prefix + secrets.token_urlsafe(32)
    key = ApiKey(
        name=name,
        prefix=prefix,
        key_hash=sha256_hex(plaintext),
        role=role,
        created_by=user_id,
        expires_at=expires_at,
        created_at=utcnow(),
    )
    session.add(key)
    await session.flush()
    await p.audit.record(
        session,
        tenant.pair,
        ctx,
        "apikey.create",
        "api_key",
        key.id,
        {
            "name": name,
            "role": role,
            "prefix": prefix,
            "expires_at": expires_at.isoformat() if expires_at else None,
        },
    )
    return key, plaintext


async def revoke_api_key(
    p: Platform, session: AsyncSession, tenant: TenantRef, ctx: AuditContext, key_id: uuid.UUID
) -> ApiKey:
    key = await session.get(ApiKey, key_id)
    if key is None:
        raise NotFoundError("API key not found")
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        await p.audit.record(
            session, tenant.pair, ctx, "apikey.revoke", "api_key", key.id, {"prefix": key.prefix}
        )
    return key
