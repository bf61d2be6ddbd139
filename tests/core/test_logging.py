"""Log lines never carry a credential from a URL someone else logs."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from it0.core.logging import configure_logging


@pytest.fixture
def configured() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("configured")
@pytest.mark.parametrize("json_lines", [True, False])
def test_a_websocket_request_line_loses_its_token(
    capsys: pytest.CaptureFixture[str], json_lines: bool
) -> None:
    configure_logging("INFO", json_lines=json_lines)
    logging.getLogger("uvicorn.error").info(
        '%s - "WebSocket %s" [accepted]',
        "127.0.0.1:5000",
        "/api/v1/voice/ws/abc?token=eyJhbGciOi.secret-part_1&lang=en",
    )
    line = capsys.readouterr().err
    assert "secret-part_1" not in line
    assert "eyJhbGciOi" not in line
    assert "token=***&lang=en" in line
