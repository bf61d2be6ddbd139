"""Selectors: the parser (cases, error positions, properties) and resolution on both databases."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from it0.audit import Actor, AuditContext
from it0.inventory.errors import SelectorError
from it0.inventory.schemas import ClusterCreate, ServerCreate
from it0.inventory.selectors import (
    FIELD_KEYS,
    Requirement,
    Selector,
    parse_selector,
    resolve,
    resolve_page,
)
from it0.inventory.service import TenantRecorder, create_cluster, create_server
from it0.platform import Platform

# --- parsing ---------------------------------------------------------------------------------

R = Requirement


@pytest.mark.parametrize(
    ("text", "requirements"),
    [
        ("", ()),
        ("   ", ()),
        ("env=prod", (R("env", "=", ("prod",)),)),
        ("env==prod", (R("env", "=", ("prod",)),)),
        ("env!=prod", (R("env", "!=", ("prod",)),)),
        ("role in (web,api)", (R("role", "in", ("web", "api")),)),
        ("role notin (web)", (R("role", "notin", ("web",)),)),
        ("role in(web , api )", (R("role", "in", ("web", "api")),)),
        ("role in (web,web)", (R("role", "in", ("web",)),)),
        ("!canary", (R("canary", "!exists"),)),
        ("! canary", (R("canary", "!exists"),)),
        ("canary=*", (R("canary", "exists"),)),
        ("canary!=*", (R("canary", "!exists"),)),
        ("env=prod,canary", (R("env", "=", ("prod",)), R("canary", "exists"))),
        (
            "env=prod,role in (web,api),!canary,cluster=eu-1",
            (
                R("env", "=", ("prod",)),
                R("role", "in", ("web", "api")),
                R("canary", "!exists"),
                R("cluster", "=", ("eu-1",)),
            ),
        ),
        (
            "  environment = prod ,  tier != gold , !beta ",
            (R("environment", "=", ("prod",)), R("tier", "!=", ("gold",)), R("beta", "!exists")),
        ),
        ("example.com/team=ops", (R("example.com/team", "=", ("ops",)),)),
        ("version=1.2.3+build:7@x", (R("version", "=", ("1.2.3+build:7@x",)),)),
        ("name in (web-1,db-1)", (R("name", "in", ("web-1", "db-1")),)),
        (
            "group.web=true,!group.canary",
            (R("group.web", "=", ("true",)), R("group.canary", "!exists")),
        ),
    ],
)
def test_parses_requirements(text: str, requirements: tuple[Requirement, ...]) -> None:
    selector = parse_selector(text)
    assert selector.requirements == requirements
    assert selector.names is None
    assert parse_selector(str(selector)) == selector


def test_positions_of_requirements_are_offsets() -> None:
    selector = parse_selector("env=prod, role in (web),!canary")
    assert [r.position for r in selector.requirements] == [0, 10, 24]


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("web-1", ("web-1",)),
        ("web-1,web-2", ("web-1", "web-2")),
        ("web-1 web-2", ("web-1", "web-2")),
        ("  web-1 ,  web-2  db.example.com ", ("web-1", "web-2", "db.example.com")),
        ("web-1,web-1", ("web-1",)),
        ("10.0.0.1,10.0.0.2", ("10.0.0.1", "10.0.0.2")),
        ("canary", ("canary",)),  # a lone bare word is a name, not a label existence test
    ],
)
def test_bare_words_are_a_list_of_names(text: str, names: tuple[str, ...]) -> None:
    selector = parse_selector(text)
    assert selector.names == names
    assert selector.requirements == (R("name", "in", names),)
    assert parse_selector(str(selector)) == selector
    assert selector == Selector.of_names(names)


def test_existence_alone_renders_so_that_it_reads_back() -> None:
    selector = Selector((R("canary", "exists"), R("beta", "exists")))
    assert str(selector) == "canary=*,beta=*"
    assert parse_selector(str(selector)) == selector
    # next to another requirement the bare Kubernetes form is used
    assert str(Selector((R("env", "=", ("prod",)), R("canary", "exists")))) == "env=prod,canary"


@pytest.mark.parametrize(
    ("text", "position", "expected"),
    [
        ("env=prod,role in (web", 21, "',' or ')'"),
        ("role in", 7, "'(' after 'in'"),
        ("role notin web", 11, "'(' after 'notin'"),
        ("env=prod canary", 9, "',' or end of selector"),
        ("env=", 4, "a value"),
        ("env=(", 4, "a value"),
        ("env=prod,", 9, "a label key"),
        (",env=prod", 0, "a label key"),
        ("web-1,,web-2", 6, "a server name"),
        ("web-1,", 6, "a server name"),
        (",web-1", 0, "a server name"),
        ("env=pr$od", 6, "a name, a label key, an operator"),
        ("envé=prod", 3, "a name, a label key, an operator"),
        ("!", 1, "a label key"),
        ("!in", 1, "a label key"),
        ("in", 0, "a label key"),
        ("k=v=w", 3, "',' or end of selector"),
        ("key===v", 5, "a value"),
        ("role in (web)x", 13, "',' or end of selector"),
        ("role in ()", 9, "a value"),
        ("k=*x", 3, "',' or end of selector"),
        ("=prod", 0, "a label key"),
        ("-x=1", 0, "a label key"),
        ("k=" + "v" * 129, 2, "a value of at most 128 characters"),
        ("-web", 0, "a server name"),
        ("(web)", 0, "a label key"),
        ("env=prod)", 8, "',' or end of selector"),
    ],
)
def test_errors_name_the_position_and_what_was_expected(
    text: str, position: int, expected: str
) -> None:
    with pytest.raises(SelectorError) as caught:
        parse_selector(text)
    error = caught.value
    assert error.status == 422
    assert error.code == "invalid_selector"
    assert error.details["field"] == "selector"
    assert error.details["position"] == position
    assert expected in error.details["expected"]
    assert f"position {position}" in error.message


def _parse_or_error(text: str) -> Selector | SelectorError:
    try:
        return parse_selector(text)
    except SelectorError as exc:
        return exc


@settings(max_examples=400, database=None, deadline=None)
@given(st.text(max_size=80))
def test_any_text_is_a_selector_or_a_selector_error(text: str) -> None:
    result = _parse_or_error(text)
    if isinstance(result, SelectorError):
        assert 0 <= result.position <= len(text)
        assert result.details["expected"]
    else:
        assert parse_selector(str(result)) == result


_TOKENS = st.sampled_from(
    ["env", "role", "=", "==", "!=", "!", ",", "(", ")", " ", "in", "notin", "*", "web", "a.b"]
)


@settings(max_examples=400, database=None, deadline=None)
@given(st.lists(_TOKENS, max_size=12).map("".join))
def test_token_soup_is_a_selector_or_a_selector_error(text: str) -> None:
    """Arbitrary text rarely gets past the lexer; sequences of real tokens do."""
    result = _parse_or_error(text)
    if isinstance(result, SelectorError):
        assert 0 <= result.position <= len(text)
    else:
        assert parse_selector(str(result)) == result


_KEY = st.from_regex(r"\A[a-z][a-z0-9._/-]{0,10}\Z").filter(
    lambda k: k not in ("in", "notin") and k not in FIELD_KEYS
)
_VALUE = st.from_regex(r"\A[A-Za-z0-9._:/@+-]{1,12}\Z")
_REQUIREMENT = st.one_of(
    st.builds(lambda k, v: R(k, "=", (v,)), _KEY, _VALUE),
    st.builds(lambda k, v: R(k, "!=", (v,)), _KEY, _VALUE),
    st.builds(
        lambda k, vs: R(k, "in", tuple(dict.fromkeys(vs))), _KEY, st.lists(_VALUE, min_size=1)
    ),
    st.builds(
        lambda k, vs: R(k, "notin", tuple(dict.fromkeys(vs))), _KEY, st.lists(_VALUE, min_size=1)
    ),
    st.builds(lambda k: R(k, "exists"), _KEY),
    st.builds(lambda k: R(k, "!exists"), _KEY),
)


@settings(max_examples=300, database=None, deadline=None)
@given(st.lists(_REQUIREMENT, min_size=1, max_size=6))
def test_rendered_selectors_parse_back(requirements: list[Requirement]) -> None:
    selector = Selector(tuple(requirements))
    assert parse_selector(str(selector)) == selector


@settings(max_examples=200, database=None, deadline=None)
@given(
    st.lists(st.from_regex(r"\A[a-z0-9][a-z0-9._-]{0,15}\Z"), min_size=1, max_size=6).filter(
        lambda names: not {"in", "notin"} & set(names)
    ),
    st.sampled_from([",", " ", ", ", " , ", "  "]),
)
def test_name_lists_parse_with_any_separator(names: list[str], separator: str) -> None:
    selector = parse_selector(separator.join(names))
    assert selector.names == tuple(dict.fromkeys(names))


# --- matching -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("env=prod", True),
        ("environment=prod", True),
        ("env in (dev,staging)", False),
        ("role=web", True),
        ("role!=web", False),
        ("tier!=gold", True),  # missing counts as different
        ("tier notin (gold)", True),
        ("tier in (gold)", False),
        ("role", False),  # a lone bare word is a name
        ("role=*", True),
        ("env=prod,role", True),
        ("!role", False),
        ("!tier", True),
        ("cluster=eu-1", True),
        ("cluster!=eu-1", False),
        ("!cluster", False),
        ("name=web-1", True),
        ("web-1", True),
        ("web-2", False),
        ("kind=ssh,status=unknown", True),
        ("kind=local", False),
    ],
)
def test_matching(text: str, expected: bool) -> None:
    fields: dict[str, str | None] = {
        "environment": "prod",
        "cluster": "eu-1",
        "name": "web-1",
        "kind": "ssh",
        "status": "unknown",
    }
    assert parse_selector(text).matches(fields, {"role": "web"}) is expected


# --- resolution against the database -----------------------------------------------------------


@asynccontextmanager
async def recorder(platform: Platform) -> AsyncIterator[TenantRecorder]:
    async with platform.db.session("t_default", write=True) as session:
        yield TenantRecorder(
            platform, session, ("default", "t_default"), AuditContext(Actor.system("test"))
        )


async def _fleet(platform: Platform) -> None:
    """eu-1 (region=eu, tier=gold) holds web-1 and web-2 (which overrides tier); db-1 is alone."""
    async with recorder(platform) as audit:
        await create_cluster(
            audit, ClusterCreate(name="eu-1", labels={"region": "eu", "tier": "gold"})
        )
        await create_cluster(audit, ClusterCreate(name="us-1", labels={"region": "us"}))
        for body in (
            ServerCreate(
                name="web-1", address="10.0.0.1", environment="prod", cluster="eu-1",
                labels={"role": "web"},
            ),
            ServerCreate(
                name="web-2", address="10.0.0.2", environment="prod", cluster="eu-1",
                labels={"role": "web", "tier": "silver", "canary": "yes"},
            ),
            ServerCreate(
                name="api-1", address="10.0.1.1", environment="staging", cluster="us-1",
                labels={"role": "api"},
            ),
            ServerCreate(
                name="db-1", address="10.0.2.1", environment="prod", labels={"role": "db"}
            ),
        ):  # fmt: skip
            await create_server(audit, body)


async def _names(platform: Platform, selector: str) -> list[str]:
    async with platform.db.session("t_default") as session:
        return [s.name for s in await resolve(session, selector)]


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("env=prod", ["db-1", "web-1", "web-2"]),
        ("env!=prod,kind=ssh", ["api-1"]),
        ("region=eu", ["web-1", "web-2"]),  # inherited from the cluster
        ("tier=gold", ["web-1"]),  # web-2 overrides its cluster's tier
        ("tier=silver", ["web-2"]),
        ("tier notin (gold),kind=ssh", ["api-1", "db-1", "web-2"]),
        ("env=prod,role in (web,api),!canary,cluster=eu-1", ["web-1"]),
        ("cluster in (eu-1,us-1)", ["api-1", "web-1", "web-2"]),
        ("cluster=eu-1,env=prod", ["web-1", "web-2"]),
        ("cluster=nowhere", []),
        ("!cluster,kind=ssh", ["db-1"]),
        ("cluster!=eu-1,kind=ssh", ["api-1", "db-1"]),
        ("canary=*", ["web-2"]),
        ("region,env=staging", ["api-1"]),
        ("web-1,db-1", ["db-1", "web-1"]),
        ("web-1 nosuch", ["web-1"]),
        ("name notin (web-1,web-2),kind=ssh", ["api-1", "db-1"]),
        ("role=web,region=us", []),
    ],
)
async def test_resolution(platform: Platform, selector: str, expected: list[str]) -> None:
    await _fleet(platform)
    assert await _names(platform, selector) == expected


async def test_empty_selector_selects_every_server(platform: Platform) -> None:
    await _fleet(platform)
    local = ["localhost"] if platform.db.is_sqlite else []  # registered at bootstrap
    assert await _names(platform, "") == sorted(["api-1", "db-1", "web-1", "web-2", *local])
    assert await _names(platform, "kind=local") == local


async def test_pages_cover_every_match_once(platform: Platform) -> None:
    async with recorder(platform) as audit:
        for i in range(30):
            env = "prod" if i % 3 else "dev"
            body = ServerCreate(name=f"host-{i:02d}", address=f"10.1.0.{i}", environment=env)
            await create_server(audit, body)
    expected = [f"host-{i:02d}" for i in range(30) if i % 3]
    for limit in (1, 4, 7, 20, 100):
        seen: list[str] = []
        cursor: str | None = None
        async with platform.db.session("t_default") as session:
            while True:
                page, cursor = await resolve_page(session, "env=prod", limit=limit, after=cursor)
                assert len(page) <= limit
                seen += [s.name for s in page]
                if cursor is None:
                    break
                assert page, "a cursor comes with a page"
        assert seen == expected, limit
