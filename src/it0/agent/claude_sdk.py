"""The Claude Agent SDK runtime: one turn of a conversation through the Claude Code CLI.

The CLI gets IT0's five tools as an in-process MCP server named ``it0`` and nothing else:
no built-in tool (``tools=[]``, and every built-in also in ``disallowed_tools``), no MCP
server but ours, no settings file, CLAUDE.md, skill or slash command, no ``@file``
expansion of the prompt, ``dontAsk`` permissions with only our tools allowed, and a
PreToolUse hook that refuses any other tool. The CLI keeps its sessions under the work
directory, so a later turn continues one with ``resume``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from claude_agent_sdk import (
    AssistantMessage,
    ClaudeAgentOptions,
    ClaudeSDKClient,
    HookContext,
    HookInput,
    HookJSONOutput,
    HookMatcher,
    Message,
    ResultMessage,
    SdkMcpTool,
    StreamEvent,
    SystemMessage,
    TextBlock,
    ToolResultBlock,
    ToolUseBlock,
    UserMessage,
    create_sdk_mcp_server,
    tool,
)

from it0.agent.errors import AgentError
from it0.agent.events import Emit
from it0.agent.toolbox import INSTRUCTIONS, TOOL_DESCRIPTIONS, Pending, Toolbox
from it0.agent.tools import current_call

log = logging.getLogger(__name__)

SERVER = "it0"
PREFIX = f"mcp__{SERVER}__"
ALLOWED_TOOLS = tuple(f"{PREFIX}{name}" for name in TOOL_DESCRIPTIONS)

BUILTIN_TOOLS = (
    "Agent",
    "AskUserQuestion",
    "Bash",
    "BashOutput",
    "CronCreate",
    "CronDelete",
    "CronList",
    "Edit",
    "EnterPlanMode",
    "EnterWorktree",
    "ExitPlanMode",
    "ExitWorktree",
    "Glob",
    "Grep",
    "KillShell",
    "LS",
    "LSP",
    "ListAgents",
    "ListMcpResourcesTool",
    "Monitor",
    "MultiEdit",
    "NotebookEdit",
    "NotebookRead",
    "PowerShell",
    "Read",
    "ReadMcpResourceTool",
    "ReportFindings",
    "ScheduleWakeup",
    "SendMessage",
    "Skill",
    "SlashCommand",
    "Task",
    "TaskCreate",
    "TaskGet",
    "TaskList",
    "TaskOutput",
    "TaskStop",
    "TaskUpdate",
    "TodoWrite",
    "ToolSearch",
    "WebFetch",
    "WebSearch",
    "Workflow",
    "Write",
)
"""Claude Code's built-in tools, denied by name in case ``tools=[]`` ever lets one through."""

_SCHEMAS: dict[str, dict[str, Any]] = {
    "list_servers": {
        "type": "object",
        "properties": {
            "selector": {
                "type": "string",
                "description": "Which servers; empty for all.",
                "default": "",
            }
        },
        "required": [],
    },
    "server_facts": {
        "type": "object",
        "properties": {"name": {"type": "string", "description": "The server's name."}},
        "required": ["name"],
    },
    "run_command": {
        "type": "object",
        "properties": {
            "selector": {"type": "string", "description": "The servers to run it on."},
            "command": {"type": "string", "description": "The shell command."},
            "reason": {"type": "string", "description": "Why it is needed."},
        },
        "required": ["selector", "command", "reason"],
    },
    "get_task": {
        "type": "object",
        "properties": {"task_id": {"type": "string", "description": "The task's id."}},
        "required": ["task_id"],
    },
    "search_runbooks": {
        "type": "object",
        "properties": {"query": {"type": "string", "description": "The symptoms."}},
        "required": ["query"],
    },
}

_STDERR_LINES = 20
_CLOSE_SECONDS = 10.0


class ClaudeSdkError(AgentError):
    """The Claude Code CLI or the model API behind it failed; the message never has a key."""

    code = "model_error"
    status = 502


@dataclass
class SdkTurn:
    """What one turn did: ``session_id`` resumes the conversation in the next turn.

    ``tool_calls`` counts the calls the toolbox served (a refused one is not counted);
    ``pending`` holds the commands that went to approval.
    """

    session_id: str | None
    text: str
    input_tokens: int
    output_tokens: int
    pending: list[Pending]
    tool_calls: int
    stopped: str | None


