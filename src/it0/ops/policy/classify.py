"""The risk of a command line, decided by parsing it: ``Policy.classify`` -> ``Verdict``.

Every simple command is a part of the verdict, and the line takes the class of its riskiest
part. Wrappers (``sudo``, ``timeout``, ``xargs``, ``bash -c``, ``ssh host``...) are
unwrapped and what they run is classified again, recording the chain in ``via``. Write
redirects, assignments to variables such as ``PATH`` or ``IFS``, and wrappers such as
``eval`` add a floor under every part they govern. What cannot be known before the command
runs (a command name held in a variable, text the parser rejects) is ``unknown``: it needs
a person's approval, like anything else that is not read-only.
"""

from __future__ import annotations

import functools
import posixpath
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from it0.ops.policy.parse import SimpleCommand, Word, normalise_path, parse_script, subcommand
from it0.ops.policy.rules import (
    CommandInfo,
    Risk,
    RuleBook,
    RuleSpec,
    WrapperInfo,
    builtin_rulebook,
    load_policy_file,
)

_ASSIGNMENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=")
_TOKEN = re.compile(r"[A-Za-z0-9_.+-]+")


@dataclass(frozen=True)
class Part:
    """One simple command of the line, with the rule that classified it."""

    text: str
    argv: tuple[str, ...]
    risk: Risk
    rule: str
    reason: str
    via: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "argv": list(self.argv),
            "risk": self.risk.value,
            "rule": self.rule,
            "reason": self.reason,
            "via": list(self.via),
        }


@dataclass(frozen=True)
class Verdict:
    """``risk`` is the riskiest part's, raised one level when ``env`` is a production one."""

    risk: Risk
    command: str
    env: str | None
    raised: bool
    parts: tuple[Part, ...]

    @property
    def needs_approval(self) -> bool:
        return self.risk.needs_approval

    def to_json(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "risk": self.risk.value,
            "env": self.env,
            "raised": self.raised,
            "needs_approval": self.needs_approval,
            "parts": [p.to_json() for p in self.parts],
        }


@dataclass(frozen=True)
class _Finding:
    risk: Risk
    rule: str
    reason: str


def _worst(first: _Finding, others: Iterable[_Finding]) -> _Finding:
    """The riskiest finding; on a tie the earlier one, so a command keeps its own rule."""
    best = first
    for finding in others:
        if finding.risk.rank > best.risk.rank:
            best = finding
    return best


def _name(word: Word) -> str:
    return posixpath.basename(word.value) or word.value


class Policy:
    """Built-in rules, plus a tenant's; immutable, shared freely between threads."""

    def __init__(self, book: RuleBook) -> None:
        self._book = book

    @classmethod
    def default(cls) -> Policy:
        """The built-in rules (``rules.yaml``), loaded once."""
        return _default_policy()

    @classmethod
    def from_yaml(cls, text: str) -> Policy:
        data, specs = load_policy_file(text)
        return cls(RuleBook(data, specs))

    @property
    def book(self) -> RuleBook:
        return self._book

    @property
    def tenant_rules(self) -> tuple[RuleSpec, ...]:
        return tuple(r.spec for r in self._book.tenant)

    def extended(self, rules: Sequence[RuleSpec]) -> Policy:
        """A new policy where ``rules`` (a tenant's) take precedence where they match."""
        return Policy(self._book.extended(rules))

    def classify(self, line: str, env: str | None = None) -> Verdict:
        parts = _Classification(self._book).line(line)
        base = Risk.max(*(p.risk for p in parts))
        raising = env is not None and env.lower() in self._book.raise_for_env
        risk = base.raised() if raising else base
        return Verdict(risk, line, env, risk is not base, tuple(parts))


@functools.cache
def _default_policy() -> Policy:
    return Policy(builtin_rulebook())


def relaxes(policy: Policy, rule: RuleSpec) -> bool:
    """Whether ``rule``, added by a tenant, lowers the class the built-in rules of ``policy``
    give to some command it matches (to audit relaxations apart from tightenings)."""
    return policy.book.relaxes(rule)


