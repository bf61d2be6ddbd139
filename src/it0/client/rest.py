"""A small synchronous client for IT0's HTTP API: tasks, approvals, standing orders.

Every error the server answers with becomes one ``ApiError`` carrying the stable ``code``
of the server's error envelope; a server that cannot be reached is a ``ServerUnreachable``.
``events`` follows a task's Server-Sent Events and reconnects with ``Last-Event-ID`` when
the connection drops, so a caller sees every event once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any, TypedDict

import httpx

API = "/api/v1"
RECONNECT_ATTEMPTS = 3
# the server sends a keep-alive comment every 15 s; silence far beyond that is a dead link
STREAM_READ_TIMEOUT = 60.0


class Event(TypedDict):
    """One Server-Sent Event: its type, its id (None when it has none) and its JSON data."""

    event: str
    id: str | None
    data: Any


class ApiError(Exception):
    """An error answer of the server: HTTP status, stable error code, message, details."""

    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details

    @classmethod
    def of(cls, response: httpx.Response) -> ApiError:
        """Read the ``{"error": {code, message, details}}`` envelope, whatever arrived."""
        try:
            error = response.json()["error"]
            return cls(
                response.status_code,
                str(error["code"]),
                str(error["message"]),
                error.get("details"),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            text = response.text.strip()[:200] or response.reason_phrase
            return cls(response.status_code, f"http_{response.status_code}", text)


class ServerUnreachable(ApiError):
    """No answer at all: connection refused, DNS, TLS, or the link dropped for good."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(0, "unreachable", f"cannot reach {url}: {reason}")
        self.url = url


