"""The oversight fixtures (a tenant with admin, alice and bob), for the runbook library."""

from __future__ import annotations

from tests.ops.conftest import client_keys, fleet, ops, sshd, sshd_hosts, worker

__all__ = ["client_keys", "fleet", "ops", "sshd", "sshd_hosts", "worker"]