class _Classification:
    """One line's walk: collects parts; wrappers and scripts recurse into it."""

    def __init__(self, book: RuleBook) -> None:
        self.book = book
        self.parts: list[Part] = []

    def line(self, text: str) -> list[Part]:
        if len(text) > self.book.data.max_length:
            reason = f"longer than {self.book.data.max_length} characters: not analysed"
            self.emit(text, (), _Finding(Risk.UNKNOWN, "builtin:too-long", reason), (), ())
            return self.parts
        try:
            self.script(text, (), 0, ())
        except RecursionError:
            reason = "nested too deeply to analyse"
            self.parts = [Part(text, (), Risk.UNKNOWN, "builtin:parse-error", reason)]
        return self.parts

    def emit(
        self,
        text: str,
        argv: tuple[str, ...],
        finding: _Finding,
        via: tuple[str, ...],
        floors: tuple[_Finding, ...],
    ) -> None:
        final = _worst(finding, floors)
        self.parts.append(Part(text, argv, final.risk, final.rule, final.reason, via))

    def script(
        self,
        text: str,
        via: tuple[str, ...],
        depth: int,
        floors: tuple[_Finding, ...],
        stdin_from: SimpleCommand | None = None,
    ) -> None:
        """Parse ``text`` again and classify its commands; those without input of their
        own read what ``stdin_from`` (``ssh host bash``, ``su -c bash``) was given."""
        if depth > self.book.data.max_depth:
            reason = "shells nested too deeply to follow"
            self.emit(text, (), _Finding(Risk.UNKNOWN, "builtin:too-deep", reason), via, floors)
            return
        parsed = parse_script(text)
        if parsed.error is not None:
            finding = _Finding(Risk.UNKNOWN, "builtin:parse-error", parsed.error)
            self.emit(text, (), finding, via, floors)
            return
        for command in parsed.commands:
            if stdin_from is not None and not command.upstream and command.stdin_text is None:
                command = replace(
                    command, upstream=stdin_from.upstream, stdin_text=stdin_from.stdin_text
                )
            self.command(command, via, depth, floors)

    def command(
        self, cmd: SimpleCommand, via: tuple[str, ...], depth: int, floors: tuple[_Finding, ...]
    ) -> None:
        # as a prefix of a command, some variables only change that command's input
        safe = self.book.prefix_safe if cmd.words else frozenset()
        floors = (
            *floors,
            *self.redirect_floors(cmd),
            *self.assignment_floors(n for n, _ in cmd.assignments if n not in safe),
        )
        if cmd.words:
            self.argv(cmd, cmd.words, cmd.text, via, depth, floors)
            return
        if cmd.assignments:
            finding = _Finding(Risk.READ_ONLY, "builtin:assignment", "only sets shell variables")
        else:
            finding = _Finding(Risk.READ_ONLY, "builtin:redirect", "only opens a file")
        self.emit(cmd.text, (), finding, via, floors)

    # --- floors ---------------------------------------------------------------------------

    def redirect_floors(self, cmd: SimpleCommand) -> list[_Finding]:
        found: list[_Finding] = []
        for redirect in cmd.redirects:
            target = redirect.target
            if target is None:
                continue
            if target.dynamic:
                if redirect.writes:
                    reason = f"writes to a file named only at run time ({target.raw})"
                    found.append(_Finding(Risk.UNKNOWN, "builtin:redirect", reason))
                continue
            kind = self.book.paths.classify(target.value)
            if kind == "network":
                reason = f"opens a network connection ({target.value})"
                found.append(_Finding(Risk.HIGH, "builtin:redirect", reason))
            elif redirect.writes and kind != "sink":
                risk = {"critical": Risk.CRITICAL, "system": Risk.HIGH}.get(kind or "", Risk.LOW)
                found.append(_Finding(risk, "builtin:redirect", f"writes to {target.value}"))
        return found

    def assignment_floors(self, names: Iterable[str]) -> list[_Finding]:
        return [
            _Finding(
                Risk.UNKNOWN,
                "builtin:sensitive-variable",
                f"sets {name}, which changes what later commands run",
            )
            for name in names
            if name in self.book.sensitive
        ]

    # --- commands -------------------------------------------------------------------------

    def argv(
        self,
        cmd: SimpleCommand,
        words: Sequence[Word],
        text: str,
        via: tuple[str, ...],
        depth: int,
        floors: tuple[_Finding, ...],
    ) -> None:
        head, args = words[0], words[1:]
        argv = tuple(w.value for w in words)
        if not head.literal:
            reason = f"the command name is only known at run time ({head.raw})"
            finding = _Finding(Risk.UNKNOWN, "builtin:dynamic-command", reason)
            source = self.downloader(head.inner)  # `$(curl x)` runs what it downloads
            if source is not None:
                reason = f"runs as a command what {source} downloads"
                finding = _Finding(Risk.CRITICAL, "builtin:download-exec", reason)
            self.emit(text, argv, finding, via, floors)
            return
        name = _name(head)
        wrapper = self.book.wrappers.get(name)
        if wrapper is not None and self.unwrap(cmd, wrapper, args, via, depth, floors):
            return
        entry = self.book.entry(name)
        values = [a.value for a in args]
        match = self.book.match(name, values)
        finding = _Finding(match.risk, match.rule, match.reason)
        extra: list[_Finding] = []
        if "/" in head.value:
            folder = posixpath.dirname(normalise_path(head.value))
            if folder not in self.book.trusted_dirs:
                if not self.book.known(name):
                    reason = f"runs the program {head.value}"
                    finding = _Finding(Risk.UNKNOWN, "builtin:run-file", reason)
                else:
                    reason = f"runs {head.value}, which may not be the system's {name}"
                    extra.append(_Finding(Risk.UNKNOWN, "builtin:path-command", reason))
        info = entry.info
        if info.runs_code:
            source = self.downloader(c for a in args for c in a.inner)
            if source is not None:
                reason = f"runs code downloaded by {source}"
                extra.append(_Finding(Risk.CRITICAL, "builtin:download-exec", reason))
        if info.program is not None and not match.specific:
            finding = self.program(cmd, name, info, args, via, depth, floors) or finding
        if info.exec_clauses:
            self.exec_clauses(cmd, name, info, args, via, depth, floors)
        if finding.risk is Risk.READ_ONLY and entry.conditional and any(a.dynamic for a in args):
            reason = (
                f"an argument of {name} is only known at run time and could change what it does"
            )
            finding = _Finding(Risk.UNKNOWN, "builtin:dynamic-argument", reason)
        self.emit(text, argv, _worst(finding, extra), via, floors)

    def unwrap(
        self,
        cmd: SimpleCommand,
        wrapper: WrapperInfo,
        args: Sequence[Word],
        via: tuple[str, ...],
        depth: int,
        floors: tuple[_Finding, ...],
    ) -> bool:
        """Classify what ``wrapper`` runs; False when it runs nothing (then its own rules
        apply: ``sudo -l``, ``env``, ``ssh host``)."""
        i, positionals = 0, 0
        assigned: list[str] = []
        unsafe = wrapper.unsafe_args
        if unsafe is not None and unsafe.search(" ".join(a.value for a in args)):
            rule = f"builtin:{wrapper.name}/unsafe-option"
            floors = (*floors, _Finding(Risk.UNKNOWN, rule, wrapper.unsafe_reason))
        while i < len(args):
            word, value = args[i], args[i].value
            if not word.literal:
                break
            if value == "--":
                i += 1
                break
            assignment = _ASSIGNMENT.match(value) if wrapper.assignments else None
            if assignment is not None:
                assigned.append(assignment.group(1))
                i += 1
                continue
            is_option = (len(value) > 1 and value[0] in "-+") or (
                value == "-" and wrapper.kind == "script"
            )
            if not is_option:
                if positionals < wrapper.positionals:
                    positionals += 1
                    i += 1
                    continue
                break
            action, option, attached = _option(value, wrapper)
            if action == "stop":
                return False
            if action == "script":
                script = [Word(attached, attached)] if attached else list(args[i + 1 : i + 2])
                if not script:
                    return False
                label = f"{wrapper.name} {option}"
                self.run_script(cmd, script, label, via, depth, self.floored(floors, wrapper))
                return True
            i += 2 if action == "value" and not attached else 1
        rest = args[i:]
        if wrapper.kind == "script" or not rest:
            return False
        safe = self.book.prefix_safe
        assigned = [name for name in assigned if name not in safe]
        floors = (*self.floored(floors, wrapper), *self.assignment_floors(assigned))
        if wrapper.kind == "join":
            self.run_script(cmd, rest, wrapper.name, via, depth, floors)
        else:
            text = " ".join(w.raw for w in rest)
            self.argv(cmd, rest, text, (*via, wrapper.name), depth, floors)
        return True

    def floored(self, floors: tuple[_Finding, ...], wrapper: WrapperInfo) -> tuple[_Finding, ...]:
        if wrapper.floor is None:
            return floors
        rule = f"builtin:{wrapper.name}"
        return (*floors, _Finding(wrapper.floor, rule, wrapper.floor_reason))

    def run_script(
        self,
        cmd: SimpleCommand,
        words: Sequence[Word],
        label: str,
        via: tuple[str, ...],
        depth: int,
        floors: tuple[_Finding, ...],
    ) -> None:
        """Classify words that a shell will parse again (``bash -c``, ``ssh host``, eval)."""
        text = " ".join(w.value for w in words)
        source = self.downloader(c for w in words for c in w.inner)
        if source is not None:
            reason = f"runs code downloaded by {source}"
            finding = _Finding(Risk.CRITICAL, "builtin:download-exec", reason)
            self.emit(text, (), finding, (*via, label), floors)
        self.script(text, (*via, label), depth + 1, floors, stdin_from=cmd)

    def program(
        self,
        cmd: SimpleCommand,
        name: str,
        info: CommandInfo,
        args: Sequence[Word],
        via: tuple[str, ...],
        depth: int,
        floors: tuple[_Finding, ...],
    ) -> _Finding | None:
        """Where a shell or interpreter gets its program from, when no rule says more."""
        values = [a.value for a in args]
        first = subcommand(values, info.value_options)
        from_stdin = (
            info.program == "remote-shell"
            or first is None
            or first == "-"
            or any(v in info.stdin_flags for v in values)
        )
        if not from_stdin:
            word = next(a for a in args if a.value == first)
            if word.inner:
                reason = f"{name} runs code produced by a substitution"
                return _Finding(Risk.HIGH, "builtin:program-substitution", reason)
            return None
        shell = info.program != "interpreter"
        if cmd.stdin_text is not None:
            source = self.downloader_text(cmd.stdin_text)
            if source is not None:
                reason = f"{name} runs code downloaded by {source}"
                return _Finding(Risk.CRITICAL, "builtin:download-exec", reason)
            if shell:
                self.script(cmd.stdin_text, (*via, f"{name} <<"), depth + 1, floors)
                reason = f"{name} runs the here-document, whose commands are listed apart"
                return _Finding(Risk.READ_ONLY, "builtin:program-heredoc", reason)
            reason = f"{name} runs a program given on its standard input"
            return _Finding(Risk.HIGH, "builtin:program-stdin", reason)
        if cmd.upstream:
            source = self.downloader(cmd.upstream)
            if source is not None:
                reason = f"{name} runs code downloaded by {source}"
                return _Finding(Risk.CRITICAL, "builtin:pipe-to-shell", reason)
            content = _literal_output(cmd.upstream) if shell else None
            if content is not None:
                self.script(content, (*via, f"{name} <pipe"), depth + 1, floors)
            reason = f"{name} runs code it reads from a pipe"
            return _Finding(Risk.HIGH, "builtin:pipe-to-shell", reason)
        if any(r.op == "<" for r in cmd.redirects):
            reason = f"{name} runs a script read from a file"
            return _Finding(Risk.UNKNOWN, "builtin:program-file", reason)
        reason = f"{name} starts an interactive session"
        return _Finding(Risk.UNKNOWN, "builtin:interactive", reason)

    def exec_clauses(
        self,
        cmd: SimpleCommand,
        name: str,
        info: CommandInfo,
        args: Sequence[Word],
        via: tuple[str, ...],
        depth: int,
        floors: tuple[_Finding, ...],
    ) -> None:
        """``find ... -exec cmd {} ;``: the command is classified as a part of its own."""
        i = 0
        while i < len(args):
            flag = args[i].value
            i += 1
            if flag not in info.exec_clauses:
                continue
            clause: list[Word] = []
            while i < len(args) and args[i].value not in (";", "+"):
                clause.append(args[i])
                i += 1
            if clause:
                text = " ".join(w.raw for w in clause)
                self.argv(cmd, clause, text, (*via, f"{name} {flag}"), depth, floors)

    def downloader(self, commands: Iterable[SimpleCommand]) -> str | None:
        """A download tool among ``commands`` (any of their words, to see through wrappers)."""
        for command in commands:
            for word in command.words:
                for token in word.value.split():
                    if posixpath.basename(token) in self.book.downloaders:
                        return posixpath.basename(token)
        return None

    def downloader_text(self, text: str) -> str | None:
        return next((t for t in _TOKEN.findall(text) if t in self.book.downloaders), None)


