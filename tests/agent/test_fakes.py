"""The fake model server drives the real Anthropic and OpenAI SDKs through pydantic-ai, and the
network guard keeps tests on this machine."""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from pydantic_ai import Agent
from pydantic_ai.exceptions import (
    ModelAPIError,
    ModelConnectionError,
    ModelHTTPError,
    ModelOverloadedError,
    ModelRateLimitError,
    ModelServerError,
    ModelTimeoutError,
)
from pydantic_ai.messages import (
    FunctionToolCallEvent,
    FunctionToolResultEvent,
    PartDeltaEvent,
    TextPartDelta,
    ToolCallPartDelta,
)
from pydantic_ai.models import Model
from pydantic_ai.models.anthropic import AnthropicModel
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.anthropic import AnthropicProvider
from pydantic_ai.providers.openai import OpenAIProvider
from pydantic_ai.run import AgentRunResultEvent
from pydantic_ai.settings import ModelSettings

from tests import netguard
from tests.agent.fakes import FakeModelServer, Reply, Seen, anthropic_env, openai_env

APIS = ["anthropic", "openai"]
INSTRUCTIONS = "You keep the fleet healthy."
PROMPT = "Is web-1 healthy? Fix it if not."


def _model(api: str, url: str) -> Model:
    if api == "anthropic":
        provider = AnthropicProvider(base_url=url, api_key="test-key")
        return AnthropicModel("claude-sonnet-4-6", provider=provider)
    return OpenAIChatModel(
        "gpt-4.1-mini", provider=OpenAIProvider(base_url=url + "/v1", api_key="test-key")
    )


def _fleet_agent(model: Model, calls: list[tuple[str, dict[str, Any]]]) -> Agent[None, str]:
    agent = Agent(model, instructions=INSTRUCTIONS)

    @agent.tool_plain
    def lookup(host: str) -> str:
        """Look a host up."""
        calls.append(("lookup", {"host": host}))
        return f"{host} is degraded"

    @agent.tool_plain
    def restart(service: str, force: bool) -> str:
        """Restart a service."""
        calls.append(("restart", {"service": service, "force": force}))
        return f"{service} restarted (force={force})"

    return agent


SCRIPT = [
    Reply(tool_calls=[("lookup", {"host": "web-1"})], input_tokens=100, output_tokens=7),
    Reply(
        text="Restarting nginx on web-1.",
        tool_calls=[("restart", {"service": "nginx", "force": True})],
        input_tokens=130,
        output_tokens=11,
    ),
    Reply(text="web-1 was degraded; nginx is restarted.", input_tokens=170, output_tokens=13),
]
EXPECTED_CALLS = [("lookup", {"host": "web-1"}), ("restart", {"service": "nginx", "force": True})]
FINAL = "web-1 was degraded; nginx is restarted."


