"""Loopback fakes of the Anthropic Messages and OpenAI Chat Completions HTTP APIs.

`FakeModelServer` answers the real `anthropic` and `openai` SDKs (and pydantic-ai on top of them)
with scripted `Reply` objects, in JSON or as server-sent events, and records every request it was
sent as a normalized `Seen`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import math
import secrets
import socket
import string
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Self

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

__all__ = [
    "FakeModelServer",
    "Reply",
    "Responder",
    "Seen",
    "anthropic_env",
    "openai_env",
]

Api = Literal["anthropic", "openai"]


@dataclass
class Reply:
    """One scripted model answer.

    Text (if any) comes first, then one tool call per entry of `tool_calls`, each a tool name and
    its arguments. A `status` of 400 or more answers with that HTTP status and the provider's error
    body instead, with `error` as its message. `retry_after` (seconds) is sent as `retry-after-ms`
    and `retry-after` on an error, which the SDKs honour when they retry. `delay` (seconds) is
    waited before answering.
    """

    text: str | None = None
    tool_calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    input_tokens: int = 10
    output_tokens: int = 5
    status: int = 200
    error: str | None = None
    retry_after: float | None = None
    delay: float = 0.0

    def __post_init__(self) -> None:
        if self.error is not None and self.status < 400:
            raise ValueError("Reply.error needs an HTTP error status (400 or more)")


@dataclass
class Seen:
    """What one request sent to the model, normalized across both APIs.

    `system` joins every system text (Anthropic's `system` and any system or developer message).
    `tool_results` holds the text of every tool result in the request, in order. `last_user_text`
    is the text of the most recent user message that has any (tool results are not user text).
    """

    api: Api
    model: str
    system: str
    messages: list[dict[str, Any]]
    tools: list[str]
    tool_results: list[str]
    last_user_text: str
    stream: bool
    headers: dict[str, str]
    body: dict[str, Any] = field(default_factory=dict)


Responder = Sequence[Reply] | Callable[[Seen], Reply | Awaitable[Reply]]
"""Replies served in order (then a final text "done"), or a function of the request."""


def anthropic_env(url: str) -> dict[str, str]:
    """Environment pointing an Anthropic client (or a subprocess using one) at `url`."""
    return {"ANTHROPIC_BASE_URL": url, "ANTHROPIC_API_KEY": "test-key"}


def openai_env(url: str) -> dict[str, str]:
    """Environment pointing an OpenAI client (or a subprocess using one) at `url`."""
    return {"OPENAI_BASE_URL": url + "/v1", "OPENAI_API_KEY": "test-key"}


# --- request normalization -------------------------------------------------------------------


def _text_of(content: Any) -> str:
    """The text of a message content: a string, or the `text` blocks/parts of a list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(block.get("text", ""))
            for block in content
            if isinstance(block, dict) and block.get("type") == "text"
        )
    return ""


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    raw = body.get("messages")
    return [m for m in raw if isinstance(m, dict)] if isinstance(raw, list) else []


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user" and (text := _text_of(message.get("content"))):
            return text
    return ""


def _seen_anthropic(body: dict[str, Any], headers: dict[str, str]) -> Seen:
    messages = _messages(body)
    system = [_text_of(body.get("system"))]
    system += [_text_of(m.get("content")) for m in messages if m.get("role") == "system"]
    tool_results = [
        _text_of(block.get("content"))
        for m in messages
        if m.get("role") == "user" and isinstance(m.get("content"), list)
        for block in m["content"]
        if isinstance(block, dict) and block.get("type") == "tool_result"
    ]
    tools = [str(t["name"]) for t in body.get("tools") or [] if isinstance(t, dict) and "name" in t]
    return Seen(
        api="anthropic",
        model=str(body.get("model", "")),
        system="\n".join(s for s in system if s),
        messages=messages,
        tools=tools,
        tool_results=tool_results,
        last_user_text=_last_user_text(messages),
        stream=bool(body.get("stream", False)),
        headers=headers,
        body=body,
    )


def _seen_openai(body: dict[str, Any], headers: dict[str, str]) -> Seen:
    messages = _messages(body)
    system = [
        _text_of(m.get("content")) for m in messages if m.get("role") in ("system", "developer")
    ]
    tool_results = [_text_of(m.get("content")) for m in messages if m.get("role") == "tool"]
    tools = [
        str(t["function"]["name"])
        for t in body.get("tools") or []
        if isinstance(t, dict) and isinstance(t.get("function"), dict) and "name" in t["function"]
    ]
    return Seen(
        api="openai",
        model=str(body.get("model", "")),
        system="\n".join(s for s in system if s),
        messages=messages,
        tools=tools,
        tool_results=tool_results,
        last_user_text=_last_user_text(messages),
        stream=bool(body.get("stream", False)),
        headers=headers,
        body=body,
    )


