"""Why a command could not run to completion on a host.

Every error names the host (server id, name, address) and never carries a secret: messages
are written here, not copied from a library exception that might quote a credential.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from it0.core.errors import IT0Error

if TYPE_CHECKING:
    from it0.execution.run import RunResult
    from it0.execution.target import HostTarget


class ExecutionError(IT0Error):
    """Root of the execution context; ``code`` is stable, callers switch on it."""

    code: ClassVar[str] = "execution_error"
    status: ClassVar[int] = 424  # the host failed, not the request

    def __init__(self, message: str, target: HostTarget | None = None, **details: Any) -> None:
        where = {} if target is None else target.describe()
        super().__init__(message, details={**where, **details})


class HostKeyChanged(ExecutionError):
    """The host presented a key other than the pinned one: refused, never accepted."""

    code = "host_key_changed"
    status = 409

    def __init__(
        self, target: HostTarget, presented_key: str | None, fingerprint: str | None
    ) -> None:
        now = f", presented {fingerprint}" if fingerprint else ""
        message = (
            f"host key of {target.name} changed (pinned {target.pinned_fingerprint()}{now}):"
            " refusing to connect"
        )
        super().__init__(
            message,
            target,
            presented_key=presented_key,
            fingerprint=fingerprint,
            pinned_fingerprint=target.pinned_fingerprint(),
        )
        self.presented_key = presented_key
        self.fingerprint = fingerprint


class HostKeyUnknown(ExecutionError):
    """No key is pinned and trust on first use is off."""

    code = "host_key_unknown"
    status = 409

    def __init__(
        self, target: HostTarget, presented_key: str | None, fingerprint: str | None
    ) -> None:
        super().__init__(
            f"host key of {target.name} is not pinned and trust on first use is off",
            target,
            presented_key=presented_key,
            fingerprint=fingerprint,
        )
        self.presented_key = presented_key
        self.fingerprint = fingerprint


class Unreachable(ExecutionError):
    """Connection refused, name not resolved, connect timeout or connection lost."""

    code = "unreachable"


class AuthFailed(ExecutionError):
    """The host refused the credential, or the private key could not be loaded."""

    code = "auth_failed"


class CommandTimeout(ExecutionError):
    """The command outlived its timeout; it was killed on the host."""

    code = "command_timeout"

    def __init__(self, target: HostTarget, timeout: float, partial: RunResult) -> None:
        super().__init__(
            f"command on {target.name} did not finish within {timeout:g}s and was killed",
            target,
            timeout=timeout,
        )
        self.partial = partial


class Cancelled(ExecutionError):
    """The run was stopped by the caller (e.g. the executor closed) and killed on the host."""

    code = "cancelled"
    status = 409
