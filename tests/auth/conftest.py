"""Fixtures of the auth tests: platforms built with non-default settings, on both backends."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from it0.audit import install_audit_guard
from it0.auth.bootstrap import bootstrap
from it0.platform import Platform
from tests.conftest import make_settings

PlatformFactory = Callable[..., Awaitable[Platform]]


@pytest.fixture
async def platform_factory(
    tmp_path: Path, database_url: str | None
) -> AsyncIterator[PlatformFactory]:
    """``await platform_factory(login_max_failures=2)``: a bootstrapped platform, closed after."""
    made: list[Platform] = []

    async def make(**overrides: object) -> Platform:
        install_audit_guard()
        settings = make_settings(tmp_path / f"data-{len(made)}", database_url, **overrides)
        p = Platform.create(settings)
        made.append(p)
        await bootstrap(p)
        return p

    yield make
    for p in made:
        await p.close()
