"""The voice WebSocket protocol.

Binary frames are PCM audio, 16 kHz, 16-bit, mono, little-endian, both ways. Text frames are
JSON objects with a ``type``:

server -> client: ``ping``, ``pong``, ``session.resumed``, ``session.ended``, ``error``,
``transcript`` (what the user said), ``agent.text`` (the answer; ``final`` on its last
chunk), ``approval.required``, ``audio.clear`` (stop playback: the user barged in).

client -> server: ``ping`` (answered with ``pong``), ``pong`` (the answer to a server ping),
``text`` (a typed question inside the call).

A malformed or unknown message gets an ``error`` back; it never ends the connection.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

SAMPLE_RATE = 16_000
SAMPLE_WIDTH = 2
CHANNELS = 1
FRAME_MS = 20
FRAME_BYTES = SAMPLE_RATE * SAMPLE_WIDTH * FRAME_MS // 1000  # 640

CLIENT_TYPES = ("ping", "pong", "text")
MAX_TEXT_CHARS = 4000


@dataclass(frozen=True)
class ProtocolError(Exception):
    """What was wrong with a client's frame; sent back as an ``error`` message."""

    code: str
    message: str

    def to_message(self) -> dict[str, Any]:
        return error(self.code, self.message)


def error(code: str, message: str) -> dict[str, Any]:
    return {"type": "error", "code": code, "message": message}


def parse_control(text: str) -> dict[str, Any]:
    """A client's control message, checked; raises ``ProtocolError``."""
    try:
        message = json.loads(text)
    except ValueError as exc:
        raise ProtocolError("bad_message", "a text frame must be a JSON object") from exc
    if not isinstance(message, dict):
        raise ProtocolError("bad_message", "a text frame must be a JSON object")
    kind = message.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("bad_message", "a control message needs a string 'type'")
    if kind not in CLIENT_TYPES:
        raise ProtocolError(
            "unknown_type", f"unknown message type {kind[:40]!r}; known: {', '.join(CLIENT_TYPES)}"
        )
    if kind == "text":
        content = message.get("text")
        if not isinstance(content, str) or not content.strip():
            raise ProtocolError("bad_message", "a 'text' message needs non-empty 'text'")
        if len(content) > MAX_TEXT_CHARS or "\x00" in content:
            raise ProtocolError(
                "bad_message", f"'text' must be at most {MAX_TEXT_CHARS} characters, without NUL"
            )
    return message


def check_audio(data: bytes, max_bytes: int) -> None:
    if len(data) > max_bytes:
        raise ProtocolError(
            "frame_too_large", f"audio frames are at most {max_bytes} bytes; this was {len(data)}"
        )
    if len(data) % (SAMPLE_WIDTH * CHANNELS):
        raise ProtocolError("bad_audio", "audio must be 16-bit PCM: an even number of bytes")
