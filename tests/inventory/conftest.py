"""The real sshd fixtures of the execution tests, for servers the inventory reaches."""

from __future__ import annotations

from tests.execution.conftest import client_keys, fleet, sshd, sshd_hosts

__all__ = ["client_keys", "fleet", "sshd", "sshd_hosts"]
