"""A host the executor can run commands on, resolved by the caller (no database here)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Literal

import asyncssh

TargetKind = Literal["ssh", "local"]


@dataclass(frozen=True, repr=False)
class HostTarget:
    """Where and how to connect. Secrets are plain strings here: the repr never shows them.

    ``known_host_key`` is the pinned host key as an OpenSSH public key line
    (``"ssh-ed25519 AAAA..."``). Without one, ``trust_on_first_use`` decides whether the
    presented key is accepted (and reported in the result, for the caller to pin) or refused.
    """

    server_id: str
    name: str
    address: str
    port: int = 22
    username: str = "root"
    kind: TargetKind = "ssh"
    private_key: str | None = None
    passphrase: str | None = None
    password: str | None = None
    sudo_password: str | None = None
    known_host_key: str | None = None
    trust_on_first_use: bool = False

    def __post_init__(self) -> None:
        if self.kind not in ("ssh", "local"):
            raise ValueError(f"unknown target kind {self.kind!r}")
        if not 0 < self.port < 65536:
            raise ValueError(f"port {self.port} out of range")

    @classmethod
    def local(cls, server_id: str, name: str = "localhost", **fields: Any) -> HostTarget:
        """The control-plane host itself: commands run as local subprocesses."""
        return cls(server_id=server_id, name=name, address="localhost", kind="local", **fields)

    @property
    def auth_method(self) -> str:
        if self.kind == "local":
            return "local"
        if self.private_key is not None:
            return "publickey"
        return "password" if self.password is not None else "none"

    def describe(self) -> dict[str, Any]:
        """Identifying fields safe for logs, errors and audit summaries."""
        return {
            "server_id": self.server_id,
            "name": self.name,
            "address": self.address,
            "port": self.port,
        }

    def pinned_fingerprint(self) -> str | None:
        if self.known_host_key is None:
            return None
        try:
            return fingerprint(asyncssh.import_public_key(self.known_host_key))
        except (asyncssh.KeyImportError, ValueError):
            return "invalid"

    def credential_digest(self) -> str:
        """Stable digest of everything that authenticates a connection (pool identity)."""
        h = hashlib.sha256()
        for part in (self.username, self.private_key, self.passphrase, self.password):
            h.update(b"\x01" if part is None else b"\x02" + part.encode() + b"\x00")
        return h.hexdigest()

    def connection_key(self) -> tuple[str, str, int, str]:
        """Targets with equal keys can share one pooled connection."""
        return (self.kind, self.address, self.port, self.credential_digest())

    def __repr__(self) -> str:
        pin = self.pinned_fingerprint() or ("tofu" if self.trust_on_first_use else "none")
        return (
            f"HostTarget(server_id={self.server_id!r}, name={self.name!r}, "
            f"address={self.address!r}, port={self.port}, username={self.username!r}, "
            f"kind={self.kind!r}, auth={self.auth_method!r}, "
            f"sudo_password={'set' if self.sudo_password else 'unset'}, host_key={pin!r})"
        )

    __str__ = __repr__


def public_key_line(key: asyncssh.SSHKey) -> str:
    """``"<algorithm> <base64>"`` without a comment: the form callers pin."""
    algorithm, data = key.export_public_key("openssh").decode().split()[:2]
    return f"{algorithm} {data}"


def fingerprint(key: asyncssh.SSHKey) -> str:
    return key.get_fingerprint("sha256")
