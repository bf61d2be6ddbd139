"""Permissions and the built-in roles.

A permission is ``<resource>:<verb>``. Routes declare the one they need; a principal holds
the permissions of its role in the current tenant (an API key: those of its role,
intersected with its creator's current ones, so a key never outgrows the person).
"""

from __future__ import annotations

import re

PERMISSIONS: dict[str, str] = {
    "tenant:admin": "manage the tenant itself and grant the owner role",
    "tenants:read": "list tenants of the platform (platform administrators)",
    "tenants:write": "create tenants (platform administrators)",
    "users:read": "list members of the tenant",
    "users:write": "add members, change their roles and passwords",
    "roles:read": "list roles",
    "roles:write": "create and change custom roles",
    "apikeys:read": "list API keys",
    "apikeys:write": "create and revoke API keys",
    "audit:read": "read, export and verify the audit trail",
    "servers:read": "see servers, clusters and facts",
    "servers:write": "add, change and remove servers and credentials",
    "tasks:read": "see tasks and their output",
    "tasks:write": "create and cancel tasks",
    "tasks:approve": "approve or reject tasks",
    "policy:read": "see the command risk policy",
    "policy:write": "change or relax the command risk policy",
    "standing_orders:read": "see standing orders",
    "standing_orders:write": "propose standing orders",
    "standing_orders:approve": "approve standing orders",
    "agent:use": "talk to the agent",
    "voice:use": "call the agent by voice",
    "alerts:read": "see alerts and metrics",
    "alerts:write": "change alert rules and silence alerts",
}

# tenants:* come only from being a platform administrator, never from a tenant role
PLATFORM_PERMISSIONS = frozenset({"tenants:read", "tenants:write"})
TENANT_PERMISSIONS = frozenset(PERMISSIONS) - PLATFORM_PERMISSIONS

_READ = frozenset(p for p in TENANT_PERMISSIONS if p.endswith(":read"))

BUILTIN_ROLES: dict[str, frozenset[str]] = {
    "owner": TENANT_PERMISSIONS,
    "admin": TENANT_PERMISSIONS - {"tenant:admin"},
    "operator": _READ
    | {
        "servers:write",
        "tasks:write",
        "tasks:approve",
        "standing_orders:write",
        "agent:use",
        "voice:use",
        "alerts:write",
    },
    "viewer": _READ - {"audit:read", "users:read", "roles:read", "apikeys:read"},
}

ROLE_NAME = re.compile(r"^[a-z][a-z0-9_-]{1,63}$")


def unknown_permissions(permissions: set[str] | frozenset[str]) -> list[str]:
    return sorted(p for p in permissions if p not in TENANT_PERMISSIONS)
