"""The built-in policy over corpus.yaml: every line gets its expected class, nothing dangerous
passes as read-only, and the everyday diagnostics run without approval."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from it0.ops.policy import Policy, Risk, Verdict, bench_classify, corpus

# what an operator runs all day: none of it may need approval
DIAGNOSTICS = [
    "df -h",
    "journalctl -u nginx -n 50",
    "ps aux | sort -nrk 3 | head",
    "systemctl status nginx",
    "ss -tlnp",
    "tail -n 100 /var/log/syslog | grep -i error",
    "free -m",
    "uptime",
    "du -sh /var/log/* | sort -h | tail",
    "cat /etc/os-release",
    "dmesg | tail -50",
    "lsblk",
    "ip addr show",
    "top -b -n 1 | head -20",
    "netstat -tulpn",
    "docker ps",
    "kubectl get pods -A",
    "grep -r ERROR /var/log/nginx/ 2>/dev/null | wc -l",
    "find /var/log -name '*.gz' -mtime +7",
    "ls -la /etc > /dev/null",
    "awk '{print $1}' access.log | sort | uniq -c | sort -rn | head",
]


def _load() -> list[tuple[str, Risk]]:
    data = corpus()
    return [(line, Risk(risk)) for risk, lines in data.items() for line in lines]


CORPUS = _load()


def _id(line: str) -> str:
    flat = " ".join(line.split())
    return flat if len(flat) <= 60 else flat[:57] + "..."


def _explain(verdict: Verdict) -> str:
    parts = "\n".join(
        f"  {p.risk.value:9} {p.rule:36} {p.text!r} via={list(p.via)}: {p.reason}"
        for p in verdict.parts
    )
    return f"{verdict.command!r} is {verdict.risk.value}:\n{parts}"


@pytest.mark.parametrize(("line", "expected"), CORPUS, ids=[_id(line) for line, _ in CORPUS])
def test_line_gets_expected_class(line: str, expected: Risk) -> None:
    verdict = Policy.default().classify(line)
    assert verdict.risk is expected, _explain(verdict)


def test_corpus_is_large_and_covers_every_class() -> None:
    assert len(CORPUS) >= 320
    assert {risk for _, risk in CORPUS} == set(Risk)
    lines = [line for line, _ in CORPUS]
    assert len(lines) == len(set(lines)), "a line is listed twice"


def test_no_dangerous_line_comes_out_read_only() -> None:
    policy = Policy.default()
    leaked = [
        _explain(verdict)
        for line, expected in CORPUS
        if expected is not Risk.READ_ONLY
        and (verdict := policy.classify(line)).risk is Risk.READ_ONLY
    ]
    assert leaked == []


@pytest.mark.parametrize("line", DIAGNOSTICS, ids=_id)
def test_everyday_diagnostics_are_read_only(line: str) -> None:
    verdict = Policy.default().classify(line)
    assert verdict.risk is Risk.READ_ONLY, _explain(verdict)
    assert not verdict.needs_approval
    assert (line, Risk.READ_ONLY) in CORPUS


def test_threads_classify_like_one_thread() -> None:
    """Each thread has its own tree-sitter parser; results must not depend on threading."""
    policy = Policy.default()
    lines = [line for line, _ in CORPUS]
    alone = [policy.classify(line) for line in lines]
    with ThreadPoolExecutor(max_workers=8) as pool:
        together = list(pool.map(policy.classify, lines * 4))
    assert together == alone * 4


def test_bench_classify_reports_a_rate() -> None:
    lines = [line for line, _ in CORPUS[:50]]
    assert bench_classify(lines, seconds=0.01) > 0
    with pytest.raises(ValueError, match="at least one line"):
        bench_classify([])
