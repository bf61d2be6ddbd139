"""One SSH connection per host, shared by the commands that run there.

A connection is keyed by address, port and a digest of the credential, so a rotated key
opens a new one. The host-key policy is applied when connecting and again when a pooled
connection is reused by a target whose pin differs. Idle connections close after
``idle_timeout``; a broken one is replaced on next use. Two caps bound the work: commands
per host (below sshd's ``MaxSessions``, 10 by default) and commands overall.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import asyncssh
from asyncssh.public_key import get_default_public_key_algs

from it0.execution.errors import (
    AuthFailed,
    ExecutionError,
    HostKeyChanged,
    HostKeyUnknown,
    Unreachable,
)
from it0.execution.target import HostTarget, fingerprint, public_key_line

log = logging.getLogger(__name__)


# AES-GCM first: one OpenSSL call per packet, where asyncssh's chacha20-poly1305 makes
# four, which made it the largest client-side cost of a warm fan-out. Both are AEADs.
_CIPHERS = [
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes256-ctr",
    "aes192-ctr",
    "aes128-ctr",
]


class _HostKeyPolicy(asyncssh.SSHClient):
    """Called by asyncssh only for a key that is not the pinned one."""

    def __init__(self, pooled: PooledConnection, tofu_allowed: bool) -> None:
        self._pooled = pooled
        self._tofu_allowed = tofu_allowed
        self.refused_key: asyncssh.SSHKey | None = None

    def validate_host_public_key(
        self, host: str, addr: str, port: int, key: asyncssh.SSHKey
    ) -> bool:
        if self._tofu_allowed:
            self._pooled.host_key_new = True
            return True
        self.refused_key = key
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._pooled.broken = True


@dataclass(eq=False)
class PooledConnection:
    conn: asyncssh.SSHClientConnection | None = None
    host_key: str | None = None
    host_key_fingerprint: str | None = None
    host_key_new: bool = False  # accepted by trust on first use
    broken: bool = False
    active: int = 0
    reused: bool = False
    idle_timer: asyncio.TimerHandle | None = field(default=None, repr=False)

    def usable(self) -> bool:
        return self.conn is not None and not self.broken and not self.conn.is_closed()

    def accepts(self, target: HostTarget) -> bool:
        """Whether ``target``'s host-key policy accepts the key this connection verified."""
        if target.known_host_key is not None:
            return _same_key(target.known_host_key, self.host_key)
        return target.trust_on_first_use

    def close(self) -> None:
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        if self.conn is not None:
            self.conn.close()


@dataclass(eq=False)
class _Host:
    slots: asyncio.Semaphore
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    current: PooledConnection | None = None


