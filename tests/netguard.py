"""A guard that refuses network connections to anything but this machine, for tests.

`install()` patches `socket.socket.connect`, `connect_ex` and `sendto`, and `socket.getaddrinfo`:
IPv4/IPv6 destinations must be loopback (127.0.0.0/8, ::1, or their IPv4-mapped form), the
unspecified address (0.0.0.0, ::, which Linux routes to this host) or ``localhost``; other socket
families (AF_UNIX, netlink, ...) are left alone. Name lookups are refused for names other than
``localhost``, ``*.localhost`` and this host's own name, so no DNS query leaves the machine;
IP literals still resolve, and connecting to them is checked as above. Everything refused raises
`PermissionError("network guard: connection to <host> refused in tests")`.

asyncio's selector event loops (and so anyio, httpx/httpx2, asyncpg, redis and asyncssh on them)
connect through `socket.socket.connect` and resolve through `socket.getaddrinfo`, so they are
covered. uvloop connects inside libuv and is not.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["check_address", "guarded", "install", "installed", "uninstall"]

_lock = threading.Lock()


def _refused(host: object) -> PermissionError:
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    return PermissionError(f"network guard: connection to {host} refused in tests")


def _is_local_name(host: str) -> bool:
    name = host.lower().rstrip(".")
    return name == "localhost" or name.endswith(".localhost")


def _is_local_host(host: str) -> bool:
    """Whether connecting to `host` (an IP literal or a name) stays on this machine."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return _is_local_name(host)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback or ip.is_unspecified


def check_address(family: int, address: Any) -> None:
    """Raise the guard's `PermissionError` if `address` (of socket `family`) leaves the machine."""
    if family not in (socket.AF_INET, socket.AF_INET6):
        return
    host = address[0] if isinstance(address, tuple) and address else address
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    if not isinstance(host, str) or not _is_local_host(host):
        raise _refused(host)


def _lookup_allowed(host: object) -> bool:
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    if not isinstance(host, str):
        return False
    if host in ("", socket.gethostname()) or _is_local_name(host):
        return True
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


_SOCKET_METHODS = ("connect", "connect_ex", "sendto")
_MISSING = object()
_originals: dict[str, Any] = {}
_replaced: dict[str, object] = {}


def _original(name: str) -> Callable[..., Any]:
    function: Callable[..., Any] = _originals[name]
    return function


def _guarded_connect(sock: socket.socket, address: Any) -> None:
    check_address(sock.family, address)
    _original("connect")(sock, address)


def _guarded_connect_ex(sock: socket.socket, address: Any) -> int:
    check_address(sock.family, address)
    result: int = _original("connect_ex")(sock, address)
    return result


def _guarded_sendto(sock: socket.socket, data: Any, *args: Any) -> int:
    if args:
        check_address(sock.family, args[-1])
    result: int = _original("sendto")(sock, data, *args)
    return result


def _guarded_getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
    if not _lookup_allowed(host):
        raise _refused(host)
    return _original("getaddrinfo")(host, port, *args, **kwargs)


_GUARDS: dict[str, Callable[..., Any]] = {
    "connect": _guarded_connect,
    "connect_ex": _guarded_connect_ex,
    "sendto": _guarded_sendto,
}


def installed() -> bool:
    """Whether the guard is in place."""
    return bool(_originals)


def install() -> None:
    """Refuse connections that would leave this machine (idempotent)."""
    with _lock:
        if _originals:
            return
        for name in _SOCKET_METHODS:
            _originals[name] = getattr(socket.socket, name)
            _replaced[name] = socket.socket.__dict__.get(name, _MISSING)
            setattr(socket.socket, name, _GUARDS[name])
        _originals["getaddrinfo"] = socket.getaddrinfo
        socket.getaddrinfo = _guarded_getaddrinfo


def uninstall() -> None:
    """Restore the unguarded socket functions (idempotent)."""
    with _lock:
        if not _originals:
            return
        for name in _SOCKET_METHODS:
            previous = _replaced.pop(name)
            if previous is _MISSING:
                delattr(socket.socket, name)
            else:
                setattr(socket.socket, name, previous)
        socket.getaddrinfo = _original("getaddrinfo")
        _originals.clear()


@contextmanager
def guarded() -> Iterator[None]:
    """The guard installed for the duration of a `with` block (kept if it was already in place)."""
    already = installed()
    install()
    try:
        yield
    finally:
        if not already:
            uninstall()
