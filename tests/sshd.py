"""Real OpenSSH servers for the execution tests.

``SshdFleet`` starts K independent sshd processes on 127.0.0.1 (free high ports, one temp
dir each with sshd_config, an ed25519 host key and authorized_keys) through
``it0.execution._sshd``, which the fan-out benchmark uses too, and stops them by PID.

Key authentication logs in as the user running the tests. Password authentication and sudo
need a login user with a known password and a sudo rule: ``ensure_test_user`` creates the
system user ``it0test`` (shell /bin/sh, password ``TEST_PASSWORD``) and
``/etc/sudoers.d/it0test`` once, when absent. That is the only system-wide change the suite
makes; it needs root. A missing sshd or sudo raises RuntimeError with one line (the fixtures
turn it into a failure; ``scripts/test-services.sh`` installs both).
"""

from __future__ import annotations

import atexit
import dataclasses
import getpass
import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh

from it0.execution import HostTarget, public_key_line
from it0.execution._sshd import SshdServer, start_fleet, stop_fleet

__all__ = ["TEST_PASSWORD", "TEST_USER", "ClientKeys", "SshdFleet", "ensure_test_user"]

TEST_USER = "it0test"
TEST_PASSWORD = "it0-test-password"  # a throwaway user's, needed to test password auth
PASSPHRASE = "it0-test-passphrase"
_SUDOERS = Path("/etc/sudoers.d/it0test")
_SUDOERS_RULE = (
    "# IT0 test suite (tests/sshd.py): sudo that always asks for the password\n"
    f"Defaults:{TEST_USER} lecture=never, timestamp_timeout=0\n"
    f"{TEST_USER} ALL=(ALL:ALL) ALL\n"
)
_HINT = "run scripts/test-services.sh"


@dataclass(frozen=True)
class ClientKeys:
    """Private keys (OpenSSH text) the servers accept."""

    ed25519: str
    rsa: str
    encrypted: str  # ed25519 protected by PASSPHRASE (PKCS#8 PEM)
    public_lines: tuple[str, ...]

    @classmethod
    def generate(cls) -> ClientKeys:
        ed = asyncssh.generate_private_key("ssh-ed25519")
        rsa = asyncssh.generate_private_key("ssh-rsa", key_size=2048)
        enc = asyncssh.generate_private_key("ssh-ed25519")
        return cls(
            ed25519=ed.export_private_key("openssh").decode(),
            rsa=rsa.export_private_key("openssh").decode(),
            # PKCS#8: encrypted OpenSSH-format keys need bcrypt, not a dependency (yet)
            encrypted=enc.export_private_key("pkcs8-pem", PASSPHRASE).decode(),
            public_lines=tuple(public_key_line(k) for k in (ed, rsa, enc)),
        )


@dataclass
class SshdFleet:
    keys: ClientKeys
    servers: list[SshdServer] = field(default_factory=list)

    def start(self, count: int) -> list[SshdServer]:
        if not self.servers:
            atexit.register(self.stop)  # a session that dies early leaves no sshd behind
        started = start_fleet(count, self.keys.public_lines)
        self.servers.extend(started)
        return started

    def stop(self) -> None:
        servers, self.servers = self.servers, []
        stop_fleet(servers)

    def target(self, server: SshdServer, **fields: Any) -> HostTarget:
        """A key-authenticated target for ``server``, its host key pinned unless overridden."""
        base = HostTarget(
            server_id=f"srv-{server.port}",
            name=f"host-{server.port}",
            address=server.host,
            port=server.port,
            username=getpass.getuser(),
            private_key=self.keys.ed25519,
            known_host_key=server.host_key,
        )
        return dataclasses.replace(base, **fields)


def ensure_test_user() -> None:
    """Create ``it0test`` with ``TEST_PASSWORD`` and its sudo rule when absent (root only)."""
    if shutil.which("sudo") is None:
        raise RuntimeError(f"sudo is not installed ({_HINT})")
    try:
        pwd.getpwnam(TEST_USER)
        user_exists = True
    except KeyError:
        user_exists = False
    if user_exists and _SUDOERS.exists():
        return
    if os.geteuid() != 0:
        raise RuntimeError(f"user {TEST_USER} or {_SUDOERS} is missing and only root can add it")
    if not user_exists:
        done = subprocess.run(
            ["useradd", "--create-home", "--shell", "/bin/sh", "--comment", "IT0 tests", TEST_USER],
            capture_output=True,
            check=False,
        )
        if done.returncode not in (0, 9):  # 9: created meanwhile by a concurrent session
            raise RuntimeError(f"useradd {TEST_USER} failed: {done.stderr.decode().strip()}")
        subprocess.run(["chpasswd"], input=f"{TEST_USER}:{TEST_PASSWORD}\n".encode(), check=True)
    tmp = _SUDOERS.with_suffix(".tmp")  # sudo ignores names with a dot: never half-read
    tmp.write_text(_SUDOERS_RULE)
    tmp.chmod(0o440)
    tmp.replace(_SUDOERS)