async def run_turn(
    *,
    prompt: str,
    toolbox: Toolbox,
    emit: Emit,
    model: str,
    resume: str | None,
    max_tool_calls: int,
    timeout: float,  # noqa: ASYNC109 - expiry interrupts the CLI and still returns a turn
    env: Mapping[str, str] | None = None,
    workdir: Path,
) -> SdkTurn:
    """Run the model to the end of its turn, reporting events through ``emit``.

    ``stopped`` is ``"budget"`` when the model asked for more than ``max_tool_calls``
    tools (the extra call is refused and the turn interrupted) and ``"timeout"`` after
    ``timeout`` seconds. CLI and model API failures raise ``ClaudeSdkError``; an exception
    from the toolbox is re-raised once the CLI is stopped.
    """
    workdir = await asyncio.to_thread(_prepare, workdir)
    merged = {**(env or {})}
    for name in ("ANTHROPIC_BASE_URL", "ANTHROPIC_API_KEY"):
        if not merged.get(name) and os.environ.get(name):
            merged[name] = os.environ[name]
    secrets = [
        value
        for key, value in {**os.environ, **merged}.items()
        if any(word in key.upper() for word in ("KEY", "TOKEN", "SECRET")) and len(value) >= 8
    ]
    turn = _Turn(toolbox, emit, max_tool_calls, secrets)
    options = _options(turn, model=model, resume=resume, env=merged, workdir=workdir)
    client = ClaudeSDKClient(options)
    deadline = asyncio.get_running_loop().time() + timeout
    try:
        try:
            async with asyncio.timeout_at(deadline) as limit:
                await turn.sdk(client.connect(), "start")
                await turn.sdk(client.query(prompt), "send the prompt")
                await turn.receive(client)
        except TimeoutError:
            if not limit.expired():
                raise
            turn.stopped = "timeout"
            await turn.interrupt(client)
    finally:
        with suppress(Exception):
            async with asyncio.timeout(_CLOSE_SECONDS):
                await client.disconnect()
    return turn.finish()


def _prepare(workdir: Path) -> Path:
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir


def _options(
    turn: _Turn, *, model: str, resume: str | None, env: dict[str, str], workdir: Path
) -> ClaudeAgentOptions:
    return ClaudeAgentOptions(
        tools=[],
        allowed_tools=list(ALLOWED_TOOLS),
        disallowed_tools=list(BUILTIN_TOOLS),
        mcp_servers={SERVER: create_sdk_mcp_server(SERVER, tools=turn.tools())},
        strict_mcp_config=True,
        setting_sources=[],
        skills=[],
        permission_mode="dontAsk",
        hooks={"PreToolUse": [HookMatcher(hooks=[turn.gate], on_failure="block")]},
        system_prompt=INSTRUCTIONS,
        model=model,
        resume=resume,
        max_turns=turn.max_tool_calls + 2,
        include_partial_messages=True,
        verbatim_prompts=True,
        cwd=workdir,
        env={
            **env,
            "CLAUDE_CONFIG_DIR": str(workdir / "config"),
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_TELEMETRY": "1",
            "DISABLE_AUTOUPDATER": "1",
            "DISABLE_ERROR_REPORTING": "1",
            "ENABLE_TOOL_SEARCH": "false",
        },
        extra_args={"disable-slash-commands": None},
        stderr=turn.stderr.append,
    )


def _key(args: Mapping[str, Any]) -> str:
    return json.dumps(args, sort_keys=True, default=str)


class _CallIds:
    """Tool-use ids the PreToolUse hook saw, claimed by the handler that serves each call.

    The CLI runs the hook before it calls the tool, so the id is there when the call comes.
    """

    def __init__(self) -> None:
        self._waiting: dict[str, deque[tuple[str, str]]] = defaultdict(deque)

    def announce(self, name: str, args: Mapping[str, Any], call_id: str) -> None:
        self._waiting[name].append((_key(args), call_id))

    def claim(self, name: str, args: Mapping[str, Any]) -> str | None:
        waiting = self._waiting[name]
        key = _key(args)
        for entry in waiting:
            if entry[0] == key:
                waiting.remove(entry)
                return entry[1]
        return waiting.popleft()[1] if waiting else None


@dataclass
class _Usage:
    input_tokens: int = 0
    output_tokens: int = 0


def _tokens(usage: Mapping[str, Any]) -> _Usage:
    fields = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    return _Usage(
        input_tokens=sum(int(usage.get(name) or 0) for name in fields),
        output_tokens=int(usage.get("output_tokens") or 0),
    )


