"""Classifier throughput, for ``it0 bench``: a figure to print, never a test assertion."""

from __future__ import annotations

import time
from collections.abc import Sequence
from importlib import resources

import yaml

from it0.ops.policy.classify import Policy


def corpus() -> dict[str, list[str]]:
    """The shipped corpus: command lines by the class the built-in policy must give them.

    It is the classifier's test data and its benchmark, and a catalogue for anyone asking
    how IT0 sees a command.
    """
    text = resources.files("it0.ops.policy").joinpath("corpus.yaml").read_text("utf-8")
    data = yaml.safe_load(text)
    return {str(risk): [str(line) for line in lines] for risk, lines in data.items()}


def bench_classify(
    lines: Sequence[str], *, seconds: float = 2.0, policy: Policy | None = None
) -> float:
    """Lines classified per second on the calling thread, cycling through ``lines`` for
    about ``seconds`` (whole passes; the rules and this thread's parser are warmed first)."""
    if not lines:
        raise ValueError("bench_classify needs at least one line")
    policy = policy or Policy.default()
    policy.classify(lines[0])
    count = 0
    start = time.perf_counter()
    while True:
        for line in lines:
            policy.classify(line)
        count += len(lines)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return count / elapsed
