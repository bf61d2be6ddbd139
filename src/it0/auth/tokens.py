"""Login, refresh-token rotation and the resolution of a bearer credential to a principal."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from it0.audit import Actor, AuditContext
from it0.auth.errors import InvalidCredentials, TokenRevoked, UnknownTenant
from it0.auth.models import (
    ApiKey,
    LoginThrottle,
    Membership,
    RefreshToken,
    Tenant,
    TokenFamily,
    User,
)
from it0.auth.roles import permissions_of
from it0.core.clock import utcnow
from it0.core.db import tenant_schema_name
from it0.core.errors import AuthenticationError, RateLimited
from it0.core.security import constant_time_equal, random_token, sha256_hex
from it0.platform import Platform

API_KEY_MARK = "it0_"


@dataclass(frozen=True)
class TenantRef:
    id: uuid.UUID
    slug: str
    schema: str

    @property
    def pair(self) -> tuple[str, str]:
        return self.slug, self.schema


@dataclass(frozen=True)
class Principal:
    user_id: uuid.UUID
    username: str
    tenant: TenantRef
    role: str
    permissions: frozenset[str]
    is_platform_admin: bool = False
    api_key_id: uuid.UUID | None = None
    family_id: uuid.UUID | None = None

    @property
    def actor(self) -> Actor:
        if self.api_key_id is not None:
            return Actor(
                type="api_key",
                id=str(self.api_key_id),
                name=f"key of {self.username}",
                on_behalf_of=str(self.user_id),
            )
        return Actor(type="user", id=str(self.user_id), name=self.username)


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int
    token_type: str = "bearer"  # noqa: S105 - the OAuth token type, not a secret


def tenant_of_credential(credential: str) -> str:
    """The tenant slug a bearer credential belongs to, read without trusting it yet."""
    if credential.startswith(API_KEY_MARK):
        parts = credential.split("_", 2)
        if len(parts) == 3:
            return parts[1]
    elif "." in credential and credential.count(".") == 1:  # refresh token: slug.secret
        return credential.split(".", 1)[0]
    raise AuthenticationError("malformed credential")


def schema_for(slug: str) -> str:
    try:
        return tenant_schema_name(slug)
    except ValueError as exc:
        raise UnknownTenant(f"unknown tenant {slug!r}") from exc


async def find_tenant(session: AsyncSession, slug: str) -> TenantRef:
    tenant = await session.scalar(select(Tenant).where(Tenant.slug == slug))
    if tenant is None:
        raise UnknownTenant(f"unknown tenant {slug!r}")
    return TenantRef(tenant.id, tenant.slug, tenant.schema_name)


# --- login throttle -------------------------------------------------------------------------


async def check_throttle(p: Platform, session: AsyncSession, keys: list[tuple[str, int]]) -> None:
    now = utcnow()
    window = timedelta(seconds=p.settings.login_failure_window)
    rows = (
        await session.scalars(
            select(LoginThrottle).where(LoginThrottle.key.in_([k for k, _ in keys]))
        )
    ).all()
    limits = dict(keys)
    for row in rows:
        ends = row.window_start + window
        if ends > now and row.failures >= limits[row.key]:
            retry = max(1, int((ends - now).total_seconds()) + 1)
            raise RateLimited("too many failed logins; try again later", retry_after=retry)


async def record_failure(p: Platform, session: AsyncSession, keys: list[str]) -> None:
    now = utcnow()
    window = timedelta(seconds=p.settings.login_failure_window)
    for key in keys:
        row = await session.get(LoginThrottle, key)
        if row is None:
            session.add(LoginThrottle(key=key, failures=1, window_start=now))
        elif row.window_start + window <= now:
            row.failures, row.window_start = 1, now
        else:
            row.failures += 1


# --- login and refresh ----------------------------------------------------------------------


async def login(
    p: Platform, slug: str, username: str, password: str, ctx: AuditContext
) -> TokenPair:
    schema = schema_for(slug)
    user_key = f"user:{slug}:{username.lower()}"[:128]
    ip_key = f"ip:{ctx.client_addr or '-'}"[:128]
    limits = [
        (user_key, p.settings.login_max_failures),
        (ip_key, p.settings.login_max_failures_per_ip),
    ]
    async with p.db.session() as session:
        tenant = await find_tenant(session, slug)
        await check_throttle(p, session, limits)
        row = (
            await session.execute(
                select(User, Membership.role)
                .join(Membership, Membership.user_id == User.id)
                .where(User.username == username, Membership.tenant_id == tenant.id)
            )
        ).first()
    user, role = (row[0], row[1]) if row else (None, None)
    # argon2 runs outside any transaction, and for an unknown user against a dummy hash; in a
    # worker thread, so that ~0.3 s of hashing does not stall every other request's event loop
    valid = await asyncio.to_thread(
        p.passwords.verify, user.password_hash if user else None, password
    )
    if user is None or role is None or not valid or not user.is_active:
        async with p.db.session(schema, write=True) as session:
            await record_failure(p, session, [user_key, ip_key])
            anonymous = AuditContext(
                Actor(type="anonymous", id=None, name=username[:200]),
                ctx.request_id,
                ctx.client_addr,
            )
            await p.audit.record(
                session,
                tenant.pair,
                anonymous,
                "auth.login_failed",
                "user",
                user.id if user else None,
                {"username": username[:200]},
            )
        raise InvalidCredentials("invalid tenant, username or password")
    async with p.db.session(schema, write=True) as session:
        await session.execute(
            delete(LoginThrottle).where(LoginThrottle.key == user_key),
            execution_options={"it0_audit_exempt": True},
        )
        family = TokenFamily(user_id=user.id, tenant_id=tenant.id)
        session.add(family)
        await session.flush()
        pair = await _issue(p, session, tenant, user.id, family.id)
        actor = AuditContext(
            Actor(type="user", id=str(user.id), name=user.username), ctx.request_id, ctx.client_addr
        )
        await p.audit.record(
            session, tenant.pair, actor, "auth.login", "user", user.id, {"family": str(family.id)}
        )
    return pair


async def _issue(
    p: Platform, session: AsyncSession, tenant: TenantRef, user_id: uuid.UUID, family_id: uuid.UUID
) -> TokenPair:
    now = utcnow()
    refresh = f"{tenant.slug}.{random_token()}"
    session.add(
        RefreshToken(
            family_id=family_id,
            token_hash=sha256_hex(refresh),
            expires_at=now + timedelta(seconds=p.settings.refresh_token_ttl),
        )
    )
    access = p.signer.issue(
        user_id=str(user_id),
        tenant_id=str(tenant.id),
        slug=tenant.slug,
        family_id=str(family_id),
        now=now,
    )
    return TokenPair(access, refresh, p.settings.access_token_ttl)


async def refresh(p: Platform, token: str, ctx: AuditContext) -> TokenPair:
    """Rotate a refresh token; presenting one that was already used revokes its family."""
    slug = tenant_of_credential(token)
    schema = schema_for(slug)
    async with p.db.session() as session:  # the tenant first: SQLite has no file for unknown ones
        await find_tenant(session, slug)
    now = utcnow()
    reused = False
    async with p.db.session(schema, write=True) as session:
        tenant = await find_tenant(session, slug)
        row = (
            await session.execute(
                select(RefreshToken, TokenFamily)
                .join(TokenFamily, TokenFamily.id == RefreshToken.family_id)
                .where(
                    RefreshToken.token_hash == sha256_hex(token), TokenFamily.tenant_id == tenant.id
                )
            )
        ).first()
        if row is None:
            raise InvalidCredentials("invalid refresh token")
        stored, family = row[0], row[1]
        if family.revoked_at is not None:
            raise TokenRevoked("refresh token revoked")
        if stored.expires_at <= now:
            raise AuthenticationError("refresh token expired")
        claimed = await session.execute(
            update(RefreshToken)
            .where(RefreshToken.id == stored.id, RefreshToken.used_at.is_(None))
            .values(used_at=now)
        )
        user_actor = AuditContext(
            Actor(type="user", id=str(family.user_id), name="-"), ctx.request_id, ctx.client_addr
        )
        if claimed.rowcount == 0:  # type: ignore[attr-defined]
            family.revoked_at, family.revoked_reason = now, "refresh_token_reuse"
            await p.audit.record(
                session,
                tenant.pair,
                user_actor,
                "auth.refresh_token_reused",
                "token_family",
                family.id,
                {"revoked": True},
            )
            reused = True
        else:
            active = await session.scalar(
                select(User.is_active)
                .join(Membership, Membership.user_id == User.id)
                .where(User.id == family.user_id, Membership.tenant_id == tenant.id)
            )
            if not active:
                raise TokenRevoked("the user no longer has access to this tenant")
            pair = await _issue(p, session, tenant, family.user_id, family.id)
    if reused:  # committed above, so the revocation holds
        raise TokenRevoked("refresh token already used; every session of this login was revoked")
    return pair


async def logout(
    p: Platform, principal: Principal, session: AsyncSession, ctx: AuditContext
) -> None:
    if principal.family_id is None:
        raise AuthenticationError("an API key cannot log out; revoke it instead")
    await session.execute(
        update(TokenFamily)
        .where(TokenFamily.id == principal.family_id)
        .values(revoked_at=utcnow(), revoked_reason="logout")
    )
    await p.audit.record(
        session, principal.tenant.pair, ctx, "auth.logout", "token_family", principal.family_id
    )


# a key's or a credential's last use is stamped to the minute: every use is audited, and
# rewriting the row on each request of a burst costs a write per request
LAST_USED_PRECISION = timedelta(seconds=60)


# --- bearer credentials -> principal --------------------------------------------------------


# built once: every request with an access token runs it
_ACCESS = (
    select(User, Membership.role, Tenant, TokenFamily.revoked_at)
    .join(Membership, Membership.user_id == User.id)
    .join(Tenant, Tenant.id == Membership.tenant_id)
    .join(TokenFamily, TokenFamily.id == bindparam("family_id"))
    .where(User.id == bindparam("user_id"), Tenant.id == bindparam("tenant_id"))
)


async def authenticate(p: Platform, session: AsyncSession, credential: str) -> Principal:
    """Resolve a JWT access token or an API key, in a session bound to its tenant."""
    if credential.startswith(API_KEY_MARK):
        return await _authenticate_key(p, session, credential)
    claims = p.signer.verify(credential)
    row = (
        await session.execute(
            _ACCESS,
            {
                "user_id": uuid.UUID(claims.user_id),
                "tenant_id": uuid.UUID(claims.tenant_id),
                "family_id": uuid.UUID(claims.family_id),
            },
        )
    ).first()
    if row is None:
        raise TokenRevoked("the token's user no longer has access to this tenant")
    user, role, tenant, revoked_at = row
    if revoked_at is not None:
        raise TokenRevoked("access token revoked")
    if not user.is_active:
        raise TokenRevoked("user is disabled")
    ref = TenantRef(tenant.id, tenant.slug, tenant.schema_name)
    perms = await permissions_of(session, role)
    if user.is_platform_admin:
        perms |= {"tenants:read", "tenants:write"}
    return Principal(
        user.id,
        user.username,
        ref,
        role,
        frozenset(perms),
        user.is_platform_admin,
        family_id=uuid.UUID(claims.family_id),
    )


async def user_principal(
    session: AsyncSession, tenant_id: uuid.UUID, user_id: uuid.UUID
) -> Principal | None:
    """The user as a member of the session's tenant now, or None (gone, disabled, no access).

    For credentials that name a user without being a login, e.g. a signed approval link.
    """
    row = (
        await session.execute(
            select(User, Membership.role, Tenant)
            .join(Membership, Membership.user_id == User.id)
            .join(Tenant, Tenant.id == Membership.tenant_id)
            .where(User.id == user_id, Tenant.id == tenant_id)
        )
    ).first()
    if row is None or not row[0].is_active:
        return None
    user, role, tenant = row
    ref = TenantRef(tenant.id, tenant.slug, tenant.schema_name)
    perms = frozenset(await permissions_of(session, role))
    return Principal(user.id, user.username, ref, role, perms, user.is_platform_admin)


async def _authenticate_key(p: Platform, session: AsyncSession, key: str) -> Principal:
    slug, rest = key.split("_", 2)[1:]
    prefix = f"{API_KEY_MARK}{slug}_{rest[:8]}"
    # the tenant first: its schema must exist before anything in it is queried
    if await session.scalar(select(Tenant.id).where(Tenant.slug == slug)) is None:
        raise InvalidCredentials("invalid API key")
    row = (
        await session.execute(
            select(ApiKey, User, Membership.role, Tenant)
            .join(User, User.id == ApiKey.created_by)
            .join(Tenant, Tenant.slug == slug)
            .join(Membership, (Membership.user_id == User.id) & (Membership.tenant_id == Tenant.id))
            .where(ApiKey.prefix == prefix)
        )
    ).first()
    if row is None or not constant_time_equal(row[0].key_hash, sha256_hex(key)):
        raise InvalidCredentials("invalid API key")
    api_key, user, creator_role, tenant = row
    now = utcnow()
    if api_key.revoked_at is not None:
        raise TokenRevoked("API key revoked")
    if api_key.expires_at is not None and api_key.expires_at <= now:
        raise AuthenticationError("API key expired")
    if not user.is_active:
        raise TokenRevoked("the API key's creator is disabled")
    # the key never exceeds what its creator can do today
    perms = await permissions_of(session, api_key.role) & await permissions_of(
        session, creator_role
    )
    ref = TenantRef(tenant.id, tenant.slug, tenant.schema_name)
    if api_key.last_used_at is None or now - api_key.last_used_at > LAST_USED_PRECISION:
        touch = update(ApiKey).where(ApiKey.id == api_key.id).values(last_used_at=now)
        if session.info.get("write"):
            await session.execute(touch, execution_options={"it0_audit_exempt": True})
        else:  # read-only requests stay read-only
            p.db.defer_write(ref.schema, ("api_key.last_used_at", api_key.id), touch)
    return Principal(
        user.id, user.username, ref, api_key.role, frozenset(perms), api_key_id=api_key.id
    )
