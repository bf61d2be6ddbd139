"""``it0 bench voice`` runs end to end with tiny parameters and reports its figures as JSON.

Only the shape and the sanity of the figures are checked; how fast this machine is, is not.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner

from it0.cli import app

pytestmark = pytest.mark.slow


def test_the_voice_bench_reports_its_figures() -> None:
    result = CliRunner().invoke(
        app,
        [
            *("bench", "voice", "--turns", "2", "--max-sessions", "5"),
            *("--seconds", "2", "--refine", "0", "--json"),
        ],
    )
    assert result.exit_code == 0, result.output
    figures: dict[str, Any] = json.loads(result.stdout)
    assert figures["cpus"] >= 1

    latency = figures["latency"]
    assert latency["turns"] == 2
    assert latency["answered"] == 2
    for key in ("median_ms", "min_ms", "p90_ms", "max_ms"):
        assert latency[key] > 0, key
    assert latency["min_ms"] <= latency["median_ms"] <= latency["max_ms"]
    assert latency["split_median_ms"]["to_transcript_ms"] > 0
    assert latency["split_median_ms"]["transcript_to_text_ms"] > 0
    assert latency["split_median_ms"]["text_to_audio_ms"] is not None
    assert latency["target_ms"] == 1000
    assert isinstance(latency["target_met"], bool)
    heard = [turn["heard"].lower() for turn in latency["per_turn"]]
    assert "disk" in heard[0]
    assert "memory" in heard[1]

    concurrency = figures["concurrency"]
    assert "subprocess" in concurrency["server"]
    assert concurrency["late_after_ms"] == 100
    [level] = concurrency["levels"]
    assert level["sessions"] == 5
    assert level["frames"] == 5 * 100  # 2 s of 20 ms frames per call
    assert 0 < level["echoed"] <= level["frames"]
    assert level["lost"] == level["frames"] - level["echoed"]
    assert 0 <= level["late_pct"] <= 100
    assert 0 < level["p50_ms"] <= level["p99_ms"]
    assert level["server_cpu_pct"] > 0
    assert concurrency["max_sessions_under_1pct_late"] in (0, 5)
