"""Errors of the agent context: the runbook library."""

from __future__ import annotations

from it0.core.errors import NotFoundError, ValidationFailed


class RunbookNotFound(NotFoundError):
    """A runbook that is neither built in nor the tenant's (the code stays ``not_found``)."""


class InvalidRunbook(ValidationFailed):
    """A runbook the library refuses, e.g. one whose diagnostic would change a machine."""

    code = "invalid_runbook"
