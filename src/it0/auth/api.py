"""HTTP routes of the auth context: login, tokens, tenants, members, roles, API keys."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Request, Response
from sqlalchemy import delete, select

from it0.auth import service, tokens
from it0.auth.deps import (
    Audit,
    Authenticated,
    PlatformDep,
    TenantSession,
    public,
    request_context,
    require,
)
from it0.auth.errors import InvalidCredentials, RoleTooStrong
from it0.auth.models import ApiKey, Membership, Role
from it0.auth.permissions import BUILTIN_ROLES
from it0.auth.roles import check_permission_names, create_role, ensure_grantable
from it0.auth.schemas import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyPublic,
    LoginRequest,
    Me,
    MemberCreate,
    MemberPublic,
    MemberUpdate,
    PasswordChange,
    PasswordSet,
    RefreshRequest,
    RoleCreate,
    RolePublic,
    TenantCreate,
    TenantPublic,
    TokenResponse,
)
from it0.auth.tokens import Principal
from it0.core.errors import NotFoundError, ValidationFailed

router = APIRouter(prefix="/api/v1", tags=["auth"])


def _tokens(pair: tokens.TokenPair) -> TokenResponse:
    return TokenResponse(
        access_token=pair.access_token, refresh_token=pair.refresh_token, expires_in=pair.expires_in
    )


@router.post("/auth/login", dependencies=[public])
async def login(body: LoginRequest, request: Request, p: PlatformDep) -> TokenResponse:
    pair = await tokens.login(
        p, body.tenant, body.username, body.password.get_secret_value(), request_context(request)
    )
    return _tokens(pair)


@router.post("/auth/refresh", dependencies=[public])
async def refresh(body: RefreshRequest, request: Request, p: PlatformDep) -> TokenResponse:
    pair = await tokens.refresh(p, body.refresh_token.get_secret_value(), request_context(request))
    return _tokens(pair)


@router.post("/auth/logout", status_code=204)
async def logout(principal: Authenticated, audit: Audit, p: PlatformDep) -> Response:
    await tokens.logout(p, principal, audit.session, audit.context)
    return Response(status_code=204)


@router.get("/auth/me")
async def me(principal: Authenticated) -> Me:
    return Me(
        user_id=principal.user_id,
        username=principal.username,
        tenant=principal.tenant.slug,
        role=principal.role,
        permissions=sorted(principal.permissions),
        via_api_key=principal.api_key_id,
    )


@router.post("/auth/password", status_code=204)
async def change_password(
    body: PasswordChange, principal: Authenticated, audit: Audit, p: PlatformDep
) -> Response:
    if principal.api_key_id is not None:
        raise ValidationFailed("change your password with a login session, not an API key")
    user, _ = await service.member(audit.session, principal.tenant.id, principal.user_id)
    if not p.passwords.verify(user.password_hash, body.current_password.get_secret_value()):
        raise InvalidCredentials("current password is wrong")
    await service.set_password(
        p,
        audit.session,
        principal.tenant,
        audit.context,
        user,
        body.new_password.get_secret_value(),
        keep_family=principal.family_id,
    )
    return Response(status_code=204)


# --- tenants (platform administrators) ----------------------------------------------------


@router.get("/tenants")
async def list_tenants(
    _: Annotated[Principal, require("tenants:read")], p: PlatformDep
) -> list[TenantPublic]:
    return [TenantPublic.model_validate(t) for t in await service.list_tenants(p)]


@router.post("/tenants", status_code=201)
async def create_tenant(
    body: TenantCreate,
    request: Request,
    principal: Annotated[Principal, require("tenants:write")],
    p: PlatformDep,
) -> TenantPublic:
    tenant = await service.create_tenant(
        p,
        body.slug,
        body.name,
        request_context(request, principal),
        owner_id=principal.user_id,
        requester=principal.tenant,
    )
    return TenantPublic.model_validate(tenant)


# --- members ------------------------------------------------------------------------------


def _member(user: object, role: str) -> MemberPublic:
    return MemberPublic.model_validate({**vars(user), "role": role})


@router.get("/users")
async def list_members(
    principal: Annotated[Principal, require("users:read")], session: TenantSession
) -> list[MemberPublic]:
    return [_member(u, role) for u, role in await service.members(session, principal.tenant.id)]


@router.get("/users/{user_id}")
async def get_member(
    user_id: uuid.UUID,
    principal: Annotated[Principal, require("users:read")],
    session: TenantSession,
) -> MemberPublic:
    user, membership = await service.member(session, principal.tenant.id, user_id)
    return _member(user, membership.role)


@router.post("/users", status_code=201)
async def add_member(
    body: MemberCreate,
    principal: Annotated[Principal, require("users:write")],
    audit: Audit,
    p: PlatformDep,
) -> MemberPublic:
    password = body.password.get_secret_value() if body.password else None
    user = await service.add_member(
        p,
        audit.session,
        principal.tenant,
        audit.context,
        username=body.username,
        password=password,
        role=body.role,
        display_name=body.display_name,
        granter=principal.permissions,
        may_adopt=principal.is_platform_admin,
    )
    return _member(user, body.role)


@router.patch("/users/{user_id}")
async def update_member(
    user_id: uuid.UUID,
    body: MemberUpdate,
    principal: Annotated[Principal, require("users:write")],
    audit: Audit,
) -> MemberPublic:
    user, membership = await service.member(audit.session, principal.tenant.id, user_id)
    # nobody changes someone who holds more than they do
    await ensure_grantable(audit.session, membership.role, principal.permissions)
    changes = body.model_dump(exclude_none=True)
    if body.display_name is not None or body.is_active is not None:  # the account, not the role
        await service.ensure_account_in_reach(
            audit.session, principal.tenant.id, user, platform_admin=principal.is_platform_admin
        )
    if body.role is not None:
        await ensure_grantable(audit.session, body.role, principal.permissions)
        membership.role = body.role
    if body.display_name is not None:
        user.display_name = body.display_name
    if body.is_active is not None:
        user.is_active = body.is_active
    await audit.record("user.update", "user", user.id, changes)
    return _member(user, membership.role)


@router.delete("/users/{user_id}", status_code=204)
async def remove_member(
    user_id: uuid.UUID, principal: Annotated[Principal, require("users:write")], audit: Audit
) -> Response:
    user, membership = await service.member(audit.session, principal.tenant.id, user_id)
    await ensure_grantable(audit.session, membership.role, principal.permissions)
    await audit.session.execute(delete(Membership).where(Membership.id == membership.id))
    await audit.record("user.remove", "user", user.id, {"username": user.username})
    return Response(status_code=204)


@router.put("/users/{user_id}/password", status_code=204)
async def set_member_password(
    user_id: uuid.UUID,
    body: PasswordSet,
    principal: Annotated[Principal, require("users:write")],
    audit: Audit,
    p: PlatformDep,
) -> Response:
    user, membership = await service.member(audit.session, principal.tenant.id, user_id)
    await ensure_grantable(audit.session, membership.role, principal.permissions)
    await service.ensure_account_in_reach(
        audit.session, principal.tenant.id, user, platform_admin=principal.is_platform_admin
    )
    await service.set_password(
        p, audit.session, principal.tenant, audit.context, user, body.password.get_secret_value()
    )
    return Response(status_code=204)


# --- roles --------------------------------------------------------------------------------


@router.get("/roles")
async def list_roles(
    _: Annotated[Principal, require("roles:read")], session: TenantSession
) -> list[RolePublic]:
    builtin = [
        RolePublic(name=n, description="built-in", permissions=sorted(p), builtin=True)
        for n, p in BUILTIN_ROLES.items()
    ]
    custom = (await session.scalars(select(Role).order_by(Role.name))).all()
    return builtin + [
        RolePublic(
            name=r.name, description=r.description, permissions=sorted(r.permissions), builtin=False
        )
        for r in custom
    ]


@router.post("/roles", status_code=201)
async def add_role(
    body: RoleCreate, principal: Annotated[Principal, require("roles:write")], audit: Audit
) -> RolePublic:
    perms = check_permission_names(body.permissions)
    missing = sorted(set(perms) - principal.permissions)
    if missing:
        raise RoleTooStrong(
            "the role holds permissions you do not have", details={"missing": missing}
        )
    role = await create_role(audit.session, body.name, body.description, perms)
    await audit.record("role.create", "role", role.id, {"name": role.name, "permissions": perms})
    return RolePublic(
        name=role.name, description=role.description, permissions=perms, builtin=False
    )


@router.delete("/roles/{name}", status_code=204)
async def delete_role(
    name: str, _: Annotated[Principal, require("roles:write")], audit: Audit
) -> Response:
    role = await audit.session.scalar(select(Role).where(Role.name == name))
    if role is None:
        raise NotFoundError(f"role {name!r} not found")
    await audit.session.delete(role)
    await audit.record("role.delete", "role", role.id, {"name": name})
    return Response(status_code=204)


# --- API keys -----------------------------------------------------------------------------


@router.get("/api-keys")
async def list_api_keys(
    _: Annotated[Principal, require("apikeys:read")], session: TenantSession
) -> list[ApiKeyPublic]:
    keys = (await session.scalars(select(ApiKey).order_by(ApiKey.created_at))).all()
    return [ApiKeyPublic.model_validate(k.public()) for k in keys]


@router.post("/api-keys", status_code=201)
async def create_api_key(
    body: ApiKeyCreate,
    principal: Annotated[Principal, require("apikeys:write")],
    audit: Audit,
    p: PlatformDep,
) -> ApiKeyCreated:
    key, plaintext = await service.create_api_key(
        p,
        audit.session,
        principal.tenant,
        audit.context,
        user_id=principal.user_id,
        name=body.name,
        role=body.role or principal.role,
        granter=principal.permissions,
        expires_at=body.expires_at,
    )
    return ApiKeyCreated.model_validate({**key.public(), "key": plaintext})


@router.delete("/api-keys/{key_id}")
async def revoke_api_key(
    key_id: uuid.UUID,
    principal: Annotated[Principal, require("apikeys:write")],
    audit: Audit,
    p: PlatformDep,
) -> ApiKeyPublic:
    key = await service.revoke_api_key(p, audit.session, principal.tenant, audit.context, key_id)
    return ApiKeyPublic.model_validate(key.public())
