"""Shared fixtures. Real servers come from tests/services.py; missing ones fail, never skip."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from tests.services import ServerHandle, postgres_server, redis_server


def _serve(start: Callable[[], ServerHandle]) -> Iterator[str]:
    try:
        handle = start()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield handle.url
    finally:
        handle.stop()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """postgresql+asyncpg:// URL of a real PostgreSQL (database ``test``)."""
    yield from _serve(postgres_server)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """redis:// URL of a real Redis."""
    yield from _serve(redis_server)
