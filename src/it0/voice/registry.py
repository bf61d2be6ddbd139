"""Where voice sessions live between connections: in this process, or in Redis for replicas.

A session outlives its WebSocket. When the connection drops it becomes ``disconnected`` with
a timestamp and can be resumed until ``session_ttl`` has passed; the cleanup loop then
removes it. Each connection takes the next ``generation``: a replica still holding an older
one sees that it was replaced and lets go.

In Redis every session is one key with a TTL, so a replica that dies leaves nothing behind:
a connected session's key lives ``heartbeat_timeout + session_ttl`` and each heartbeat
renews it; a disconnected one lives ``session_ttl``.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

from redis.asyncio import Redis
from redis.exceptions import WatchError

Status = Literal["new", "connected", "disconnected", "ended"]


@dataclass
class VoiceSession:
    id: uuid.UUID
    tenant_id: uuid.UUID
    tenant_slug: str
    user_id: uuid.UUID
    agent_session_id: uuid.UUID
    created_at: datetime
    status: Status = "new"
    generation: int = 0
    seen_at: datetime | None = None  # the connected replica's last heartbeat
    disconnected_at: datetime | None = None
    delivered_seq: int = 0  # the agent event of the last answer this call delivered

    def to_json(self) -> str:
        data: dict[str, Any] = dataclasses.asdict(self)
        return json.dumps({k: _plain(v) for k, v in data.items()})

    @classmethod
    def from_json(cls, text: str | bytes) -> VoiceSession:
        data = json.loads(text)
        for key in ("id", "tenant_id", "user_id", "agent_session_id"):
            data[key] = uuid.UUID(data[key])
        for key in ("created_at", "seen_at", "disconnected_at"):
            data[key] = datetime.fromisoformat(data[key]) if data[key] else None
        return cls(**data)

    def expired(self, now: datetime, ttl: float) -> bool:
        if self.status == "ended":
            return True
        since = self.disconnected_at if self.status == "disconnected" else None
        if self.status == "new":
            since = self.created_at
        return since is not None and now - since > timedelta(seconds=ttl)

    def alive(self, now: datetime, timeout: float) -> bool:
        """Connected, and its replica was heard of within ``timeout`` seconds."""
        return (
            self.status == "connected"
            and self.seen_at is not None
            and now - self.seen_at <= timedelta(seconds=timeout)
        )


def _plain(value: object) -> object:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return value


class Registry(Protocol):
    async def put(self, session: VoiceSession) -> None: ...

    async def get(self, session_id: uuid.UUID) -> VoiceSession | None: ...

    async def claim(self, session_id: uuid.UUID, now: datetime) -> VoiceSession | None:
        """Take the session for a new connection: its next generation, or None when it is
        gone, ended, or connected elsewhere and alive."""

    async def touch(self, session_id: uuid.UUID, generation: int, now: datetime) -> bool:
        """Renew the heartbeat of this generation; False when another one replaced it."""

    async def release(
        self, session_id: uuid.UUID, generation: int, now: datetime, delivered_seq: int
    ) -> bool:
        """Mark this generation's connection gone (``disconnected``), remembering the last
        answer it delivered; False if replaced."""

    async def end(self, session_id: uuid.UUID) -> VoiceSession | None: ...

    async def sweep(self, now: datetime) -> list[VoiceSession]:
        """Remove and return the sessions past their TTL."""

    async def close(self) -> None: ...


class MemoryRegistry:
    """The embedded default: one process holds every call."""

    def __init__(self, ttl: float, heartbeat_timeout: float) -> None:
        self.ttl, self.heartbeat_timeout = ttl, heartbeat_timeout
        self._sessions: dict[uuid.UUID, VoiceSession] = {}

    async def put(self, session: VoiceSession) -> None:
        self._sessions[session.id] = dataclasses.replace(session)

    async def get(self, session_id: uuid.UUID) -> VoiceSession | None:
        found = self._sessions.get(session_id)
        return dataclasses.replace(found) if found else None

    async def claim(self, session_id: uuid.UUID, now: datetime) -> VoiceSession | None:
        found = self._sessions.get(session_id)
        if found is None or found.expired(now, self.ttl):
            return None
        if found.alive(now, self.heartbeat_timeout):
            return None
        found.status, found.generation, found.seen_at = "connected", found.generation + 1, now
        found.disconnected_at = None
        return dataclasses.replace(found)

    async def touch(self, session_id: uuid.UUID, generation: int, now: datetime) -> bool:
        found = self._sessions.get(session_id)
        if found is None or found.generation != generation or found.status != "connected":
            return False
        found.seen_at = now
        return True

    async def release(
        self, session_id: uuid.UUID, generation: int, now: datetime, delivered_seq: int
    ) -> bool:
        found = self._sessions.get(session_id)
        if found is None or found.generation != generation or found.status != "connected":
            return False
        found.status, found.disconnected_at = "disconnected", now
        found.delivered_seq = max(found.delivered_seq, delivered_seq)
        return True

    async def end(self, session_id: uuid.UUID) -> VoiceSession | None:
        found = self._sessions.pop(session_id, None)
        if found is not None:
            found.status = "ended"
        return found

    async def sweep(self, now: datetime) -> list[VoiceSession]:
        gone = [s for s in self._sessions.values() if s.expired(now, self.ttl)]
        for session in gone:
            del self._sessions[session.id]
        return gone

    async def close(self) -> None:
        return None


class RedisRegistry:
    """Sessions as Redis keys with a TTL, shared by every ``voice`` replica."""

    prefix = "it0:voice:session:"

    def __init__(self, url: str, ttl: float, heartbeat_timeout: float) -> None:
        self.ttl, self.heartbeat_timeout = ttl, heartbeat_timeout
        self._redis: Redis = Redis.from_url(url, decode_responses=True)

    def _key(self, session_id: uuid.UUID) -> str:
        return f"{self.prefix}{session_id}"

    def _lifetime(self, session: VoiceSession) -> int:
        seconds = self.ttl if session.status != "connected" else self.ttl + self.heartbeat_timeout
        return max(1, int(seconds + 0.999))

    async def put(self, session: VoiceSession) -> None:
        await self._redis.set(self._key(session.id), session.to_json(), ex=self._lifetime(session))

    async def get(self, session_id: uuid.UUID) -> VoiceSession | None:
        text = await self._redis.get(self._key(session_id))
        return VoiceSession.from_json(text) if text else None

    async def _update(
        self, session_id: uuid.UUID, change: Any, *, delete: bool = False
    ) -> VoiceSession | None:
        """Apply ``change(session) -> bool`` atomically (WATCH/MULTI); the new value or None."""
        key = self._key(session_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    text = await pipe.get(key)
                    if not text:
                        await pipe.reset()  # type: ignore[no-untyped-call]
                        return None
                    session = VoiceSession.from_json(text)
                    if not change(session):
                        await pipe.reset()  # type: ignore[no-untyped-call]
                        return None
                    pipe.multi()  # type: ignore[no-untyped-call]
                    if delete:
                        pipe.delete(key)
                    else:
                        pipe.set(key, session.to_json(), ex=self._lifetime(session))
                    await pipe.execute()
                    return session
                except WatchError:
                    continue

    async def claim(self, session_id: uuid.UUID, now: datetime) -> VoiceSession | None:
        def change(s: VoiceSession) -> bool:
            if s.expired(now, self.ttl) or s.alive(now, self.heartbeat_timeout):
                return False
            s.status, s.generation, s.seen_at, s.disconnected_at = (
                "connected",
                s.generation + 1,
                now,
                None,
            )
            return True

        return await self._update(session_id, change)

    async def touch(self, session_id: uuid.UUID, generation: int, now: datetime) -> bool:
        def change(s: VoiceSession) -> bool:
            if s.generation != generation or s.status != "connected":
                return False
            s.seen_at = now
            return True

        return await self._update(session_id, change) is not None

    async def release(
        self, session_id: uuid.UUID, generation: int, now: datetime, delivered_seq: int
    ) -> bool:
        def change(s: VoiceSession) -> bool:
            if s.generation != generation or s.status != "connected":
                return False
            s.status, s.disconnected_at = "disconnected", now
            s.delivered_seq = max(s.delivered_seq, delivered_seq)
            return True

        return await self._update(session_id, change) is not None

    async def end(self, session_id: uuid.UUID) -> VoiceSession | None:
        def change(s: VoiceSession) -> bool:
            s.status = "ended"
            return True

        return await self._update(session_id, change, delete=True)

    async def sweep(self, now: datetime) -> list[VoiceSession]:
        """Redis expires keys itself; this catches sessions whose TTL is counted from a
        moment the key's own expiry does not know (e.g. never connected)."""
        gone: list[VoiceSession] = []
        async for key in self._redis.scan_iter(match=f"{self.prefix}*", count=500):
            session_id = uuid.UUID(key.removeprefix(self.prefix))

            def change(s: VoiceSession) -> bool:
                return s.expired(now, self.ttl)

            removed = await self._update(session_id, change, delete=True)
            if removed is not None:
                gone.append(removed)
        return gone

    async def close(self) -> None:
        await self._redis.aclose()


def create_registry(redis_url: str | None, ttl: float, heartbeat_timeout: float) -> Registry:
    if redis_url:
        return RedisRegistry(redis_url, ttl, heartbeat_timeout)
    return MemoryRegistry(ttl, heartbeat_timeout)
