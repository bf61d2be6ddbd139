"""``it0 bench oversight`` runs end to end and reports its figures (never asserted on)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

BENCH = [sys.executable, "-m", "it0", "bench", "oversight"]


def test_bench_oversight_reports_every_figure() -> None:
    done = subprocess.run(
        [*BENCH, "--hosts", "2", "--rounds", "1", "--seconds", "0.2", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)
    assert result["errors"] == 0
    assert result["hosts"] == 2
    assert result["corpus_lines"] >= 300
    assert result["classified_per_second"] > 0
    for key in ("path_cold", "path_warm", "bare_cold", "bare_warm"):
        assert result[f"{key}_median_s"] > 0
    assert result["ratio_cold"] > 0
    assert result["ratio_warm"] > 0
