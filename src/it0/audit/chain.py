"""The per-tenant hash chain: append, signed checkpoints, verification.

hash(n) = SHA-256(hash(n-1) || canonical JSON of event n), with hash(0) = 64 zeros. A chain
alone cannot reveal that its newest rows were cut off, so every ``checkpoint_every``
events (and at shutdown) a checkpoint {tenant, seq, head hash, time, previous signature}
is signed with the platform's Ed25519 audit key; exported checkpoints kept elsewhere let
``verify`` detect a truncated tail.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import AsyncGenerator, Iterable
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from it0.audit.models import AuditCheckpoint, AuditEvent
from it0.core.clock import utcnow, uuid7
from it0.core.db import advisory_key
from it0.core.security import public_key_b64, public_key_id

GENESIS = "0" * 64
HEADS = "it0_audit_heads"  # session.info key: chain heads seen in the current transaction
ActorType = Literal["user", "api_key", "system", "agent", "anonymous"]

_SECRET_FIELD = re.compile(
    r"pass(word|phrase)?|secret|token|private|credential|authorization|api[-_]?key", re.I
)
REDACTED = "[redacted]"


@dataclass(frozen=True)
class Actor:
    type: ActorType
    id: str | None
    name: str
    on_behalf_of: str | None = None

    @classmethod
    def system(cls, name: str = "system") -> Actor:
        return cls(type="system", id=None, name=name)


@dataclass(frozen=True)
class AuditContext:
    """Who acts, and from where; carried by every state change."""

    actor: Actor
    request_id: str | None = None
    client_addr: str | None = None


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def redact(value: Any) -> Any:
    """Replace the value of every field whose name looks like it holds a secret."""
    if isinstance(value, dict):
        return {
            k: REDACTED if _SECRET_FIELD.search(str(k)) else redact(v) for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value


def event_fields(event: Any) -> dict[str, Any]:
    """The hashed fields of an event (an ``AuditEvent`` or a row of its table)."""
    return {
        "seq": event.seq,
        "id": str(event.id),
        "occurred_at": event.occurred_at.isoformat(),
        "actor_type": event.actor_type,
        "actor_id": event.actor_id,
        "actor_name": event.actor_name,
        "on_behalf_of": event.on_behalf_of,
        "action": event.action,
        "resource_type": event.resource_type,
        "resource_id": event.resource_id,
        "request_id": event.request_id,
        "client_addr": event.client_addr,
        "summary": event.summary,
    }


def event_hash(prev_hash: str, event: Any) -> str:
    return hashlib.sha256((prev_hash + canonical_json(event_fields(event))).encode()).hexdigest()


def checkpoint_payload(tenant: str, cp: AuditCheckpoint) -> bytes:
    return canonical_json(
        {
            "tenant": tenant,
            "seq": cp.seq,
            "head_hash": cp.head_hash,
            "time": cp.created_at.isoformat(),
            "prev_signature": cp.prev_signature,
        }
    ).encode()


@dataclass
class VerifyResult:
    tenant: str
    events: int = 0
    checkpoints: int = 0
    first_bad_seq: int | None = None
    problem: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.first_bad_seq is None

    def fail(self, seq: int, problem: str) -> None:
        if self.first_bad_seq is None or seq < self.first_bad_seq:
            self.first_bad_seq, self.problem = seq, problem


# built once: the head is read by every transaction that audits
_HEAD = select(AuditEvent.seq, AuditEvent.hash).order_by(AuditEvent.seq.desc()).limit(1)


class AuditTrail:
    """Writes and verifies the audit chains of all tenants."""

    def __init__(self, key: Ed25519PrivateKey, *, checkpoint_every: int = 1000) -> None:
        self._key = key
        self.public_key = key.public_key()
        self.key_id = public_key_id(self.public_key)
        self.checkpoint_every = checkpoint_every

    async def _lock(self, session: AsyncSession, tenant_schema: str) -> None:
        # one writer per tenant chain: an advisory lock on PostgreSQL; on SQLite the write
        # session already holds the database's write lock (BEGIN IMMEDIATE)
        if session.get_bind().dialect.name == "postgresql":
            await session.execute(
                text("SELECT pg_advisory_xact_lock(:k)"),
                {"k": advisory_key(f"audit:{tenant_schema}")},
            )

    async def record(
        self,
        session: AsyncSession,
        tenant: tuple[str, str],
        ctx: AuditContext,
        action: str,
        resource_type: str,
        resource_id: object | None = None,
        summary: dict[str, Any] | None = None,
    ) -> AuditEvent:
        """Append one event in the caller's transaction; ``tenant`` is (slug, schema)."""
        slug, schema = tenant
        # the head is read once per transaction; the lock taken then holds until it ends
        heads: dict[str, tuple[int, str]] = session.info.setdefault(HEADS, {})
        head = heads.get(schema)
        if head is None:
            await self._lock(session, schema)
            row = (await session.execute(_HEAD)).first()
            head = (row[0], row[1]) if row else (0, GENESIS)
        seq, prev_hash = head[0] + 1, head[1]
        event = AuditEvent(
            seq=seq,
            id=uuid7(),
            occurred_at=utcnow(),
            actor_type=ctx.actor.type,
            actor_id=ctx.actor.id,
            actor_name=ctx.actor.name,
            on_behalf_of=ctx.actor.on_behalf_of,
            action=action,
            resource_type=resource_type,
            resource_id=None if resource_id is None else str(resource_id),
            request_id=ctx.request_id,
            client_addr=ctx.client_addr,
            summary=canonical_json(redact(summary or {})),
            prev_hash=prev_hash,
        )
        event.hash = event_hash(prev_hash, event)
        session.add(event)
        heads[schema] = (seq, event.hash)
        if seq % self.checkpoint_every == 0:
            await session.flush()
            await self._write_checkpoint(session, slug, seq, event.hash)
        return event

    async def checkpoint(
        self, session: AsyncSession, tenant: tuple[str, str]
    ) -> AuditCheckpoint | None:
        """Sign the current head unless it is already checkpointed (used at shutdown)."""
        slug, schema = tenant
        await self._lock(session, schema)
        head = (await session.execute(_HEAD)).first()
        if head is None:
            return None
        last = await session.scalar(
            select(AuditCheckpoint.seq).order_by(AuditCheckpoint.seq.desc())
        )
        if last is not None and last >= head[0]:
            return None
        return await self._write_checkpoint(session, slug, head[0], head[1])

    async def _write_checkpoint(
        self, session: AsyncSession, slug: str, seq: int, head_hash: str
    ) -> AuditCheckpoint:
        prev = await session.scalar(
            select(AuditCheckpoint.signature).order_by(AuditCheckpoint.seq.desc()).limit(1)
        )
        cp = AuditCheckpoint(
            seq=seq,
            head_hash=head_hash,
            created_at=utcnow(),
            prev_signature=prev,
            signature="",
            key_id=self.key_id,
        )
        cp.signature = self._key.sign(checkpoint_payload(slug, cp)).hex()
        session.add(cp)
        await session.flush()
        return cp

    def export_header(self) -> dict[str, Any]:
        return {
            "type": "it0.audit.checkpoints",
            "key_id": self.key_id,
            "public_key": public_key_b64(self.public_key),
        }

    async def export_checkpoints(self, session: AsyncSession, slug: str) -> list[str]:
        """JSON Lines: a header with the public key, then every signed checkpoint in order."""
        lines = [canonical_json(self.export_header())]
        for cp in (
            await session.scalars(select(AuditCheckpoint).order_by(AuditCheckpoint.seq))
        ).all():
            lines.append(
                canonical_json(
                    {
                        "tenant": slug,
                        "seq": cp.seq,
                        "head_hash": cp.head_hash,
                        "time": cp.created_at.isoformat(),
                        "prev_signature": cp.prev_signature,
                        "signature": cp.signature,
                        "key_id": cp.key_id,
                    }
                )
            )
        return lines

    async def verify(
        self,
        session: AsyncSession,
        slug: str,
        exported: Iterable[dict[str, Any]] = (),
        exported_key: Ed25519PublicKey | None = None,
        batch: int = 5000,
    ) -> VerifyResult:
        """Recompute the chain, then check stored and exported checkpoints against it."""
        result = VerifyResult(tenant=slug)
        hashes: dict[int, str] = {}
        exported = list(exported)
        wanted = {int(cp["seq"]) for cp in exported}
        prev_hash, expected = GENESIS, 1
        async with aclosing(_events(session, batch)) as events:
            async for event in events:
                if event.seq != expected:
                    result.fail(
                        expected, f"event {expected} is missing (next present: {event.seq})"
                    )
                    break
                if event_hash(event.prev_hash, event) != event.hash:
                    # renumbered after rows were put in before it: it still links to its
                    # original predecessor, so the first bad event is the one after that
                    origin = await _seq_of_hash(session, event.prev_hash, prev_hash)
                    if origin is not None and origin < event.seq - 1:
                        result.fail(
                            origin + 1,
                            f"events {origin + 1}..{event.seq - 1} were inserted "
                            f"(event {event.seq} links to event {origin})",
                        )
                    else:
                        result.fail(
                            event.seq, f"event {event.seq} was modified (its hash does not match)"
                        )
                    break
                if event.prev_hash != prev_hash:
                    bad = max(event.seq - 1, 1)
                    result.fail(bad, f"event {bad} does not link to event {event.seq}")
                    break
                prev_hash, expected = event.hash, expected + 1
                result.events += 1
                if event.seq in wanted:
                    hashes[event.seq] = event.hash
        head = expected - 1 if result.ok else None
        stored = (
            await session.scalars(select(AuditCheckpoint).order_by(AuditCheckpoint.seq))
        ).all()
        self._check_stored(result, slug, stored, await _hashes_at(session, stored), head)
        self._check_exported(result, slug, exported, exported_key, hashes, head)
        return result

    def _check_stored(
        self,
        result: VerifyResult,
        slug: str,
        stored: Iterable[AuditCheckpoint],
        session_hashes: dict[int, str],
        head: int | None,
    ) -> None:
        prev_sig: str | None = None
        last_good = 0
        for cp in stored:
            result.checkpoints += 1
            if cp.key_id != self.key_id:
                result.warnings.append(f"checkpoint {cp.seq} is signed by another key {cp.key_id}")
            elif not _signature_ok(self.public_key, checkpoint_payload(slug, cp), cp.signature):
                result.fail(cp.seq, f"checkpoint at {cp.seq} has a bad signature")
            if cp.prev_signature != prev_sig:
                result.fail(cp.seq, f"checkpoint at {cp.seq} does not link to the one before")
            if head is not None and cp.seq > head:
                result.fail(
                    head + 1, f"events {head + 1}..{cp.seq} were cut off (checkpoint at {cp.seq})"
                )
            elif session_hashes.get(cp.seq) not in (None, cp.head_hash):
                # like exported ones: any event after the last matching checkpoint may be bad
                result.fail(
                    last_good + 1, f"events after {last_good} do not match checkpoint {cp.seq}"
                )
            else:
                last_good = cp.seq
            prev_sig = cp.signature

    def _check_exported(
        self,
        result: VerifyResult,
        slug: str,
        exported: list[dict[str, Any]],
        key: Ed25519PublicKey | None,
        hashes: dict[int, str],
        head: int | None,
    ) -> None:
        key = key or self.public_key
        last_good = 0
        for item in sorted(
            (cp for cp in exported if cp.get("tenant") == slug), key=lambda c: c["seq"]
        ):
            seq = int(item["seq"])
            cp = AuditCheckpoint(
                seq=seq,
                head_hash=item["head_hash"],
                created_at=datetime.fromisoformat(item["time"]),
                prev_signature=item.get("prev_signature"),
                signature=item["signature"],
                key_id="",
            )
            if not _signature_ok(key, checkpoint_payload(slug, cp), cp.signature):
                result.warnings.append(f"exported checkpoint {seq} has a bad signature; ignored")
                continue
            result.checkpoints += 1
            if head is not None and seq > head:
                result.fail(
                    head + 1, f"events {head + 1}..{seq} were cut off (checkpoint at {seq})"
                )
            elif seq in hashes and hashes[seq] != cp.head_hash:
                result.fail(
                    last_good + 1, f"events after {last_good} do not match checkpoint {seq}"
                )
            else:
                last_good = seq


