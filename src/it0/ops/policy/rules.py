"""Risk rules as data: the model of one rule, the built-in rule file, tenant additions.

A rule names a command and, optionally, a subcommand (the first argument that is not an
option), flags (the rule applies when ANY of them is present) and ``args_match`` (a regular
expression searched in the arguments joined by single spaces; with a subcommand, in those
after it). Every condition given must hold. When several rules match a command, a rule
that is a refinement of another (it only matches where the other does: same command or a
name its pattern covers, same subcommand, a subset of its flags, the same ``args_match``)
hides it; between rules with the same conditions a tenant's hides the built-in one. Of the
rules left, the riskiest decides, so rules that no refinement relates cannot lower each
other's class.

``args_match`` may use path macros, each matching one whole path word as listed under
``paths`` in ``rules.yaml``: ``{{root}}``, ``{{system}}``, ``{{critical}}``, ``{{sink}}``,
``{{network}}``. Arguments starting with ``/`` or ``~`` are normalised first (``//etc/.``
reads ``/etc``). Python's ``re`` backtracks and has no time limit, so a pattern may not
repeat a group that itself holds ``*`` or ``+`` (``(\\s*-\\S+)*`` takes exponential time on
a line that almost matches): say "only options" as ``^(?!.*(?:^|\\s)[^-\\s])`` instead.
"""

from __future__ import annotations

import copy
import fnmatch
import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from it0.core.errors import IT0Error
from it0.ops.policy.parse import flags_present, normalise_path, subcommand_index

MACROS = ("root", "system", "critical", "sink", "network")
_MACRO = re.compile(r"\{\{(\w+)\}\}")
_COMMAND = r"^[A-Za-z0-9_.+:@\[\]*][A-Za-z0-9_.+:@\[\]*-]{0,63}$"
_SUBCOMMAND = r"^[^\s\x00-\x1f-][^\s\x00-\x1f]{0,63}$"
_FLAG = re.compile(r"^[-+][^\s=\x00-\x1f]{1,63}$")
_ID = r"^[^\s\x00-\x1f]{1,100}$"


class PolicyError(IT0Error):
    code = "invalid_policy"
    status = 422


class Risk(StrEnum):
    """How much care a command needs; ``unknown`` sits between ``low`` and ``high``."""

    READ_ONLY = "read_only"
    LOW = "low"
    UNKNOWN = "unknown"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return _RANK[self]

    @property
    def needs_approval(self) -> bool:
        return self is not Risk.READ_ONLY

    @classmethod
    def max(cls, *risks: Risk) -> Risk:
        """The riskiest of ``risks`` (``read_only`` for none)."""
        return max(risks, key=_RANK.__getitem__, default=Risk.READ_ONLY)

    def raised(self) -> Risk:
        """One level up, as for a production server; ``unknown`` and ``critical`` stay."""
        return _RAISED.get(self, self)


_RANK = {risk: i for i, risk in enumerate(Risk)}
_RAISED = {Risk.LOW: Risk.HIGH, Risk.HIGH: Risk.CRITICAL}


def _reject_nul(value: Any) -> Any:
    if isinstance(value, str) and "\x00" in value:
        raise ValueError("NUL characters are not allowed")
    if isinstance(value, Mapping):
        for item in value.values():
            _reject_nul(item)
    elif isinstance(value, list | tuple):
        for item in value:
            _reject_nul(item)
    return value


def _check_pattern(value: str | None) -> str | None:
    if value is None:
        return None
    for name in _MACRO.findall(value):
        if name not in MACROS:
            raise ValueError(f"unknown macro {{{{{name}}}}}; known: {', '.join(MACROS)}")
    # a macro stands for a path pattern with `\S*` in it
    check_regex(_MACRO.sub("(?:x+)", value))
    return value


_QUANTIFIER = re.compile(r"[*+?]|\{(\d*)(,?)(\d*)\}")


def check_regex(value: str) -> str:
    """A user's regular expression, refused when it does not compile or could take
    exponential time (a repeated group with an unbounded repeat inside)."""
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"not a regular expression: {exc}") from None
    if _nested_repeat(value):
        raise ValueError(
            "a repeated group may not contain * or + (like (a+)*): it can take exponential time"
        )
    return value


