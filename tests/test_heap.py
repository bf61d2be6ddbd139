"""The server takes its start-up objects out of the garbage collector's sight, once."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from it0.app import freeze_startup_heap


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()  # what the test froze goes back to the collector


def test_the_startup_heap_is_frozen_once_per_process(unfrozen: None) -> None:
    freeze_startup_heap()
    frozen = gc.get_freeze_count()
    assert frozen > 10_000  # the modules and objects loaded so far
    later = [[index] for index in range(5_000)]  # tracked objects made after start-up
    freeze_startup_heap()
    assert gc.get_freeze_count() == frozen
    assert len(later) == 5_000
