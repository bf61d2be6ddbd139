"""Errors of the inventory context (servers, clusters, selectors, imports)."""

from __future__ import annotations

from it0.core.errors import ConflictError, NotFoundError, ValidationFailed


class InventoryNotFound(NotFoundError):
    """A server or cluster that does not exist in this tenant (other tenants' too)."""


class NameTaken(ConflictError):
    code = "name_taken"


class ClusterInUse(ConflictError):
    code = "cluster_in_use"


class UnknownReference(ValidationFailed):
    """A body names a cluster or credential that does not exist in this tenant."""

    code = "unknown_reference"


class SelectorError(ValidationFailed):
    """A selector that does not parse; ``details`` name the position and what was expected."""

    code = "invalid_selector"

    def __init__(self, text: str, position: int, expected: str, found: str) -> None:
        super().__init__(
            f"invalid selector at position {position}: expected {expected}, found {found}",
            details={
                "field": "selector",
                "selector": text[:500],
                "position": position,
                "expected": expected,
                "found": found,
            },
        )
        self.position = position
        self.expected = expected


class InventoryFileError(ValidationFailed):
    """An Ansible inventory file that cannot be read; ``details`` name the line."""

    code = "invalid_inventory"


class NotConnectable(ValidationFailed):
    """A server that lacks what connecting needs (a credential, a user name)."""

    code = "not_connectable"


class InvalidHostKey(ValidationFailed):
    code = "invalid_host_key"


class NoPendingHostKey(ConflictError):
    """Nothing to trust: no key was presented and refused since the last pin."""

    code = "no_pending_host_key"