class ConnectionPool:
    def __init__(
        self,
        *,
        max_concurrency: int = 200,
        per_host_concurrency: int = 8,
        connect_timeout: float = 10.0,
        idle_timeout: float = 300.0,
        keepalive_interval: float = 30.0,
        keepalive_count_max: int = 3,
    ) -> None:
        asyncssh_log = logging.getLogger("asyncssh")
        if asyncssh_log.level == logging.NOTSET:
            # unless configured otherwise: asyncssh logs every command line at INFO, and a
            # command line may hold what its author considered private
            asyncssh_log.setLevel(logging.WARNING)
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.keepalive_interval = keepalive_interval
        self.keepalive_count_max = keepalive_count_max
        self.per_host_concurrency = per_host_concurrency
        self.connects = 0
        self.reuses = 0
        self.closed = False
        self._global = asyncio.Semaphore(max_concurrency)
        self._hosts: dict[tuple[str, str, int, str], _Host] = {}
        self._keys: dict[str, asyncssh.SSHKey] = {}
        self._all: set[PooledConnection] = set()

    def open_connections(self) -> int:
        return sum(1 for p in self._all if p.usable())

    @contextlib.asynccontextmanager
    async def lease(self, target: HostTarget) -> AsyncIterator[PooledConnection]:
        """A connection to ``target`` with a per-host and a global slot held meanwhile."""
        if self.closed:
            raise ExecutionError("the connection pool is closed", target)
        key = target.connection_key()
        host = self._hosts.get(key)
        if host is None:
            host = self._hosts[key] = _Host(asyncio.Semaphore(self.per_host_concurrency))
        async with host.slots, self._global:
            pooled = await self._get(host, target)
            pooled.active += 1
            if pooled.idle_timer is not None:
                pooled.idle_timer.cancel()
                pooled.idle_timer = None
            try:
                yield pooled
            finally:
                pooled.active -= 1
                if pooled.active == 0:
                    self._release(host, pooled)

    def discard(self, pooled: PooledConnection) -> None:
        """Mark a connection broken (e.g. a channel could not be opened on it)."""
        pooled.broken = True

    async def close(self) -> None:
        self.closed = True
        conns = [p.conn for p in self._all if p.conn is not None]
        for pooled in self._all:
            pooled.close()
        self._all.clear()
        self._hosts.clear()
        for conn in conns:
            with contextlib.suppress(Exception):  # closing: a failure changes nothing
                await conn.wait_closed()

    async def _get(self, host: _Host, target: HostTarget) -> PooledConnection:
        async with host.lock:
            current = host.current
            if current is not None and current.usable() and current.accepts(target):
                self.reuses += 1
                current.reused = True
                return current
            if current is not None and not current.usable() and current.active == 0:
                self._forget(current)
                host.current = current = None
            pooled = await self._connect(target)
            if current is not None and current.active == 0:
                self._forget(current)  # its key no longer satisfies the policy
            host.current = pooled
            return pooled

    def _release(self, host: _Host, pooled: PooledConnection) -> None:
        if host.current is not pooled or not pooled.usable():
            self._forget(pooled)
            if host.current is pooled:
                host.current = None
            return
        loop = asyncio.get_running_loop()
        pooled.idle_timer = loop.call_later(self.idle_timeout, self._expire, host, pooled)

    def _expire(self, host: _Host, pooled: PooledConnection) -> None:
        pooled.idle_timer = None
        if pooled.active == 0:
            self._forget(pooled)
            if host.current is pooled:
                host.current = None

    def _forget(self, pooled: PooledConnection) -> None:
        pooled.close()
        self._all.discard(pooled)

    async def _connect(self, target: HostTarget) -> PooledConnection:
        pinned = _pinned_key(target)
        client_key = self._client_key(target)
        pooled = PooledConnection()
        policy = _HostKeyPolicy(pooled, pinned is None and target.trust_on_first_use)
        try:
            conn = await asyncssh.connect(
                target.address,
                target.port,
                username=target.username,
                client_factory=lambda: policy,
                known_hosts=([pinned] if pinned else [], [], []),
                server_host_key_algs=_host_key_algs(pinned),
                encryption_algs=_CIPHERS,
                client_keys=[client_key] if client_key else None,
                password=target.password,
                preferred_auth=_auth_methods(client_key is not None, target.password is not None),
                # nothing from this process's ~/.ssh or an agent: only what the target says
                config=None,
                agent_path=None,
                x509_trusted_certs=None,
                gss_auth=False,
                gss_kex=False,
                connect_timeout=self.connect_timeout,
                login_timeout=self.connect_timeout,
                keepalive_interval=self.keepalive_interval,
                keepalive_count_max=self.keepalive_count_max,
            )
        except asyncssh.HostKeyNotVerifiable:
            seen = policy.refused_key
            line, print_ = (public_key_line(seen), fingerprint(seen)) if seen else (None, None)
            if target.known_host_key is not None:
                raise HostKeyChanged(target, line, print_) from None
            raise HostKeyUnknown(target, line, print_) from None
        except asyncssh.PermissionDenied:
            raise AuthFailed(
                f"{target.username}@{target.name} refused the {target.auth_method} credential",
                target,
            ) from None
        except asyncssh.KeyExchangeFailed:
            raise Unreachable(f"key exchange with {target.name} failed", target) from None
        except TimeoutError:
            raise Unreachable(
                f"{target.name} did not answer within {self.connect_timeout:g}s", target
            ) from None
        except (OSError, asyncssh.Error) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else ""
            reason = reason or (
                exc.reason if isinstance(exc, asyncssh.Error) else type(exc).__name__
            )
            raise Unreachable(f"cannot connect to {target.name}: {reason}", target) from None
        server_key = conn.get_server_host_key()
        if server_key is not None:
            pooled.host_key = public_key_line(server_key)
            pooled.host_key_fingerprint = fingerprint(server_key)
        pooled.conn = conn
        self.connects += 1
        self._all.add(pooled)
        return pooled

    def _client_key(self, target: HostTarget) -> asyncssh.SSHKey | None:
        if target.private_key is None:
            if target.password is None:
                raise AuthFailed(f"no credential for {target.name}", target)
            return None
        digest = hashlib.sha256(
            f"{target.private_key}\x00{target.passphrase or ''}".encode()
        ).hexdigest()
        key = self._keys.get(digest)
        if key is None:
            try:
                key = asyncssh.import_private_key(target.private_key, target.passphrase)
            except ValueError as exc:  # KeyImportError, KeyEncryptionError
                why = "wrong or missing passphrase, or not a private key"
                if "bcrypt" in str(exc):  # asyncssh's message names no secret
                    why = "passphrase-protected OpenSSH keys need the bcrypt package"
                raise AuthFailed(
                    f"the private key for {target.name} could not be loaded ({why})", target
                ) from None
            self._keys[digest] = key
        return key


def _pinned_key(target: HostTarget) -> asyncssh.SSHKey | None:
    if target.known_host_key is None:
        return None
    try:
        return asyncssh.import_public_key(target.known_host_key)
    except (asyncssh.KeyImportError, ValueError):
        raise ExecutionError(
            f"the pinned host key of {target.name} is not an OpenSSH public key", target
        ) from None


def _host_key_algs(pinned: asyncssh.SSHKey | None) -> list[str]:
    """The pinned key's algorithms first, so a host holding several keys presents that one;
    then every other plain key type, so a host that lost it presents another (refused as a
    changed key, with the key in the error) instead of failing the key exchange."""
    algs = list(pinned.sig_algorithms) if pinned else []
    algs += [a for a in get_default_public_key_algs() if a not in algs]
    return [a.decode("ascii") for a in algs]


def _auth_methods(key: bool, password: bool) -> list[str]:
    return (["publickey"] if key else []) + (
        ["password", "keyboard-interactive"] if password else []
    )


def _same_key(line: str, other: str | None) -> bool:
    return other is not None and line.split()[:2] == other.split()[:2]
