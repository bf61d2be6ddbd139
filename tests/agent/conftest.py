"""Agent fixtures: the oversight tenant (admin, alice, bob on real sshd hosts) and the agent's
conversations on a model of the test's choosing (the suite-wide network guard keeps every
model endpoint but the local fakes out of reach)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from it0.agent.conversation import Conversations
from it0.platform import Platform
from tests.auth.helpers import API
from tests.ops.conftest import Ops, client_keys, fleet, ops, sshd, sshd_hosts, worker

__all__ = ["client_keys", "fleet", "ops", "sshd", "sshd_hosts", "worker"]

SESSIONS = f"{API}/agent/sessions"


@dataclasses.dataclass
class Agent:
    """The conversations of the test app, and helpers to talk to them as a person."""

    ops: Ops
    conversations: Conversations

    async def session(self, headers: dict[str, str], title: str | None = None) -> str:
        body = {"title": title} if title else None
        response = await self.ops.client.post(SESSIONS, json=body, headers=headers)
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    async def ask(
        self, session_id: str, content: str, headers: dict[str, str]
    ) -> list[tuple[str, Any]]:
        """Post a message; the SSE events of the turn as (type, data)."""
        response = await self.ops.client.post(
            f"{SESSIONS}/{session_id}/messages", json={"content": content}, headers=headers
        )
        assert response.status_code == 200, response.text
        return parse_sse(response.text)

    async def detail(self, session_id: str, headers: dict[str, str]) -> dict[str, Any]:
        response = await self.ops.client.get(f"{SESSIONS}/{session_id}", headers=headers)
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    async def settled(
        self, session_id: str, headers: dict[str, str], turns_done: int, limit: float = 30
    ) -> dict[str, Any]:
        """The session once idle with ``turns_done`` ``done`` events (resumes included)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        while True:
            detail = await self.detail(session_id, headers)
            done = [e for e in detail["events"] if e["type"] == "done"]
            if detail["status"] == "idle" and len(done) >= turns_done:
                return detail
            assert loop.time() < deadline, f"session still {detail['status']}: {detail}"
            await asyncio.sleep(0.05)


def parse_sse(text: str) -> list[tuple[str, Any]]:
    events: list[tuple[str, Any]] = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        kind, data = "message", []
        for line in block.split("\n"):
            if line.startswith("event:"):
                kind = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
        if data:
            events.append((kind, json.loads("\n".join(data))))
    return events


def configure(
    client: httpx.AsyncClient, platform: Platform, subscribe: bool = True, **settings: Any
) -> Conversations:
    """Give the app's agent these settings (e.g. a model on a fake server) and resume it
    from the bus, as the worker role does."""
    if "agent_api_key" in settings:
        settings["agent_api_key"] = SecretStr(settings["agent_api_key"])
    changed = dataclasses.replace(platform, settings=platform.settings.model_copy(update=settings))
    conversations = Conversations(changed)
    if subscribe:
        conversations.subscribe()
    app = client._transport.app  # type: ignore[attr-defined]
    app.state.conversations = conversations
    return conversations


@pytest.fixture
async def agent(ops: Ops) -> AsyncIterator[Agent]:
    """The offline agent (no model configured), resuming from the bus."""
    conversations = configure(ops.client, ops.platform)
    yield Agent(ops, conversations)
    await conversations.close()
