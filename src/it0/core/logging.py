"""JSON log lines carrying the request id of the request being served."""

from __future__ import annotations

import json
import logging
import re
import sys
from contextvars import ContextVar
from datetime import UTC, datetime

request_id_var: ContextVar[str | None] = ContextVar("it0_request_id", default=None)


class JsonFormatter(logging.Formatter):
    """One JSON object per line. Exceptions are summarised (type, message, where), never
    dumped as a traceback: a traceback can carry local values such as secrets."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = request_id_var.get()
        if request_id:
            entry["request_id"] = request_id
        for key in ("method", "path", "status", "duration_ms", "client", "tenant", "actor"):
            value = record.__dict__.get(key)
            if value is not None:
                entry[key] = value
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            tb = exc.__traceback__
            while tb is not None and tb.tb_next is not None:
                tb = tb.tb_next
            entry["error"] = type(exc).__name__
            if tb is not None:
                entry["where"] = (
                    f"{tb.tb_frame.f_code.co_filename.rsplit('/', 1)[-1]}:{tb.tb_lineno}"
                )
        return json.dumps(entry, default=str)


_QUERY_SECRET = re.compile(r"([?&](?:token|key|access_token)=)[^&\s\"']+", re.IGNORECASE)


class RedactQuerySecrets(logging.Filter):
    """Masks credentials in URLs that others log (uvicorn logs each WebSocket's request line,
    and a voice call's URL carries its token)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = _QUERY_SECRET.sub(r"\1***", message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


class PlainFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def formatException(self, ei: object) -> str:
        return ""


def configure_logging(level: str = "INFO", json_lines: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else PlainFormatter())
    handler.addFilter(RedactQuerySecrets())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # requests are logged by our middleware, without query strings (they may carry tokens)
    logging.getLogger("uvicorn.access").disabled = True
