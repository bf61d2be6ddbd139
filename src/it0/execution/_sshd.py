"""Throwaway OpenSSH servers on 127.0.0.1, for the fan-out benchmark and the test suite.

Each server has its own directory (config, ed25519 host key, authorized_keys, log), listens
on a free high port and is stopped by its PID. Not for production: ``StrictModes no``
because the files live under /tmp, and the config is tuned for quick commands.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh

from it0.execution.target import public_key_line

HOST = "127.0.0.1"
SSHD = "/usr/sbin/sshd"
START_TIMEOUT = 30.0
_CONFIG = """\
ListenAddress {host}:{port}
HostKey {dir}/ssh_host_ed25519_key
PidFile none
AuthorizedKeysFile {dir}/authorized_keys
StrictModes no
UsePAM no
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication yes
KbdInteractiveAuthentication no
PermitUserEnvironment no
PrintMotd no
PrintLastLog no
UseDNS no
X11Forwarding no
AllowTcpForwarding no
MaxStartups 100:30:200
LogLevel ERROR
# Debian's bash sources ~/.bashrc for commands run by sshd when SHLVL < 2 after its own
# increment; root's .bashrc may run slow init code (pyenv) on every command. Measured:
# ~150 ms per command with it, ~2 ms without.
SetEnv SHLVL=1
"""


def require_sshd() -> str:
    if not os.access(SSHD, os.X_OK):
        raise RuntimeError(
            f"{SSHD} not found (install Debian package openssh-server, "
            "or run scripts/test-services.sh)"
        )
    return SSHD


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(eq=False)
class SshdServer:
    """One sshd; ``host_key`` is its public host key line (what a caller pins)."""

    directory: Path
    port: int = 0
    host_key: str = ""
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    host: str = HOST

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def write_host_key(self) -> None:
        key = asyncssh.generate_private_key("ssh-ed25519")
        path = self.directory / "ssh_host_ed25519_key"
        path.unlink(missing_ok=True)
        path.write_bytes(key.export_private_key("openssh"))
        path.chmod(0o600)
        self.host_key = public_key_line(key)

    def spawn(self, port: int | None = None) -> None:
        self.port = port or free_port()
        config = self.directory / "sshd_config"
        config.write_text(_CONFIG.format(host=self.host, port=self.port, dir=self.directory))
        with (self.directory / "sshd.log").open("ab") as log:
            self.process = subprocess.Popen(  # noqa: S603 - fixed binary, our own config
                [require_sshd(), "-D", "-e", "-f", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )

    def ready(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            raise RuntimeError(f"sshd on port {self.port} exited: {self.last_log_line()}")
        try:
            with socket.create_connection((self.host, self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        """Stops the listener by its PID; sessions already open end with their connection."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def restart(self, *, new_host_key: bool = False) -> None:
        """Same port, optionally a new host key (what a reinstalled host looks like)."""
        self.stop()
        if new_host_key:
            self.write_host_key()
        self.spawn(self.port)
        wait_ready([self])

    def last_log_line(self) -> str:
        with contextlib.suppress(OSError):
            lines = (self.directory / "sshd.log").read_text(errors="replace").splitlines()
            if lines:
                return lines[-1]
        return "(no output)"


def wait_ready(servers: Sequence[SshdServer]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    pending = list(servers)
    while pending:
        pending = [s for s in pending if not s.ready()]
        if pending and time.monotonic() > deadline:
            raise RuntimeError(
                f"sshd on port {pending[0].port} not ready: {pending[0].last_log_line()}"
            )
        if pending:
            time.sleep(0.05)


def start_fleet(
    count: int, authorized_keys: Iterable[str], *, root: Path | None = None
) -> list[SshdServer]:
    """``count`` sshd processes accepting ``authorized_keys`` (OpenSSH public key lines)."""
    require_sshd()
    # sshd checks for its privilege separation directory at start (root only)
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="it0-sshd-", dir=root))
    base.chmod(0o755)  # another login user must reach authorized_keys
    keys = "".join(f"{line.strip()}\n" for line in authorized_keys)
    servers: list[SshdServer] = []
    try:
        for index in range(count):
            directory = base / f"host{index:03d}"
            directory.mkdir(mode=0o755)
            (directory / "authorized_keys").write_text(keys)
            (directory / "authorized_keys").chmod(0o644)
            server = SshdServer(directory)
            server.write_host_key()
            server.spawn()
            servers.append(server)
        for attempt in range(3):
            try:
                wait_ready(servers)
                break
            except RuntimeError:
                # another process may have taken a port between probing and binding
                clashed = [s for s in servers if s.process is None or s.process.poll() is not None]
                if not clashed or attempt == 2:
                    raise
                for server in clashed:
                    server.spawn()
    except BaseException:
        stop_fleet(servers)
        raise
    return servers


def stop_fleet(servers: Iterable[SshdServer]) -> None:
    servers = list(servers)
    for server in servers:
        if server.process is not None and server.process.poll() is None:
            server.process.terminate()
    for server in servers:
        server.stop()
    for base in {s.directory.parent for s in servers}:
        shutil.rmtree(base, ignore_errors=True)