def parse_sse(lines: Iterable[str]) -> Iterator[Event]:
    """Events of the SSE wire format; comments (``:``) and unknown fields are skipped.

    A blank line ends an event; ``data`` lines are joined with newlines and decoded as
    JSON when they are JSON (the server always sends JSON; anything else stays text).
    """
    kind, event_id = "", None
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                text = "\n".join(data)
                yield Event(event=kind or "message", id=event_id, data=_json_or_text(text))
            kind, event_id, data = "", None, []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            kind = value
        elif name == "data":
            data.append(value)
        elif name == "id" and "\0" not in value:
            event_id = value


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _without_none(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


class Client:
    """``Client(url, key)``: every call authenticates with the API key as a bearer token."""

    def __init__(
        self,
        url: str,
        key: str,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {key}", "Accept": "application/json"},
            timeout=timeout,
            transport=transport,
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # --- plumbing ---------------------------------------------------------------------------

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """The decoded JSON body of a successful call (None when it has none)."""
        try:
            response = self._http.request(method, API + path, **kwargs)
        except httpx.TransportError as exc:
            raise ServerUnreachable(self.url, _reason(exc)) from exc
        if response.is_error:
            raise ApiError.of(response)
        return response.json() if response.content else None

    def _object(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        body = self.request(method, path, **kwargs)
        if not isinstance(body, dict):
            raise ApiError(200, "unexpected_body", f"{path} did not answer with an object")
        return body

    def _list(self, path: str, **kwargs: Any) -> list[dict[str, Any]]:
        body = self.request("GET", path, **kwargs)
        if not isinstance(body, list):
            raise ApiError(200, "unexpected_body", f"{path} did not answer with a list")
        return body

    # --- tasks ------------------------------------------------------------------------------

    def create_task(
        self,
        targets: str,
        *,
        command: str | None = None,
        script: str | None = None,
        steps: list[dict[str, Any]] | None = None,
        reason: str = "",
        sudo: bool = False,
        timeout: float | None = None,
        rollout: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Submit a task: read-only ones are queued, others wait for approval."""
        body = _without_none(
            {
                "targets": targets,
                "command": command,
                "script": script,
                "steps": steps,
                "reason": reason,
                "sudo": sudo,
                "timeout": timeout,
                "rollout": dict(rollout) if rollout else None,
            }
        )
        return self._object("POST", "/tasks", json=body)

    def tasks(
        self,
        *,
        status: str | None = None,
        risk: str | None = None,
        cursor: str | None = None,
        limit: int | None = None,
    ) -> dict[str, Any]:
        """One page, newest first: ``{"items": [...], "next_cursor": ...}``."""
        params = _without_none({"status": status, "risk": risk, "cursor": cursor, "limit": limit})
        return self._object("GET", "/tasks", params=params)

    def task(self, ref: str) -> dict[str, Any]:
        """The task by id or unique id prefix, with its hosts and risk explanation."""
        return self._object("GET", f"/tasks/{ref}")

    def cancel_task(self, ref: str) -> dict[str, Any]:
        return self._object("POST", f"/tasks/{ref}/cancel")

    def retry_task(self, ref: str, reason: str | None = None) -> dict[str, Any]:
        body = {"reason": reason} if reason is not None else None
        return self._object("POST", f"/tasks/{ref}/retry", json=body)

    def events(
        self,
        task_id: str,
        last_event_id: str | None = None,
        *,
        attempts: int = RECONNECT_ATTEMPTS,
        backoff: float = 0.5,
    ) -> Iterator[Event]:
        """The task's events until the final ``done``, reconnecting after a dropped link.

        Up to ``attempts`` reconnects in a row (the count restarts once events arrive);
        an error answer of the server is raised at once, never retried.
        """
        failures = 0
        while True:
            headers = {"Accept": "text/event-stream"}
            if last_event_id is not None:
                headers["Last-Event-ID"] = last_event_id
            timeout = httpx.Timeout(self._http.timeout.connect, read=STREAM_READ_TIMEOUT)
            why = "the stream ended before the task did"
            try:
                with self._http.stream(
                    "GET", f"{API}/tasks/{task_id}/events", headers=headers, timeout=timeout
                ) as response:
                    if response.is_error:
                        response.read()
                        raise ApiError.of(response)
                    for event in parse_sse(response.iter_lines()):
                        failures = 0
                        if event["id"] is not None:
                            last_event_id = event["id"]
                        yield event
                        if event["event"] == "done":
                            return
            except httpx.TransportError as exc:
                why = _reason(exc)
            failures += 1
            if failures > attempts:
                raise ServerUnreachable(self.url, why)
            time.sleep(backoff * failures)

    # --- the agent ----------------------------------------------------------------------------

    def create_session(self, title: str | None = None) -> dict[str, Any]:
        return self._object("POST", "/agent/sessions", json=_without_none({"title": title}))

    def sessions(self) -> list[dict[str, Any]]:
        return self._list("/agent/sessions")

    def session(self, session_id: str) -> dict[str, Any]:
        return self._object("GET", f"/agent/sessions/{session_id}")

    def ask(self, session_id: str, content: str) -> Iterator[Event]:
        """Send a message; the turn's events until ``done`` (a turn is not retried)."""
        timeout = httpx.Timeout(self._http.timeout.connect, read=STREAM_READ_TIMEOUT)
        try:
            with self._http.stream(
                "POST",
                f"{API}/agent/sessions/{session_id}/messages",
                json={"content": content},
                headers={"Accept": "text/event-stream"},
                timeout=timeout,
            ) as response:
                if response.is_error:
                    response.read()
                    raise ApiError.of(response)
                for event in parse_sse(response.iter_lines()):
                    yield event
                    if event["event"] == "done":
                        return
        except httpx.TransportError as exc:
            raise ServerUnreachable(self.url, _reason(exc)) from exc

    def session_events(
        self, session_id: str, after: int = 0, *, follow: bool = True
    ) -> Iterator[Event]:
        """The session's stored events after ``after``; with ``follow``, until it is idle."""
        timeout = httpx.Timeout(self._http.timeout.connect, read=STREAM_READ_TIMEOUT)
        params: dict[str, str | int] = {"after": after, "follow": str(follow).lower()}
        try:
            with self._http.stream(
                "GET",
                f"{API}/agent/sessions/{session_id}/events",
                params=params,
                headers={"Accept": "text/event-stream"},
                timeout=timeout,
            ) as response:
                if response.is_error:
                    response.read()
                    raise ApiError.of(response)
                yield from parse_sse(response.iter_lines())
        except httpx.TransportError as exc:
            raise ServerUnreachable(self.url, _reason(exc)) from exc

    # --- approvals --------------------------------------------------------------------------

    def approvals(
        self, status: str | None = "pending", *, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """Newest first; ``status=None`` for every state."""
        return self._list("/approvals", params=_without_none({"status": status, "limit": limit}))

    def approval(self, ref: str) -> dict[str, Any]:
        return self._object("GET", f"/approvals/{ref}")

    def approve(self, ref: str, comment: str = "") -> dict[str, Any]:
        return self._object("POST", f"/approvals/{ref}/approve", json={"comment": comment})

    def reject(self, ref: str, comment: str = "") -> dict[str, Any]:
        return self._object("POST", f"/approvals/{ref}/reject", json={"comment": comment})

    # --- standing orders --------------------------------------------------------------------

    def orders(self, status: str | None = None) -> list[dict[str, Any]]:
        return self._list("/standing-orders", params=_without_none({"status": status}))

    def order(self, ref: str) -> dict[str, Any]:
        """By number, id (or unique prefix) or name."""
        return self._object("GET", f"/standing-orders/{ref}")

    def create_order(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Propose an order; it waits for another person's approval."""
        return self._object("POST", "/standing-orders", json=dict(body))

    def update_order(self, ref: str, changes: Mapping[str, Any]) -> dict[str, Any]:
        """A new version of the order, which stops until it is approved again."""
        return self._object("PATCH", f"/standing-orders/{ref}", json=dict(changes))

    def decide_order(
        self, ref: str, action: str, comment: str = "", version: int | None = None
    ) -> dict[str, Any]:
        """``action`` is approve (of the given ``version``), reject, pause or resume."""
        if action not in ("approve", "reject", "pause", "resume"):
            raise ValueError(f"unknown standing order action {action!r}")
        body: dict[str, Any] | None = None if action == "resume" else {"comment": comment}
        if action == "approve":
            body = {"comment": comment, "version": version}
        return self._object("POST", f"/standing-orders/{ref}/{action}", json=body)

    # --- runbooks ---------------------------------------------------------------------------

    def runbooks(self, query: str | None = None) -> list[dict[str, Any]]:
        """Every runbook by id (built-in and the tenant's), or the best matches of ``query``."""
        return self._list("/runbooks", params=_without_none({"q": query}))

    def runbook(self, runbook_id: str) -> dict[str, Any]:
        return self._object("GET", f"/runbooks/{runbook_id}")

    def put_runbook(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        """Add or replace the tenant's runbook ``spec["id"]``."""
        return self._object("PUT", f"/runbooks/{spec.get('id', '')}", json=dict(spec))

    def delete_runbook(self, runbook_id: str) -> None:
        self.request("DELETE", f"/runbooks/{runbook_id}")


def _reason(exc: httpx.TransportError) -> str:
    return str(exc) or type(exc).__name__
