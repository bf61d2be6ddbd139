"""Find the runbook for what an operator says or an alert contains, with Okapi BM25.

Twenty runbooks do not need an embedding model: their symptoms are written the way people
describe incidents, so word overlap, weighted by how rare a word is, ranks them well and
explains itself. A tiny stemmer lets "disks" meet "disk" and "failing" meet "failed".
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence

from it0.agent.runbooks import Runbook

K1 = 1.2
B = 0.75
# How many times a field's tokens count: the title and symptoms say what the runbook is for,
# keywords are curated, the summary is prose with more incidental words.
TITLE_WEIGHT = 3
SYMPTOM_WEIGHT = 2
KEYWORD_WEIGHT = 2
SUMMARY_WEIGHT = 1

_WORD = re.compile(r"[a-z0-9]+")
_STOP_TEXT = (
    "a an and are as at be been but by can could do does for from has have how i if in into "
    "is it its me my of on or our so than that the their them then there these this those "
    "to was we were what when where which while who why will with you your "
    # what an operator's request says around the problem, not the problem
    "check please look see show tell"
)
_STOP_WORDS = frozenset(_STOP_TEXT.split())


def stem(word: str) -> str:
    """Strip a plural -s/-es, -ing or -ed, and a final -e; map a final -y to -i.

    Deliberately crude (no Porter rules): both sides of a comparison go through it, so it
    only has to be consistent, not linguistically right.
    """
    if len(word) <= 3:
        return word
    if word.endswith("ies"):
        word = word[:-3] + "i"
    elif word.endswith("es") and word[:-2].endswith(("s", "x", "z", "ch", "sh")):
        word = word[:-2]
    elif word.endswith("s") and not word.endswith(("ss", "us", "is")):
        word = word[:-1]
    for suffix, shortest in (("ing", 3), ("ed", 3)):
        if word.endswith(suffix) and len(word) - len(suffix) >= shortest:
            word = word[: -len(suffix)]
            # running -> runn -> run, stopped -> stopp -> stop; but killed -> kill
            if word[-1] == word[-2] and word[-1] not in "lsz":
                word = word[:-1]
            break
    if len(word) > 4 and word.endswith("e"):
        word = word[:-1]
    elif len(word) > 3 and word.endswith("y"):
        word = word[:-1] + "i"
    return word


def tokenize(text: str) -> list[str]:
    """Lowercased, stemmed words of ``text`` without stop words and one-letter fragments."""
    return [
        stem(word)
        for word in _WORD.findall(text.lower())
        if len(word) > 1 and word not in _STOP_WORDS
    ]


def _document(runbook: Runbook) -> list[str]:
    fields: Iterable[tuple[int, Iterable[str]]] = (
        (TITLE_WEIGHT, [runbook.title]),
        (SYMPTOM_WEIGHT, runbook.symptoms),
        (KEYWORD_WEIGHT, runbook.keywords),
        (SUMMARY_WEIGHT, [runbook.summary]),
    )
    return [
        token for weight, texts in fields for text in texts for token in tokenize(text) * weight
    ]


class RunbookIndex:
    """A BM25 index over runbooks, built once; ``search`` touches only the query's terms."""

    def __init__(self, runbooks: Sequence[Runbook]) -> None:
        self._runbooks = tuple(runbooks)
        documents = [Counter(_document(runbook)) for runbook in self._runbooks]
        lengths = [sum(counts.values()) for counts in documents]
        average = max(sum(lengths), 1) / max(len(lengths), 1)  # never 0: no division by it
        # the length part of BM25's denominator depends only on the document: compute it once
        self._norms = [K1 * (1 - B + B * length / average) for length in lengths]
        self._postings: dict[str, list[tuple[int, int]]] = {}
        for i, counts in enumerate(documents):
            for term, tf in counts.items():
                self._postings.setdefault(term, []).append((i, tf))
        n = len(documents)
        self._idf = {
            term: math.log(1 + (n - len(docs) + 0.5) / (len(docs) + 0.5))
            for term, docs in self._postings.items()
        }

    def search(self, query: str, limit: int = 3) -> list[tuple[Runbook, float]]:
        """Up to ``limit`` runbooks matching ``query``, best first, each with its score > 0."""
        scores: dict[int, float] = {}
        for term in set(tokenize(query)):
            idf = self._idf.get(term)
            if idf is None:
                continue
            for i, tf in self._postings[term]:
                scores[i] = scores.get(i, 0.0) + idf * tf * (K1 + 1) / (tf + self._norms[i])
        # ties go to the id, so the order never depends on the file order
        ranked = sorted(scores.items(), key=lambda item: (-item[1], self._runbooks[item[0]].id))
        return [(self._runbooks[i], score) for i, score in ranked[: max(limit, 0)] if score > 0]
