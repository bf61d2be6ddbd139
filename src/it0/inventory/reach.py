"""Reaching a server: its credential and host-key policy turned into a ``HostTarget``.

Host keys are pinned per server. By default the first key a server presents is trusted
(TOFU) and pinned; a different key later is refused and kept as ``pending_host_key`` until
someone trusts it deliberately. With the tenant setting ``hostkeys.require_approved`` no
key is trusted on first use: it must be pinned first (trust, known_hosts import).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncssh
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from it0.audit import AuditContext
from it0.auth.tokens import TenantRef
from it0.core.clock import utcnow
from it0.core.errors import IT0Error
from it0.execution import HostKeyChanged, HostKeyUnknown, HostTarget, public_key_line
from it0.inventory.credentials import DecryptedCredential, open_credential
from it0.inventory.errors import InvalidHostKey, NoPendingHostKey, NotConnectable
from it0.inventory.models import Server, TenantSetting
from it0.inventory.service import Recorder
from it0.platform import Platform

REQUIRE_APPROVED = "hostkeys.require_approved"
# which of a host's keys to pin when a known_hosts file lists several
_PREFERENCE = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521")


async def target_for(
    p: Platform,
    session: AsyncSession,
    tenant: TenantRef,
    server: Server,
    *,
    purpose: str,
    ctx: AuditContext,
) -> HostTarget:
    """The target for ``server``; decrypting its credential is audited (``credential.use``)."""
    credential = None
    if server.credential_id is not None:
        credential = await open_credential(
            p, session, tenant, server.credential_id, server_id=server.id, purpose=purpose, ctx=ctx
        )
    return _target(server, credential, tofu=not await require_approved_keys(session))


async def targets_for(
    p: Platform,
    session: AsyncSession,
    tenant: TenantRef,
    servers: Sequence[Server],
    *,
    purpose: str,
    ctx: AuditContext,
) -> list[HostTarget | IT0Error]:
    """Targets for a fleet, in order; a server that cannot be reached gets its error.

    Each credential is decrypted once, and its use audited once naming every server.
    """
    tofu = not await require_approved_keys(session)
    opened: dict[uuid.UUID, DecryptedCredential | IT0Error] = {}
    for credential_id in dict.fromkeys(s.credential_id for s in servers if s.credential_id):
        users = [s for s in servers if s.credential_id == credential_id]
        try:
            opened[credential_id] = await open_credential(
                p,
                session,
                tenant,
                credential_id,
                server_id=users[0].id if len(users) == 1 else None,
                servers=[s.name for s in users],
                purpose=purpose,
                ctx=ctx,
            )
        except IT0Error as exc:  # e.g. it does not decrypt: its servers fail, not the task
            opened[credential_id] = exc
    targets: list[HostTarget | IT0Error] = []
    for server in servers:
        credential = opened.get(server.credential_id) if server.credential_id else None
        if isinstance(credential, IT0Error):
            targets.append(credential)
            continue
        try:
            targets.append(_target(server, credential, tofu=tofu))
        except IT0Error as exc:
            targets.append(exc)
    return targets


def _target(server: Server, credential: DecryptedCredential | None, *, tofu: bool) -> HostTarget:
    server_id = str(server.id)
    if server.kind == "local":
        sudo = credential.sudo_password if credential else None
        return HostTarget.local(server_id, server.name, sudo_password=sudo)
    if credential is None:
        raise NotConnectable(
            f"server {server.name} has no credential", details={"field": "credential_id"}
        )
    username = server.username or credential.username
    if username is None:
        raise NotConnectable(
            f"neither server {server.name} nor its credential names a user",
            details={"field": "username"},
        )
    return HostTarget(
        server_id=server_id,
        name=server.name,
        address=server.address,
        port=server.port,
        username=username,
        private_key=credential.private_key,
        passphrase=credential.passphrase,
        password=credential.password,
        sudo_password=credential.sudo_password,
        known_host_key=server.host_key,
        trust_on_first_use=tofu,
    )


# --- the tenant's policy --------------------------------------------------------------------


async def require_approved_keys(session: AsyncSession) -> bool:
    row = await session.get(TenantSetting, REQUIRE_APPROVED)
    return bool(row.value) if row is not None else False


async def set_require_approved_keys(audit: Recorder, value: bool) -> bool:
    """Turn trust on first use off (``True``) or on; audited when it changes."""
    session = audit.session
    row = await session.get(TenantSetting, REQUIRE_APPROVED)
    before = bool(row.value) if row is not None else False
    if before == value:
        return value  # nothing changes, nothing to audit
    if row is None:
        session.add(TenantSetting(key=REQUIRE_APPROVED, value=value))
    else:
        row.value = value
    await session.flush()
    await audit.record(
        "settings.update", "tenant_setting", REQUIRE_APPROVED, {"before": before, "after": value}
    )
    return value


# --- keys -----------------------------------------------------------------------------------


def normalize_key(text: str) -> str:
    """``"<algorithm> <base64>"`` of an OpenSSH public key line (comment dropped)."""
    try:
        return public_key_line(asyncssh.import_public_key(text.strip()))
    except (asyncssh.KeyImportError, ValueError):
        raise InvalidHostKey(
            "not an OpenSSH public key (e.g. 'ssh-ed25519 AAAA...')", details={"field": "key"}
        ) from None


def key_fingerprint(line: str | None) -> str | None:
    if line is None:
        return None
    try:
        return str(asyncssh.import_public_key(line).get_fingerprint("sha256"))
    except (asyncssh.KeyImportError, ValueError):
        return "invalid"


def same_key(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and a.split()[:2] == b.split()[:2]


async def pin_host_key(audit: Recorder, server: Server, line: str, *, source: str) -> None:
    server.host_key = line
    server.host_key_trusted_at = utcnow()
    if same_key(server.pending_host_key, line):
        server.pending_host_key = None
    await audit.session.flush()
    await audit.record(
        "server.hostkey.pinned",
        "server",
        server.id,
        {"name": server.name, "fingerprint": key_fingerprint(line), "source": source},
    )


async def record_refusal(
    audit: Recorder, server: Server, refused: HostKeyChanged | HostKeyUnknown
) -> None:
    """Keep the presented key for an admin to trust, and audit the refusal."""
    server.pending_host_key = refused.presented_key
    await audit.session.flush()
    changed = isinstance(refused, HostKeyChanged)
    await audit.record(
        "server.hostkey.changed" if changed else "server.hostkey.unknown",
        "server",
        server.id,
        {
            "name": server.name,
            "pinned_fingerprint": key_fingerprint(server.host_key),
            "presented_fingerprint": refused.fingerprint,
        },
    )


async def trust_host_key(audit: Recorder, server: Server, key: str | None = None) -> str:
    """Pin ``key``, or else the pending key; returns the new pin. Audited with both prints."""
    if key is not None:
        line = normalize_key(key)
    elif server.pending_host_key is not None:
        line = server.pending_host_key
    else:
        raise NoPendingHostKey(f"server {server.name} has no pending host key to trust")
    old = server.host_key
    server.host_key = line
    server.host_key_trusted_at = utcnow()
    server.pending_host_key = None
    await audit.session.flush()
    await audit.record(
        "server.hostkey.trusted",
        "server",
        server.id,
        {
            "name": server.name,
            "old_fingerprint": key_fingerprint(old),
            "new_fingerprint": key_fingerprint(line),
        },
    )
    return line


# --- known_hosts ----------------------------------------------------------------------------


@dataclass
class KnownHostsReport:
    pinned: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    conflicts: dict[str, str] = field(default_factory=dict)  # name -> why
    skipped_lines: int = 0

    def counts(self) -> dict[str, Any]:
        return {
            "pinned": len(self.pinned),
            "unchanged": len(self.unchanged),
            "conflicts": sorted(self.conflicts),
            "skipped_lines": self.skipped_lines,
        }


@dataclass(frozen=True)
class KnownHost:
    patterns: tuple[str, ...]
    key: str  # normalized


def parse_known_hosts(text: str) -> tuple[list[KnownHost], int]:
    """Plain and hashed entries; markers (@cert-authority, @revoked) and bad lines skipped."""
    entries: list[KnownHost] = []
    skipped = 0
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if line.startswith("@") or len(parts) < 3:
            skipped += 1
            continue
        try:
            key = public_key_line(asyncssh.import_public_key(f"{parts[1]} {parts[2]}"))
        except (asyncssh.KeyImportError, ValueError):
            skipped += 1
            continue
        entries.append(KnownHost(tuple(parts[0].split(",")), key))
    return entries, skipped


def _host_forms(server: Server) -> list[str]:
    hosts = [server.address, server.name]
    return hosts if server.port == 22 else [f"[{h}]:{server.port}" for h in hosts]


def _match_one(pattern: str, host: str) -> bool:
    if pattern.startswith("|1|"):
        try:
            _, _, salt, digest = pattern.split("|")
            mac = hmac.new(base64.b64decode(salt), host.encode(), hashlib.sha1).digest()
        except ValueError:
            return False
        return hmac.compare_digest(base64.b64encode(mac).decode(), digest)
    if "*" in pattern or "?" in pattern:
        regex = re.escape(pattern.lower()).replace(r"\*", ".*").replace(r"\?", ".")
        return re.fullmatch(regex, host.lower()) is not None
    return pattern.lower() == host.lower()


def known_host_matches(entry: KnownHost, hosts: list[str]) -> bool:
    hit = False
    for pattern in entry.patterns:
        negated = pattern.startswith("!")
        if any(_match_one(pattern.removeprefix("!"), h) for h in hosts):
            if negated:
                return False
            hit = True
    return hit


def _preferred(keys: list[str]) -> str:
    def rank(key: str) -> int:
        algorithm = key.split()[0]
        return _PREFERENCE.index(algorithm) if algorithm in _PREFERENCE else len(_PREFERENCE)

    return sorted(keys, key=rank)[0]


async def import_known_hosts(audit: Recorder, text: str, *, source: str) -> KnownHostsReport:
    """Pin keys for matching ssh servers; a different pinned key is a conflict, kept as is."""
    entries, skipped = parse_known_hosts(text)
    report = KnownHostsReport(skipped_lines=skipped)
    servers = (
        await audit.session.scalars(
            # locked before the first pin is audited (row locks before the chain's lock)
            select(Server).where(Server.kind == "ssh").order_by(Server.name).with_for_update()
        )
    ).all()
    for server in servers:
        hosts = _host_forms(server)
        keys = list(dict.fromkeys(e.key for e in entries if known_host_matches(e, hosts)))
        if not keys:
            continue
        if server.host_key is None:
            await pin_host_key(audit, server, _preferred(keys), source=f"known_hosts:{source}")
            report.pinned.append(server.name)
        elif any(same_key(server.host_key, k) for k in keys):
            report.unchanged.append(server.name)
        else:
            report.conflicts[server.name] = (
                f"pinned {key_fingerprint(server.host_key)}, file has "
                + ", ".join(str(key_fingerprint(k)) for k in keys)
            )
    await audit.record(
        "server.hostkeys.import", "inventory", None, {"source": source, **report.counts()}
    )
    return report
