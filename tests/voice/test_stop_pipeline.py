"""A call's pipeline that does not wind down after its cancel cannot hold the connection."""

from __future__ import annotations

import asyncio

import pytest

from it0.voice.gateway import stop_pipeline

LIMIT = 0.2


async def test_a_pipeline_that_winds_down_is_waited_for() -> None:
    pipeline = asyncio.create_task(asyncio.sleep(0.05, result="done"))
    assert await stop_pipeline(pipeline, LIMIT)
    assert pipeline.result() == "done"


async def test_a_pipeline_that_hangs_is_cancelled(caplog: pytest.LogCaptureFixture) -> None:
    pipeline = asyncio.create_task(asyncio.Event().wait())  # e.g. a stage dropped the cancel
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await stop_pipeline(pipeline, LIMIT)
    assert pipeline.cancelled()
    assert LIMIT <= loop.time() - started < 3 * LIMIT
    assert "still running" in caplog.text


async def test_a_pipeline_that_ignores_its_cancellation_is_left_behind(
    caplog: pytest.LogCaptureFixture,
) -> None:
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue  # swallowed: the bug this guards against

    pipeline = asyncio.create_task(stubborn())
    assert not await stop_pipeline(pipeline, LIMIT)
    assert "left behind" in caplog.text
    release.set()
    await pipeline


async def test_a_pipeline_that_failed_is_not_an_error() -> None:
    async def broken() -> None:
        raise RuntimeError("a stage failed")

    pipeline = asyncio.create_task(broken())
    assert await stop_pipeline(pipeline, LIMIT)
    assert isinstance(pipeline.exception(), RuntimeError)
