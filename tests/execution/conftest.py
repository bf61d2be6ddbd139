"""Fixtures: real sshd processes (tests/sshd.py) and executors closed after each test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from it0.execution import ConnectionPool, FleetExecutor
from it0.execution._sshd import SshdServer
from tests.sshd import TEST_USER, ClientKeys, SshdFleet, ensure_test_user

StartHosts = Callable[[int], list[SshdServer]]


@pytest.fixture(scope="session")
def client_keys() -> ClientKeys:
    return ClientKeys.generate()


@pytest.fixture(scope="session")
def fleet(client_keys: ClientKeys) -> Iterator[SshdFleet]:
    """Builds targets; owns the session's shared server."""
    shared = SshdFleet(client_keys)
    yield shared
    shared.stop()


@pytest.fixture(scope="session")
def sshd(fleet: SshdFleet) -> SshdServer:
    """One sshd shared by tests that leave it as they found it."""
    try:
        return fleet.start(1)[0]
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def sshd_hosts(client_keys: ClientKeys) -> Iterator[StartHosts]:
    """``sshd_hosts(k)``: k fresh servers of this test's own, stopped (by PID) after it."""
    own = SshdFleet(client_keys)

    def start(count: int) -> list[SshdServer]:
        try:
            return own.start(count)
        except RuntimeError as exc:
            pytest.fail(str(exc), pytrace=False)

    yield start
    own.stop()


@pytest.fixture(scope="session")
def test_user() -> str:
    """A login user with a password and a sudo rule (created once, see tests/sshd.py)."""
    try:
        ensure_test_user()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    return TEST_USER


@pytest.fixture
def pool() -> ConnectionPool:
    return ConnectionPool(connect_timeout=10, per_host_concurrency=4)


@pytest.fixture
async def executor(pool: ConnectionPool) -> AsyncIterator[FleetExecutor]:
    ex = FleetExecutor(pool=pool)
    yield ex
    await ex.close()
