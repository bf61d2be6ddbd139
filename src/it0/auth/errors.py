"""Errors of the auth context."""

from it0.core.errors import AuthenticationError, NotFoundError, PermissionDenied, ValidationFailed


class InvalidCredentials(AuthenticationError):
    code = "invalid_credentials"


class TokenRevoked(AuthenticationError):
    code = "token_revoked"


class UnknownTenant(NotFoundError):
    code = "unknown_tenant"


class MissingPermission(PermissionDenied):
    code = "missing_permission"


class RoleTooStrong(PermissionDenied):
    """A role, key or membership would grant more than the person granting it holds."""

    code = "exceeds_own_permissions"


class UnknownPermission(ValidationFailed):
    code = "unknown_permission"
