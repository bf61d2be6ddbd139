"""The built-in runbooks: complete, safe to diagnose with, and rendered without injection."""

from __future__ import annotations

import functools
import re
from importlib import resources
from typing import Any

import pytest

from it0.agent.runbooks import Runbook, Step, load_builtin, load_runbook
from it0.ops.policy import Policy, Risk

RUNBOOKS = load_builtin()


def _ids(runbook: Runbook) -> str:
    return runbook.id


@functools.cache
def _policy() -> Policy:
    return Policy.default()


def _sample_values(runbook: Runbook) -> dict[str, str]:
    """Each parameter's default, else its example: what the agent would fill in."""
    values: dict[str, str] = {}
    for name, parameter in runbook.parameters.items():
        value = parameter.default if parameter.default is not None else parameter.example
        assert value is not None
        values[name] = value
    return values


def _rendered(runbook: Runbook, steps: tuple[Step, ...]) -> list[str]:
    return [runbook.render(step, _sample_values(runbook)) for step in steps]


def _minimal(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": "example",
        "title": "Example",
        "summary": "An example runbook.",
        "symptoms": ["something is wrong"],
        "parameters": {"service": {"description": "A service.", "example": "nginx"}},
        "diagnostics": [
            {"name": "Status", "command": "systemctl status {service}", "explain": "State."}
        ],
        "remediations": [
            {
                "name": "Restart",
                "command": "systemctl restart {service}",
                "risk_note": "Brief outage.",
                "when": "It is stuck.",
            }
        ],
        "verify": [{"name": "Active", "command": "systemctl is-active {service}", "explain": "ok"}],
    }
    data.update(changes)
    return data


def test_at_least_twelve_runbooks_with_unique_ids_equal_to_file_names() -> None:
    folder = resources.files("it0.agent").joinpath("runbooks")
    stems = sorted(
        e.name.removesuffix(".yaml") for e in folder.iterdir() if e.name.endswith(".yaml")
    )
    ids = [runbook.id for runbook in RUNBOOKS]
    assert len(ids) >= 12
    assert len(set(ids)) == len(ids)
    assert sorted(ids) == stems


def test_load_builtin_is_cached_but_returns_a_fresh_list() -> None:
    first, second = load_builtin(), load_builtin()
    assert first == second
    assert first is not second
    assert all(a is b for a, b in zip(first, second, strict=True))


@pytest.mark.parametrize("runbook", RUNBOOKS, ids=_ids)
def test_runbook_is_complete(runbook: Runbook) -> None:
    assert runbook.symptoms
    assert len(runbook.diagnostics) >= 2
    assert runbook.remediations
    assert runbook.verify


@pytest.mark.parametrize("runbook", RUNBOOKS, ids=_ids)
def test_diagnostics_and_verify_are_read_only(runbook: Runbook) -> None:
    """The agent runs these without asking, so the policy must agree they change nothing."""
    for command in _rendered(runbook, runbook.diagnostics + runbook.verify):
        assert _policy().classify(command).risk is Risk.READ_ONLY, command


@pytest.mark.parametrize("runbook", RUNBOOKS, ids=_ids)
def test_remediations_need_approval(runbook: Runbook) -> None:
    for command in _rendered(runbook, runbook.remediations):
        assert _policy().classify(command).risk is not Risk.READ_ONLY, command


@pytest.mark.parametrize("runbook", RUNBOOKS, ids=_ids)
def test_every_step_renders_without_leftover_placeholders(runbook: Runbook) -> None:
    for command in _rendered(runbook, runbook.steps):
        for name in runbook.parameters:
            assert "{" + name + "}" not in command


def test_render_substitutes_given_values_and_defaults() -> None:
    runbook = next(r for r in RUNBOOKS if r.id == "port-not-listening")
    step = runbook.verify[1]
    assert step.command == "nc -zv -w 2 {host} {port}"
    assert runbook.render(step, {"port": "5432"}) == "nc -zv -w 2 127.0.0.1 5432"
    assert runbook.render(step, {"port": "443", "host": "db-1.internal"}) == (
        "nc -zv -w 2 db-1.internal 443"
    )


@pytest.mark.parametrize(
    "value",
    [
        "nginx; rm -rf /",
        "a b",
        "$(reboot)",
        "`reboot`",
        "x'y",
        'x"y',
        "nginx\nreboot",
        "a|b",
        "a>b",
        "*",
        "~root",
        "",
        "x" * 257,
        "--force",
    ],
)
def test_render_refuses_values_that_are_not_plain_words(value: str) -> None:
    runbook = Runbook.model_validate(_minimal())
    with pytest.raises(ValueError, match="parameter 'service'"):
        runbook.render(runbook.remediations[0], {"service": value})


def test_render_refuses_undeclared_and_missing_parameters() -> None:
    runbook = Runbook.model_validate(_minimal())
    with pytest.raises(ValueError, match="no parameter"):
        runbook.render(runbook.diagnostics[0], {"service": "nginx", "user": "root"})
    with pytest.raises(ValueError, match="needs a value"):
        runbook.render(runbook.diagnostics[0])


def test_unknown_placeholder_is_rejected_at_load_time() -> None:
    step = {"name": "Status", "command": "systemctl status {unit}", "explain": "State."}
    with pytest.raises(ValueError, match=r"unknown placeholder\(s\) \['unit'\]"):
        Runbook.model_validate(_minimal(diagnostics=[step]))


def test_braces_that_are_not_placeholders_are_left_alone() -> None:
    command = "find /var/log -size +1G -exec ls -lh {} + | awk '{print $5}'"
    step = {"name": "Big logs", "command": command, "explain": "Sizes."}
    runbook = Runbook.model_validate(_minimal(diagnostics=[step]))
    assert runbook.render(runbook.diagnostics[0]) == command


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"extra": "field"}, "Extra inputs are not permitted"),
        ({"title": "bad\x00title"}, "NUL characters"),
        ({"id": "Not_Kebab"}, "should match pattern"),
        ({"symptoms": []}, "at least 1 item"),
        ({"parameters": {"service": {"description": "No value."}}}, "a default or an example"),
        ({"parameters": {"service": {"description": "Bad.", "default": "a;b"}}}, "plain word"),
        ({"parameters": {"Service": {"description": "Bad.", "example": "x"}}}, "parameter name"),
        (
            {"verify": [{"name": "Ok", "command": "true", "explain": "x", "risk_note": "x"}]},
            "needs `explain` only",
        ),
        (
            {"remediations": [{"name": "Restart", "command": "reboot", "when": "always"}]},
            "needs `risk_note` and `when`",
        ),
    ],
)
def test_malformed_runbooks_are_rejected(changes: dict[str, Any], error: str) -> None:
    with pytest.raises(ValueError, match=re.escape(error)):
        Runbook.model_validate(_minimal(**changes))


def test_load_runbook_requires_the_id_to_match_the_file_name() -> None:
    text = "id: example\ntitle: x\nsummary: x\nsymptoms: [x]\n"
    with pytest.raises(ValueError, match=r"other\.yaml"):
        load_runbook(text, "other.yaml")
