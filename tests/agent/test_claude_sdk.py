"""The Claude Agent SDK runtime against a fake Anthropic API: each test starts the real CLI."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from claude_agent_sdk import HookJSONOutput, PreToolUseHookInput

from it0.agent.claude_sdk import ClaudeSdkError, SdkTurn, _Turn, run_turn
from it0.agent.errors import AgentError
from it0.agent.toolbox import INSTRUCTIONS, TOOL_DESCRIPTIONS, Pending
from it0.agent.tools import current_call
from tests.agent.fakes import FakeModelServer, Reply, Seen, anthropic_env

IT0_TOOLS = {f"mcp__it0__{name}" for name in TOOL_DESCRIPTIONS}
MODEL = "claude-sonnet-4-5"
RESTART = Pending(
    task_id="task-1",
    approval_id="approval-1",
    risk="service_change",
    command="systemctl restart nginx",
    hosts=("web-1",),
)


@dataclass
class FakeToolbox:
    """The five tools in memory; each call is recorded with the tool-call id it ran under."""

    calls: list[tuple[Any, ...]] = field(default_factory=list)

    async def list_servers(self, selector: str) -> str:
        self.calls.append(("list_servers", selector))
        return "web-1 (env=prod)\nweb-2 (env=prod)"

    async def server_facts(self, name: str) -> str:
        self.calls.append(("server_facts", name))
        return f"{name}: Debian 12"

    async def run_command(self, selector: str, command: str, reason: str) -> str | Pending:
        self.calls.append(("run_command", selector, command, reason, current_call.get()))
        if command == "uptime":
            return " 10:00:00 up 3 days,  load average: 0.10, 0.08, 0.05"
        if command == "systemctl restart nginx":
            return RESTART
        return f"unexpected command {command!r}"

    async def get_task(self, task_id: str) -> str:
        self.calls.append(("get_task", task_id))
        return f"task {task_id}: succeeded"

    async def search_runbooks(self, query: str) -> str:
        self.calls.append(("search_runbooks", query))
        return "no runbook matches"


@dataclass
class Events:
    seen: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    async def __call__(self, kind: str, data: dict[str, Any]) -> None:
        self.seen.append((kind, data))

    def kinds(self) -> list[str]:
        """Event types in order, a run of text deltas counted once."""
        kinds: list[str] = []
        for kind, _ in self.seen:
            if not (kind == "text" and kinds and kinds[-1] == "text"):
                kinds.append(kind)
        return kinds

    def text(self) -> str:
        return "".join(data["delta"] for kind, data in self.seen if kind == "text")

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [data for k, data in self.seen if k == kind]


async def turn_with(
    server: FakeModelServer,
    workdir: Path,
    prompt: str,
    *,
    toolbox: FakeToolbox | None = None,
    events: Events | None = None,
    resume: str | None = None,
    max_tool_calls: int = 5,
    timeout: float = 60.0,  # noqa: ASYNC109 - passed on to run_turn
    env: dict[str, str] | None = None,
) -> SdkTurn:
    return await run_turn(
        prompt=prompt,
        toolbox=toolbox or FakeToolbox(),
        emit=events or Events(),
        model=MODEL,
        resume=resume,
        max_tool_calls=max_tool_calls,
        timeout=timeout,
        env=env or anthropic_env(server.url),
        workdir=workdir,
    )


def assert_only_it0_tools(requests: list[Seen]) -> None:
    assert requests
    for seen in requests:
        assert set(seen.tools) == IT0_TOOLS, seen.tools
        assert [t["name"] for t in seen.body["tools"]] == sorted(IT0_TOOLS)


async def test_a_turn_uses_the_five_tools_and_nothing_else(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cr3t-file-content")
    replies = [
        Reply(text="Checking.", tool_calls=[("mcp__it0__list_servers", {"selector": "env=prod"})]),
        Reply(
            tool_calls=[
                (
                    "mcp__it0__run_command",
                    {"selector": "web-1", "command": "uptime", "reason": "check the load"},
                )
            ],
            input_tokens=20,
            output_tokens=7,
        ),
        Reply(text="web-1 is fine: up 3 days, load 0.10.", input_tokens=30, output_tokens=9),
    ]
    toolbox, events = FakeToolbox(), Events()
    workdir = tmp_path / "sdk"
    async with FakeModelServer(replies) as server:
        started = time.monotonic()
        turn = await turn_with(
            server,
            workdir,
            f"Is web-1 healthy? See @{secret} and /help",
            toolbox=toolbox,
            events=events,
        )
        elapsed = time.monotonic() - started

    assert turn.text == "web-1 is fine: up 3 days, load 0.10."
    assert turn.stopped is None
    assert turn.pending == []
    assert turn.tool_calls == 2
    assert (turn.input_tokens, turn.output_tokens) == (10 + 20 + 30, 5 + 7 + 9)
    assert turn.session_id
    assert list((workdir / "config" / "projects").rglob(f"{turn.session_id}.jsonl"))

    run_id = events.of("tool_call")[1]["id"]
    assert toolbox.calls == [
        ("list_servers", "env=prod"),
        ("run_command", "web-1", "uptime", "check the load", run_id),
    ]
    assert events.kinds() == [
        "text",
        "tool_call",
        "tool_result",
        "tool_call",
        "tool_result",
        "text",
    ]
    assert events.text() == "Checking.web-1 is fine: up 3 days, load 0.10."
    first, second = events.of("tool_call")
    assert first["name"] == "list_servers"
    assert first["args"] == {"selector": "env=prod"}
    assert second["name"] == "run_command"
    assert second["args"]["command"] == "uptime"
    results = events.of("tool_result")
    assert [r["id"] for r in results] == [first["id"], second["id"]]
    assert results[0] == {
        "id": first["id"],
        "name": "list_servers",
        "content": "web-1 (env=prod)\nweb-2 (env=prod)",
    }
    assert "up 3 days" in results[1]["content"]

    # the key safety property: the model is offered IT0's five tools and nothing else
    assert len(server.requests) == 3
    assert_only_it0_tools(server.requests)
    assert all(seen.model == MODEL for seen in server.requests)
    assert INSTRUCTIONS.splitlines()[0] in server.requests[0].system
    assert server.requests[2].tool_results[-1].startswith(" 10:00:00 up 3 days")
    # the prompt is delivered as written: no @file expansion, no slash command
    sent = json.dumps([seen.body for seen in server.requests])
    assert "s3cr3t-file-content" not in sent
    assert f"See @{secret} and /help" in server.requests[0].last_user_text
    print(f"one CLI turn with two tool calls took {elapsed:.2f} s")


async def test_a_command_that_needs_approval_pauses_with_the_call_id(tmp_path: Path) -> None:
    restart = {"selector": "web-1", "command": "systemctl restart nginx", "reason": "stuck"}
    replies = [
        Reply(tool_calls=[("mcp__it0__run_command", restart)]),
        Reply(text="I asked to restart nginx on web-1; it waits for approval."),
    ]
    toolbox, events = FakeToolbox(), Events()
    async with FakeModelServer(replies) as server:
        turn = await turn_with(server, tmp_path, "Fix nginx", toolbox=toolbox, events=events)

    assert turn.pending == [RESTART]
    assert turn.tool_calls == 1
    assert turn.stopped is None
    (call,) = events.of("tool_call")
    assert events.kinds() == ["tool_call", "tool_result", "approval_required", "text"]
    assert events.of("approval_required") == [
        {
            "tool_call_id": call["id"],
            "task_id": "task-1",
            "approval_id": "approval-1",
            "risk": "service_change",
            "command": "systemctl restart nginx",
            "hosts": ["web-1"],
        }
    ]
    assert toolbox.calls == [
        ("run_command", "web-1", "systemctl restart nginx", "stuck", call["id"])
    ]
    assert events.of("tool_result")[0]["content"] == RESTART.message()
    assert server.requests[1].tool_results[0].startswith(RESTART.message())
    assert_only_it0_tools(server.requests)


async def test_resume_sends_the_earlier_conversation(tmp_path: Path) -> None:
    replies = [Reply(text="Noted: kumquat."), Reply(text="The word was kumquat.")]
    async with FakeModelServer(replies) as server:
        first = await turn_with(server, tmp_path, "Remember the word kumquat.")
        second = await turn_with(server, tmp_path, "Which word?", resume=first.session_id)

    assert first.session_id
    assert second.session_id == first.session_id
    assert second.text == "The word was kumquat."
    assert len(server.requests) == 2
    earlier = json.dumps(server.requests[1].messages)
    assert "Remember the word kumquat." in earlier
    assert "Noted: kumquat." in earlier
    assert server.requests[1].last_user_text.endswith("Which word?")
    assert "Noted: kumquat." not in json.dumps(server.requests[0].messages)


async def test_the_tool_call_budget_ends_the_turn(tmp_path: Path) -> None:
    again = Reply(tool_calls=[("mcp__it0__list_servers", {"selector": ""})])
    toolbox, events = FakeToolbox(), Events()
    async with FakeModelServer([again] * 4) as server:
        turn = await turn_with(
            server, tmp_path, "Loop", toolbox=toolbox, events=events, max_tool_calls=2
        )

    assert turn.stopped == "budget"
    assert turn.tool_calls == 2
    assert toolbox.calls == [("list_servers", "")] * 2
    third = events.of("tool_result")[2]["content"]
    assert third.startswith("refused: this turn already used its 2 tool calls")
    assert len(server.requests) in (3, 4)  # interrupted after the refusal, never "done"
    assert turn.session_id


async def test_the_timeout_ends_the_turn(tmp_path: Path) -> None:
    async with FakeModelServer([Reply(text="too late", delay=10)]) as server:
        started = time.monotonic()
        turn = await turn_with(server, tmp_path, "Slow", timeout=2)
        elapsed = time.monotonic() - started

    assert turn.stopped == "timeout"
    assert turn.text == ""
    assert turn.session_id
    assert elapsed < 8


async def test_an_api_error_raises_without_the_key(tmp_path: Path) -> None:
    key = "sk-ant-test-0123456789abcdef"

    def refuse(seen: Seen) -> Reply:
        return Reply(status=400, error=f"messages: refused for key {key}")

    async with FakeModelServer(refuse) as server:
        env = {**anthropic_env(server.url), "ANTHROPIC_API_KEY": key}
        with pytest.raises(ClaudeSdkError) as raised:
            await turn_with(server, tmp_path, "Hello", env=env)

    error = raised.value
    assert isinstance(error, AgentError)
    assert error.code == "model_error"
    assert "messages: refused for key" in error.message
    assert "HTTP 400" in error.message
    assert key not in error.message
    assert key not in str(error)
    assert server.requests
    assert all(seen.headers.get("x-api-key") == key for seen in server.requests)


async def test_a_call_to_a_builtin_tool_never_runs(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cr3t-file-content")
    marker = tmp_path / "pwned"
    replies = [
        Reply(
            tool_calls=[
                ("Bash", {"command": f"touch {marker}", "description": "x"}),
                ("Read", {"file_path": str(secret)}),
                ("mcp__other__run", {}),
            ]
        ),
        Reply(text="Those tools are not there."),
    ]
    toolbox, events = FakeToolbox(), Events()
    async with FakeModelServer(replies) as server:
        turn = await turn_with(server, tmp_path / "sdk", "Try", toolbox=toolbox, events=events)

    assert turn.text == "Those tools are not there."
    assert not marker.exists()
    assert toolbox.calls == []
    assert turn.tool_calls == 0
    results = server.requests[1].tool_results
    assert len(results) == 3
    assert all("No such tool available" in result for result in results)
    assert "s3cr3t-file-content" not in json.dumps([seen.body for seen in server.requests])
    assert_only_it0_tools(server.requests)


async def test_the_hook_refuses_every_tool_but_it0s() -> None:
    turn = _Turn(FakeToolbox(), Events(), max_tool_calls=5, secrets=[])

    async def decide(tool_name: str) -> HookJSONOutput:
        hook_input: PreToolUseHookInput = {
            "hook_event_name": "PreToolUse",
            "session_id": "s",
            "transcript_path": "/dev/null",
            "cwd": "/",
            "tool_name": tool_name,
            "tool_input": {"selector": ""},
            "tool_use_id": f"toolu_{tool_name}",
        }
        return await turn.gate(hook_input, f"toolu_{tool_name}", {"signal": None})

    for name in ("Bash", "Read", "WebFetch", "mcp__other__list_servers", "mcp__it0__nope"):
        decision = await decide(name)
        assert decision == {
            "hookSpecificOutput": {
                "hookEventName": "PreToolUse",
                "permissionDecision": "deny",
                "permissionDecisionReason": f"{name} is not one of IT0's tools.",
            }
        }
    assert await decide("mcp__it0__list_servers") == {}
    assert await turn.call("list_servers", {"selector": ""}) == {
        "content": [{"type": "text", "text": "web-1 (env=prod)\nweb-2 (env=prod)"}]
    }
