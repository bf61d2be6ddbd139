"""``it0 bench voice``: runs the latency and the concurrency benchmark in a throwaway
directory, then prints their figures as tables or JSON."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from it0.voice.bench.common import progress
from it0.voice.bench.concurrency import UNDER_LATE_PCT, measure_concurrency
from it0.voice.bench.latency import measure_latency


async def _run(
    turns: int, max_sessions: int, seconds: float, refine: int, root: Path
) -> dict[str, Any]:
    result: dict[str, Any] = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    if turns:
        (root / "latency").mkdir()
        result["latency"] = await measure_latency(turns, root / "latency" / "data")
    if max_sessions:
        (root / "echo").mkdir()
        result["concurrency"] = await measure_concurrency(
            max_sessions, seconds, refine, root / "echo" / "data"
        )
    return result


def _text(value: Any, unit: str = "") -> str:
    return "-" if value is None else f"{value}{unit}"


LATENCY_ROWS = (
    ("end of speech -> first answer audio byte, median", "median_ms"),
    ("  end of speech -> transcript (VAD + Whisper)", "to_transcript_ms"),
    ("  transcript -> first agent.text (offline agent)", "transcript_to_text_ms"),
    ("  first agent.text -> first audio byte (eSpeak NG)", "text_to_audio_ms"),
)
LEVEL_COLUMNS = (
    ("calls", "sessions", ""),
    ("frames", "frames", ""),
    ("late %", "late_pct", ""),
    ("lost", "lost", ""),
    ("echo p50", "p50_ms", " ms"),
    ("echo p99", "p99_ms", " ms"),
    ("server CPU", "server_cpu_pct", "%"),
    ("bench CPU", "bench_cpu_pct", "%"),
    ("send lag p99", "send_lag_p99_ms", " ms"),
    ("reconnects", "reconnects", ""),
)


def _print(result: dict[str, Any]) -> None:
    console = Console() if Console().is_terminal else Console(width=160)
    if (latency := result.get("latency")) is not None:
        table = Table("figure", "value", title="it0 bench voice: voice to voice (offline stack)")
        figures = {**latency, **latency["split_median_ms"]}
        for label, key in LATENCY_ROWS:
            table.add_row(label, _text(figures[key], " ms"))
            if key == "median_ms":
                spread = (_text(latency[k], " ms") for k in ("min_ms", "p90_ms", "max_ms"))
                table.add_row("min / p90 / max", " / ".join(spread))
        table.add_row("turns answered", f"{latency['answered']} of {latency['turns']}")
        met = "[green]met[/green]" if latency["target_met"] else "[red]not met[/red]"
        table.add_row(f"target: median under {latency['target_ms']:.0f} ms", met)
        console.print(table)
        console.print(
            f"[dim]{latency['server']}; {latency['stack']}; VAD stop {latency['vad_stop_secs']} "
            f"s, Whisper from a pause of {latency['vad_pause_secs']} s; answers read out to "
            f"{latency['spoken_chars']} characters[/dim]"
        )
    if (concurrency := result.get("concurrency")) is not None:
        title = "it0 bench voice: concurrent echo calls, 20 ms frames at real-time pace"
        table = Table(*(name for name, _, _ in LEVEL_COLUMNS), title=title)
        for level in concurrency["levels"]:
            style = "green" if level["late_pct"] < UNDER_LATE_PCT else "red"
            cells = [_text(level[key], unit) for _, key, unit in LEVEL_COLUMNS]
            cells[2] = f"[{style}]{cells[2]}[/{style}]"
            table.add_row(*cells)
        console.print(table)
        over = concurrency["first_level_over"]
        console.print(
            f"largest number of calls with under {UNDER_LATE_PCT:g}% late frames: "
            f"[bold]{concurrency['max_sessions_under_1pct_late']}[/bold]"
            + (f" ({over} calls were over)" if over else "")
        )
        console.print(
            f"[dim]late: {concurrency['late_means']}; {concurrency['server']}; the calls' "
            f"clocks spread over {concurrency['phases']} phases of the 20 ms period; CPU 100% = "
            f"one core. {concurrency['stopped']}[/dim]"
        )
    console.print(f"[dim]{result['cpus']} CPUs, Python {result['python']}[/dim]")


def voice(
    turns: Annotated[
        int, typer.Option(min=0, help="questions asked for the latency figure (0: skip)")
    ] = 10,
    max_sessions: Annotated[
        int, typer.Option(min=0, help="most concurrent echo calls to ramp to (0: skip)")
    ] = 200,
    seconds: Annotated[
        float, typer.Option(min=0.1, help="seconds each concurrency level streams")
    ] = 10.0,
    refine: Annotated[
        int, typer.Option(min=0, help="extra levels between the last good and first bad one")
    ] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of tables")] = False,
) -> None:
    """Voice-to-voice latency of the offline stack, and concurrent calls one server carries."""
    progress.started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="it0-bench-voice-") as tmp:
        result = asyncio.run(_run(turns, max_sessions, seconds, refine, Path(tmp)))
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
        return
    _print(result)