@dataclass
class _Turn:
    """The state of one turn, shared by the tool handlers and the message loop."""

    toolbox: Toolbox
    emit: Emit
    max_tool_calls: int
    secrets: list[str]
    session_id: str | None = None
    tool_calls: int = 0
    stopped: str | None = None
    failure: BaseException | None = None
    pending: list[Pending] = field(default_factory=list)
    stderr: deque[str] = field(default_factory=lambda: deque(maxlen=_STDERR_LINES))
    result: ResultMessage | None = None
    api_error: str | None = None
    _ids: _CallIds = field(default_factory=_CallIds)
    _paused: dict[str, Pending] = field(default_factory=dict)
    _names: dict[str, str] = field(default_factory=dict)
    _streamed: set[str] = field(default_factory=set)
    _message_id: str | None = None
    _text: dict[str, list[str]] = field(default_factory=dict)
    _last_text: str | None = None
    _usage: dict[str, _Usage] = field(default_factory=dict)
    _interrupted: bool = False

    # --- the tools --------------------------------------------------------------------------

    def tools(self) -> list[SdkMcpTool[Any]]:
        return [
            tool(name, TOOL_DESCRIPTIONS[name], _SCHEMAS[name])(self._handler(name))
            for name in TOOL_DESCRIPTIONS
        ]

    def _handler(self, name: str) -> Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]:
        async def handle(args: dict[str, Any]) -> dict[str, Any]:
            return await self.call(name, args)

        return handle

    async def call(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        """Serve one tool call through the toolbox; refuse it once the budget is spent."""
        call_id = self._ids.claim(name, args)
        if self.stopped is not None or self.failure is not None:
            return _text_result("refused: the turn is ending.", error=True)
        if self.tool_calls >= self.max_tool_calls:
            self.stopped = "budget"
            return _text_result(
                f"refused: this turn already used its {self.max_tool_calls} tool calls, so "
                "it ends here. Tell the user what you found so far.",
                error=True,
            )
        self.tool_calls += 1
        token = current_call.set(call_id)
        try:
            result = await _dispatch(self.toolbox, name, args)
        except Exception as exc:
            self.failure = exc
            return _text_result(f"error: {name} failed inside IT0.", error=True)
        finally:
            current_call.reset(token)
        if isinstance(result, Pending):
            self.pending.append(result)
            self._paused[call_id or result.message()] = result
            return _text_result(result.message())
        return _text_result(result)

    async def gate(
        self, hook_input: HookInput, tool_use_id: str | None, context: HookContext
    ) -> HookJSONOutput:
        """PreToolUse: refuse every tool but IT0's, and note the call's id for its handler."""
        if hook_input["hook_event_name"] != "PreToolUse":
            return {}
        full = hook_input["tool_name"]
        name = full.removeprefix(PREFIX)
        if full == name or name not in TOOL_DESCRIPTIONS:
            return {
                "hookSpecificOutput": {
                    "hookEventName": "PreToolUse",
                    "permissionDecision": "deny",
                    "permissionDecisionReason": f"{full} is not one of IT0's tools.",
                }
            }
        call_id = hook_input.get("tool_use_id") or tool_use_id
        if call_id:
            self._ids.announce(name, hook_input["tool_input"], call_id)
        return {}

    # --- the message loop -------------------------------------------------------------------

    async def sdk(self, step: Awaitable[Any], what: str) -> Any:
        """Await an SDK call, turning its failures into ``ClaudeSdkError``."""
        try:
            return await step
        except Exception as exc:
            raise self.error(f"the Claude Code CLI failed to {what}: {exc}", stderr=True) from exc

    async def receive(self, client: ClaudeSDKClient) -> None:
        messages = client.receive_response()
        while True:
            try:
                message = await anext(messages)
            except StopAsyncIteration:
                return
            except Exception as exc:
                if self._interrupted:
                    return
                raise self.error(f"the Claude Code CLI failed: {exc}", stderr=True) from exc
            await self.handle(message)
            ending = self.stopped is not None or self.failure is not None
            if ending and not self._interrupted and isinstance(message, UserMessage):
                await self.interrupt(client)

    async def interrupt(self, client: ClaudeSDKClient) -> None:
        """Ask the CLI to stop the turn; a CLI that already stopped is fine."""
        self._interrupted = True
        try:
            async with asyncio.timeout(_CLOSE_SECONDS):
                await client.interrupt()
        except Exception as exc:
            log.debug("interrupting the Claude Code CLI failed: %s", exc)

    async def handle(self, message: Message) -> None:
        if isinstance(message, StreamEvent):
            if message.parent_tool_use_id is None:
                await self._stream(message.event)
        elif isinstance(message, AssistantMessage):
            if message.parent_tool_use_id is None:
                await self._assistant(message)
        elif isinstance(message, UserMessage):
            if message.parent_tool_use_id is None:
                await self._results(message)
        elif isinstance(message, SystemMessage):
            if message.subtype == "init":
                self.session_id = message.data.get("session_id") or self.session_id
        elif isinstance(message, ResultMessage):
            self.result = message
            self.session_id = message.session_id or self.session_id

    async def _stream(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "message_start":
            start = event.get("message") or {}
            self._message_id = start.get("id")
            if self._message_id:
                self._usage[self._message_id] = _tokens(start.get("usage") or {})
        elif kind == "message_delta" and self._message_id in self._usage:
            output = (event.get("usage") or {}).get("output_tokens")
            if output is not None:
                self._usage[self._message_id].output_tokens = int(output)
        elif kind == "content_block_delta":
            delta = event.get("delta") or {}
            if delta.get("type") == "text_delta" and delta.get("text"):
                if self._message_id:
                    self._streamed.add(self._message_id)
                await self.emit("text", {"delta": delta["text"]})

    async def _assistant(self, message: AssistantMessage) -> None:
        if message.error is not None:
            texts = [b.text for b in message.content if isinstance(b, TextBlock)]
            self.api_error = " ".join(texts) or str(message.error)
            return
        message_id = message.message_id or ""
        texts = self._text.setdefault(message_id, [])
        for block in message.content:
            if isinstance(block, TextBlock):
                texts.append(block.text)
                self._last_text = "".join(texts)
                if message_id not in self._streamed and block.text:
                    await self.emit("text", {"delta": block.text})
            elif isinstance(block, ToolUseBlock):
                name = block.name.removeprefix(PREFIX)
                self._names[block.id] = name
                await self.emit("tool_call", {"id": block.id, "name": name, "args": block.input})

    async def _results(self, message: UserMessage) -> None:
        if isinstance(message.content, str):
            return
        for block in message.content:
            if not isinstance(block, ToolResultBlock):
                continue
            call_id = block.tool_use_id
            name = self._names.get(call_id, "")
            content = _content(block.content)
            await self.emit("tool_result", {"id": call_id, "name": name, "content": content})
            key = call_id if call_id in self._paused else content
            pending = self._paused.pop(key, None)
            if pending is not None:
                await self.emit("approval_required", approval_event(call_id, pending))

    # --- the outcome ------------------------------------------------------------------------

    def error(self, message: str, *, stderr: bool = False) -> ClaudeSdkError:
        extra = [line for line in self.stderr if line not in message] if stderr else []
        if extra:
            message += "; its last output: " + " | ".join(extra)
        for secret in self.secrets:
            if secret:
                message = message.replace(secret, "[redacted]")
        return ClaudeSdkError(message[:2000])

    def finish(self) -> SdkTurn:
        if self.failure is not None:
            raise self.failure
        result = self.result
        if result is not None and result.is_error and self.stopped is None:
            if result.subtype == "error_max_turns":
                self.stopped = "budget"
            elif not self._interrupted:
                raise self.error(f"the model run failed: {self._why(result)}")
        if result is None and self.stopped is None:
            raise self.error("the Claude Code CLI ended without a result", stderr=True)
        if result is not None and result.usage:
            usage = _tokens(result.usage)
        else:
            usage = _Usage(
                input_tokens=sum(u.input_tokens for u in self._usage.values()),
                output_tokens=sum(u.output_tokens for u in self._usage.values()),
            )
        text = self._last_text or ""
        if result is not None and not result.is_error and isinstance(result.result, str):
            text = result.result or text
        return SdkTurn(
            session_id=self.session_id,
            text=text,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            pending=list(self.pending),
            tool_calls=self.tool_calls,
            stopped=self.stopped,
        )

    def _why(self, result: ResultMessage) -> str:
        parts = [p for p in (result.errors or []) if p]
        if isinstance(result.result, str) and result.result.strip():
            parts.append(result.result.strip())
        elif self.api_error:
            parts.append(self.api_error)
        if not parts:
            parts.append(result.subtype)
        if result.api_error_status is not None:
            parts.append(f"(HTTP {result.api_error_status})")
        return " ".join(parts)


def approval_event(tool_call_id: str | None, pending: Pending) -> dict[str, Any]:
    return {
        "tool_call_id": tool_call_id,
        "task_id": pending.task_id,
        "approval_id": pending.approval_id,
        "risk": pending.risk,
        "command": pending.command,
        "hosts": list(pending.hosts),
    }


async def _dispatch(toolbox: Toolbox, name: str, args: Mapping[str, Any]) -> str | Pending:
    if name == "list_servers":
        return await toolbox.list_servers(str(args.get("selector") or ""))
    if name == "server_facts":
        return await toolbox.server_facts(str(args["name"]))
    if name == "run_command":
        return await toolbox.run_command(
            str(args["selector"]), str(args["command"]), str(args["reason"])
        )
    if name == "get_task":
        return await toolbox.get_task(str(args["task_id"]))
    if name == "search_runbooks":
        return await toolbox.search_runbooks(str(args["query"]))
    raise ValueError(f"unknown tool {name!r}")


def _text_result(text: str, *, error: bool = False) -> dict[str, Any]:
    result: dict[str, Any] = {"content": [{"type": "text", "text": text}]}
    if error:
        result["is_error"] = True
    return result


def _content(content: str | list[dict[str, Any]] | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "\n".join(str(part.get("text", "")) for part in content if part.get("type") == "text")
