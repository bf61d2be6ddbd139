"""Rules as data: the built-in file, RuleSpec validation, tenant precedence, relaxes(),
environments that raise the class, and the verdict's JSON."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from it0.ops.policy import Policy, PolicyError, Risk, RuleSpec, relaxes
from it0.ops.policy.parse import flags_present, subcommand
from it0.ops.policy.rules import (
    PathClasses,
    _nested_repeat,
    builtin_rulebook,
    builtin_text,
    load_policy_file,
)


def risk(line: str, policy: Policy | None = None, env: str | None = None) -> Risk:
    return (policy or Policy.default()).classify(line, env).risk


def rule_of(line: str, policy: Policy) -> list[str]:
    return [p.rule for p in policy.classify(line).parts]


def tenant(**fields: Any) -> RuleSpec:
    return RuleSpec.model_validate({"reason": "tenant rule", **fields})


# --- Risk ---------------------------------------------------------------------------------


def test_risk_order_puts_unknown_between_low_and_high() -> None:
    assert [r.value for r in sorted(Risk, key=lambda r: r.rank)] == [
        "read_only",
        "low",
        "unknown",
        "high",
        "critical",
    ]
    assert Risk.max(Risk.LOW, Risk.UNKNOWN) is Risk.UNKNOWN
    assert Risk.max(Risk.UNKNOWN, Risk.HIGH) is Risk.HIGH
    assert Risk.max() is Risk.READ_ONLY
    assert [r.needs_approval for r in Risk] == [False, True, True, True, True]


def test_raising_moves_one_level_and_keeps_the_ends() -> None:
    assert [r.raised() for r in Risk] == [
        Risk.READ_ONLY,
        Risk.HIGH,
        Risk.UNKNOWN,
        Risk.CRITICAL,
        Risk.CRITICAL,
    ]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("ls; rm -rf /", Risk.CRITICAL),
        ("ls; eval x", Risk.UNKNOWN),
        ("rm /tmp/x; eval x", Risk.UNKNOWN),
        ("eval x; systemctl restart nginx", Risk.HIGH),
        ("ls; touch /tmp/x", Risk.LOW),
        ("", Risk.READ_ONLY),
    ],
)
def test_line_takes_the_class_of_its_riskiest_part(line: str, expected: Risk) -> None:
    assert risk(line) is expected


# --- environments -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "base", "in_prod"),
    [
        ("uptime", Risk.READ_ONLY, Risk.READ_ONLY),
        ("touch /tmp/x", Risk.LOW, Risk.HIGH),
        ("eval x", Risk.UNKNOWN, Risk.UNKNOWN),
        ("systemctl restart nginx", Risk.HIGH, Risk.CRITICAL),
        ("reboot", Risk.CRITICAL, Risk.CRITICAL),
    ],
)
def test_prod_raises_one_level(line: str, base: Risk, in_prod: Risk) -> None:
    policy = Policy.default()
    plain = policy.classify(line)
    prod = policy.classify(line, env="prod")
    assert (plain.risk, plain.raised, plain.env) == (base, False, None)
    assert (prod.risk, prod.raised, prod.env) == (in_prod, in_prod is not base, "prod")
    assert [p.risk for p in prod.parts] == [p.risk for p in plain.parts]


def test_raising_environments_come_from_the_rule_file() -> None:
    assert risk("touch /tmp/x", env="production") is Risk.HIGH
    assert risk("touch /tmp/x", env="PROD") is Risk.HIGH
    assert risk("touch /tmp/x", env="staging") is Risk.LOW
    text = builtin_text().replace("raise_for_env: [prod, production]", "raise_for_env: [live]")
    custom = Policy.from_yaml(text)
    assert risk("touch /tmp/x", custom, env="live") is Risk.HIGH
    assert risk("touch /tmp/x", custom, env="prod") is Risk.LOW


# --- verdict JSON -------------------------------------------------------------------------


def test_verdict_json_shape() -> None:
    verdict = Policy.default().classify("ls | sudo bash -c 'rm -rf /srv/app/cache'", env="prod")
    body = json.loads(json.dumps(verdict.to_json()))
    assert set(body) == {"command", "risk", "env", "raised", "needs_approval", "parts"}
    assert body["risk"] == "critical"
    assert body["command"] == "ls | sudo bash -c 'rm -rf /srv/app/cache'"
    assert (body["env"], body["raised"], body["needs_approval"]) == ("prod", True, True)
    assert body["parts"] == [
        {
            "text": "ls",
            "argv": ["ls"],
            "risk": "read_only",
            "rule": "builtin:ls",
            "reason": "reads files or prints text",
            "via": [],
        },
        {
            "text": "rm -rf /srv/app/cache",
            "argv": ["rm", "-rf", "/srv/app/cache"],
            "risk": "high",
            "rule": "builtin:rm/-r",
            "reason": "deletes directories recursively",
            "via": ["sudo", "bash -c"],
        },
    ]
    assert all(p["risk"] in {r.value for r in Risk} for p in body["parts"])


@pytest.mark.parametrize(
    ("line", "rule"),
    [
        ("systemctl restart nginx", "builtin:systemctl/restart"),
        ("echo x > /etc/motd", "builtin:redirect"),
        ("frobnicate", "builtin:unknown-command"),
        ("ls )", "builtin:parse-error"),
        ("$CMD", "builtin:dynamic-command"),
        ("./deploy.sh", "builtin:run-file"),
        ("curl x | sh", "builtin:pipe-to-shell"),
        ("PATH=/tmp ls", "builtin:sensitive-variable"),
    ],
)
def test_parts_name_the_rule_that_decided(line: str, rule: str) -> None:
    assert rule in rule_of(line, Policy.default())


def test_parse_error_is_the_reason_for_the_whole_line() -> None:
    verdict = Policy.default().classify("ls; echo 'unterminated")
    assert verdict.risk is Risk.UNKNOWN
    assert len(verdict.parts) == 1
    assert verdict.parts[0].rule == "builtin:parse-error"
    assert "parse" in verdict.parts[0].reason


def test_arguments_too_long_for_patterns_are_unknown() -> None:
    select = "psql -c 'select " + "a, " * 2000 + "b from t'"
    verdict = Policy.default().classify(select)
    assert verdict.risk is Risk.UNKNOWN
    assert verdict.parts[0].rule == "builtin:arguments-too-long"
    assert risk("echo " + "a " * 3000) is Risk.READ_ONLY  # no pattern to search


def test_nesting_beyond_the_limit_is_unknown() -> None:
    line = "ls"
    for _ in range(10):
        line = f"bash -c {json.dumps(line)}"
    assert risk(line) is Risk.UNKNOWN
    assert "builtin:too-deep" in rule_of(line, Policy.default())
    assert risk("(" * 3000 + "ls" + ")" * 3000) is Risk.UNKNOWN


# --- the built-in file --------------------------------------------------------------------


def test_builtin_rules_load_into_rulespecs_with_unique_ids() -> None:
    data, specs = load_policy_file(builtin_text())
    assert all(isinstance(s, RuleSpec) for s in specs)
    ids = [s.id for s in specs]
    assert len(ids) == len(set(ids))
    assert "systemctl/restart" in ids
    assert "unknown-command" in ids
    assert data.raise_for_env == ["prod", "production"]
    assert Policy.default() is Policy.default()
    assert Policy.default().book is builtin_rulebook()


def test_invalid_rule_files_are_refused() -> None:
    with pytest.raises(PolicyError, match="invalid rule file"):
        Policy.from_yaml("version: 1\ncommands: []\n")
    with pytest.raises(PolicyError, match="used twice"):
        Policy.from_yaml(builtin_text() + "\n  - names: [ls]\n    risk: low\n    reason: x\n")
    with pytest.raises(PolicyError, match="invalid rule file"):
        Policy.from_yaml("version: [")


def test_path_classes() -> None:
    paths = builtin_rulebook().paths
    assert paths.classify("/dev/null") == "sink"
    assert paths.classify("/etc/shadow") == "critical"
    assert paths.classify("//etc/./passwd") == "critical"
    assert paths.classify("/dev/sda1") == "critical"
    assert paths.classify("/dev/tcp/evil/80") == "network"
    assert paths.classify("/etc/nginx/nginx.conf") == "system"
    assert paths.classify("/etc") == "system"
    assert paths.classify("/etcetera") is None
    assert paths.classify("/srv/app") is None
    with pytest.raises(PolicyError, match="missing"):
        PathClasses({"sink": []})


def test_subcommand_and_flags_helpers() -> None:
    options = frozenset({"-n", "--namespace"})
    assert subcommand(["-n", "prod", "get", "pods"], options) == "get"
    assert subcommand(["--namespace=prod", "get"], options) == "get"
    assert subcommand(["--", "-weird"], options) == "-weird"
    assert subcommand(["-v"], options) is None
    wanted = frozenset({"-r", "--recursive", "-delete"})
    assert flags_present(["-rf", "/"], wanted, frozenset(), True) == {"-r"}
    assert flags_present(["--recursive=yes"], wanted, frozenset(), True) == {"--recursive"}
    assert flags_present(["--", "-r"], wanted, frozenset(), True) == frozenset()
    assert flags_present(["-nr"], wanted, frozenset({"-n"}), True) == frozenset()
    assert flags_present(["-delete"], wanted, frozenset(), False) == {"-delete"}
    assert flags_present(["-ordered"], wanted, frozenset(), False) == frozenset()


# --- RuleSpec -----------------------------------------------------------------------------


def test_rulespec_accepts_an_api_body() -> None:
    spec = RuleSpec.model_validate_json(
        '{"command": "myctl", "subcommand": "status", "flags": ["-f", "--force"],'
        ' "args_match": "{{system}}", "risk": "read_only", "reason": "our tool", "id": "r-1"}'
    )
    assert spec.flags == ("-f", "--force")
    assert spec.risk is Risk.READ_ONLY
    assert spec.model_dump(mode="json")["flags"] == ["-f", "--force"]


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"command": "myctl", "risk": "low", "reason": "x", "extra": 1}, "extra"),
        ({"command": "myctl", "risk": "low", "reason": "a\x00b"}, "NUL"),
        ({"command": "my\x00ctl", "risk": "low", "reason": "x"}, "NUL"),
        ({"command": "myctl", "flags": ["-f\x00"], "risk": "low", "reason": "x"}, "NUL"),
        ({"command": "/bin/myctl", "risk": "low", "reason": "x"}, "command"),
        ({"command": "my ctl", "risk": "low", "reason": "x"}, "command"),
        ({"command": "-x", "risk": "low", "reason": "x"}, "command"),
        ({"command": "myctl", "subcommand": "-x", "risk": "low", "reason": "x"}, "subcommand"),
        ({"command": "myctl", "flags": ["force"], "risk": "low", "reason": "x"}, "not a flag"),
        ({"command": "myctl", "args_match": "(", "risk": "low", "reason": "x"}, "regular"),
        ({"command": "myctl", "args_match": "{{home}}", "risk": "low", "reason": "x"}, "macro"),
        (
            {"command": "myctl", "args_match": r"^(\s*-\S+)*$", "risk": "low", "reason": "x"},
            "repeat",
        ),
        (
            {"command": "myctl", "args_match": "({{root}} )+", "risk": "low", "reason": "x"},
            "repeat",
        ),
        ({"command": "myctl", "risk": "dangerous", "reason": "x"}, "risk"),
        ({"command": "myctl", "risk": "low", "reason": ""}, "reason"),
        ({"command": "myctl", "risk": "low"}, "reason"),
    ],
)
def test_rulespec_rejects_bad_rules(fields: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        RuleSpec.model_validate(fields)


@pytest.mark.parametrize(
    ("pattern", "nested"),
    [
        (r"(a+)*", True),
        (r"(\s*-\S+)*\s*$", True),
        (r"(?:x{2,})+", True),
        (r"((ab)*c)*", True),
        (r"(a*){2}", True),
        (r"(?:ab)*", False),
        (r"(a|b)+c*", False),
        (r"(a+)?", False),
        (r"^(?!.*(?:^|\s)[^-\s])", False),
        (r"[(*]+(x)", False),
        (r"\(a+\)*", False),
    ],
)
def test_nested_repeats_are_detected(pattern: str, nested: bool) -> None:
    assert _nested_repeat(pattern) is nested


def test_builtin_patterns_stay_fast_on_near_misses() -> None:
    """Each would take minutes with exponential backtracking; linear patterns take nothing."""
    book = builtin_rulebook()
    patterns = [r.pattern for r in book.builtin if r.pattern is not None]
    patterns += [w.unsafe_args for w in book.wrappers.values() if w.unsafe_args is not None]
    n = 26
    texts = [
        "-a" * n + " !",
        "-a " * n + "!",
        "a " * n + "!",
        "- " * n + "x!",
        "x -a" * n + " !",
        "s/" + "\\" * n,
        "s/a/" * n + "b",
        "/" * (2 * n) + " !",
        "--list " * n + "!",
        "-S " * n + "-",
        "-0 1" * n + "x",
    ]
    for pattern in patterns:
        for text in texts:
            pattern.search(text)


# --- tenant rules ---------------------------------------------------------------------------


def test_tenant_rule_classifies_an_unknown_command() -> None:
    policy = Policy.default().extended(
        [tenant(command="myctl", subcommand="status", risk="read_only")]
    )
    assert risk("myctl status", policy) is Risk.READ_ONLY
    assert rule_of("myctl status", policy) == ["tenant:myctl/status"]
    assert risk("myctl deploy", policy) is Risk.UNKNOWN
    assert risk("/usr/local/bin/myctl status", policy) is Risk.READ_ONLY
    assert risk("sudo myctl status > /etc/x", policy) is Risk.HIGH
    assert risk("myctl status") is Risk.UNKNOWN  # the default policy is unchanged


def test_tenant_rule_with_same_conditions_replaces_the_builtin_one() -> None:
    policy = Policy.default().extended(
        [tenant(id="ours", command="systemctl", subcommand="restart", risk="low")]
    )
    assert risk("systemctl restart nginx", policy) is Risk.LOW
    assert rule_of("systemctl restart nginx", policy) == ["tenant:ours"]
    assert risk("systemctl stop nginx", policy) is Risk.HIGH


def test_more_specific_builtin_rule_beats_a_broad_tenant_rule() -> None:
    policy = Policy.default().extended([tenant(command="docker", risk="read_only")])
    assert risk("docker frobnicate", policy) is Risk.READ_ONLY
    assert risk("docker rm -f web", policy) is Risk.HIGH


def test_most_specific_tenant_rule_wins() -> None:
    policy = Policy.default().extended(
        [
            tenant(command="myctl", risk="high"),
            tenant(command="myctl", subcommand="db", risk="low"),
            tenant(command="myctl", subcommand="db", flags=["--dry-run"], risk="read_only"),
        ]
    )
    assert risk("myctl web", policy) is Risk.HIGH
    assert risk("myctl db migrate", policy) is Risk.LOW
    assert risk("myctl db migrate --dry-run", policy) is Risk.READ_ONLY


def test_unrelated_tenant_rule_cannot_lower_a_builtin_one() -> None:
    policy = Policy.default().extended([tenant(command="rm", flags=["-f"], risk="read_only")])
    assert risk("rm -f /tmp/x", policy) is Risk.READ_ONLY
    assert risk("rm -rf /", policy) is Risk.CRITICAL
    assert risk("rm -f /etc/shadow", policy) is Risk.CRITICAL


def test_structure_is_not_overridable_by_rules() -> None:
    policy = Policy.default().extended([tenant(command="ls", risk="read_only")])
    assert risk("ls > /etc/passwd", policy) is Risk.CRITICAL
    assert risk("curl x | sh", policy.extended([tenant(command="sh", risk="read_only")])) is (
        Risk.CRITICAL
    )


def test_tenant_rule_can_tighten_with_args_match() -> None:
    policy = Policy.default().extended(
        [
            tenant(command="cat", args_match=r"(^|\s)/etc/shadow", risk="high"),
            tenant(command="backup", args_match=r"(^|\s){{system}}", risk="high"),
            tenant(command="backup", risk="low"),
        ]
    )
    assert risk("cat /etc/shadow", policy) is Risk.HIGH
    assert risk("cat /etc/hosts", policy) is Risk.READ_ONLY
    assert risk("backup /etc/nginx", policy) is Risk.HIGH
    assert risk("backup /srv/app", policy) is Risk.LOW


def test_extended_policy_does_not_reuse_stale_lookups() -> None:
    base = Policy.default()
    assert risk("systemctl restart nginx; frobnicate", base) is Risk.HIGH  # both cached now
    policy = base.extended([tenant(command="systemctl", subcommand="restart", risk="low")])
    assert risk("systemctl restart nginx", policy) is Risk.LOW
    everything = base.extended([tenant(id="anything", command="*", risk="read_only")])
    assert risk("frobnicate", everything) is Risk.READ_ONLY
    assert rule_of("frobnicate", everything) == ["tenant:anything"]
    assert risk("rm /srv/x", everything) is Risk.LOW
    assert relaxes(base, tenant(command="*", risk="read_only"))
    assert risk("systemctl restart nginx; frobnicate", base) is Risk.HIGH


def test_extended_accumulates_tenant_rules() -> None:
    once = Policy.default().extended([tenant(command="a1", risk="low")])
    twice = once.extended([tenant(command="a2", risk="low")])
    assert [r.command for r in twice.tenant_rules] == ["a1", "a2"]
    assert risk("a1; a2", twice) is Risk.LOW
    assert risk("a2", once) is Risk.UNKNOWN


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"command": "systemctl", "subcommand": "restart", "risk": "low"}, True),
        ({"command": "systemctl", "subcommand": "restart", "risk": "critical"}, False),
        ({"command": "myctl", "subcommand": "status", "risk": "read_only"}, True),
        ({"command": "myctl", "risk": "high"}, False),
        ({"command": "docker", "risk": "read_only"}, True),
        ({"command": "rm", "flags": ["-r"], "risk": "high"}, False),
        ({"command": "rm", "flags": ["-r"], "risk": "low"}, True),
        ({"command": "cat", "risk": "read_only"}, False),
        ({"command": "cat", "args_match": "secret", "risk": "high"}, False),
    ],
)
def test_relaxes_tells_whether_a_tenant_rule_lowers_a_class(
    fields: dict[str, Any], expected: bool
) -> None:
    assert relaxes(Policy.default(), tenant(**fields)) is expected
