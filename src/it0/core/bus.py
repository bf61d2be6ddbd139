"""Event bus: in-process (default) or Redis Streams, both at-least-once.

Handlers must be idempotent: a message can be delivered more than once (a failed
handler, a consumer that died before acking, a claim racing a slow handler).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import secrets
import socket
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

logger = logging.getLogger(__name__)

__all__ = ["EventBus", "Handler", "InProcessBus", "Message", "RedisStreamsBus", "create_bus"]


@dataclass(frozen=True)
class Message:
    id: str  # stream entry id (Redis) or a monotonic id (in-process)
    topic: str
    payload: dict[str, Any]  # JSON-serialisable
    attempts: int  # 1 on first delivery, +1 on each redelivery


Handler = Callable[[Message], Awaitable[None]]


@dataclass(eq=False)
class _Subscription:
    topic: str
    group: str
    handler: Handler
    consumer: str
    busy: bool = False  # inside a handler: close() lets it finish (bounded by drain_timeout)
    task: asyncio.Task[None] | None = None


def _default_consumer() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"


def _dead_letter(message: Message, group: str) -> None:
    logger.error(
        "dead letter: topic=%s group=%s id=%s attempts=%d payload=%s",
        message.topic,
        group,
        message.id,
        message.attempts,
        json.dumps(message.payload),
    )


def _log_crash(task: asyncio.Task[None]) -> None:
    # Loops only end by cancellation; anything else is a bug that must not pass silently.
    if not task.cancelled() and (exc := task.exception()) is not None:
        logger.error("event bus loop %s crashed", task.get_name(), exc_info=exc)


class EventBus(ABC):
    """Named consumer groups: every group gets every message; a group's consumers share it."""

    def __init__(self, *, max_attempts: int, drain_timeout: float) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        self._max_attempts = max_attempts
        self._drain_timeout = drain_timeout
        self._subs: list[_Subscription] = []
        self._started = False
        self._closed = False

    @abstractmethod
    async def publish(self, topic: str, payload: dict[str, Any]) -> str:
        """Publish a JSON-serialisable payload; returns the message id."""

    @abstractmethod
    async def ack(self, message: Message, group: str) -> None:
        """Acknowledge explicitly (handlers that return normally are acked for them)."""

    @abstractmethod
    async def lag(self) -> dict[tuple[str, str], int]:
        """(topic, group) -> messages not yet acked (pending + not yet delivered)."""

    @abstractmethod
    async def ping(self) -> None:
        """Raise if the backend is unreachable."""

    @abstractmethod
    async def _consume(self, sub: _Subscription) -> None: ...

    async def _close_backend(self) -> None:
        return None

    def _on_subscribe(self, sub: _Subscription) -> None:
        return None

    def subscribe(
        self, topic: str, group: str, handler: Handler, *, consumer: str | None = None
    ) -> None:
        """Register a handler; after start() its consumer loop starts at once."""
        self._check_open()
        sub = _Subscription(topic, group, handler, consumer or _default_consumer())
        self._subs.append(sub)
        self._on_subscribe(sub)
        if self._started:
            self._launch(sub)

    async def start(self) -> None:
        """Start a consumer loop per subscription."""
        self._check_open()
        if not self._started:
            self._started = True
            for sub in self._subs:
                self._launch(sub)

    async def close(self) -> None:
        """Stop the loops (handlers in progress get drain_timeout to finish), then disconnect."""
        if self._closed:
            return
        self._closed = True
        tasks = [s.task for s in self._subs if s.task is not None and not s.task.done()]
        for sub in self._subs:
            if sub.task is not None and not sub.busy:
                sub.task.cancel()  # idle (waiting for messages): nothing to drain
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=self._drain_timeout)
            for task in late:
                # Left un-acked: redelivered later (Redis) or lost with the process (in-process).
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        await self._close_backend()

    def _launch(self, sub: _Subscription) -> None:
        sub.task = asyncio.create_task(self._consume(sub), name=f"bus:{sub.topic}:{sub.group}")
        sub.task.add_done_callback(_log_crash)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("event bus is closed")

    async def _handle(self, sub: _Subscription, message: Message) -> bool:
        """Run the handler; True when it returned normally."""
        try:
            await sub.handler(message)
        except Exception:
            logger.warning(
                "handler failed: topic=%s group=%s id=%s attempt=%d",
                message.topic,
                sub.group,
                message.id,
                message.attempts,
                exc_info=True,
            )
            return False
        return True


@dataclass(eq=False)
class _Group:
    queue: asyncio.Queue[Message] = field(default_factory=asyncio.Queue)
    in_flight: dict[str, Message] = field(default_factory=dict)
    retries: dict[str, asyncio.TimerHandle] = field(default_factory=dict)


