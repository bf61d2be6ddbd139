"""The three REST calls of a voice session, and the WebSocket URLs they hand out.

The URLs carry a short-lived token in their query string: they are never logged, and
``redact`` gives the form that may be.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import httpx

from it0.client.rest import ApiError, ServerUnreachable

API = "/api/v1/voice"
SESSION_ID_KEYS = ("session_id", "sessionId", "id")
AGENT_SESSION_ID_KEYS = ("agent_session_id", "agentSessionId")
_WS_SCHEMES = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}
_TOKEN = re.compile(r"(token=)[^&\s'\"]+", re.IGNORECASE)


@dataclass(frozen=True)
class SessionGrant:
    """A session id and the WebSocket URL (with its token) to join it now.

    ``agent_session_id`` is the agent conversation the call belongs to, when the server
    says (it0's does; another server may not).
    """

    session_id: str
    websocket_url: str = field(repr=False)
    agent_session_id: str | None = None


class VoiceApi:
    """``POST /sessions``, ``POST /sessions/{id}/reconnect``, ``DELETE /sessions/{id}``."""

    def __init__(
        self,
        base_url: str,
        credential: str,
        *,
        timeout: float,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {credential}", "Accept": "application/json"},
            timeout=timeout,
            transport=transport,
        )

    async def create(self, agent_session_id: str | None) -> SessionGrant:
        return await self._grant("/sessions", json={"agent_session_id": agent_session_id})

    async def reconnect(self, session_id: str) -> SessionGrant:
        return await self._grant(f"/sessions/{quote(session_id, safe='')}/reconnect")

    async def end(self, session_id: str) -> bool:
        """End the session; False when the server no longer knows it."""
        try:
            await self._request("DELETE", f"/sessions/{quote(session_id, safe='')}")
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._http.request(method, API + path, **kwargs)
        except httpx.RequestError as exc:
            raise ServerUnreachable(self.base_url, str(exc) or type(exc).__name__) from exc
        if response.is_error:
            raise ApiError.of(response)
        return response

    async def _grant(self, path: str, **kwargs: Any) -> SessionGrant:
        response = await self._request("POST", path, **kwargs)
        try:
            body = response.json()
        except ValueError:
            body = None
        fields: dict[str, Any] = body if isinstance(body, dict) else {}
        session_id = _first_id(fields, SESSION_ID_KEYS)
        url = fields.get("websocket_url")
        if session_id is None or not isinstance(url, str) or not url:
            raise ApiError(
                response.status_code,
                "unexpected_body",
                f"{API}{path} answered without a session id and a websocket_url",
            )
        return SessionGrant(
            session_id,
            websocket_url(url, self.base_url),
            agent_session_id=_first_id(fields, AGENT_SESSION_ID_KEYS),
        )


def _first_id(body: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    """The first of ``keys`` that holds a non-empty string or an integer, as a string."""
    for key in keys:
        value = body.get(key)
        if isinstance(value, bool):
            continue
        if (isinstance(value, str) and value) or isinstance(value, int):
            return str(value)
    return None


def websocket_url(url: str, base_url: str) -> str:
    """An absolute ``ws://``/``wss://`` URL; a relative one is joined to the base URL.

    The base URL's path is kept as a prefix, as it is for the REST calls, so a server
    mounted under ``https://host/it0`` is reached there over WebSocket too.
    """
    parts = urlsplit(url)
    if parts.scheme:
        scheme = _WS_SCHEMES.get(parts.scheme.lower())
        if scheme is None or not parts.netloc:
            raise ApiError(200, "unexpected_body", "the websocket_url is not a WebSocket URL")
        return urlunsplit(parts._replace(scheme=scheme))
    base = urlsplit(base_url)
    scheme = _WS_SCHEMES[base.scheme.lower()]
    return f"{scheme}://{base.netloc}{base.path.rstrip('/')}/{url.lstrip('/')}"


def redact(url: str) -> str:
    """The URL without its query string and fragment: safe to log."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def redact_tokens(text: str) -> str:
    return _TOKEN.sub(r"\1***", text)


class RedactTokens(logging.Filter):
    """Masks ``token=...`` in a record, e.g. the request line a WebSocket library logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "token=" in message.lower():
            record.msg, record.args = redact_tokens(message), None
        return True
