"""Errors of the agent context: the runbook library, conversations, model configuration."""

from __future__ import annotations

from it0.core.errors import (
    ConfigurationError,
    ConflictError,
    IT0Error,
    NotFoundError,
    ValidationFailed,
)


class AgentError(IT0Error):
    """Something the agent could not do; the message says what, never a secret."""

    code = "agent_error"


class RunbookNotFound(NotFoundError):
    """A runbook that is neither built in nor the tenant's (the code stays ``not_found``)."""


class InvalidRunbook(ValidationFailed):
    """A runbook the library refuses, e.g. one whose diagnostic would change a machine."""

    code = "invalid_runbook"


class SessionNotFound(NotFoundError):
    """No such conversation, or it is another user's (the code stays ``not_found``)."""


class SessionBusy(ConflictError):
    """The conversation is answering, or waits for an approval, so it takes no new message."""

    code = "session_busy"


class AgentConfigError(ConfigurationError):
    """The configured model cannot be used (unknown provider, missing key)."""

    code = "agent_not_configured"