# --- response building -----------------------------------------------------------------------

_ALPHABET = string.ascii_letters + string.digits


def _id(prefix: str, length: int = 24) -> str:
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(length))


def _pieces(text: str, parts: int = 3) -> list[str]:
    """`text` cut into up to `parts` consecutive non-empty pieces (one if shorter than 2)."""
    if len(text) < 2:
        return [text]
    size = math.ceil(len(text) / min(parts, len(text)))
    return [text[i : i + size] for i in range(0, len(text), size)]


_ANTHROPIC_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "Invalid request"),
    401: ("authentication_error", "invalid x-api-key"),
    402: ("billing_error", "Your credit balance is too low to access the Anthropic API"),
    403: ("permission_error", "Your API key does not have permission to use this resource"),
    404: ("not_found_error", "Not found"),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes"),
    429: ("rate_limit_error", "This request would exceed the rate limit for your organization"),
    500: ("api_error", "Internal server error"),
    504: ("timeout_error", "Request timed out"),
    529: ("overloaded_error", "Overloaded"),
}

_OPENAI_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request"),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided"),
    403: ("invalid_request_error", "unsupported_country_region_territory", "Forbidden"),
    404: ("invalid_request_error", "model_not_found", "The model does not exist"),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests"),
    500: ("server_error", None, "The server had an error while processing your request."),
    503: ("server_error", None, "The engine is currently overloaded, please try again later"),
}


def _error_headers(reply: Reply, request_id_header: str) -> dict[str, str]:
    headers = {request_id_header: _id("req_")}
    if reply.retry_after is not None:
        headers["retry-after-ms"] = str(round(reply.retry_after * 1000))
        headers["retry-after"] = str(math.ceil(reply.retry_after))
    return headers


def _anthropic_error(reply: Reply) -> Response:
    default = _ANTHROPIC_ERRORS[500] if reply.status >= 500 else _ANTHROPIC_ERRORS[400]
    error_type, message = _ANTHROPIC_ERRORS.get(reply.status, default)
    body = {
        "type": "error",
        "error": {"type": error_type, "message": reply.error or message},
        "request_id": _id("req_"),
    }
    return JSONResponse(body, status_code=reply.status, headers=_error_headers(reply, "request-id"))


def _openai_error(reply: Reply) -> Response:
    default = _OPENAI_ERRORS[500] if reply.status >= 500 else _OPENAI_ERRORS[400]
    error_type, code, message = _OPENAI_ERRORS.get(reply.status, default)
    body = {
        "error": {
            "message": reply.error or message,
            "type": error_type,
            "param": None,
            "code": code,
        }
    }
    return JSONResponse(
        body, status_code=reply.status, headers=_error_headers(reply, "x-request-id")
    )


def _anthropic_usage(reply: Reply) -> dict[str, Any]:
    return {
        "input_tokens": reply.input_tokens,
        "output_tokens": reply.output_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "service_tier": "standard",
    }


def _anthropic_message(reply: Reply, model: str) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if reply.text is not None or not reply.tool_calls:
        content.append({"type": "text", "text": reply.text or ""})
    for name, args in reply.tool_calls:
        content.append({"type": "tool_use", "id": _id("toolu_01"), "name": name, "input": args})
    return {
        "id": _id("msg_01"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": "tool_use" if reply.tool_calls else "end_turn",
        "stop_sequence": None,
        "usage": _anthropic_usage(reply),
    }


def _anthropic_events(reply: Reply, model: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """The Messages API stream events of `reply`, as (event name, data) pairs."""
    message = _anthropic_message(reply, model)
    start = {
        **message,
        "content": [],
        "stop_reason": None,
        "usage": {**message["usage"], "output_tokens": 1},
    }
    yield "message_start", {"type": "message_start", "message": start}
    yield "ping", {"type": "ping"}
    for index, block in enumerate(message["content"]):
        if block["type"] == "text":
            opened: dict[str, Any] = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": p} for p in _pieces(block["text"])]
        else:
            opened = {**block, "input": {}}
            arguments = _pieces(json.dumps(block["input"]))
            deltas = [{"type": "input_json_delta", "partial_json": p} for p in ["", *arguments]]
        yield (
            "content_block_start",
            {"type": "content_block_start", "index": index, "content_block": opened},
        )
        for delta in deltas:
            yield (
                "content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": delta},
            )
        yield "content_block_stop", {"type": "content_block_stop", "index": index}
    yield (
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
            "usage": {k: v for k, v in message["usage"].items() if k != "service_tier"},
        },
    )
    yield "message_stop", {"type": "message_stop"}