def _nested_repeat(pattern: str) -> bool:
    """Whether a group repeated more than once contains an unbounded repeat. Python's
    regular expressions backtrack, and ``(\\s*-\\S+)*`` takes exponential time on a text
    that almost matches; rules are written with lookaheads instead."""
    open_groups: list[bool] = []  # per open group: holds an unbounded repeat
    closed_unbounded = False  # the group that just closed held one
    after_group = False
    i = 0
    while i < len(pattern):
        c = pattern[i]
        m = _QUANTIFIER.match(pattern, i) if c in "*+?{" else None
        if m is not None:
            low, comma, high = m.groups() if c == "{" else ("", "", "")
            unbounded = c in "*+" or bool(comma and not high)
            repeats = unbounded or (c == "{" and int(high or low or "0") > 1)
            if after_group and repeats and closed_unbounded:
                return True
            if unbounded and open_groups:
                open_groups[-1] = True
            i = m.end() + (m.end() < len(pattern) and pattern[m.end()] in "?+")
            after_group = False
            continue
        after_group = False
        if c == "\\":
            i += 2
        elif c == "[":
            i = _class_end(pattern, i)
        elif c == "(":
            open_groups.append(False)
            i += 1
        elif c == ")":
            closed_unbounded = open_groups.pop() if open_groups else False
            if open_groups and closed_unbounded:
                open_groups[-1] = True
            after_group = True
            i += 1
        else:
            i += 1
    return False


def _class_end(pattern: str, i: int) -> int:
    """The index after the character class starting at ``i``."""
    j = i + 1
    if j < len(pattern) and pattern[j] == "^":
        j += 1
    if j < len(pattern) and pattern[j] == "]":
        j += 1
    while j < len(pattern) and pattern[j] != "]":
        j += 2 if pattern[j] == "\\" else 1
    return j + 1


def _check_flags(value: tuple[str, ...]) -> tuple[str, ...]:
    for flag in value:
        if not _FLAG.match(flag):
            raise ValueError(f"{flag!r} is not a flag (like -f or --force)")
    return value


