"""The one path every route goes through: who is asking, may they, and in which tenant.

A route's signature is its contract:

    async def list_keys(principal: Annotated[Principal, require("apikeys:read")],
                        session: TenantSession) -> ...

``require`` resolves the bearer credential in a short read transaction, checks the
permission, and ``TenantSession`` then opens the route's own session, bound to that
principal's tenant schema only, committing when the route returns.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from it0.audit import AuditContext
from it0.auth.errors import InvalidCredentials, MissingPermission, UnknownTenant
from it0.auth.tokens import (
    API_KEY_MARK,
    Principal,
    authenticate,
    schema_for,
    tenant_of_credential,
)
from it0.core.errors import AuthenticationError
from it0.platform import Platform

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


async def get_platform(request: Request) -> Platform:
    # async, as every dependency here: FastAPI runs a plain function in its thread pool
    platform: Platform = request.app.state.platform
    return platform


PlatformDep = Annotated[Platform, Depends(get_platform)]


def request_context(request: Request, principal: Principal | None = None) -> AuditContext:
    from it0.audit import Actor

    actor = principal.actor if principal else Actor.system("anonymous")
    client = request.client.host if request.client else None
    return AuditContext(actor, getattr(request.state, "request_id", None), client)


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, credential = header.partition(" ")
    if scheme.lower() != "bearer" or not credential.strip():
        raise AuthenticationError("missing bearer token (Authorization: Bearer <token or API key>)")
    return credential.strip()


async def current_principal(request: Request, p: PlatformDep) -> Principal:
    cached: Principal | None = getattr(request.state, "principal", None)
    if cached is not None:
        return cached
    credential = _bearer(request)
    slug = (
        tenant_of_credential(credential)
        if credential.startswith(API_KEY_MARK)
        else p.signer.peek_tenant(credential)
    )
    try:
        async with p.db.session(schema_for(slug)) as session:
            principal = await authenticate(p, session, credential)
    except (LookupError, UnknownTenant) as exc:  # no such tenant (SQLite: no database file)
        raise InvalidCredentials("invalid credential") from exc
    request.state.principal = principal
    return principal


class Require:
    """A route's declared permission; ``None`` means any authenticated principal."""

    def __init__(self, permission: str | None) -> None:
        self.permission = permission

    async def __call__(
        self, principal: Annotated[Principal, Depends(current_principal)]
    ) -> Principal:
        if self.permission is not None and self.permission not in principal.permissions:
            raise MissingPermission(
                f"this needs the permission {self.permission!r}",
                details={"permission": self.permission},
            )
        return principal


def require(permission: str | None) -> Any:
    return Depends(Require(permission))


class Public:
    """Marks a route that needs no credential (health, login, docs); checked by a test."""

    async def __call__(self) -> None:
        return None


public = Depends(Public())
Authenticated = Annotated[Principal, require(None)]


async def tenant_session(
    request: Request, p: PlatformDep, principal: Authenticated
) -> AsyncIterator[AsyncSession]:
    write = request.method not in SAFE_METHODS
    async with p.db.session(principal.tenant.schema, write=write) as session:
        session.info["write"] = write
        yield session


# scope="function": the commit happens before the response is sent, so a client that got
# its 201 can read what it created (and a failed commit is an error, not a silent loss)
TenantSession = Annotated[AsyncSession, Depends(tenant_session, scope="function")]


@dataclass
class AuditLog:
    """Writes audit events into the route's own transaction."""

    platform: Platform
    session: AsyncSession
    principal: Principal
    context: AuditContext

    @property
    def tenant_pair(self) -> tuple[str, str]:
        return self.principal.tenant.pair

    async def record(
        self,
        action: str,
        resource_type: str,
        resource_id: object | None = None,
        summary: dict[str, Any] | None = None,
    ) -> None:
        await self.platform.audit.record(
            self.session,
            self.principal.tenant.pair,
            self.context,
            action,
            resource_type,
            resource_id,
            summary,
        )


async def audit_log(
    request: Request, p: PlatformDep, session: TenantSession, principal: Authenticated
) -> AuditLog:
    return AuditLog(p, session, principal, request_context(request, principal))


Audit = Annotated[AuditLog, Depends(audit_log)]