def _openai_usage(reply: Reply) -> dict[str, Any]:
    return {
        "prompt_tokens": reply.input_tokens,
        "completion_tokens": reply.output_tokens,
        "total_tokens": reply.input_tokens + reply.output_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _openai_tool_calls(reply: Reply) -> list[dict[str, Any]]:
    return [
        {
            "id": _id("call_"),
            "type": "function",
            "function": {"name": name, "arguments": json.dumps(args)},
        }
        for name, args in reply.tool_calls
    ]


def _openai_completion(reply: Reply, model: str) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": reply.text if reply.text is not None or reply.tool_calls else "",
        "refusal": None,
        "annotations": [],
    }
    if reply.tool_calls:
        message["tool_calls"] = _openai_tool_calls(reply)
    return {
        "id": _id("chatcmpl-"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": "tool_calls" if reply.tool_calls else "stop",
            }
        ],
        "usage": _openai_usage(reply),
        "service_tier": "default",
        "system_fingerprint": "fp_fake",
    }


def _openai_chunks(reply: Reply, model: str, include_usage: bool) -> Iterator[dict[str, Any]]:
    """The `chat.completion.chunk` objects of `reply`."""
    base: dict[str, Any] = {
        "id": _id("chatcmpl-"),
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "service_tier": "default",
        "system_fingerprint": "fp_fake",
    }
    if include_usage:
        base["usage"] = None

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return {**base, "choices": [choice]}

    text = reply.text if reply.text is not None or reply.tool_calls else ""
    yield chunk({"role": "assistant", "content": "" if text is not None else None, "refusal": None})
    if text:
        for piece in _pieces(text):
            yield chunk({"content": piece})
    for index, call in enumerate(_openai_tool_calls(reply)):
        function = call["function"]
        opened = {**call, "index": index, "function": {"name": function["name"], "arguments": ""}}
        yield chunk({"tool_calls": [opened]})
        for piece in _pieces(function["arguments"]):
            yield chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
    yield chunk({}, "tool_calls" if reply.tool_calls else "stop")
    if include_usage:
        yield {**base, "choices": [], "usage": _openai_usage(reply)}


_SSE_HEADERS = {"cache-control": "no-cache"}


# --- the server -------------------------------------------------------------------------------


