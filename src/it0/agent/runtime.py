"""Model runtimes: pydantic-ai for the Anthropic API and OpenAI-compatible servers.

``IT0_AGENT_MODEL`` names the model as ``provider:model``. ``offline`` (the default) is the
runbook planner and needs no model; ``claude-sdk:<model>`` runs the Claude Agent SDK (its
own module). A command that needs approval raises ``CallDeferred`` inside the tool: the run
ends with ``DeferredToolRequests`` as output, its history is persisted, and a later run
resumes it with the task's outcome as the deferred call's result.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from pydantic_ai import Agent, RunContext
from pydantic_ai.exceptions import (
    AgentRunError,
    CallDeferred,
    ModelAPIError,
    ModelHTTPError,
    RunTimedOut,
    UsageLimitExceeded,
)
from pydantic_ai.messages import (
    DeferredToolRequestsEvent,
    FunctionToolCallEvent,
    FunctionToolResultEvent,
    ModelMessage,
    ModelMessagesTypeAdapter,
    PartDeltaEvent,
    PartStartEvent,
    TextPart,
    TextPartDelta,
)
from pydantic_ai.models import Model
from pydantic_ai.run import AgentRunResultEvent
from pydantic_ai.tools import DeferredToolRequests, DeferredToolResults
from pydantic_ai.usage import UsageLimits

from it0.agent.errors import AgentConfigError
from it0.agent.events import Emit
from it0.agent.toolbox import INSTRUCTIONS, TOOL_DESCRIPTIONS, Pending
from it0.agent.tools import OpsToolbox, current_call
from it0.core.settings import Settings

PROVIDERS = ("offline", "anthropic", "openai", "claude-sdk")


@dataclass(frozen=True)
class ModelSpec:
    provider: str
    name: str

    @property
    def label(self) -> str:
        return self.provider if self.provider == "offline" else f"{self.provider}:{self.name}"


def parse_model(spec: str) -> ModelSpec:
    """``offline`` or ``provider:model``; anything else is a configuration error."""
    spec = spec.strip()
    if spec in ("", "offline", "none"):
        return ModelSpec("offline", "")
    provider, sep, name = spec.partition(":")
    if not sep or not name or provider not in PROVIDERS[1:]:
        raise AgentConfigError(
            f"unknown agent model {spec!r}: use offline, anthropic:<model>, openai:<model> "
            "or claude-sdk:<model>",
            details={"model": spec},
        )
    return ModelSpec(provider, name)


def build_model(spec: ModelSpec, settings: Settings) -> Model:
    """The pydantic-ai model for an API provider; keys come from settings or the environment."""
    key = settings.agent_api_key.get_secret_value() if settings.agent_api_key else None
    if spec.provider == "anthropic":
        from pydantic_ai.models.anthropic import AnthropicModel
        from pydantic_ai.providers.anthropic import AnthropicProvider

        key = key or os.environ.get("ANTHROPIC_API_KEY")
        if not key:
            raise AgentConfigError("anthropic models need ANTHROPIC_API_KEY (or IT0_AGENT_API_KEY)")
        base = settings.agent_base_url or os.environ.get("ANTHROPIC_BASE_URL")
        return AnthropicModel(spec.name, provider=AnthropicProvider(api_key=key, base_url=base))
    if spec.provider == "openai":
        from pydantic_ai.models.openai import OpenAIChatModel
        from pydantic_ai.providers.openai import OpenAIProvider

        base = settings.agent_base_url or os.environ.get("OPENAI_BASE_URL")
        # local servers (Ollama, vLLM, llama.cpp) take any key; hosted ones need theirs
        key = key or os.environ.get("OPENAI_API_KEY") or ("local" if base else None)
        if not key:
            raise AgentConfigError(
                "openai models need OPENAI_API_KEY, or OPENAI_BASE_URL for a local server"
            )
        return OpenAIChatModel(spec.name, provider=OpenAIProvider(base_url=base, api_key=key))
    raise AgentConfigError(f"{spec.label} is not run by pydantic-ai")


# --- the agent ------------------------------------------------------------------------------


@dataclass
class Deps:
    toolbox: OpsToolbox
    emit: Emit
    paused: dict[str, Pending] = field(default_factory=dict)  # by tool call id


AgentOutput = str | DeferredToolRequests


def make_agent() -> Agent[Deps, AgentOutput]:
    """The agent with IT0's five tools; the model is given per run."""
    agent: Agent[Deps, AgentOutput] = Agent(
        deps_type=Deps,
        output_type=[str, DeferredToolRequests],
        instructions=INSTRUCTIONS,
        name="it0",
    )

    @agent.tool(description=TOOL_DESCRIPTIONS["list_servers"])
    async def list_servers(ctx: RunContext[Deps], selector: str = "") -> str:
        return await ctx.deps.toolbox.list_servers(selector)

    @agent.tool(description=TOOL_DESCRIPTIONS["server_facts"])
    async def server_facts(ctx: RunContext[Deps], name: str) -> str:
        return await ctx.deps.toolbox.server_facts(name)

    @agent.tool(description=TOOL_DESCRIPTIONS["run_command"])
    async def run_command(ctx: RunContext[Deps], selector: str, command: str, reason: str) -> str:
        token = current_call.set(ctx.tool_call_id)
        try:
            result = await ctx.deps.toolbox.run_command(selector, command, reason)
        finally:
            current_call.reset(token)
        if isinstance(result, Pending):  # announced with the run's deferred requests
            ctx.deps.paused[ctx.tool_call_id or ""] = result
            raise CallDeferred(metadata={"task_id": result.task_id})
        return result

    @agent.tool(description=TOOL_DESCRIPTIONS["get_task"])
    async def get_task(ctx: RunContext[Deps], task_id: str) -> str:
        return await ctx.deps.toolbox.get_task(task_id)

    @agent.tool(description=TOOL_DESCRIPTIONS["search_runbooks"])
    async def search_runbooks(ctx: RunContext[Deps], query: str) -> str:
        return await ctx.deps.toolbox.search_runbooks(query)

    return agent