def _signature_ok(key: Ed25519PublicKey, payload: bytes, signature_hex: str) -> bool:
    try:
        key.verify(bytes.fromhex(signature_hex), payload)
    except (InvalidSignature, ValueError):
        return False
    return True


def load_public_key(b64: str) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(base64.b64decode(b64))


async def _events(session: AsyncSession, batch: int) -> AsyncGenerator[Any]:
    """All events in sequence order as plain rows, read in keyset pages (flat memory)."""
    columns = AuditEvent.__table__.c
    after = 0
    while True:
        page = (
            await session.execute(
                select(*columns).where(columns.seq > after).order_by(columns.seq).limit(batch)
            )
        ).all()
        if not page:
            return
        for row in page:
            yield row
        after = page[-1].seq


async def _seq_of_hash(session: AsyncSession, wanted: str, running: str) -> int | None:
    """The seq of the event whose hash is ``wanted`` (looked up only when the link broke)."""
    if wanted == running:
        return None
    query = select(AuditEvent.seq).where(AuditEvent.hash == wanted).limit(1)
    return await session.scalar(query)


async def _hashes_at(session: AsyncSession, stored: Iterable[AuditCheckpoint]) -> dict[int, str]:
    seqs = [cp.seq for cp in stored]
    if not seqs:
        return {}
    rows = await session.execute(
        select(AuditEvent.seq, AuditEvent.hash).where(AuditEvent.seq.in_(seqs))
    )
    return {seq: h for seq, h in rows}