def _option(value: str, wrapper: WrapperInfo) -> tuple[str, str, str]:
    """What a wrapper's option does: ``stop`` (run nothing), ``script`` (the next word or
    the attached text is a script), ``value`` (takes a value) or ``flag``."""
    if value.startswith("--"):
        option, eq, attached = value.partition("=")
        if option in wrapper.no_unwrap:
            return "stop", option, ""
        if option in wrapper.script_options:
            return "script", option, attached
        return ("value" if option in wrapper.value_options else "flag"), option, attached or eq
    if value in wrapper.no_unwrap:
        return "stop", value, ""
    if value in wrapper.script_options:
        return "script", value, ""
    if value in wrapper.value_options:
        return "value", value, ""
    for j, ch in enumerate(value[1:], start=2):
        option = value[0] + ch
        if option in wrapper.no_unwrap:
            return "stop", option, ""
        if option in wrapper.script_options:
            return "script", option, value[j:]
        if option in wrapper.value_options:
            return "value", option, value[j:]
    return "flag", value, ""


def _literal_output(upstream: Sequence[SimpleCommand]) -> str | None:
    """What a single ``echo words`` or ``cat <<EOF`` writes, when it is plain text."""
    if len(upstream) != 1 or not upstream[0].words:
        return None
    source = upstream[0]
    words = source.words
    name = _name(words[0])
    if name == "cat" and len(words) == 1 and source.stdin_text is not None:
        return source.stdin_text
    if name == "echo" and all(w.literal for w in words):
        rest = [w.value for w in words[1:]]
        if rest and rest[0].startswith("-"):
            return None
        return " ".join(rest)
    return None