class RuleSpec(BaseModel):
    """One rule: built-in rules are loaded into it, and an API accepts tenant rules as it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str | None = Field(default=None, pattern=_ID)
    command: str = Field(pattern=_COMMAND, description="name (or glob) after path removal")
    subcommand: str | None = Field(default=None, pattern=_SUBCOMMAND)
    flags: tuple[str, ...] = Field(default=(), max_length=64, description="any of them")
    args_match: str | None = Field(default=None, min_length=1, max_length=600)
    risk: Risk
    reason: str = Field(min_length=1, max_length=200)

    _no_nul = model_validator(mode="before")(_reject_nul)
    _flags = field_validator("flags")(_check_flags)
    _args = field_validator("args_match")(_check_pattern)

    @property
    def shape(self) -> str:
        """An id made of the conditions, for rules that have none."""
        parts = [self.command]
        if self.subcommand:
            parts.append(self.subcommand)
        if self.flags:
            parts.append(self.flags[0])
        if self.args_match:
            parts.append("~args")
        return "/".join(parts)


def _is_glob(name: str) -> bool:
    """``[`` alone is the test command, so only ``*`` and ``?`` make a name a pattern."""
    return "*" in name or "?" in name


# --- paths ----------------------------------------------------------------------------------


def _glob_regex(glob: str) -> str:
    """``**`` any text (``X/**`` also X itself), ``*`` and ``?`` within one path component,
    ``[...]`` a character class."""
    if glob.endswith("/**"):
        return _glob_regex(glob[:-3]) + r"(?:/\S*)?"
    out, i = [], 0
    while i < len(glob):
        c = glob[i]
        if glob.startswith("**", i):
            out.append(r"\S*")
            i += 2
            continue
        if c == "*":
            out.append(r"[^\s/]*")
        elif c == "?":
            out.append(r"[^\s/]")
        elif c == "[" and "]" in glob[i + 1 :]:
            end = glob.index("]", i + 1)
            out.append(glob[i : end + 1])
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


class PathClasses:
    """Which class of path a file name is in; ``paths`` in the YAML, macros in rules."""

    ORDER: ClassVar[tuple[str, ...]] = ("sink", "critical", "network", "system")

    def __init__(self, globs: Mapping[str, Sequence[str]]) -> None:
        missing = set(MACROS) - set(globs)
        if missing:
            raise PolicyError(f"paths: missing {', '.join(sorted(missing))}")
        self.alternations = {
            name: "|".join(_glob_regex(g) for g in items) or "(?!)" for name, items in globs.items()
        }
        self._full = {name: re.compile(f"(?:{alt})") for name, alt in self.alternations.items()}

    def macro(self, name: str) -> str:
        return f"(?:{self.alternations[name]})(?=\\s|$)"

    def expand(self, pattern: str) -> str:
        return _MACRO.sub(lambda m: self.macro(m.group(1)), pattern)

    def classify(self, path: str) -> str | None:
        """``sink``, ``critical``, ``network``, ``system`` or None for an ordinary path."""
        path = normalise_path(path)
        for name in self.ORDER:
            if self._full[name].fullmatch(path):
                return name
        return None


# --- the rule file --------------------------------------------------------------------------


class _RuleEntry(BaseModel):
    """A rule inside a command entry: the command comes from the entry; ``subcommand`` may
    list several, each becoming its own ``RuleSpec``."""

    model_config = ConfigDict(extra="forbid")
    id: str | None = None
    subcommand: str | list[str] | None = None
    flags: list[str] = []
    args_match: str | None = None
    risk: Risk
    reason: str


class CommandEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    names: list[str]
    id: str | None = None
    risk: Risk
    reason: str
    value_options: list[str] = []
    clusters: bool = True  # -rf means -r -f (find's -delete does not)
    program: Literal["shell", "interpreter", "remote-shell"] | None = None
    stdin_flags: list[str] = []
    runs_code: bool = False
    exec_clauses: list[str] = []
    rules: list[_RuleEntry] = []


class WrapperEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    names: list[str]
    kind: Literal["argv", "join", "script"] = "argv"
    value_options: list[str] = []
    script_options: list[str] = []
    no_unwrap: list[str] = []
    positionals: int = 0
    assignments: bool = False
    floor: Risk | None = None
    floor_reason: str = ""
    unsafe_args: str | None = None
    unsafe_reason: str = ""

    _unsafe = field_validator("unsafe_args")(_check_pattern)


class PolicyFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: Literal[1]
    max_depth: int = Field(ge=1, le=32)
    max_length: int = Field(ge=100)
    raise_for_env: list[str]
    paths: dict[str, list[str]]
    trusted_dirs: list[str]
    sensitive_variables: list[str]
    prefix_safe_variables: list[str] = []
    downloaders: list[str]
    wrappers: list[WrapperEntry]
    commands: list[CommandEntry]


@dataclass(frozen=True)
class CommandInfo:
    """What the classifier knows about a command besides its rules."""

    value_options: frozenset[str] = frozenset()
    clusters: bool = True
    program: str | None = None
    stdin_flags: frozenset[str] = frozenset()
    runs_code: bool = False
    exec_clauses: frozenset[str] = frozenset()


@dataclass(frozen=True)
class WrapperInfo:
    name: str
    kind: str
    value_options: frozenset[str]
    script_options: frozenset[str]
    no_unwrap: frozenset[str]
    positionals: int
    assignments: bool
    floor: Risk | None
    floor_reason: str
    unsafe_args: re.Pattern[str] | None
    unsafe_reason: str


def _expand_entry(entry: CommandEntry, name: str) -> list[RuleSpec]:
    specs = [RuleSpec(id=entry.id or name, command=name, risk=entry.risk, reason=entry.reason)]
    for rule in entry.rules:
        subs = rule.subcommand if isinstance(rule.subcommand, list) else [rule.subcommand]
        for sub in subs:
            shape = [name] + ([sub] if sub else [])
            shape += [rule.id] if rule.id else rule.flags[:1]
            specs.append(
                RuleSpec(
                    id="/".join(shape),
                    command=name,
                    subcommand=sub,
                    flags=tuple(rule.flags),
                    args_match=rule.args_match,
                    risk=rule.risk,
                    reason=rule.reason,
                )
            )
    return specs


def load_policy_file(text: str) -> tuple[PolicyFile, list[RuleSpec]]:
    """Validate a rule file; every rule in it goes through ``RuleSpec``."""
    try:
        data = PolicyFile.model_validate(yaml.safe_load(text))
        specs = [
            spec
            for entry in data.commands
            for name in entry.names
            for spec in _expand_entry(entry, name)
        ]
    except (yaml.YAMLError, ValidationError) as exc:
        raise PolicyError(f"invalid rule file: {exc}") from None
    seen: set[str] = set()
    for spec in specs:
        if spec.id in seen:
            raise PolicyError(f"invalid rule file: rule id {spec.id!r} is used twice")
        seen.add(spec.id or "")
    return data, specs


@functools.cache
def builtin_text() -> str:
    return resources.files("it0.ops.policy").joinpath("rules.yaml").read_text("utf-8")


# --- matching -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CompiledRule:
    id: str
    spec: RuleSpec
    tenant: bool
    pattern: re.Pattern[str] | None
    flags: frozenset[str]

    @property
    def glob(self) -> bool:
        return _is_glob(self.spec.command)

    @property
    def conditional(self) -> bool:
        return bool(self.spec.subcommand or self.flags or self.pattern)

    def matches(self, sub: str | None, present: frozenset[str], joined: str, rest: str) -> bool:
        """``joined``: all arguments; ``rest``: those after the subcommand, which is what a
        rule with a subcommand searches."""
        s = self.spec
        return (
            (s.subcommand is None or s.subcommand == sub)
            and (not self.flags or not self.flags.isdisjoint(present))
            and (
                self.pattern is None
                or self.pattern.search(rest if s.subcommand else joined) is not None
            )
        )

    def covers(self, other: CompiledRule) -> bool:
        """Whether every command this rule matches is also matched by ``other``."""
        a, b = self.spec, other.spec
        if a.command != b.command and not (
            other.glob and not self.glob and fnmatch.fnmatchcase(a.command, b.command)
        ):
            return False
        return (
            (b.subcommand is None or a.subcommand == b.subcommand)
            and (not other.flags or (bool(self.flags) and self.flags <= other.flags))
            and (b.args_match is None or a.args_match == b.args_match)
        )

    def hides(self, other: CompiledRule) -> bool:
        if not self.covers(other):
            return False
        if other.covers(self):  # the same conditions: a tenant's rule wins
            return self.tenant and not other.tenant
        return True


@dataclass(frozen=True)
class Match:
    risk: Risk
    rule: str
    reason: str
    specific: bool  # decided by a rule with conditions, not by the command's default


@dataclass
class _Entry:
    info: CommandInfo
    rules: list[CompiledRule]
    hidden_by: list[frozenset[int]]
    flags: frozenset[str]
    conditional: bool
    patterns: bool


class RuleBook:
    """Built-in and tenant rules compiled for matching, with per-command lookups cached."""

    CACHE_SIZE: ClassVar[int] = 4096
    MATCH_LENGTH: ClassVar[int] = 4096  # longer arguments are not searched by args_match

    def __init__(
        self, data: PolicyFile, builtin: Sequence[RuleSpec], tenant: Sequence[RuleSpec] = ()
    ) -> None:
        self.data = data
        self.paths = PathClasses(data.paths)
        self.raise_for_env = frozenset(e.lower() for e in data.raise_for_env)
        self.trusted_dirs = frozenset(data.trusted_dirs)
        self.sensitive = frozenset(data.sensitive_variables)
        self.prefix_safe = frozenset(data.prefix_safe_variables)
        self.downloaders = frozenset(data.downloaders)
        self.builtin = tuple(self._compile(s, tenant=False) for s in builtin)
        self.tenant: tuple[CompiledRule, ...] = ()
        self._by_command: dict[str, tuple[CompiledRule, ...]] = {}
        self._glob_rules: tuple[CompiledRule, ...] = ()
        self._entries: dict[str, _Entry] = {}
        self._add(self.builtin)
        self._add(tuple(self._compile(s, tenant=True) for s in tenant))
        self._infos: dict[str, CommandInfo] = {}
        self._glob_infos: list[tuple[str, CommandInfo]] = []
        for entry in data.commands:
            info = CommandInfo(
                frozenset(entry.value_options),
                entry.clusters,
                entry.program,
                frozenset(entry.stdin_flags),
                entry.runs_code,
                frozenset(entry.exec_clauses),
            )
            for name in entry.names:
                if name == "*":  # the fallback rule: no knowledge about the command
                    continue
                if _is_glob(name):
                    self._glob_infos.append((name, info))
                else:
                    self._infos[name] = info
        self.wrappers = {
            name: WrapperInfo(
                name,
                w.kind,
                frozenset(w.value_options),
                frozenset(w.script_options),
                frozenset(w.no_unwrap),
                w.positionals,
                w.assignments,
                w.floor,
                w.floor_reason,
                re.compile(w.unsafe_args) if w.unsafe_args else None,
                w.unsafe_reason,
            )
            for w in data.wrappers
            for name in w.names
        }

    def _add(self, rules: tuple[CompiledRule, ...]) -> None:
        self.tenant += tuple(r for r in rules if r.tenant)
        by_command = dict(self._by_command)  # copied: a book shares it with the one it extends
        for rule in rules:
            if rule.glob:
                self._glob_rules += (rule,)
            else:
                by_command[rule.spec.command] = (*by_command.get(rule.spec.command, ()), rule)
        self._by_command = by_command
        # lookups of commands the new rules do not name stay valid
        named = {r.spec.command for r in rules}
        glob = any(r.glob for r in rules)
        cached = self._entries.copy()  # atomic: other threads may be filling the original
        self._entries = {k: v for k, v in cached.items() if not glob and k not in named}

    def _compile(self, spec: RuleSpec, *, tenant: bool) -> CompiledRule:
        rule_id = f"tenant:{spec.id or spec.shape}" if tenant else f"builtin:{spec.id}"
        pattern = re.compile(self.paths.expand(spec.args_match)) if spec.args_match else None
        return CompiledRule(rule_id, spec, tenant, pattern, frozenset(spec.flags))

    def extended(self, rules: Iterable[RuleSpec]) -> RuleBook:
        """A book with ``rules`` added as tenant rules; the built-in ones are shared."""
        book = copy.copy(self)
        book._add(tuple(self._compile(s, tenant=True) for s in rules))
        return book

    def info(self, name: str) -> CommandInfo | None:
        info = self._infos.get(name)
        if info is None:
            info = next((i for g, i in self._glob_infos if fnmatch.fnmatchcase(name, g)), None)
        return info

    def known(self, name: str) -> bool:
        return name in self._by_command or self.info(name) is not None

    def entry(self, name: str) -> _Entry:
        found = self._entries.get(name)
        if found is not None:
            return found
        rules = list(self._by_command.get(name, ()))
        rules += [r for r in self._glob_rules if fnmatch.fnmatchcase(name, r.spec.command)]
        hidden_by = [
            frozenset(j for j, other in enumerate(rules) if j != i and other.hides(rule))
            for i, rule in enumerate(rules)
        ]
        flags = frozenset().union(*(r.flags for r in rules))
        conditional = any(r.conditional for r in rules)
        patterns = any(r.pattern is not None for r in rules)
        info = self.info(name) or CommandInfo()
        found = _Entry(info, rules, hidden_by, flags, conditional, patterns)
        if len(self._entries) >= self.CACHE_SIZE:
            self._entries.clear()
        self._entries[name] = found
        return found

    def match(self, name: str, args: Sequence[str]) -> Match:
        entry = self.entry(name)
        info = entry.info
        at = subcommand_index(args, info.value_options)
        sub = None if at is None else args[at]
        present = flags_present(args, entry.flags, info.value_options, info.clusters)
        words = [normalise_path(a) for a in args]
        joined = " ".join(words)
        if len(joined) > self.MATCH_LENGTH and entry.patterns:
            reason = f"arguments longer than {self.MATCH_LENGTH} characters: not checked"
            return Match(Risk.UNKNOWN, "builtin:arguments-too-long", reason, True)
        rest = "" if at is None else " ".join(words[at + 1 :])
        hits = {i for i, rule in enumerate(entry.rules) if rule.matches(sub, present, joined, rest)}
        top = [entry.rules[i] for i in hits if not (entry.hidden_by[i] & hits)]
        if not top:  # only when the fallback rule was removed from the file
            return Match(Risk.UNKNOWN, "builtin:unknown-command", "not a known command", False)
        best = max(top, key=lambda r: (r.spec.risk.rank, r.tenant))
        return Match(best.spec.risk, best.id, best.spec.reason, best.conditional)

    def relaxes(self, spec: RuleSpec) -> bool:
        """Whether ``spec`` as a tenant rule would give a lower class than a built-in rule
        it refines or replaces, for some command line."""
        rule = self._compile(spec, tenant=True)
        covered = [b for b in self.builtin if rule.covers(b)]
        # a covered rule hidden by another covered one never decides where ``spec`` matches
        return any(
            b.spec.risk.rank > spec.risk.rank and not any(c.hides(b) for c in covered)
            for b in covered
        )


@functools.cache
def builtin_rulebook() -> RuleBook:
    data, specs = load_policy_file(builtin_text())
    return RuleBook(data, specs)
