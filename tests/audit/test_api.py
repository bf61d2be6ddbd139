"""GET /api/v1/audit/{events,verify,checkpoints}: filters, pages, permissions."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from it0.audit import Actor, AuditContext
from it0.audit.chain import checkpoint_payload
from it0.audit.models import AuditCheckpoint, AuditEvent
from it0.platform import Platform
from tests.audit.helpers import (
    SLUG,
    TENANT,
    all_events,
    parse_export,
    sign_head,
    verify,
)
from tests.conftest import login

ALICE = AuditContext(Actor(type="user", id="u-alice", name="alice"), "req-a", "10.0.0.2")
BOB = AuditContext(Actor(type="user", id="u-bob", name="bob"), "req-b", "10.0.0.3")
ROBOT = AuditContext(
    Actor(type="api_key", id="k-robot", name="key of bob", on_behalf_of="u-bob"), None, None
)

Query = dict[str, Any]


async def record(p: Platform, ctx: AuditContext, action: str, rtype: str, rid: str) -> None:
    async with p.db.session(TENANT[1], write=True) as session:
        await p.audit.record(session, TENANT, ctx, action, rtype, rid, {"by": ctx.actor.name})


@pytest.fixture
async def history(platform: Platform, admin: dict[str, str]) -> list[AuditEvent]:
    """A mixed history after the admin's login; returns every event, oldest first."""
    script = [
        (ALICE, "server.add", "server", "s1"),
        (BOB, "server.add", "server", "s2"),
        (ALICE, "auth.logout", "token_family", "f1"),
        (ROBOT, "task.create", "task", "t1"),
        (BOB, "server.remove", "server", "s1"),
        (ALICE, "auth_like.thing", "server", "s3"),
        (ROBOT, "task.approve", "task", "t1"),
        (BOB, "auth.login_failed", "user", "u-bob"),
        (ALICE, "server.add", "server", "s4"),
    ]
    for ctx, action, rtype, rid in script:
        await record(platform, ctx, action, rtype, rid)
    return await all_events(platform)


async def fetch_all(client: httpx.AsyncClient, headers: dict[str, str], **query: Any) -> list[int]:
    """Every seq matching ``query``, following next_cursor; checks the page shape on the way."""
    seqs: list[int] = []
    cursor: int | None = None
    pages = 0
    while True:
        params = {**query, **({"cursor": cursor} if cursor else {})}
        response = await client.get("/api/v1/audit/events", params=params, headers=headers)
        assert response.status_code == 200, response.text
        body = response.json()
        pages += 1
        assert len(body["items"]) <= int(query.get("limit", 100))
        seqs += [item["seq"] for item in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            return seqs
        assert cursor == seqs[-1]
        assert pages < 100


def expect(events: list[AuditEvent], keep: Callable[[AuditEvent], bool]) -> list[int]:
    return [e.seq for e in reversed(events) if keep(e)]  # newest first


async def test_filters(
    client: httpx.AsyncClient, admin: dict[str, str], history: list[AuditEvent]
) -> None:
    cases: list[tuple[Query, Callable[[AuditEvent], bool]]] = [
        ({}, lambda e: True),
        ({"actor": "alice"}, lambda e: e.actor_name == "alice"),
        ({"actor": "u-bob"}, lambda e: e.actor_id == "u-bob"),
        ({"actor": "k-robot"}, lambda e: e.actor_id == "k-robot"),
        ({"actor": "nobody"}, lambda e: False),
        ({"action": "server.add"}, lambda e: e.action == "server.add"),
        ({"action": "auth.*"}, lambda e: e.action.startswith("auth.")),
        ({"action": "auth*"}, lambda e: e.action.startswith("auth")),
        ({"action": "auth."}, lambda e: False),  # no '*': exact
        ({"action": "serv%"}, lambda e: False),  # LIKE wildcards are plain text
        ({"action": "auth_*"}, lambda e: e.action.startswith("auth_")),
        ({"resource_type": "task"}, lambda e: e.resource_type == "task"),
        ({"resource_id": "s1"}, lambda e: e.resource_id == "s1"),
        ({"resource_type": "server", "actor": "alice", "action": "server.*"},
         lambda e: e.resource_type == "server" and e.actor_name == "alice"
         and e.action.startswith("server.")),
    ]  # fmt: skip
    assert any(e.action == "auth.login" for e in history)  # the admin's login is in there
    for query, keep in cases:
        wanted = expect(history, keep)
        assert await fetch_all(client, admin, **query) == wanted, query
        assert await fetch_all(client, admin, limit=2, **query) == wanted, query


async def test_time_window(
    client: httpx.AsyncClient, admin: dict[str, str], history: list[AuditEvent]
) -> None:
    times = sorted({e.occurred_at for e in history})
    since, until = times[2], times[-2]
    assert since < until
    both = await fetch_all(client, admin, since=since.isoformat(), until=until.isoformat(), limit=3)
    assert both == expect(history, lambda e: since <= e.occurred_at < until)
    assert await fetch_all(client, admin, since=since.isoformat()) == expect(
        history, lambda e: e.occurred_at >= since
    )
    assert await fetch_all(client, admin, until=until.isoformat()) == expect(
        history, lambda e: e.occurred_at < until
    )
    # the same instant written in another zone selects the same events
    shifted = since.astimezone(datetime.fromisoformat("2000-01-01T00:00:00+05:30").tzinfo)
    assert await fetch_all(client, admin, since=shifted.isoformat()) == expect(
        history, lambda e: e.occurred_at >= since
    )
    later = times[-1] + timedelta(days=1)
    assert await fetch_all(client, admin, since=later.isoformat()) == []


async def test_time_without_zone_is_rejected(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    response = await client.get(
        "/api/v1/audit/events", params={"since": "2026-01-01T00:00:00"}, headers=admin
    )
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "validation_error"


async def test_pages_cover_everything_exactly_once(
    client: httpx.AsyncClient, admin: dict[str, str], history: list[AuditEvent], platform: Platform
) -> None:
    everything = [e.seq for e in reversed(history)]
    for limit in (1, 2, 3, len(history) - 1, len(history), 500):
        seqs = await fetch_all(client, admin, limit=limit)
        assert seqs == everything, limit
    # an event appended while paging shows up on no page: the cursor only moves back in time
    first = (await client.get("/api/v1/audit/events", params={"limit": 4}, headers=admin)).json()
    await record(platform, ALICE, "server.add", "server", "late")
    rest = await fetch_all(client, admin, limit=4, cursor=first["next_cursor"])
    assert [i["seq"] for i in first["items"]] + rest == everything


async def test_item_shape(
    client: httpx.AsyncClient, admin: dict[str, str], history: list[AuditEvent]
) -> None:
    body = (
        await client.get("/api/v1/audit/events", params={"actor": "k-robot"}, headers=admin)
    ).json()
    newest = history[
        -1 - next(i for i, e in enumerate(reversed(history)) if e.actor_id == "k-robot")
    ]
    item = body["items"][0]
    assert item == {
        "seq": newest.seq,
        "id": str(newest.id),
        "occurred_at": item["occurred_at"],
        "actor_type": "api_key",
        "actor_id": "k-robot",
        "actor_name": "key of bob",
        "on_behalf_of": "u-bob",
        "action": "task.approve",
        "resource_type": "task",
        "resource_id": "t1",
        "request_id": None,
        "client_addr": None,
        "summary": {"by": "key of bob"},
        "hash": newest.hash,
    }
    assert datetime.fromisoformat(item["occurred_at"]) == newest.occurred_at


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 501},
        {"cursor": 0},
        {"action": "x" * 101},
        {"since": "yesterday"},
        # NUL cannot be compared with text on PostgreSQL: refused up front, not a 500
        {"actor": "a\x00b"},
        {"action": "auth.\x00*"},
        {"resource_type": "\x00"},
        {"resource_id": "r\x00"},
    ],
)
async def test_bad_query_values(
    client: httpx.AsyncClient, admin: dict[str, str], params: Query
) -> None:
    response = await client.get("/api/v1/audit/events", params=params, headers=admin)
    assert response.status_code == 422


