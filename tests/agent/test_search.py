"""Runbook search: natural phrasings find the right runbook, unrelated text finds none."""

from __future__ import annotations

import pytest

from it0.agent.runbooks import load_builtin
from it0.agent.search import RunbookIndex, stem, tokenize

INDEX = RunbookIndex(load_builtin())

QUERIES = [
    ("the disk is full on web-1", "disk-full"),
    ("No space left on device", "disk-full"),
    ("filesystem at 100% on /var", "disk-full"),
    ("check disk usage on localhost", "disk-full"),
    ("please show me the disk usage of db-2", "disk-full"),
    ("nginx is down", "service-down"),
    ("service nginx not running", "service-down"),
    ("Out of memory: Killed process 4242 (java)", "memory-pressure"),
    ("the box is swapping like crazy", "memory-pressure"),
    ("certificate expired", "cert-expiry"),
    ("x509: certificate has expired or is not yet valid", "cert-expiry"),
    ("ssl cert expires next week", "cert-expiry"),
    ("cannot resolve host", "dns-resolution"),
    ("Temporary failure in name resolution", "dns-resolution"),
    ("clock skew detected", "time-drift"),
    ("ntp is not synchronized", "time-drift"),
    ("too many open files", "open-files"),
    ("load average is 40", "high-load"),
    ("cpu pegged at 100 percent", "high-load"),
    ("defunct processes", "zombies"),
    ("lots of zombie processes", "zombies"),
    ("connection refused on port 5432", "port-not-listening"),
    ("nothing is listening on port 8080", "port-not-listening"),
    ("backup.service failed", "failed-unit"),
    ("systemd unit entered failed state", "failed-unit"),
    ("iowait is very high and the disks are slow", "disk-io-latency"),
    ("out of inodes on /var", "inode-exhaustion"),
    ("log files are growing fast", "log-growth"),
]


@pytest.mark.parametrize(("query", "expected"), QUERIES)
def test_query_finds_expected_runbook_first(query: str, expected: str) -> None:
    results = INDEX.search(query)
    assert results, query
    assert results[0][0].id == expected, [(r.id, round(s, 2)) for r, s in results]


@pytest.mark.parametrize("query", ["what's for lunch", "", "the of and", "!!!"])
def test_unrelated_query_finds_nothing(query: str) -> None:
    assert INDEX.search(query) == []


def test_results_are_best_first_positive_and_limited() -> None:
    results = INDEX.search("service failed disk full", limit=5)
    scores = [score for _, score in results]
    assert 0 < len(results) <= 5
    assert scores == sorted(scores, reverse=True)
    assert all(score > 0 for score in scores)
    assert len(INDEX.search("service failed disk full", limit=1)) == 1
    assert INDEX.search("disk full", limit=0) == []


def test_empty_index_finds_nothing() -> None:
    assert RunbookIndex([]).search("disk full") == []


@pytest.mark.parametrize(
    "words",
    [
        ("disk", "disks"),
        ("fail", "failed", "failing", "fails"),
        ("process", "processes"),
        ("zombie", "zombies"),
        ("expire", "expired", "expires"),
        ("run", "running"),
        ("kill", "killed"),
        ("entry", "entries"),
    ],
)
def test_stemmer_joins_word_forms(words: tuple[str, ...]) -> None:
    assert len({stem(word) for word in words}) == 1, [stem(word) for word in words]


def test_tokenizer_lowercases_splits_and_drops_stop_words() -> None:
    assert tokenize("The DISK is full: /var/log!") == ["disk", "full", "var", "log"]
