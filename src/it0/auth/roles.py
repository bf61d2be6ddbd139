"""Role resolution (built-in and custom) and the rule that nobody grants more than they hold."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from it0.auth.errors import RoleTooStrong, UnknownPermission
from it0.auth.models import Role
from it0.auth.permissions import BUILTIN_ROLES, unknown_permissions
from it0.core.errors import ConflictError, ValidationFailed


async def permissions_of(session: AsyncSession, role: str) -> set[str]:
    """The permissions of a role in the session's tenant; an unknown role grants nothing."""
    builtin = BUILTIN_ROLES.get(role)
    if builtin is not None:
        return set(builtin)
    perms = await session.scalar(select(Role.permissions).where(Role.name == role))
    return set(perms or ())


async def ensure_grantable(session: AsyncSession, role: str, granter: Iterable[str]) -> set[str]:
    """The role's permissions, if ``granter`` holds all of them; 403 otherwise."""
    if (
        role not in BUILTIN_ROLES
        and await session.scalar(select(Role.id).where(Role.name == role)) is None
    ):
        raise ValidationFailed(f"unknown role {role!r}", details={"field": "role"})
    perms = await permissions_of(session, role)
    missing = sorted(perms - set(granter))
    if missing:
        raise RoleTooStrong(
            f"role {role!r} holds permissions you do not have", details={"missing": missing}
        )
    return perms


def check_permission_names(permissions: Iterable[str]) -> list[str]:
    names = sorted(set(permissions))
    unknown = unknown_permissions(set(names))
    if unknown:
        raise UnknownPermission("unknown permissions", details={"unknown": unknown})
    return names


async def create_role(
    session: AsyncSession, name: str, description: str, permissions: list[str]
) -> Role:
    if name in BUILTIN_ROLES:
        raise ValidationFailed(f"{name!r} is a built-in role", details={"field": "name"})
    if await session.scalar(select(Role.id).where(Role.name == name)) is not None:
        raise ConflictError(f"role {name!r} already exists")
    role = Role(name=name, description=description, permissions=permissions)
    session.add(role)
    await session.flush()
    return role
