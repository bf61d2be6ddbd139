"""Running commands on hosts: SSH (pooled asyncssh connections) and the local host.

An internal service with no HTTP surface: callers resolve hosts (inventory, vault) into
``HostTarget`` values and decide what may run (risk policy, approvals) before calling it.
"""

from it0.execution.errors import (
    AuthFailed,
    Cancelled,
    CommandTimeout,
    ExecutionError,
    HostKeyChanged,
    HostKeyUnknown,
    Unreachable,
)
from it0.execution.facts import FACTS_SCRIPT, Disk, HostFacts, gather_facts, parse_facts
from it0.execution.fanout import (
    FanOutResult,
    FleetExecutor,
    HostResult,
    HostStatus,
    fan_out,
)
from it0.execution.local import LocalExecutor
from it0.execution.pool import ConnectionPool
from it0.execution.run import (
    DEFAULT_OUTPUT_CAP,
    ChunkCallback,
    CommandExecutor,
    RunResult,
    Stream,
)
from it0.execution.ssh import SshExecutor
from it0.execution.target import HostTarget, TargetKind, fingerprint, public_key_line

__all__ = [
    "DEFAULT_OUTPUT_CAP",
    "FACTS_SCRIPT",
    "AuthFailed",
    "Cancelled",
    "ChunkCallback",
    "CommandExecutor",
    "CommandTimeout",
    "ConnectionPool",
    "Disk",
    "ExecutionError",
    "FanOutResult",
    "FleetExecutor",
    "HostFacts",
    "HostKeyChanged",
    "HostKeyUnknown",
    "HostResult",
    "HostStatus",
    "HostTarget",
    "LocalExecutor",
    "RunResult",
    "SshExecutor",
    "Stream",
    "TargetKind",
    "Unreachable",
    "fan_out",
    "fingerprint",
    "gather_facts",
    "parse_facts",
    "public_key_line",
]
