"""Read-only facts about a host, gathered in one round trip (one script, marked sections)."""

from __future__ import annotations

from typing import TypedDict

from it0.execution.errors import ExecutionError
from it0.execution.run import CommandExecutor
from it0.execution.target import HostTarget

_MARK = "@@it0-facts:"
_SECTIONS = {
    "os": "cat /etc/os-release || cat /usr/lib/os-release",
    "kernel": "uname -r",
    "arch": "uname -m",
    "hostname": "uname -n",
    "cpus": "nproc 2>/dev/null || getconf _NPROCESSORS_ONLN",
    "memory": "grep -E '^(MemTotal|MemAvailable|SwapTotal):' /proc/meminfo",
    # local, real filesystems only: a hung network mount must not hang the facts
    "disks": (
        "df -P -k -T -l -x tmpfs -x devtmpfs -x squashfs -x ramfs -x proc -x sysfs"
        " -x cgroup -x cgroup2 -x efivarfs -x nsfs -x autofs -x fuse.lxcfs"
    ),
    "uptime": "cat /proc/uptime",
}
FACTS_SCRIPT = (
    "LC_ALL=C; export LC_ALL\n"
    + "".join(
        f"echo '{_MARK}{name}'; {{ {command}; }} 2>/dev/null\n"
        for name, command in _SECTIONS.items()
    )
    + "exit 0\n"
)


class Disk(TypedDict):
    filesystem: str
    type: str
    mountpoint: str
    size_bytes: int
    used_bytes: int
    available_bytes: int


class HostFacts(TypedDict):
    os: dict[str, str]
    kernel: str | None
    arch: str | None
    hostname: str | None
    cpu_count: int | None
    memory_total_bytes: int | None
    memory_available_bytes: int | None
    swap_total_bytes: int | None
    disks: list[Disk]
    uptime_seconds: float | None


async def gather_facts(
    executor: CommandExecutor,
    target: HostTarget,
    *,
    timeout: float = 30.0,  # noqa: ASYNC109 - expiry kills the command on the host
) -> HostFacts:
    result = await executor.run_on(target, FACTS_SCRIPT, timeout=timeout, output_cap=256 * 1024)
    if not result.ok:
        raise ExecutionError(
            f"gathering facts on {target.name} failed (exit {result.exit_status})", target
        )
    return parse_facts(result.stdout)


def parse_facts(output: str) -> HostFacts:
    sections = _split(output)
    memory = _meminfo(sections.get("memory", []))
    return {
        "os": _os_release(sections.get("os", [])),
        "kernel": _first(sections.get("kernel")),
        "arch": _first(sections.get("arch")),
        "hostname": _first(sections.get("hostname")),
        "cpu_count": _int(_first(sections.get("cpus"))),
        "memory_total_bytes": memory.get("MemTotal"),
        "memory_available_bytes": memory.get("MemAvailable"),
        "swap_total_bytes": memory.get("SwapTotal"),
        "disks": _disks(sections.get("disks", [])),
        "uptime_seconds": _float(_first(sections.get("uptime"), split=True)),
    }


def _split(output: str) -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in output.splitlines():
        if line.startswith(_MARK):
            current = sections.setdefault(line[len(_MARK) :].strip(), [])
        elif current is not None and line.strip():
            current.append(line)
    return sections


def _first(lines: list[str] | None, *, split: bool = False) -> str | None:
    if not lines:
        return None
    line = lines[0].strip()
    return line.split()[0] if split and line else line


def _int(value: str | None) -> int | None:
    return int(value) if value is not None and value.isdigit() else None


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _os_release(lines: list[str]) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in lines:
        key, sep, value = line.partition("=")
        if sep and key.strip().isidentifier():
            values[key.strip().lower()] = value.strip().strip("\"'")
    return values


def _meminfo(lines: list[str]) -> dict[str, int]:
    values: dict[str, int] = {}
    for line in lines:
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[key.strip()] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    return values


def _disks(lines: list[str]) -> list[Disk]:
    disks: list[Disk] = []
    for line in lines[1:]:  # the first line is df's header
        parts = line.split()
        if len(parts) < 7 or not all(p.isdigit() for p in parts[2:5]):
            continue
        size, used, available = (int(p) * 1024 for p in parts[2:5])
        if size == 0:
            continue
        disks.append(
            {
                "filesystem": parts[0],
                "type": parts[1],
                "mountpoint": " ".join(parts[6:]),
                "size_bytes": size,
                "used_bytes": used,
                "available_bytes": available,
            }
        )
    return disks
