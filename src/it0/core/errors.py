"""The root of every error IT0 reports to a client.

Each context subclasses ``IT0Error`` with a stable ``code`` and an HTTP ``status``; one
handler in the app turns them into ``{"error": {"code", "message", "details"}}``.
"""

from __future__ import annotations

from typing import Any, ClassVar


class IT0Error(Exception):
    code: ClassVar[str] = "error"
    status: ClassVar[int] = 400

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}

    def to_body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


class NotFoundError(IT0Error):
    code = "not_found"
    status = 404


class ConflictError(IT0Error):
    code = "conflict"
    status = 409


class ValidationFailed(IT0Error):
    code = "validation_error"
    status = 422


class AuthenticationError(IT0Error):
    code = "unauthenticated"
    status = 401


class PermissionDenied(IT0Error):
    code = "forbidden"
    status = 403


class RateLimited(IT0Error):
    code = "rate_limited"
    status = 429

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message, details={"retry_after": retry_after})
        self.retry_after = retry_after


class ConfigurationError(IT0Error):
    """The platform is misconfigured; raised at start-up, never for a client's input."""

    code = "configuration_error"
    status = 500
