"""Authentication and host-key policy against real sshd processes."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import asyncssh
import pytest

from it0.execution import (
    AuthFailed,
    ConnectionPool,
    FleetExecutor,
    HostKeyChanged,
    HostKeyUnknown,
    Unreachable,
    fingerprint,
    public_key_line,
)
from it0.execution._sshd import SshdServer
from tests.execution.conftest import StartHosts
from tests.sshd import PASSPHRASE, TEST_PASSWORD, SshdFleet


@pytest.mark.parametrize("key", ["ed25519", "rsa"])
async def test_key_auth(
    executor: FleetExecutor, fleet: SshdFleet, sshd: SshdServer, key: str
) -> None:
    private_key = getattr(fleet.keys, key)
    result = await executor.run_on(fleet.target(sshd, private_key=private_key), "echo hi $USER")
    assert result.ok
    assert result.stdout.startswith("hi ")
    assert result.host_key == sshd.host_key
    assert not result.host_key_new


async def test_passphrase_protected_key(
    executor: FleetExecutor, fleet: SshdFleet, sshd: SshdServer
) -> None:
    target = fleet.target(sshd, private_key=fleet.keys.encrypted, passphrase=PASSPHRASE)
    assert (await executor.run_on(target, "true")).ok


async def test_wrong_passphrase_is_auth_failed_without_secrets(
    executor: FleetExecutor, fleet: SshdFleet, sshd: SshdServer
) -> None:
    target = fleet.target(sshd, private_key=fleet.keys.encrypted, passphrase="wrong-passphrase")
    with pytest.raises(AuthFailed) as caught:
        await executor.run_on(target, "true")
    assert caught.value.code == "auth_failed"
    text = f"{caught.value} {caught.value.details} {caught.value!r}"
    assert "wrong-passphrase" not in text
    assert "PRIVATE KEY" not in text


async def test_unknown_key_is_auth_failed(
    executor: FleetExecutor, fleet: SshdFleet, sshd: SshdServer
) -> None:
    stranger = asyncssh.generate_private_key("ssh-ed25519").export_private_key().decode()
    with pytest.raises(AuthFailed):
        await executor.run_on(fleet.target(sshd, private_key=stranger), "true")


async def test_password_auth(
    executor: FleetExecutor, fleet: SshdFleet, sshd: SshdServer, test_user: str
) -> None:
    target = fleet.target(sshd, username=test_user, private_key=None, password=TEST_PASSWORD)
    result = await executor.run_on(target, "id -un")
    assert result.stdout.strip() == test_user


async def test_password_is_tried_after_a_refused_key(
    executor: FleetExecutor, fleet: SshdFleet, sshd: SshdServer, test_user: str
) -> None:
    stranger = asyncssh.generate_private_key("ssh-ed25519").export_private_key().decode()
    target = fleet.target(sshd, username=test_user, private_key=stranger, password=TEST_PASSWORD)
    assert (await executor.run_on(target, "true")).ok


async def test_wrong_password_is_auth_failed(
    executor: FleetExecutor, fleet: SshdFleet, sshd: SshdServer, test_user: str
) -> None:
    target = fleet.target(sshd, username=test_user, private_key=None, password="not-it")
    with pytest.raises(AuthFailed) as caught:
        await executor.run_on(target, "true")
    assert "not-it" not in f"{caught.value} {caught.value.details}"


def test_repr_hides_secrets(fleet: SshdFleet, sshd: SshdServer) -> None:
    target = fleet.target(
        sshd, password="pw-secret-1", passphrase="pp-secret-2", sudo_password="sudo-secret-3"
    )
    for text in (repr(target), str(target), f"{target}"):
        assert "pw-secret-1" not in text
        assert "pp-secret-2" not in text
        assert "sudo-secret-3" not in text
        assert "PRIVATE KEY" not in text
        assert sshd.host_key.split()[1] not in text  # the fingerprint stands for the key


# --- host keys --------------------------------------------------------------------------------


async def test_trust_on_first_use_reports_the_key(
    executor: FleetExecutor, fleet: SshdFleet, sshd: SshdServer
) -> None:
    target = fleet.target(sshd, known_host_key=None, trust_on_first_use=True)
    result = await executor.run_on(target, "true")
    assert result.host_key_new
    assert result.host_key == sshd.host_key
    assert result.host_key_fingerprint == fingerprint(asyncssh.import_public_key(sshd.host_key))


async def test_changed_host_key_is_refused(fleet: SshdFleet, sshd_hosts: StartHosts) -> None:
    (server,) = sshd_hosts(1)
    pinned = server.host_key
    server.restart(new_host_key=True)  # the host was reinstalled, or someone is in between
    assert server.host_key != pinned
    executor = FleetExecutor()
    try:
        with pytest.raises(HostKeyChanged) as caught:
            await executor.run_on(fleet.target(server, known_host_key=pinned), "true")
        # trust on first use never overrides a pin
        target = fleet.target(server, known_host_key=pinned, trust_on_first_use=True)
        with pytest.raises(HostKeyChanged):
            await executor.run_on(target, "true")
    finally:
        await executor.close()
    error = caught.value
    assert error.code == "host_key_changed"
    assert error.presented_key == server.host_key
    assert error.fingerprint == fingerprint(asyncssh.import_public_key(server.host_key))
    assert error.details["presented_key"] == server.host_key
    assert error.details["pinned_fingerprint"] == fingerprint(asyncssh.import_public_key(pinned))


async def test_pinned_key_of_another_type_is_refused(
    executor: FleetExecutor, fleet: SshdFleet, sshd: SshdServer
) -> None:
    other = public_key_line(asyncssh.generate_private_key("ssh-rsa", key_size=2048))
    with pytest.raises(HostKeyChanged) as caught:
        await executor.run_on(fleet.target(sshd, known_host_key=other), "true")
    assert caught.value.presented_key == sshd.host_key  # the only key the server has


async def test_unknown_host_key_without_tofu_is_refused(
    executor: FleetExecutor, fleet: SshdFleet, sshd: SshdServer
) -> None:
    target = fleet.target(sshd, known_host_key=None, trust_on_first_use=False)
    with pytest.raises(HostKeyUnknown) as caught:
        await executor.run_on(target, "true")
    assert caught.value.code == "host_key_unknown"
    assert caught.value.presented_key == sshd.host_key


async def test_pooled_connection_is_not_reused_against_the_policy(
    executor: FleetExecutor, fleet: SshdFleet, sshd: SshdServer
) -> None:
    """A TOFU connection is open; a target with TOFU off must still be refused."""
    tofu = fleet.target(sshd, known_host_key=None, trust_on_first_use=True)
    assert (await executor.run_on(tofu, "true")).ok
    with pytest.raises(HostKeyUnknown):
        await executor.run_on(fleet.target(sshd, known_host_key=None), "true")
    assert (await executor.run_on(fleet.target(sshd), "true")).ok  # pinned to the same key


# --- unreachable ------------------------------------------------------------------------------


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections and never says a word (no SSH banner)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield listener.getsockname()[1]


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # nothing listens here once the socket is closed


async def test_refused_connection_is_unreachable(
    executor: FleetExecutor, fleet: SshdFleet, sshd: SshdServer, closed_port: int
) -> None:
    with pytest.raises(Unreachable) as caught:
        await executor.run_on(fleet.target(sshd, port=closed_port), "true")
    assert caught.value.code == "unreachable"
    assert caught.value.details["port"] == closed_port


async def test_connect_timeout_is_unreachable(
    fleet: SshdFleet, sshd: SshdServer, silent_port: int
) -> None:
    executor = FleetExecutor(pool=ConnectionPool(connect_timeout=0.5))
    try:
        with pytest.raises(Unreachable) as caught:
            await executor.run_on(fleet.target(sshd, port=silent_port), "true")
    finally:
        await executor.close()
    assert "did not answer" in caught.value.message


async def test_unresolvable_name_is_unreachable(
    executor: FleetExecutor, fleet: SshdFleet, sshd: SshdServer
) -> None:
    with pytest.raises(Unreachable):
        await executor.run_on(fleet.target(sshd, address="no-such-host.invalid"), "true")


async def test_connects_concurrently_to_one_host_once(
    executor: FleetExecutor, fleet: SshdFleet, sshd: SshdServer
) -> None:
    target = fleet.target(sshd)
    results = await asyncio.gather(*(executor.run_on(target, "true") for _ in range(6)))
    assert all(r.ok for r in results)
    assert executor.ssh.pool.connects == 1
