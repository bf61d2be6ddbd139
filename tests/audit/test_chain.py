"""Appending to the chain: sequence, links, hashes, redaction, per-tenant chains, concurrency."""

from __future__ import annotations

import asyncio
import json

import httpx

from it0.audit import Actor, AuditContext, redact
from it0.audit.chain import GENESIS, REDACTED, canonical_json, event_fields, event_hash
from it0.audit.models import AuditEvent
from it0.auth.service import create_tenant
from it0.platform import Platform
from tests.audit.conftest import CHECKPOINT_EVERY
from tests.audit.helpers import (
    SCHEMA,
    TENANT,
    TESTER,
    all_checkpoints,
    all_events,
    append,
    verify,
)


def assert_chain(events: list[AuditEvent]) -> None:
    """Gap-free from 1, each event linked to the one before and its hash recomputable."""
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    prev = GENESIS
    for event in events:
        assert event.prev_hash == prev, event.seq
        assert event.hash == event_hash(event.prev_hash, event), event.seq
        prev = event.hash


async def test_append_numbers_links_and_hashes(platform: Platform) -> None:
    before = await all_events(platform)  # bootstrap (and, embedded, the localhost server)
    localhost = ["server.create"] if platform.db.is_sqlite else []
    assert [e.action for e in before] == ["tenant.create", "user.add", *localhost]
    written = await append(platform, 5, action="thing.poke")
    assert [e.seq for e in written] == list(range(len(before) + 1, len(before) + 6))

    events = await all_events(platform)
    assert_chain(events)
    assert len(events) == len(before) + 5
    # the stored row is what was hashed, byte for byte (also after the database round trip)
    for stored, returned in zip(events[len(before) :], written, strict=True):
        assert stored.hash == returned.hash
        assert event_fields(stored) == event_fields(returned)
        assert stored.action == "thing.poke"
        assert (stored.actor_type, stored.actor_id, stored.actor_name) == (
            "user",
            "u-tester",
            "tester",
        )
        assert (stored.request_id, stored.client_addr) == ("req-tester", "10.0.0.1")
        assert stored.occurred_at.tzinfo is not None
    result = await verify(platform)
    assert result.ok, result.problem
    assert result.events == len(events)


async def test_hash_covers_every_field(platform: Platform) -> None:
    [event] = await append(platform)
    for name, value in event_fields(event).items():
        if name == "occurred_at":
            continue
        changed = AuditEvent(**{**vars_of(event), name: _other(value)})
        assert event_hash(event.prev_hash, changed) != event.hash, name
    assert event_hash(GENESIS, event) != event.hash  # the link is part of the hash


def vars_of(event: AuditEvent) -> dict[str, object]:
    return {c: getattr(event, c) for c in AuditEvent.__table__.columns.keys()}  # noqa: SIM118


def _other(value: object) -> object:
    if isinstance(value, int):
        return value + 1
    if value is None:
        return "x"
    return f"{value}x"


async def test_secrets_in_summaries_are_redacted(platform: Platform) -> None:
    secret_values = ["hunter2", "k-123", "tok-456", "s3cr3t", "pw-nested", "tok-list", "ak-dash"]
    summary = {
        "username": "alice",
        "password": "hunter2",
        "api_key": "k-123",
        "token": "tok-456",
        "client_secret": "s3cr3t",
        "nested": {"NewPassword": "pw-nested", "role": "viewer"},
        "items": [{"refresh_token": "tok-list"}, {"name": "kept"}],
        "X-Api-Key": "ak-dash",
    }
    async with platform.db.session(SCHEMA, write=True) as session:
        await platform.audit.record(session, TENANT, TESTER, "user.add", "user", "u1", summary)
    event = (await all_events(platform))[-1]
    assert json.loads(event.summary) == {
        "username": "alice",
        "password": REDACTED,
        "api_key": REDACTED,
        "token": REDACTED,
        "client_secret": REDACTED,
        "nested": {"NewPassword": REDACTED, "role": "viewer"},
        "items": [{"refresh_token": REDACTED}, {"name": "kept"}],
        "X-Api-Key": REDACTED,
    }
    for value in secret_values:
        assert value not in event.summary
    assert event.summary == canonical_json(json.loads(event.summary))  # stored canonically