@pytest.fixture
async def viewer(client: httpx.AsyncClient, admin: dict[str, str]) -> dict[str, str]:
    response = await client.post(
        "/api/v1/users",
        json={"username": "victor", "password": "viewer-password-1", "role": "viewer"},
        headers=admin,
    )
    assert response.status_code == 201, response.text
    return await login(client, "victor", "viewer-password-1")


@pytest.mark.parametrize("path", ["/events", "/verify", "/checkpoints"])
async def test_audit_read_is_required(
    client: httpx.AsyncClient, viewer: dict[str, str], path: str
) -> None:
    response = await client.get(f"/api/v1/audit{path}", headers=viewer)
    assert response.status_code == 403
    assert response.json()["error"]["details"] == {"permission": "audit:read"}
    assert (await client.get(f"/api/v1/audit{path}")).status_code == 401


async def test_verify_endpoint(
    client: httpx.AsyncClient, admin: dict[str, str], platform: Platform
) -> None:
    await sign_head(platform)
    report = (await client.get("/api/v1/audit/verify", headers=admin)).json()
    count = len(await all_events(platform))
    assert report == {
        "ok": True, "events": count, "checkpoints": 1, "first_bad_seq": None, "problem": None
    }  # fmt: skip


async def test_checkpoints_endpoint(
    client: httpx.AsyncClient, admin: dict[str, str], platform: Platform
) -> None:
    first = await sign_head(platform)
    response = await client.post(
        "/api/v1/roles", json={"name": "auditor", "permissions": ["audit:read"]}, headers=admin
    )
    assert response.status_code == 201, response.text
    second = await sign_head(platform)
    assert first is not None
    assert second is not None

    response = await client.get("/api/v1/audit/checkpoints", headers=admin)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text.endswith("\n")
    lines = response.text.splitlines()
    header = json.loads(lines[0])
    assert header == {
        "type": "it0.audit.checkpoints",
        "key_id": platform.audit.key_id,
        "public_key": header["public_key"],
    }
    exported, key = parse_export(lines)
    assert [cp["seq"] for cp in exported] == [first.seq, second.seq]
    assert exported[1]["prev_signature"] == exported[0]["signature"]
    for item in exported:
        assert item["tenant"] == SLUG
        cp = AuditCheckpoint(
            seq=item["seq"], head_hash=item["head_hash"],
            created_at=datetime.fromisoformat(item["time"]),
            prev_signature=item["prev_signature"], signature=item["signature"], key_id="",
        )  # fmt: skip
        key.verify(bytes.fromhex(item["signature"]), checkpoint_payload(SLUG, cp))
    result = await verify(platform, exported, key)
    assert result.ok
    assert result.checkpoints == 4  # two stored, two exported
