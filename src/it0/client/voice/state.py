"""The states of a voice call, as a UI renders them.

A call goes ``connecting`` -> ``connected``; a dropped connection brings ``reconnecting``
once per attempt, then ``connected`` and, once the server confirms, ``resumed``. It ends in
``ended`` (someone hung up, or the server ended the session) or ``failed`` (it could not
connect, or every reconnect attempt failed).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

Language = Literal["zh", "en"]


class CallState(StrEnum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    RESUMED = "resumed"
    ENDED = "ended"
    FAILED = "failed"

    @property
    def final(self) -> bool:
        """Whether the call is over: nothing follows ``ended`` or ``failed``."""
        return self in (CallState.ENDED, CallState.FAILED)


_BANNERS: dict[CallState, dict[Language, str]] = {
    CallState.CONNECTING: {"zh": "连接中...", "en": "connecting…"},
    CallState.RECONNECTING: {
        "zh": "重新连接中... ({attempt}/{max})",
        "en": "reconnecting… ({attempt}/{max})",
    },
    CallState.ENDED: {"zh": "通话已结束", "en": "call ended"},
    CallState.FAILED: {"zh": "连接失败", "en": "connection failed"},
}


@dataclass(frozen=True)
class StateChange:
    """One state the call entered; ``attempt``/``max_attempts`` count reconnect attempts."""

    state: CallState
    attempt: int = 0
    max_attempts: int = 0
    reason: str = ""

    def banner(self, language: Language = "zh") -> str | None:
        """The warning banner for this state, e.g. "重新连接中... (2/5)"; None when live."""
        texts = _BANNERS.get(self.state)
        if texts is None:
            return None
        return texts[language].format(attempt=self.attempt, max=self.max_attempts)