def approval_event(tool_call_id: str | None, pending: Pending) -> dict[str, Any]:
    return {
        "tool_call_id": tool_call_id,
        "task_id": pending.task_id,
        "approval_id": pending.approval_id,
        "risk": pending.risk,
        "command": pending.command,
        "hosts": list(pending.hosts),
    }


# --- one turn -------------------------------------------------------------------------------


@dataclass
class TurnResult:
    history: list[dict[str, Any]]
    input_tokens: int = 0
    output_tokens: int = 0
    tool_calls: int = 0
    paused: bool = False
    error: tuple[str, str] | None = None  # (code, message) when the turn ended early
    text: list[str] = field(default_factory=list)


def load_history(raw: list[dict[str, Any]]) -> list[ModelMessage]:
    return ModelMessagesTypeAdapter.validate_python(raw)


def dump_history(messages: list[ModelMessage]) -> list[dict[str, Any]]:
    dumped: list[dict[str, Any]] = ModelMessagesTypeAdapter.dump_python(messages, mode="json")
    return dumped


async def run_turn(
    agent: Agent[Deps, AgentOutput],
    model: Model,
    deps: Deps,
    settings: Settings,
    *,
    prompt: str | None,
    history: list[dict[str, Any]],
    deferred: DeferredToolResults | None = None,
    context: str | None = None,
) -> TurnResult:
    """Run the model to the end of its turn, reporting events; never raises for the model."""
    result = TurnResult(history=history)
    limits = UsageLimits(
        request_limit=settings.agent_max_tool_calls + 5,
        tool_calls_limit=settings.agent_max_tool_calls,
        total_tokens_limit=settings.agent_max_tokens,
    )
    try:
        async with agent.run_stream_events(
            prompt,
            model=model,
            deps=deps,
            message_history=load_history(history) if history else None,
            deferred_tool_results=deferred,
            usage_limits=limits,
            timeout=settings.agent_turn_timeout,
            instructions=context,
            model_settings={"max_tokens": settings.agent_response_tokens},
        ) as events:
            async for event in events:
                await _report(event, result, deps)
    except UsageLimitExceeded as exc:
        result.error = ("budget_exceeded", f"the turn ended: {exc}")
    except RunTimedOut:
        timeout = settings.agent_turn_timeout
        result.error = ("budget_exceeded", f"the turn ended: it ran longer than {timeout:g} s")
    except ModelHTTPError as exc:
        result.error = ("model_error", f"the model API answered HTTP {exc.status_code}")
    except ModelAPIError as exc:
        result.error = ("model_error", f"the model API failed: {type(exc).__name__}")
    except AgentRunError as exc:
        result.error = ("model_error", f"the model run failed: {type(exc).__name__}")
    return result


async def _report(event: Any, result: TurnResult, deps: Deps) -> None:
    emit = deps.emit
    if isinstance(event, PartStartEvent) and isinstance(event.part, TextPart):
        if event.part.content:
            result.text.append(event.part.content)
            await emit("text", {"delta": event.part.content})
    elif isinstance(event, PartDeltaEvent) and isinstance(event.delta, TextPartDelta):
        if event.delta.content_delta:
            result.text.append(event.delta.content_delta)
            await emit("text", {"delta": event.delta.content_delta})
    elif isinstance(event, FunctionToolCallEvent):
        if event.args_valid is None:  # a resumed deferred call: announced when it was made
            return
        result.tool_calls += 1
        await emit(
            "tool_call",
            {"id": event.tool_call_id, "name": event.part.tool_name, "args": _args(event)},
        )
    elif isinstance(event, FunctionToolResultEvent):
        await emit(
            "tool_result",
            {
                "id": event.tool_call_id,
                "name": event.part.tool_name,
                "content": event.part.model_response_str(),
            },
        )
    elif isinstance(event, DeferredToolRequestsEvent):
        for call in event.requests.calls:
            pending = deps.paused.pop(call.tool_call_id, None)
            if pending is not None:
                await emit("approval_required", approval_event(call.tool_call_id, pending))
    elif isinstance(event, AgentRunResultEvent):
        run = event.result
        usage = run.usage
        result.input_tokens = usage.input_tokens
        result.output_tokens = usage.output_tokens
        result.history = dump_history(run.all_messages())
        result.paused = isinstance(run.output, DeferredToolRequests)


def _args(event: FunctionToolCallEvent) -> dict[str, Any]:
    try:
        return event.part.args_as_dict()
    except ValueError:
        return {"raw": str(event.part.args)[:2000]}


def answer_calls(history: list[dict[str, Any]], waits: list[Any]) -> list[dict[str, Any]]:
    """The history with the paused calls answered, for a resume whose model run failed.

    Without this the history would end in tool calls with no result, which no model API
    accepts; the next message then starts from a consistent conversation.
    """
    from pydantic_ai.messages import ModelRequest, ModelResponse, ToolCallPart, ToolReturnPart

    messages = load_history(history)
    names: dict[str, str] = {}
    for message in messages:
        if isinstance(message, ModelResponse):
            for part in message.parts:
                if isinstance(part, ToolCallPart):
                    names[part.tool_call_id] = part.tool_name
    parts = [
        ToolReturnPart(
            tool_name=names[w.tool_call_id], content=w.result or "", tool_call_id=w.tool_call_id
        )
        for w in waits
        if w.tool_call_id in names
    ]
    if parts:
        messages.append(ModelRequest(parts=parts))
    return dump_history(messages)