class InProcessBus(EventBus):
    """asyncio queues, one per (topic, group); nothing survives the process.

    Messages published to a topic that has no subscribed group yet are not retained.
    """

    def __init__(
        self, *, retry_delay: float = 1.0, max_attempts: int = 10, drain_timeout: float = 5.0
    ) -> None:
        super().__init__(max_attempts=max_attempts, drain_timeout=drain_timeout)
        self._retry_delay = retry_delay
        self._groups: dict[tuple[str, str], _Group] = {}
        self._ids = itertools.count(1)

    def _on_subscribe(self, sub: _Subscription) -> None:
        self._groups.setdefault((sub.topic, sub.group), _Group())

    async def publish(self, topic: str, payload: dict[str, Any]) -> str:
        self._check_open()
        data = json.dumps(payload)  # same contract as Redis: JSON only, no shared objects
        message_id = str(next(self._ids))
        for (group_topic, _), state in self._groups.items():
            if group_topic == topic:
                state.queue.put_nowait(Message(message_id, topic, json.loads(data), 1))
        return message_id

    async def ack(self, message: Message, group: str) -> None:
        state = self._groups.get((message.topic, group))
        if state is not None:
            state.in_flight.pop(message.id, None)
            retry = state.retries.pop(message.id, None)
            if retry is not None:
                retry.cancel()

    async def lag(self) -> dict[tuple[str, str], int]:
        return {
            key: s.queue.qsize() + len(s.in_flight) + len(s.retries)
            for key, s in self._groups.items()
        }

    async def ping(self) -> None:
        return None

    async def _consume(self, sub: _Subscription) -> None:
        state = self._groups[(sub.topic, sub.group)]
        while not self._closed:
            message = await state.queue.get()
            sub.busy = True
            try:
                await self._deliver(sub, state, message)
            finally:
                sub.busy = False

    async def _deliver(self, sub: _Subscription, state: _Group, message: Message) -> None:
        state.in_flight[message.id] = message
        ok = await self._handle(sub, message)
        if state.in_flight.pop(message.id, None) is None or ok:
            return  # acked by the handler itself, or done
        if message.attempts >= self._max_attempts:
            _dead_letter(message, sub.group)
            return
        retry = replace(message, attempts=message.attempts + 1)
        state.retries[message.id] = asyncio.get_running_loop().call_later(
            self._retry_delay, self._requeue, state, retry
        )

    @staticmethod
    def _requeue(state: _Group, message: Message) -> None:
        if state.retries.pop(message.id, None) is not None:
            state.queue.put_nowait(message)

    async def _close_backend(self) -> None:
        for state in self._groups.values():
            for handle in state.retries.values():
                handle.cancel()
            state.retries.clear()


