"""Errors of the oversight context: tasks, approvals, standing orders, policy rules."""

from __future__ import annotations

from it0.core.errors import ConflictError, NotFoundError, PermissionDenied, ValidationFailed


class OpsNotFound(NotFoundError):
    """A task, approval, standing order or rule that does not exist in this tenant."""


class NoTargets(ValidationFailed):
    code = "no_targets"


class ReasonRequired(ValidationFailed):
    code = "reason_required"


class FourEyes(PermissionDenied):
    """The person who asked for a change can never approve it, by any route."""

    code = "four_eyes"


class AlreadyVoted(ConflictError):
    code = "already_voted"


class NotPending(ConflictError):
    """The approval (or standing order) is no longer waiting for a decision."""

    code = "not_pending"


class PayloadChanged(ConflictError):
    """What would run is not what was approved."""

    code = "payload_changed"


class InvalidState(ConflictError):
    code = "invalid_state"


class LinkUsed(ConflictError):
    code = "link_used"


class InvalidOrder(ValidationFailed):
    code = "invalid_standing_order"


class AmbiguousReference(ConflictError):
    code = "ambiguous_reference"


class RunWaiting(ConflictError):
    """A standing order's earlier run still waits for approval: no new one is queued."""

    code = "run_waiting"