def _check_requests(server: FakeModelServer, api: str, *, stream: bool) -> None:
    seen = server.requests
    assert len(seen) == 3
    assert [s.tool_results for s in seen] == [
        [],
        ["web-1 is degraded"],
        ["web-1 is degraded", "nginx restarted (force=True)"],
    ]
    for s in seen:
        assert s.api == api
        assert s.model == ("claude-sonnet-4-6" if api == "anthropic" else "gpt-4.1-mini")
        assert s.stream is stream
        assert INSTRUCTIONS in s.system
        assert sorted(s.tools) == ["lookup", "restart"]
        assert s.last_user_text == PROMPT
    assert seen[0].headers["authorization"] == "Bearer test-key"  # anthropic 2.x too
    if api == "anthropic":
        assert "anthropic-version" in seen[0].headers
    elif stream:
        assert seen[0].body["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("api", APIS)
async def test_agent_run_drives_a_tool_loop(api: str) -> None:
    calls: list[tuple[str, dict[str, Any]]] = []
    with FakeModelServer(SCRIPT) as server:
        agent = _fleet_agent(_model(api, server.url), calls)
        settings = ModelSettings(max_tokens=1024)  # small enough for a plain JSON response
        async with agent:
            result = await agent.run(PROMPT, model_settings=settings)
    assert result.output == FINAL
    assert calls == EXPECTED_CALLS
    usage = result.usage
    assert (usage.requests, usage.tool_calls) == (3, 2)
    assert (usage.input_tokens, usage.output_tokens) == (400, 31)
    _check_requests(server, api, stream=False)
    assert not server.errors


@pytest.mark.parametrize("api", APIS)
async def test_agent_run_stream_events_drives_a_tool_loop(api: str) -> None:
    calls: list[tuple[str, dict[str, Any]]] = []
    events: list[Any] = []
    with FakeModelServer(SCRIPT, event_delay=0.001) as server:
        agent = _fleet_agent(_model(api, server.url), calls)
        async with agent, agent.run_stream_events(PROMPT) as stream:
            events = [event async for event in stream]
    final = events[-1]
    assert isinstance(final, AgentRunResultEvent)
    assert final.result.output == FINAL
    assert calls == EXPECTED_CALLS
    usage = final.result.usage
    assert (usage.requests, usage.tool_calls) == (3, 2)
    assert (usage.input_tokens, usage.output_tokens) == (400, 31)
    called = [e.part.tool_name for e in events if isinstance(e, FunctionToolCallEvent)]
    assert called == ["lookup", "restart"]
    returned = [e.part.content for e in events if isinstance(e, FunctionToolResultEvent)]
    assert returned == ["web-1 is degraded", "nginx restarted (force=True)"]
    # Arguments and text arrive in pieces, as from the real APIs.
    args_deltas = [
        e.delta.args_delta
        for e in events
        if isinstance(e, PartDeltaEvent) and isinstance(e.delta, ToolCallPartDelta)
    ]
    assert len([d for d in args_deltas if d]) >= 4
    text_deltas = [
        e.delta.content_delta
        for e in events
        if isinstance(e, PartDeltaEvent) and isinstance(e.delta, TextPartDelta)
    ]
    assert len(text_deltas) >= 3
    assert FINAL.endswith(text_deltas[-1])
    _check_requests(server, api, stream=True)


async def test_anthropic_agent_run_streams_behind_the_scenes_by_default() -> None:
    with FakeModelServer([Reply(text="fine", input_tokens=3, output_tokens=2)]) as server:
        agent = Agent(_model("anthropic", server.url))
        async with agent:
            result = await agent.run("hello")
    assert result.output == "fine"
    assert (result.usage.input_tokens, result.usage.output_tokens) == (3, 2)
    assert [s.stream for s in server.requests] == [True]


@pytest.mark.parametrize("api", APIS)
async def test_a_callable_responder_sees_the_request_and_replies_run_out_as_done(api: str) -> None:
    async def echo(seen: Seen) -> Reply:
        await asyncio.sleep(0)
        return Reply(text=f"{seen.api} heard: {seen.last_user_text}")

    with FakeModelServer(echo) as server:
        agent = Agent(_model(api, server.url), instructions="Echo.")
        async with agent:
            first = await agent.run("ping", model_settings=ModelSettings(max_tokens=256))
            async with agent.run_stream_events("pong") as stream:
                second = [e async for e in stream][-1]
    assert first.output == f"{api} heard: ping"
    assert isinstance(second, AgentRunResultEvent)
    assert second.result.output == f"{api} heard: pong"
    assert len(server.requests) == 2
    assert all(s.system.endswith("Echo.") for s in server.requests)

    async with FakeModelServer([]) as server:
        agent = Agent(_model(api, server.url))
        async with agent:
            assert (await agent.run("anything")).output == "done"
    assert [s.last_user_text for s in server.requests] == ["anything"]


@pytest.mark.parametrize(
    ("api", "status", "category"),
    [
        ("anthropic", 529, ModelOverloadedError),
        ("anthropic", 500, ModelServerError),
        ("anthropic", 429, ModelRateLimitError),
        ("openai", 500, ModelServerError),
        ("openai", 429, ModelRateLimitError),
    ],
)
async def test_an_error_reply_surfaces_as_model_http_error(
    api: str, status: int, category: type[ModelAPIError]
) -> None:
    with FakeModelServer([Reply(status=status, error="scripted failure")]) as server:
        client: anthropic.AsyncAnthropic | openai.AsyncOpenAI
        model: Model
        if api == "anthropic":
            client = anthropic.AsyncAnthropic(
                base_url=server.url, api_key="test-key", max_retries=0
            )
            model = AnthropicModel(
                "claude-sonnet-4-6", provider=AnthropicProvider(anthropic_client=client)
            )
        else:
            client = openai.AsyncOpenAI(
                base_url=server.url + "/v1", api_key="test-key", max_retries=0
            )
            model = OpenAIChatModel("gpt-4.1-mini", provider=OpenAIProvider(openai_client=client))
        try:
            with pytest.raises(ModelHTTPError) as raised:
                await Agent(model).run("hi")
        finally:
            await client.close()
    assert isinstance(raised.value, category)
    assert raised.value.status_code == status
    assert "scripted failure" in str(raised.value.body)
    assert len(server.requests) == 1  # no retries


@pytest.mark.parametrize("api", APIS)
async def test_the_sdk_retries_an_error_after_its_retry_after(api: str) -> None:
    status = 529 if api == "anthropic" else 429
    script = [Reply(status=status, retry_after=0.01), Reply(text="recovered")]
    with FakeModelServer(script) as server:
        agent = Agent(_model(api, server.url))
        started = time.monotonic()
        async with agent:
            result = await agent.run("hi", model_settings=ModelSettings(max_retries=1))
    assert result.output == "recovered"
    assert len(server.requests) == 2
    assert time.monotonic() - started < 2


@pytest.mark.parametrize("api", APIS)
async def test_a_failing_responder_is_kept_and_answered_as_a_server_error(api: str) -> None:
    def broken(seen: Seen) -> Reply:
        raise LookupError(f"no script for {seen.last_user_text!r}")

    with FakeModelServer(broken) as server:
        agent = Agent(_model(api, server.url))
        async with agent:
            with pytest.raises(ModelServerError) as raised:
                await agent.run("hi", model_settings=ModelSettings(max_retries=0))
    assert isinstance(raised.value, ModelHTTPError)
    assert raised.value.status_code == 500
    assert "no script for 'hi'" in str(raised.value.body)
    assert [type(e) for e in server.errors] == [LookupError]


async def test_a_slow_reply_times_the_request_out() -> None:
    with FakeModelServer([Reply(text="too late", delay=5)]) as server:
        agent = Agent(_model("anthropic", server.url))
        settings = ModelSettings(timeout=0.2, max_retries=0)
        started = time.monotonic()
        async with agent:
            with pytest.raises(ModelTimeoutError):
                await agent.run("hi", model_settings=settings)
    assert time.monotonic() - started < 2
    assert len(server.requests) == 1


def test_env_helpers_point_clients_at_the_server() -> None:
    assert anthropic_env("http://127.0.0.1:1") == {
        "ANTHROPIC_BASE_URL": "http://127.0.0.1:1",
        "ANTHROPIC_API_KEY": "test-key",
    }
    assert openai_env("http://127.0.0.1:1") == {
        "OPENAI_BASE_URL": "http://127.0.0.1:1/v1",
        "OPENAI_API_KEY": "test-key",
    }


async def test_env_helpers_configure_the_sdks(monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeModelServer(lambda seen: Reply(text=f"from {seen.api}")) as server:
        for key, value in {**anthropic_env(server.url), **openai_env(server.url)}.items():
            monkeypatch.setenv(key, value)
        async with anthropic.AsyncAnthropic() as claude:
            message = await claude.messages.create(
                model="claude-sonnet-4-6",
                max_tokens=64,
                messages=[{"role": "user", "content": "hi"}],
            )
        async with openai.AsyncOpenAI() as gpt:
            completion = await gpt.chat.completions.create(
                model="gpt-4.1-mini", messages=[{"role": "user", "content": "hi"}]
            )
    block = message.content[0]
    assert block.type == "text"
    assert block.text == "from anthropic"
    assert completion.choices[0].message.content == "from openai"
    assert [s.api for s in server.requests] == ["anthropic", "openai"]


# --- network guard ----------------------------------------------------------------------------


def _causes(exc: BaseException | None) -> Iterator[BaseException]:
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


def _refusal(host: str) -> str:
    return re.escape(f"network guard: connection to {host} refused in tests")


@pytest.fixture
def guard() -> Iterator[None]:
    with netguard.guarded():
        yield


@pytest.mark.usefixtures("guard")
async def test_the_guard_refuses_a_provider_quickly() -> None:
    started = time.monotonic()
    async with anthropic.AsyncAnthropic(
        base_url="https://api.anthropic.com", api_key="test-key", max_retries=0
    ) as client:
        with pytest.raises(anthropic.APIConnectionError) as raised:
            await client.messages.create(
                model="claude-sonnet-4-6",
                max_tokens=64,
                messages=[{"role": "user", "content": "hi"}],
            )
    assert time.monotonic() - started < 2
    messages = [str(e) for e in _causes(raised.value) if isinstance(e, PermissionError)]
    assert messages == ["network guard: connection to api.anthropic.com refused in tests"]

    provider = OpenAIProvider(base_url="https://api.openai.com/v1", api_key="test-key")
    agent = Agent(OpenAIChatModel("gpt-4.1-mini", provider=provider))
    async with agent:
        with pytest.raises(ModelConnectionError) as refused:
            await agent.run("hi", model_settings=ModelSettings(max_retries=0))
    assert any(
        "network guard: connection to api.openai.com refused" in str(e)
        for e in _causes(refused.value)
    )


@pytest.mark.usefixtures("guard")
async def test_the_guard_refuses_remote_addresses_and_allows_this_machine(tmp_path: Path) -> None:
    with pytest.raises(PermissionError, match=_refusal("192.0.2.1")):
        socket.create_connection(("192.0.2.1", 80), timeout=1)
    with pytest.raises(PermissionError, match=_refusal("2001:db8::1")):
        await asyncio.open_connection("2001:db8::1", 443)
    with pytest.raises(PermissionError, match=_refusal("example.com")):
        await asyncio.get_running_loop().getaddrinfo("example.com", 443)
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
        pytest.raises(PermissionError, match=_refusal("192.0.2.1")),
    ):
        udp.sendto(b"x", ("192.0.2.1", 53))

    with FakeModelServer([Reply(text="still here")]) as server:
        agent = Agent(_model("anthropic", server.url))
        async with agent:
            assert (await agent.run("hi")).output == "still here"
        port = int(server.url.rsplit(":", 1)[1])
        with socket.create_connection(("localhost", port), timeout=1):
            pass
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()
        await writer.wait_closed()
        assert reader is not None

    path = str(tmp_path / "s")
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(path)
        listener.listen(1)
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(path)


def test_install_and_uninstall_patch_and_restore_the_socket_functions() -> None:
    was_installed = netguard.installed()
    netguard.uninstall()
    try:
        original_getaddrinfo = socket.getaddrinfo
        assert "connect" not in socket.socket.__dict__
        netguard.install()
        netguard.install()
        assert netguard.installed()
        assert socket.getaddrinfo is not original_getaddrinfo
        assert "connect" in socket.socket.__dict__
        netguard.uninstall()
        netguard.uninstall()
        assert not netguard.installed()
        assert socket.getaddrinfo is original_getaddrinfo
        assert "connect" not in socket.socket.__dict__
        with netguard.guarded(), socket.socket() as sock, pytest.raises(PermissionError):
            sock.connect(("198.51.100.1", 1))
        assert not netguard.installed()
        netguard.install()
        with netguard.guarded():
            pass
        assert netguard.installed()  # a guard already in place is kept
    finally:
        if was_installed:
            netguard.install()
        else:
            netguard.uninstall()