def test_redact_leaves_plain_values() -> None:
    value = {"a": [1, {"b": None}], "name": "n", "role": ("viewer", {"owner": "x"})}
    assert redact(value) == {"a": [1, {"b": None}], "name": "n", "role": ["viewer", {"owner": "x"}]}
    assert redact({"Authorization": "Bearer abc"}) == {"Authorization": REDACTED}


async def test_api_call_records_actor_request_and_client(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    me = (await client.get("/api/v1/auth/me", headers=admin)).json()
    request_id = "req-0123456789abcdef"
    response = await client.post(
        "/api/v1/roles",
        json={"name": "auditor", "description": "reads audit", "permissions": ["audit:read"]},
        headers={**admin, "X-Request-ID": request_id},
    )
    assert response.status_code == 201, response.text
    assert response.headers["x-request-id"] == request_id

    page = (await client.get("/api/v1/audit/events", headers=admin)).json()
    newest = page["items"][0]
    assert newest["action"] == "role.create"
    assert newest["resource_type"] == "role"
    assert newest["actor_type"] == "user"
    assert newest["actor_id"] == me["user_id"]
    assert newest["actor_name"] == "admin"
    assert newest["request_id"] == request_id
    assert newest["client_addr"] == "127.0.0.1"
    assert newest["summary"] == {"name": "auditor", "permissions": ["audit:read"]}
    # the login before it was recorded too, under the same user
    logins = [e for e in page["items"] if e["action"] == "auth.login"]
    assert logins
    assert logins[0]["actor_id"] == me["user_id"]


async def test_each_tenant_has_its_own_chain(platform: Platform) -> None:
    await create_tenant(platform, "acme", "Acme", AuditContext(Actor.system("test")))
    acme = ("acme", "t_acme")
    await append(platform, 3, tenant=acme)
    await append(platform, 2)

    acme_events = await all_events(platform, "t_acme")
    assert [e.action for e in acme_events] == ["tenant.create"] + ["test.event"] * 3
    assert acme_events[0].prev_hash == GENESIS
    assert_chain(acme_events)
    assert_chain(await all_events(platform))
    assert (await verify(platform, slug="acme", schema="t_acme")).ok
    assert (await verify(platform)).ok


async def test_concurrent_appends_form_one_gap_free_chain(platform: Platform) -> None:
    before = len(await all_events(platform))

    async def one(i: int) -> int:
        ctx = AuditContext(Actor(type="agent", id=f"a{i}", name=f"agent {i}"))
        async with platform.db.session(SCHEMA, write=True) as session:
            event = await platform.audit.record(session, TENANT, ctx, "task.run", "task", i)
            return event.seq

    seqs = await asyncio.gather(*(one(i) for i in range(20)))
    assert sorted(seqs) == list(range(before + 1, before + 21))
    events = await all_events(platform)
    assert len(events) == before + 20
    assert_chain(events)
    assert sorted(e.resource_id or "" for e in events[before:]) == sorted(str(i) for i in range(20))
    result = await verify(platform)
    assert result.ok, result.problem
    assert result.events == before + 20


async def test_concurrent_appends_cross_checkpoints(small_platform: Platform) -> None:
    """Checkpoints written by racing appends still sit on the chain and link to each other."""
    p = small_platform

    async def one(i: int) -> None:
        async with p.db.session(SCHEMA, write=True) as session:
            await p.audit.record(session, TENANT, TESTER, "task.run", "task", i)

    await asyncio.gather(*(one(i) for i in range(18)))
    events = await all_events(p)
    assert_chain(events)
    total = len(events)
    checkpoints = await all_checkpoints(p)
    expected = list(range(CHECKPOINT_EVERY, total + 1, CHECKPOINT_EVERY))
    assert [cp.seq for cp in checkpoints] == expected
    by_seq = {e.seq: e.hash for e in events}
    assert all(cp.head_hash == by_seq[cp.seq] for cp in checkpoints)
    result = await verify(p)
    assert result.ok, result.problem
    assert result.checkpoints == len(expected)
