"""Fixtures of the audit tests (on top of tests/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from it0.audit import install_audit_guard
from it0.auth.bootstrap import bootstrap
from it0.core.settings import Settings
from it0.platform import Platform
from tests.conftest import make_settings

CHECKPOINT_EVERY = 5


@pytest.fixture
def small_settings(tmp_path: Path, database_url: str | None) -> Settings:
    """Settings that sign a checkpoint every ``CHECKPOINT_EVERY`` events."""
    return make_settings(
        tmp_path / "data-small", database_url, audit_checkpoint_every=CHECKPOINT_EVERY
    )


@pytest.fixture
async def small_platform(small_settings: Settings) -> AsyncIterator[Platform]:
    install_audit_guard()
    p = Platform.create(small_settings)
    await bootstrap(p)
    try:
        yield p
    finally:
        await p.close()
