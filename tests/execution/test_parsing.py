"""Pure pieces: output capture, the process-group header, facts parsing, shell wrapping."""

from __future__ import annotations

import pytest

from it0.execution import HostTarget, parse_facts
from it0.execution.run import PgidHeader, Stream, StreamCapture, remote_command, sudo_command


def test_capture_keeps_the_cap_and_counts_the_rest() -> None:
    chunks: list[str] = []
    capture = StreamCapture("stdout", 5, lambda _s, text: chunks.append(text))
    for piece in (b"abc", b"defg", b"hij"):
        capture.feed(piece)
    capture.finish()
    assert capture.text() == "abcde\n[output truncated: 5 bytes omitted]"
    assert "".join(chunks) == capture.text()


def test_capture_decodes_characters_split_across_chunks() -> None:
    chunks: list[str] = []
    capture = StreamCapture("stdout", 100, lambda _s, text: chunks.append(text))
    data = "grüß".encode()
    capture.feed(data[:3])  # ends inside "ü"
    capture.feed(data[3:])
    capture.finish()
    assert chunks == ["gr", "üß"]
    assert capture.text() == "grüß"


def test_a_failing_chunk_callback_is_dropped_not_fatal() -> None:
    calls: list[str] = []

    def on_chunk(stream: Stream, text: str) -> None:
        calls.append(text)
        raise RuntimeError("consumer bug")

    capture = StreamCapture("stderr", 100, on_chunk)
    capture.feed(b"one")
    capture.feed(b"two")
    assert calls == ["one"]
    assert capture.text() == "onetwo"


@pytest.mark.parametrize(
    ("chunks", "pgid", "output"),
    [
        ([b"__it0_pgid=42\nhello\n"], 42, b"hello\n"),
        ([b"__it0_pg", b"id=4", b"2\nhel", b"lo\n"], 42, b"hello\n"),
        ([b"motd from a login script\n__it0_pgid=7\nx"], 7, b"motd from a login script\nx"),
    ],
)
def test_pgid_header(chunks: list[bytes], pgid: int, output: bytes) -> None:
    header = PgidHeader()
    passed = b"".join(header.feed(c) for c in chunks) + header.flush()
    assert (header.pgid, passed) == (pgid, output)


def test_pgid_header_gives_up_on_a_shell_that_never_prints_it() -> None:
    header = PgidHeader()
    data = b"x" * (PgidHeader.LIMIT + 1)
    assert header.feed(data) == data
    assert header.pgid is None
    assert header.feed(b"more") == b"more"


def test_remote_command_wrapping() -> None:
    assert remote_command("uptime", sudo=False) == 'echo "__it0_pgid=$$"\nuptime'
    wrapped = sudo_command("echo 'it''s'")
    assert wrapped.startswith("sudo -S -p '' -- /bin/sh -c ")
    assert "exec </dev/null; " in wrapped


def test_parse_facts_tolerates_missing_sections() -> None:
    output = "\n".join(
        [
            "@@it0-facts:os",
            'PRETTY_NAME="Alpine Linux v3.20"',
            "ID=alpine",
            "@@it0-facts:kernel",
            "6.6.1",
            "@@it0-facts:cpus",
            "@@it0-facts:memory",
            "MemTotal:        2048 kB",
            "@@it0-facts:disks",
            "Filesystem Type 1024-blocks Used Available Capacity Mounted on",
            "/dev/sda1 ext4 1000 400 600 40% /srv/my data",
            "none tmpfs 0 0 0 - /empty",
            "@@it0-facts:uptime",
            "12.5 20.1",
        ]
    )
    facts = parse_facts(output)
    assert facts["os"] == {"pretty_name": "Alpine Linux v3.20", "id": "alpine"}
    assert facts["kernel"] == "6.6.1"
    assert facts["cpu_count"] is None
    assert facts["hostname"] is None
    assert facts["memory_total_bytes"] == 2048 * 1024
    assert facts["disks"] == [
        {
            "filesystem": "/dev/sda1",
            "type": "ext4",
            "mountpoint": "/srv/my data",
            "size_bytes": 1000 * 1024,
            "used_bytes": 400 * 1024,
            "available_bytes": 600 * 1024,
        }
    ]
    assert facts["uptime_seconds"] == 12.5


def test_target_validation() -> None:
    with pytest.raises(ValueError, match="kind"):
        HostTarget("s", "n", "h", kind="telnet")  # type: ignore[arg-type]  # the point
    with pytest.raises(ValueError, match="port"):
        HostTarget("s", "n", "h", port=0)
