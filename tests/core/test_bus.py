"""Contract tests for the event bus, run against both implementations (Redis: a real server)."""

from __future__ import annotations

import asyncio
import inspect
import logging
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from it0.core.bus import EventBus, InProcessBus, Message, RedisStreamsBus, create_bus

TOPIC = "host.changed"


async def eventually(predicate: Callable[[], bool | Awaitable[bool]], within: float = 5.0) -> None:
    """Poll until predicate() is true; fail after `within` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(0.01)


@dataclass
class BusFactory:
    """Builds buses of one backend sharing one key prefix (so they can share groups)."""

    backend: str
    redis_url: str | None
    prefix: str = field(default_factory=lambda: f"it0:test:{uuid.uuid4().hex}:")
    buses: list[EventBus] = field(default_factory=list)

    def __call__(self, redis_settings: dict[str, Any] | None = None, **overrides: Any) -> EventBus:
        """overrides go to either backend, redis_settings only to RedisStreamsBus."""
        bus: EventBus
        if self.backend == "inprocess":
            bus = InProcessBus(**({"retry_delay": 0.05, "drain_timeout": 0.5} | overrides))
        else:
            assert self.redis_url is not None
            settings: dict[str, Any] = {
                "prefix": self.prefix,
                "block_ms": 50,
                "claim_idle": 0.2,
                "claim_interval": 0.1,
                "drain_timeout": 0.5,
            }
            settings |= overrides | (redis_settings or {})
            bus = RedisStreamsBus(self.redis_url, **settings)
        self.buses.append(bus)
        return bus

    def redis(self) -> Redis:
        assert self.redis_url is not None
        return Redis.from_url(self.redis_url, decode_responses=True)

    async def cleanup(self) -> None:
        for bus in self.buses:
            await bus.close()
        if self.redis_url is not None:
            client = self.redis()
            try:
                keys = [key async for key in client.scan_iter(match=f"{self.prefix}*")]
                if keys:
                    await client.delete(*keys)
            finally:
                await client.aclose()


@pytest.fixture(params=["inprocess", "redis"])
async def make_bus(request: pytest.FixtureRequest) -> AsyncIterator[BusFactory]:
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    factory = BusFactory(request.param, url)
    yield factory
    await factory.cleanup()


@pytest.fixture
async def make_redis_bus(redis_url: str) -> AsyncIterator[BusFactory]:
    factory = BusFactory("redis", redis_url)
    yield factory
    await factory.cleanup()


@pytest.fixture
def bus(make_bus: BusFactory) -> EventBus:
    return make_bus()


async def lag_of(bus: EventBus, group: str, topic: str = TOPIC) -> int:
    return (await bus.lag())[(topic, group)]


async def lag_is(bus: EventBus, group: str, expected: int) -> bool:
    return await lag_of(bus, group) == expected


# --- contract (both implementations) ----------------------------------------------------


async def test_publish_and_consume_in_order(bus: EventBus) -> None:
    received: list[Message] = []

    async def handler(message: Message) -> None:
        received.append(message)

    bus.subscribe(TOPIC, "g", handler)
    await bus.start()
    ids = [await bus.publish(TOPIC, {"n": n, "host": "web-1"}) for n in range(20)]

    await eventually(lambda: len(received) == 20)
    assert [m.payload for m in received] == [{"n": n, "host": "web-1"} for n in range(20)]
    assert [m.id for m in received] == ids
    assert len(set(ids)) == 20
    assert {m.topic for m in received} == {TOPIC}
    assert {m.attempts for m in received} == {1}
    await eventually(lambda: lag_is(bus, "g", 0))


async def test_topics_are_separate(bus: EventBus) -> None:
    received: list[Message] = []

    async def handler(message: Message) -> None:
        received.append(message)

    bus.subscribe(TOPIC, "g", handler)
    await bus.start()
    await bus.publish("other.topic", {"n": 0})
    await bus.publish(TOPIC, {"n": 1})

    await eventually(lambda: len(received) == 1)
    await asyncio.sleep(0.1)
    assert [m.payload for m in received] == [{"n": 1}]


async def test_every_group_gets_every_message(bus: EventBus) -> None:
    seen: dict[str, list[int]] = {"audit": [], "notify": []}

    def handler_for(group: str) -> Callable[[Message], Awaitable[None]]:
        async def handler(message: Message) -> None:
            seen[group].append(message.payload["n"])

        return handler

    for group in seen:
        bus.subscribe(TOPIC, group, handler_for(group))
    await bus.start()
    for n in range(10):
        await bus.publish(TOPIC, {"n": n})

    await eventually(lambda: all(len(v) == 10 for v in seen.values()))
    assert seen == {"audit": list(range(10)), "notify": list(range(10))}

    async def all_acked() -> bool:
        return await bus.lag() == {(TOPIC, "audit"): 0, (TOPIC, "notify"): 0}

    await eventually(all_acked)


async def test_consumers_in_one_group_share_the_work(make_bus: BusFactory) -> None:
    # claim_idle well above handling time: no claim-based redelivery muddles the split.
    bus = make_bus(redis_settings={"claim_idle": 10.0})
    handled: dict[str, list[int]] = {"c1": [], "c2": []}

    def handler_for(consumer: str) -> Callable[[Message], Awaitable[None]]:
        async def handler(message: Message) -> None:
            await asyncio.sleep(0.01)  # keep this consumer busy so the other one gets work
            handled[consumer].append(message.payload["n"])

        return handler

    for consumer in handled:
        bus.subscribe(TOPIC, "workers", handler_for(consumer), consumer=consumer)
    await bus.start()
    for n in range(30):
        await bus.publish(TOPIC, {"n": n})
        await asyncio.sleep(0.004)

    await eventually(lambda: len(handled["c1"]) + len(handled["c2"]) == 30)
    assert handled["c1"], "consumer c1 got no work"
    assert handled["c2"], "consumer c2 got no work"
    assert not set(handled["c1"]) & set(handled["c2"]), "a message was handled twice"
    assert sorted(handled["c1"] + handled["c2"]) == list(range(30))
    await eventually(lambda: lag_is(bus, "workers", 0))


async def test_failed_handler_is_redelivered_then_acked(bus: EventBus) -> None:
    attempts: list[int] = []

    async def flaky(message: Message) -> None:
        attempts.append(message.attempts)
        if message.attempts < 3:
            raise RuntimeError("transient")

    bus.subscribe(TOPIC, "g", flaky)
    await bus.start()
    await bus.publish(TOPIC, {"n": 1})

    await eventually(lambda: attempts == [1, 2, 3])

    await eventually(lambda: lag_is(bus, "g", 0))
    await asyncio.sleep(0.4)  # several retry / claim periods: nothing more arrives
    assert attempts == [1, 2, 3]


async def test_dead_letter_after_max_attempts(
    make_bus: BusFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="it0.core.bus")
    bus = make_bus(max_attempts=2)
    attempts: list[int] = []

    async def broken(message: Message) -> None:
        attempts.append(message.attempts)
        raise ValueError("always")

    bus.subscribe(TOPIC, "g", broken)
    await bus.start()
    await bus.publish(TOPIC, {"n": 1})

    await eventually(lambda: any("dead letter" in r.getMessage() for r in caplog.records))
    dead = [r for r in caplog.records if "dead letter" in r.getMessage()]
    assert [r.levelno for r in dead] == [logging.ERROR]
    assert '"n": 1' in dead[0].getMessage()
    await eventually(lambda: lag_is(bus, "g", 0))
    await asyncio.sleep(0.4)
    assert attempts == [1, 2]


async def test_explicit_ack_prevents_redelivery(bus: EventBus) -> None:
    calls: list[Message] = []

    async def acks_then_fails(message: Message) -> None:
        calls.append(message)
        await bus.ack(message, "g")
        raise RuntimeError("after ack: must not be redelivered")

    bus.subscribe(TOPIC, "g", acks_then_fails)
    await bus.start()
    await bus.publish(TOPIC, {"n": 1})

    await eventually(lambda: len(calls) == 1)

    await eventually(lambda: lag_is(bus, "g", 0))
    await asyncio.sleep(0.4)  # longer than retry_delay and claim_idle + claim_interval
    assert len(calls) == 1


async def test_messages_published_before_start_are_delivered(bus: EventBus) -> None:
    received: list[int] = []

    async def handler(message: Message) -> None:
        received.append(message.payload["n"])

    bus.subscribe(TOPIC, "g", handler)
    for n in range(3):
        await bus.publish(TOPIC, {"n": n})
    assert await lag_of(bus, "g") == 3
    await asyncio.sleep(0.1)
    assert received == []  # nothing runs before start()

    await bus.start()
    await eventually(lambda: received == [0, 1, 2])


async def test_subscribe_after_start(bus: EventBus) -> None:
    await bus.start()
    received: list[int] = []

    async def handler(message: Message) -> None:
        received.append(message.payload["n"])

    bus.subscribe(TOPIC, "late", handler)
    await bus.publish(TOPIC, {"n": 7})
    await eventually(lambda: received == [7])


async def test_lag_counts_pending_and_undelivered(bus: EventBus) -> None:
    release = asyncio.Event()
    started: list[int] = []

    async def slow(message: Message) -> None:
        started.append(message.payload["n"])
        await release.wait()

    bus.subscribe(TOPIC, "g", slow)
    await bus.start()
    for n in range(3):
        await bus.publish(TOPIC, {"n": n})

    await eventually(lambda: started == [0])

    await eventually(lambda: lag_is(bus, "g", 3))  # 1 in the handler + 2 waiting
    release.set()
    await eventually(lambda: started == [0, 1, 2])
    await eventually(lambda: lag_is(bus, "g", 0))


async def test_ping(bus: EventBus) -> None:
    await bus.ping()


async def test_close_lets_a_running_handler_finish(make_bus: BusFactory) -> None:
    bus = make_bus()
    entered = asyncio.Event()
    finished: list[int] = []

    async def handler(message: Message) -> None:
        entered.set()
        await asyncio.sleep(0.1)
        finished.append(message.payload["n"])

    bus.subscribe(TOPIC, "g", handler)
    await bus.start()
    await bus.publish(TOPIC, {"n": 1})
    await asyncio.wait_for(entered.wait(), 5)

    await bus.close()
    assert finished == [1]
    if make_bus.redis_url is not None:  # and the drained message was acked before disconnecting
        client = make_bus.redis()
        try:
            summary = await client.xpending(f"{make_bus.prefix}{TOPIC}", "g")
        finally:
            await client.aclose()
        assert summary["pending"] == 0


async def test_close_is_clean_and_final(bus: EventBus) -> None:
    async def handler(message: Message) -> None:
        return None

    bus.subscribe(TOPIC, "g", handler)
    await bus.start()
    await bus.publish(TOPIC, {"n": 1})
    await bus.close()
    await bus.close()  # idempotent

    tasks = [t for t in asyncio.all_tasks() if t.get_name().startswith("bus:")]
    assert tasks == []
    with pytest.raises(RuntimeError, match="closed"):
        await bus.publish(TOPIC, {"n": 2})
    with pytest.raises(RuntimeError, match="closed"):
        bus.subscribe(TOPIC, "g2", handler)


async def test_payload_must_be_json(bus: EventBus) -> None:
    with pytest.raises(TypeError):
        await bus.publish(TOPIC, {"when": object()})


# --- Redis Streams specifics ------------------------------------------------------------


async def test_redis_dead_consumer_entry_is_claimed_by_another(
    make_redis_bus: BusFactory,
) -> None:
    first = make_redis_bus(drain_timeout=0.1)
    entered = asyncio.Event()
    cancelled: list[str] = []

    async def hangs(message: Message) -> None:
        entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(message.id)
            raise

    first.subscribe(TOPIC, "g", hangs, consumer="dies")
    await first.start()
    entry_id = await first.publish(TOPIC, {"n": 1})
    await asyncio.wait_for(entered.wait(), 5)
    await first.close()  # "dies": the handler is cancelled, the entry stays un-acked
    assert cancelled == [entry_id]

    client = make_redis_bus.redis()
    try:
        pending = await client.xpending_range(
            f"{make_redis_bus.prefix}{TOPIC}", "g", min="-", max="+", count=10
        )
    finally:
        await client.aclose()
    assert [(p["message_id"], p["consumer"]) for p in pending] == [(entry_id, "dies")]

    second = make_redis_bus()
    received: list[Message] = []

    async def handler(message: Message) -> None:
        received.append(message)

    second.subscribe(TOPIC, "g", handler, consumer="survivor")
    assert await lag_of(second, "g") == 1
    await second.start()

    await eventually(lambda: len(received) == 1)
    assert received[0].id == entry_id
    assert received[0].payload == {"n": 1}
    assert received[0].attempts == 2

    await eventually(lambda: lag_is(second, "g", 0))


async def test_redis_group_sees_messages_published_before_it_existed(
    make_redis_bus: BusFactory,
) -> None:
    bus = make_redis_bus()
    await bus.publish(TOPIC, {"n": 0})
    received: list[int] = []

    async def handler(message: Message) -> None:
        received.append(message.payload["n"])

    bus.subscribe(TOPIC, "g", handler)
    await bus.start()
    await bus.publish(TOPIC, {"n": 1})
    await eventually(lambda: received == [0, 1])


async def test_redis_lag_after_deleted_entries(make_redis_bus: BusFactory) -> None:
    # XDEL makes XINFO GROUPS report lag as nil; the bus must still count.
    bus = make_redis_bus()
    received: list[int] = []

    async def handler(message: Message) -> None:
        received.append(message.payload["n"])

    bus.subscribe(TOPIC, "g", handler)
    ids = [await bus.publish(TOPIC, {"n": n}) for n in range(3)]
    key = f"{make_redis_bus.prefix}{TOPIC}"
    client = make_redis_bus.redis()
    try:
        await client.xgroup_create(key, "g", id="0")
        await client.xdel(key, ids[1])
        groups = await client.xinfo_groups(key)
    finally:
        await client.aclose()
    assert groups[0]["lag"] is None
    assert await lag_of(bus, "g") == 2

    await bus.start()
    await eventually(lambda: received == [0, 2])

    await eventually(lambda: lag_is(bus, "g", 0))


async def test_redis_undecodable_entry_is_dead_lettered(
    make_redis_bus: BusFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="it0.core.bus")
    bus = make_redis_bus()
    received: list[int] = []

    async def handler(message: Message) -> None:
        received.append(message.payload["n"])

    bus.subscribe(TOPIC, "g", handler)
    client = make_redis_bus.redis()
    try:
        await client.xadd(f"{make_redis_bus.prefix}{TOPIC}", {"data": "not json"})
        await client.xadd(f"{make_redis_bus.prefix}{TOPIC}", {"other": "field"})
    finally:
        await client.aclose()
    await bus.publish(TOPIC, {"n": 1})
    await bus.start()

    await eventually(lambda: received == [1])
    dead = [r for r in caplog.records if "dead letter" in r.getMessage()]
    assert len(dead) == 2

    await eventually(lambda: lag_is(bus, "g", 0))


async def test_redis_ping_fails_when_unreachable(make_redis_bus: BusFactory) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # a free port: nothing listens there once closed
    bus = RedisStreamsBus(f"redis://127.0.0.1:{port}/0")
    make_redis_bus.buses.append(bus)
    with pytest.raises(RedisConnectionError):
        await bus.ping()


# --- in-process specifics and factory ---------------------------------------------------


async def test_inprocess_does_not_retain_messages_without_a_group() -> None:
    bus = InProcessBus()
    received: list[int] = []

    async def handler(message: Message) -> None:
        received.append(message.payload["n"])

    try:
        await bus.publish(TOPIC, {"n": 0})  # no group yet: dropped by design
        bus.subscribe(TOPIC, "g", handler)
        await bus.start()
        await bus.publish(TOPIC, {"n": 1})
        await eventually(lambda: received == [1])
    finally:
        await bus.close()


async def test_create_bus(redis_url: str) -> None:
    in_process = create_bus(None, retry_delay=0.1)
    redis_bus = create_bus(redis_url, prefix="it0:test:unused:")
    try:
        assert isinstance(in_process, InProcessBus)
        assert isinstance(redis_bus, RedisStreamsBus)
        await redis_bus.ping()
    finally:
        await in_process.close()
        await redis_bus.close()
