"""Selectors: which servers a command, a list or a standing order is about.

One grammar, one resolver, used everywhere. In the style of Kubernetes label selectors::

    env=prod,role in (web,api),!canary,cluster=eu-1

Requirements are separated by commas and must all hold. Spaces around operators, commas and
parentheses are ignored.

========================  ==============================================================
``key=value``             the key has this value (``key==value`` is the same)
``key!=value``            the key is missing or has another value
``key in (a,b)``          the key has one of these values
``key notin (a,b)``       the key is missing or has none of these values
``key`` / ``key=*``       the key exists
``!key`` / ``key!=*``     the key does not exist
========================  ==============================================================

Keys ``env`` (or ``environment``), ``cluster`` (the cluster's name), ``name``, ``kind`` and
``status`` are the server's fields; every other key is a label. A server inherits its
cluster's labels unless it sets the same key itself.

**Names.** A text made only of bare words (no operator, no parenthesis, no ``!``), separated
by commas and/or spaces, is a list of server names: ``web-1,web-2`` and ``web-1 web-2`` both
mean ``name in (web-1,web-2)``. A bare word next to at least one operator term is an
existence requirement, as in Kubernetes (``env=prod,canary``). A lone existence requirement
is therefore written ``canary=*``.

Positions in errors are 0-based character offsets into the text.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import defer

from it0.inventory.errors import SelectorError
from it0.inventory.models import Cluster, Server

# shared with the request schemas: whatever a server or label may hold, a selector can name
NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
LABEL_KEY = r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$"
LABEL_VALUE = r"^[A-Za-z0-9._:/@+-]{1,128}$"

# selector keys that are server fields, not labels (and so can never be label keys)
FIELD_KEYS: dict[str, str] = {
    "env": "environment",
    "environment": "environment",
    "cluster": "cluster",
    "name": "name",
    "kind": "kind",
    "status": "status",
}

Op = Literal["=", "!=", "in", "notin", "exists", "!exists"]

_NAME = re.compile(NAME)
_KEY = re.compile(LABEL_KEY)
_VALUE = re.compile(LABEL_VALUE)
_WORD_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:/@+-")
_KEYWORDS = frozenset({"in", "notin"})


@dataclass(frozen=True)
class Requirement:
    key: str
    op: Op
    values: tuple[str, ...] = ()
    position: int = field(default=0, compare=False)

    def matches(self, value: str | None) -> bool:
        """Whether a key holding ``value`` (None: the key is missing) meets this requirement."""
        match self.op:
            case "exists":
                return value is not None
            case "!exists":
                return value is None
            case "=" | "in":
                return value is not None and value in self.values
            case "!=" | "notin":
                return value is None or value not in self.values

    def render(self, bare_exists: bool = True) -> str:
        match self.op:
            case "exists":
                return self.key if bare_exists else f"{self.key}=*"
            case "!exists":
                return f"!{self.key}"
            case "=" | "!=":
                return f"{self.key}{self.op}{self.values[0]}"
            case "in" | "notin":
                return f"{self.key} {self.op} ({','.join(self.values)})"


@dataclass(frozen=True)
class Selector:
    """Requirements that must all hold; ``names`` is set when the text was a list of names."""

    requirements: tuple[Requirement, ...] = ()
    names: tuple[str, ...] | None = None

    @classmethod
    def of_names(cls, names: Iterable[str]) -> Selector:
        names = tuple(names)
        return cls((Requirement("name", "in", names),), names)

    @property
    def is_empty(self) -> bool:
        return not self.requirements

    def matches(self, fields: Mapping[str, str | None], labels: Mapping[str, str]) -> bool:
        """``fields`` by selector key (``environment``, ``cluster``, ...), then labels."""
        for req in self.requirements:
            if req.key in FIELD_KEYS:
                value = fields.get(FIELD_KEYS[req.key])
            else:
                value = labels.get(req.key)
            if not req.matches(value):
                return False
        return True

    def __str__(self) -> str:
        if self.names is not None:
            return ",".join(self.names)
        # existence requirements alone would read back as a list of names
        bare = any(r.op != "exists" for r in self.requirements)
        return ",".join(r.render(bare) for r in self.requirements)


# --- parsing --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Token:
    kind: Literal["word", ",", "(", ")", "=", "==", "!=", "!", "*", "end"]
    text: str
    pos: int


def _describe(token: _Token) -> str:
    return "end of selector" if token.kind == "end" else repr(token.text)


def _tokens(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif c in _WORD_CHARS:
            start = i
            while i < n and text[i] in _WORD_CHARS:
                i += 1
            tokens.append(_Token("word", text[start:i], start))
        elif c == "=" and text.startswith("==", i):
            tokens.append(_Token("==", "==", i))
            i += 2
        elif c == "!" and text.startswith("!=", i):
            tokens.append(_Token("!=", "!=", i))
            i += 2
        elif c in ",()=!*":
            tokens.append(_Token(c, c, i))  # type: ignore[arg-type]  # c is one of the kinds
            i += 1
        else:
            raise SelectorError(
                text, i, "a name, a label key, an operator, ',' or a parenthesis", repr(c)
            )
    tokens.append(_Token("end", "", n))
    return tokens


class _Parser:
    def __init__(self, text: str, tokens: list[_Token]) -> None:
        self.text = text
        self.tokens = tokens
        self.i = 0

    @property
    def token(self) -> _Token:
        return self.tokens[self.i]

    def at(self, kind: str) -> bool:
        return self.token.kind == kind

    def fail(self, expected: str, token: _Token | None = None) -> SelectorError:
        token = token or self.token
        return SelectorError(self.text, token.pos, expected, _describe(token))

    def take(self, kind: str, expected: str) -> _Token:
        token = self.token
        if token.kind != kind:
            raise self.fail(expected)
        self.i += 1
        return token

    def key(self) -> _Token:
        token = self.take("word", "a label key")
        if token.text in _KEYWORDS or not _KEY.match(token.text):
            raise self.fail("a label key", token)
        return token

    def value(self) -> str:
        token = self.take("word", "a value")
        if not _VALUE.match(token.text):
            raise self.fail("a value of at most 128 characters", token)
        return token.text

    def requirement(self) -> Requirement:
        start = self.token
        if start.kind == "!":
            self.i += 1
            return Requirement(self.key().text, "!exists", (), start.pos)
        key = self.key().text
        token = self.token
        if token.kind in ("=", "==", "!="):
            self.i += 1
            positive = token.kind != "!="
            if self.token.kind == "*":
                self.i += 1
                return Requirement(key, "exists" if positive else "!exists", (), start.pos)
            return Requirement(key, "=" if positive else "!=", (self.value(),), start.pos)
        if token.kind == "word" and token.text in _KEYWORDS:
            self.i += 1
            self.take("(", "'(' after " + repr(token.text))
            values = [self.value()]
            while self.token.kind == ",":
                self.i += 1
                values.append(self.value())
            self.take(")", "',' or ')'")
            op: Op = "in" if token.text == "in" else "notin"
            return Requirement(key, op, tuple(dict.fromkeys(values)), start.pos)
        return Requirement(key, "exists", (), start.pos)

    def selector(self) -> Selector:
        if self.at("end"):
            return Selector()
        requirements = [self.requirement()]
        while self.at(","):
            self.i += 1
            requirements.append(self.requirement())
        if not self.at("end"):
            raise self.fail("',' or end of selector")
        return Selector(tuple(requirements))

    def names(self) -> Selector:
        names: list[str] = []
        while True:
            token = self.token
            if token.kind != "word" or not _NAME.match(token.text):
                raise self.fail("a server name")
            names.append(token.text)
            self.i += 1
            if self.token.kind == ",":
                self.i += 1
            elif self.token.kind == "end":
                return Selector.of_names(dict.fromkeys(names))


def _is_name_list(tokens: list[_Token]) -> bool:
    words = [t for t in tokens if t.kind == "word"]
    return bool(words) and all(
        t.kind in ("word", ",", "end") and t.text not in _KEYWORDS for t in tokens
    )


def parse_selector(text: str) -> Selector:
    """Parse a selector; an empty text selects everything. Raises ``SelectorError``."""
    tokens = _tokens(text)
    parser = _Parser(text, tokens)
    return parser.names() if _is_name_list(tokens) else parser.selector()


# --- resolution -----------------------------------------------------------------------------


def server_fields(server: Server, cluster: Cluster | None) -> dict[str, str | None]:
    return {
        "environment": server.environment,
        "cluster": cluster.name if cluster else None,
        "name": server.name,
        "kind": server.kind,
        "status": server.status,
    }


def effective_labels(server: Server, cluster: Cluster | None) -> dict[str, str]:
    """The cluster's labels, overridden by the server's own."""
    return {**(cluster.labels if cluster else {}), **server.labels}


def server_matches(selector: Selector, server: Server, cluster: Cluster | None) -> bool:
    return selector.matches(server_fields(server, cluster), effective_labels(server, cluster))


def cluster_matches(selector: Selector, cluster: Cluster) -> bool:
    """Clusters answer ``name`` and ``cluster`` (their name) and their own labels."""
    return selector.matches({"name": cluster.name, "cluster": cluster.name}, cluster.labels)


async def clusters_by_id(session: AsyncSession) -> dict[uuid.UUID, Cluster]:
    return {c.id: c for c in (await session.scalars(select(Cluster))).all()}


def cluster_of(server: Server, clusters: Mapping[uuid.UUID, Cluster]) -> Cluster | None:
    return clusters.get(server.cluster_id) if server.cluster_id is not None else None


def _narrowed(query: Select[Server, Cluster], selector: Selector) -> Select[Server, Cluster]:
    """Let the database drop what positive field requirements exclude; labels (inherited
    from clusters) and negations are matched in Python, which has the final word."""
    columns = {
        "environment": Server.environment,
        "name": Server.name,
        "kind": Server.kind,
        "status": Server.status,
        "cluster": Cluster.name,
    }
    for req in selector.requirements:
        if req.op in ("=", "in") and req.key in FIELD_KEYS:
            query = query.where(columns[FIELD_KEYS[req.key]].in_(req.values))
    return query


def as_selector(selector: Selector | str | None) -> Selector:
    if selector is None:
        return Selector()
    return selector if isinstance(selector, Selector) else parse_selector(selector)


# each server with its cluster, in one query: labels are inherited from the cluster (built
# once; ``_JOINED_REACH`` leaves the gathered facts unloaded)
_JOINED = select(Server, Cluster).outerjoin(Cluster, Server.cluster_id == Cluster.id)
_JOINED_REACH = _JOINED.options(defer(Server.facts, raiseload=True))


async def resolve(
    session: AsyncSession, selector: Selector | str, *, facts: bool = True
) -> list[Server]:
    """The tenant's servers the selector selects, by name; ``facts=False`` leaves each
    server's gathered facts unloaded (reading them then raises), for callers that only
    need where and how to reach the servers."""
    servers, _ = await resolve_page(session, selector, facts=facts)
    return servers


async def resolve_page(
    session: AsyncSession,
    selector: Selector | str | None,
    *,
    limit: int | None = None,
    after: str | None = None,
    facts: bool = True,
) -> tuple[list[Server], str | None]:
    """A page of selected servers ordered by name, after the name ``after``, and the cursor
    of the next page (None on the last one)."""
    selector = as_selector(selector)
    query = _narrowed(_JOINED if facts else _JOINED_REACH, selector).order_by(Server.name)
    batch = None if limit is None else max(limit + 1, 200)
    found: list[Server] = []
    while limit is None or len(found) <= limit:
        page = query.where(Server.name > after) if after is not None else query
        rows = list((await session.execute(page.limit(batch))).all())
        for server, cluster in rows:
            if server_matches(selector, server, cluster):
                found.append(server)
                if limit is not None and len(found) > limit:
                    break
        if batch is None or len(rows) < batch:
            break
        after = rows[-1][0].name
    if limit is not None and len(found) > limit:
        found = found[:limit]
        return found, found[-1].name
    return found, None