class RedisStreamsBus(EventBus):
    """One stream per topic (``{prefix}{topic}``), Redis consumer groups, XAUTOCLAIM recovery.

    A failed handler leaves its entry pending; it is claimed again (by any consumer of the
    group) once idle for claim_idle seconds. claim_idle must exceed the time a consumer
    needs to handle one batch of ``count`` entries, or slow batches get handled twice.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "it0:events:",
        maxlen: int = 100_000,
        block_ms: int = 1000,
        count: int = 10,
        claim_idle: float = 30.0,
        claim_interval: float = 5.0,
        max_attempts: int = 10,
        drain_timeout: float = 5.0,
    ) -> None:
        super().__init__(max_attempts=max_attempts, drain_timeout=drain_timeout)
        self._redis: Redis = Redis.from_url(url, decode_responses=True)
        self._prefix = prefix
        self._maxlen = maxlen
        self._block_ms = block_ms
        self._count = count
        self._claim_idle_ms = int(claim_idle * 1000)
        self._claim_interval = claim_interval

    def _key(self, topic: str) -> str:
        return f"{self._prefix}{topic}"

    async def publish(self, topic: str, payload: dict[str, Any]) -> str:
        self._check_open()
        data = json.dumps(payload)
        entry_id = await self._redis.xadd(
            self._key(topic), {"data": data}, maxlen=self._maxlen, approximate=True
        )
        return entry_id if isinstance(entry_id, str) else entry_id.decode()

    async def ack(self, message: Message, group: str) -> None:
        await self._redis.xack(self._key(message.topic), group, message.id)

    async def ping(self) -> None:
        await self._redis.ping()

    async def lag(self) -> dict[tuple[str, str], int]:
        result: dict[tuple[str, str], int] = {}
        for topic, group in dict.fromkeys((s.topic, s.group) for s in self._subs):
            key = self._key(topic)
            info: dict[str, Any] | None = None
            if await self._redis.exists(key):
                groups = await self._redis.xinfo_groups(key)
                info = next((g for g in groups if g["name"] == group), None)
            if info is None:
                # Group not created yet: it will start at id 0, so everything is undelivered.
                result[(topic, group)] = int(await self._redis.xlen(key))
                continue
            undelivered = info.get("lag")
            if undelivered is None:
                # Redis cannot count after XDEL/trimming; estimate (upper bound) cheaply.
                stream = await self._redis.xinfo_stream(key)
                undelivered = stream["length"]
                added, read = stream.get("entries-added"), info.get("entries-read")
                if added is not None and read is not None:
                    undelivered = min(undelivered, added - read)
            result[(topic, group)] = int(info["pending"]) + max(0, int(undelivered))
        return result

    async def _close_backend(self) -> None:
        await self._redis.aclose()

    async def _ensure_group(self, key: str, group: str) -> None:
        try:
            await self._redis.xgroup_create(key, group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _consume(self, sub: _Subscription) -> None:
        key = self._key(sub.topic)
        loop = asyncio.get_running_loop()
        group_ready = False
        next_claim = 0.0
        failures = 0
        while not self._closed:
            try:
                if not group_ready:
                    await self._ensure_group(key, sub.group)
                    group_ready = True
                if loop.time() >= next_claim:
                    await self._claim(sub, key)
                    next_claim = loop.time() + self._claim_interval
                # RESP2 shape (the protocol we connect with): [[stream, [(id, fields)]]].
                response: Any = await self._redis.xreadgroup(
                    sub.group, sub.consumer, {key: ">"}, count=self._count, block=self._block_ms
                )
                for _stream, entries in response or []:
                    # Entries read with ">" are first deliveries.
                    await self._process(sub, entries, {entry_id: 1 for entry_id, _ in entries})
                failures = 0
            except Exception as exc:  # the loop must outlive any backend hiccup
                if isinstance(exc, ResponseError) and "NOGROUP" in str(exc):
                    group_ready = False  # stream or group deleted under us: recreate
                failures += 1
                delay = min(5.0, 0.05 * 2**failures)
                logger.warning("event bus %s/%s: %s; retry in %.2fs", key, sub.group, exc, delay)
                await asyncio.sleep(delay)

    async def _claim(self, sub: _Subscription, key: str) -> None:
        """Take over entries left pending too long (dead consumer, failed handler)."""
        start = "0-0"
        for _ in range(10):  # bounded sweep; the rest waits for the next interval
            reply = await self._redis.xautoclaim(
                key, sub.group, sub.consumer, self._claim_idle_ms, start_id=start, count=self._count
            )
            start, claimed = reply[0], reply[1]
            deleted = reply[2] if len(reply) > 2 else []
            if deleted:
                # Redis 7 already dropped them from the PEL; acking keeps older servers clean.
                await self._redis.xack(key, sub.group, *deleted)
            if claimed:
                await self._process(sub, claimed, await self._delivery_counts(sub, key, claimed))
            if start == "0-0" or self._closed:
                return

    async def _delivery_counts(
        self, sub: _Subscription, key: str, entries: list[tuple[str, Any]]
    ) -> dict[str, int]:
        """Delivery counter of each entry still pending for this consumer (one round trip)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for entry_id, _ in entries:
                pipe.xpending_range(key, sub.group, entry_id, entry_id, 1, sub.consumer)
            rows: list[list[dict[str, Any]]] = await pipe.execute()
        return {r[0]["message_id"]: int(r[0]["times_delivered"]) for r in rows if r}

    async def _process(
        self, sub: _Subscription, entries: list[tuple[str, Any]], attempts: dict[str, int]
    ) -> None:
        key = self._key(sub.topic)
        sub.busy = True
        try:
            for entry_id, fields in entries:
                if entry_id not in attempts:
                    continue  # acked or claimed by another consumer meanwhile: not ours
                try:
                    payload = json.loads(fields["data"])
                    if not isinstance(payload, dict):
                        raise TypeError("payload is not a JSON object")
                except (KeyError, TypeError, ValueError) as exc:
                    logger.error("dead letter: undecodable entry %s %s: %r", key, entry_id, exc)
                    await self._redis.xack(key, sub.group, entry_id)
                    continue
                message = Message(entry_id, sub.topic, payload, attempts[entry_id])
                if message.attempts > self._max_attempts:
                    ok = False  # kept crashing its consumers: do not run it again
                else:
                    ok = await self._handle(sub, message)
                if ok:
                    await self.ack(message, sub.group)
                elif message.attempts >= self._max_attempts:
                    _dead_letter(message, sub.group)
                    await self.ack(message, sub.group)
        finally:
            sub.busy = False


def create_bus(redis_url: str | None, **kwargs: Any) -> EventBus:
    """Redis Streams bus when a URL is configured, else in-process; kwargs go to the class."""
    if redis_url:
        return RedisStreamsBus(redis_url, **kwargs)
    return InProcessBus(**kwargs)