class _Uvicorn(uvicorn.Server):
    """A `uvicorn.Server` that stops as soon as asked, not on its next 0.1 s tick."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets=sockets)

    async def main_loop(self) -> None:
        assert self._wake is not None
        await self._wake.wait()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # Take in the connections clients already opened first: on Python 3.11 a connection
        # accepted just before `Server.close()` fails to attach and leaks its socket.
        await asyncio.sleep(0.01)
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        loop = asyncio.get_running_loop()
        state = self.server_state
        for connection in list(state.connections):
            connection.shutdown()
        # uvicorn signals no closed connection, so poll as it does.
        deadline = loop.time() + 2
        while (state.connections or state.tasks) and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.002)
        for task in list(state.tasks):
            task.cancel()
        for connection in list(state.connections):
            connection.transport.close()
        for server in self.servers:
            await server.wait_closed()

    async def pause(self, seconds: float) -> None:
        """Sleep for `seconds`, or until the server is asked to stop."""
        assert self._wake is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    def request_stop(self) -> None:
        """Ask the server, from any thread, to shut down."""
        self.should_exit = True
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already closed
                loop.call_soon_threadsafe(wake.set)


class FakeModelServer:
    """A loopback HTTP server speaking the Anthropic Messages and OpenAI Chat Completions APIs.

    Serves `POST /v1/messages`, `POST /v1/messages/count_tokens` and `POST /v1/chat/completions`
    from its own thread and event loop, so it works from sync and async tests alike. A callable
    responder (sync or async) runs on that loop. Every model request is recorded in `requests`,
    every token count in `token_count_requests`; an exception raised by the responder is kept in
    `errors` and answered as a 500.
    """

    def __init__(self, responder: Responder, *, event_delay: float = 0.0) -> None:
        self._responder = responder
        self._next = 0
        self._event_delay = event_delay
        self.requests: list[Seen] = []
        self.token_count_requests: list[Seen] = []
        self.errors: list[BaseException] = []
        self.url = ""
        self._server: _Uvicorn | None = None
        self._thread: threading.Thread | None = None
        self._crash: BaseException | None = None
        self._app = Starlette(
            routes=[
                Route("/v1/messages", self._anthropic_messages, methods=["POST"]),
                Route("/v1/messages/count_tokens", self._anthropic_count_tokens, methods=["POST"]),
                Route("/v1/chat/completions", self._openai_chat_completions, methods=["POST"]),
            ]
        )

    # lifecycle

    def start(self) -> Self:
        """Bind a free port on 127.0.0.1 and serve until `stop`."""
        if self._thread is not None:
            raise RuntimeError("FakeModelServer is already running")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
            config = uvicorn.Config(
                self._app,
                lifespan="off",
                loop="asyncio",
                http="h11",
                ws="none",
                log_config=None,
                access_log=False,
            )
            server = _Uvicorn(config)
            thread = threading.Thread(
                target=self._serve, args=(server, sock), name=f"fake-model-server-{port}"
            )
            thread.daemon = True
        except BaseException:
            sock.close()
            raise
        self._server, self._thread, self._crash = server, thread, None
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                crash = self._crash
                with contextlib.suppress(RuntimeError):
                    self.stop()
                raise RuntimeError("FakeModelServer did not start") from crash
            time.sleep(0.002)
        self.url = f"http://127.0.0.1:{port}"
        return self

    def _serve(self, server: _Uvicorn, sock: socket.socket) -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as exc:  # reported by start() and stop()
            self._crash = exc
        finally:
            sock.close()

    def stop(self) -> None:
        """Stop serving and wait for the server thread to end (a no-op when not running)."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None or thread is None:
            return
        server.request_stop()
        thread.join(timeout=10)
        if thread.is_alive():
            raise RuntimeError("FakeModelServer did not stop")
        if self._crash is not None:
            raise RuntimeError("FakeModelServer crashed") from self._crash

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)

    # replies

    async def _reply(self, seen: Seen) -> Reply:
        self.requests.append(seen)
        responder = self._responder
        if callable(responder):
            result = responder(seen)
            reply = await result if inspect.isawaitable(result) else result
        elif self._next < len(responder):
            reply = responder[self._next]
            self._next += 1
        else:
            reply = Reply(text="done")
        if reply.delay and self._server is not None:
            await self._server.pause(reply.delay)
        return reply

    async def _seen(
        self, request: Request, normalize: Callable[[dict[str, Any], dict[str, str]], Seen]
    ) -> Seen | None:
        try:
            body = await request.json()
        except ValueError:
            return None
        if not isinstance(body, dict):
            return None
        return normalize(body, dict(request.headers))

    async def _sse(self, events: Iterator[str]) -> AsyncIterator[str]:
        for event in events:
            yield event
            await asyncio.sleep(self._event_delay)

    # Anthropic

    async def _anthropic_messages(self, request: Request) -> Response:
        seen = await self._seen(request, _seen_anthropic)
        if seen is None:
            return _anthropic_error(Reply(status=400, error="request body is not a JSON object"))
        try:
            reply = await self._reply(seen)
        except Exception as exc:
            self.errors.append(exc)
            return _anthropic_error(
                Reply(status=500, error=f"responder failed: {type(exc).__name__}: {exc}")
            )
        if reply.status >= 400:
            return _anthropic_error(reply)
        headers = {"request-id": _id("req_")}
        if not seen.stream:
            return JSONResponse(_anthropic_message(reply, seen.model), headers=headers)
        events = (
            f"event: {name}\ndata: {json.dumps(data)}\n\n"
            for name, data in _anthropic_events(reply, seen.model)
        )
        return StreamingResponse(
            self._sse(events),
            media_type="text/event-stream",
            headers={**_SSE_HEADERS, **headers},
        )

    async def _anthropic_count_tokens(self, request: Request) -> Response:
        seen = await self._seen(request, _seen_anthropic)
        if seen is None:
            return _anthropic_error(Reply(status=400, error="request body is not a JSON object"))
        self.token_count_requests.append(seen)
        counted = [seen.system, seen.messages, seen.body.get("tools") or []]
        return JSONResponse({"input_tokens": max(1, len(json.dumps(counted)) // 4)})

    # OpenAI

    async def _openai_chat_completions(self, request: Request) -> Response:
        seen = await self._seen(request, _seen_openai)
        if seen is None:
            return _openai_error(Reply(status=400, error="request body is not a JSON object"))
        try:
            reply = await self._reply(seen)
        except Exception as exc:
            self.errors.append(exc)
            return _openai_error(
                Reply(status=500, error=f"responder failed: {type(exc).__name__}: {exc}")
            )
        if reply.status >= 400:
            return _openai_error(reply)
        headers = {"x-request-id": _id("req_")}
        if not seen.stream:
            return JSONResponse(_openai_completion(reply, seen.model), headers=headers)
        options = seen.body.get("stream_options")
        include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        events = (
            f"data: {json.dumps(chunk)}\n\n"
            for chunk in _openai_chunks(reply, seen.model, include_usage)
        )
        return StreamingResponse(
            self._sse(_with_done(events)),
            media_type="text/event-stream",
            headers={**_SSE_HEADERS, **headers},
        )


def _with_done(events: Iterator[str]) -> Iterator[str]:
    yield from events
    yield "data: [DONE]\n\n"
