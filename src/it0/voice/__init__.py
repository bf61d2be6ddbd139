"""Voice calls to the agent: sessions that survive dropped connections, a Pipecat pipeline
per connection, offline speech by default.

Pipecat logs through loguru; importing this package sends those records to the standard
``logging`` tree under ``it0.voice.pipecat`` (warnings and up), like the rest of IT0's logs.
"""

from __future__ import annotations

import logging
import warnings

from loguru import logger as _loguru

# pipecat's audio helpers import audioop, deprecated since Python 3.11 (still shipped there)
warnings.filterwarnings("ignore", message="'audioop' is deprecated", category=DeprecationWarning)

_pipecat_log = logging.getLogger("it0.voice.pipecat")


def _to_logging(message: object) -> None:
    record = message.record  # type: ignore[attr-defined]
    _pipecat_log.log(record["level"].no, "%s", record["message"])


_loguru.remove()
_loguru.add(_to_logging, level="WARNING", format="{message}")
