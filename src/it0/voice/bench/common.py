"""What both voice benchmarks share: the throwaway admin, the audio format, progress lines,
the arithmetic of the figures, and the app served in this process."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from rich.console import Console

if TYPE_CHECKING:
    from it0.platform import Platform

err = Console(stderr=True)

HOST = "127.0.0.1"
PASSWORD = "bench-password-123"  # noqa: S105 - a throwaway data dir's admin
RATE = 16_000
FRAME_SECONDS = 0.02
FRAME_BYTES = 640
CHEAP_ARGON2: dict[str, Any] = {
    "argon2_time_cost": 1,
    "argon2_memory_kib": 1024,
    "argon2_parallelism": 1,
}


class Progress:
    """Progress lines on stderr, with the seconds since the run started."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def say(self, message: str) -> None:
        elapsed = time.monotonic() - self.started
        err.print(f"[dim]bench {elapsed:5.1f}s:[/dim] {message}", highlight=False)


progress = Progress()
say = progress.say


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def percentile(values: list[float], q: float) -> float | None:
    """The ``q``-th percentile (nearest rank on the sorted values); None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@contextlib.asynccontextmanager
async def serve_in_process(p: Platform) -> AsyncIterator[tuple[str, Any]]:
    """The whole app on a free port of 127.0.0.1, in this process, lifespan and all."""
    import uvicorn

    from it0.app import create_app

    app = create_app(platform=p)
    config = uvicorn.Config(
        app,
        host=HOST,
        port=0,
        log_config=None,
        access_log=False,
        ws="websockets-sansio",
        lifespan="on",
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            raise RuntimeError("the in-process server did not start")
        await asyncio.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{HOST}:{port}", app
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)
