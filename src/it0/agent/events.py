"""The events of a conversation turn, as the API streams them (Server-Sent Events).

``text`` {"delta"}; ``tool_call`` {"id", "name", "args"}; ``tool_result`` {"id", "name",
"content"}; ``approval_required`` {"tool_call_id", "task_id", "approval_id", "risk",
"command", "hosts"}; ``resumed`` {"task_id", "status"}; ``done`` {"status", "usage"};
``error`` {"code", "message"}.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal

EventType = Literal[
    "text", "tool_call", "tool_result", "approval_required", "resumed", "done", "error"
]
EVENT_TYPES: tuple[str, ...] = EventType.__args__  # type: ignore[attr-defined]

Emit = Callable[[str, dict[str, Any]], Awaitable[None]]
"""Where a model runtime reports what happens: ``await emit(type, data)``."""
