"""Runbooks: what an operator checks and does for a known kind of incident, as data.

Each runbook is one YAML file in ``it0/agent/runbooks/``. Its diagnostics and verify steps
are meant to be read-only (the agent runs them without asking; a test holds every built-in
one to ``Risk.READ_ONLY``), its remediations change the machine and go through approval.
Commands name their inputs as ``{placeholder}``; ``Runbook.render`` fills them in only with
plain words, so a value can never add a second command, a redirect or an option.

A diagnostics step may list ``findings``, checks that turn its output into findings without a
model. A line check has a ``pattern`` (a Python regular expression searched in each line of
stdout, then of stderr) and a ``message`` filled from the pattern's named groups, as in
``"{path} is {pct}% full"``. With ``group`` and one of ``above``, ``below`` or ``above_step``
it fires only when that group's number is past the limit: ``above_step`` takes the limit
from the first number another diagnostics step printed (``nproc``), and ``percent_of``
compares ``100 * group / percent_of`` instead of the group itself. A message with a limit
may also use ``{limit}``. An exit check has only ``exit_nonzero``: the message when the step
exits with a status other than 0, which may show it as ``{exit_status}``. ``remediation``
names the remediation step a finding supports; ``severity`` is critical, warning or info.
"""

from __future__ import annotations

import functools
import re
import string
from collections.abc import Mapping
from importlib import resources
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from it0.ops.policy import check_regex

# A placeholder is an identifier in braces; `{}` (find -exec) and `{print $1}` (awk) are not.
_PLACEHOLDER = re.compile(r"\{([a-z][a-z0-9_]*)\}")
_SAFE_VALUE = re.compile(r"[A-Za-z0-9_.:@%+=,/-]{1,256}")
_ID = r"^[a-z0-9]+(-[a-z0-9]+)*$"
_PARAMETER_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")

Severity = Literal["critical", "warning", "info"]
SEVERITIES: tuple[Severity, ...] = ("critical", "warning", "info")
"""Most severe first."""
LIMIT_FIELD = "limit"
EXIT_STATUS_FIELD = "exit_status"
MAX_PATTERN = 300


def _reject_nul(value: Any) -> Any:
    """Refuse NUL anywhere in the raw data: it truncates C strings on the way to a shell."""
    if isinstance(value, str) and "\x00" in value:
        raise ValueError("NUL characters are not allowed")
    if isinstance(value, Mapping):
        for key, item in value.items():
            _reject_nul(key)
            _reject_nul(item)
    elif isinstance(value, list | tuple):
        for item in value:
            _reject_nul(item)
    return value


def check_value(name: str, value: str) -> str:
    """``value`` if it is one plain shell word that cannot be read as an option, else raise."""
    if not _SAFE_VALUE.fullmatch(value):
        raise ValueError(
            f"parameter {name!r}: {value!r} is not a plain word "
            "(allowed: 1-256 of A-Z a-z 0-9 _ . : @ % + = , / -)"
        )
    if value.startswith("-"):
        raise ValueError(f"parameter {name!r}: {value!r} starts with '-' and would be an option")
    return value


def placeholders(command: str) -> list[str]:
    """The parameter names ``command`` uses, in order of appearance."""
    return _PLACEHOLDER.findall(command)


def message_fields(message: str) -> list[str]:
    """The ``{name}`` fields of a message template; raise on any other kind of field."""
    try:
        parsed = list(string.Formatter().parse(message))
    except ValueError as exc:
        raise ValueError(f"message {message!r}: {exc}") from None
    names: list[str] = []
    for _, field, spec, conversion in parsed:
        if field is None:
            continue
        if not field.isidentifier() or spec or conversion:
            raise ValueError(f"message {message!r}: fields are written {{name}}, nothing else")
        names.append(field)
    return names


@functools.lru_cache(maxsize=1024)
def compiled(pattern: str) -> re.Pattern[str]:
    """``pattern`` compiled, cached: checks are applied to every line of every host."""
    return re.compile(pattern)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    @model_validator(mode="before")
    @classmethod
    def _no_nul(cls, data: Any) -> Any:
        return _reject_nul(data)


class Parameter(_Strict):
    """A named input of a runbook's commands; ``example`` shows a value when no default fits."""

    description: str = Field(min_length=1)
    default: str | None = None
    example: str | None = None

    @model_validator(mode="after")
    def _values_are_plain(self) -> Parameter:
        for label, value in (("default", self.default), ("example", self.example)):
            if value is not None:
                check_value(label, value)
        if self.default is None and self.example is None:
            raise ValueError("a parameter needs a default or an example")
        return self


_Message = Annotated[str, Field(min_length=1, max_length=300)]


class Check(_Strict):
    """A finding a diagnostics step's output can show: a line check or an exit check.

    The fields are described in the module docstring. A pattern that does not compile,
    could backtrack exponentially or lacks a group the message or limit names is refused.
    """

    pattern: (
        Annotated[
            str, StringConstraints(strip_whitespace=False, min_length=1, max_length=MAX_PATTERN)
        ]
        | None
    ) = None
    message: _Message | None = None
    exit_nonzero: _Message | None = None
    group: str | None = None
    above: float | None = Field(default=None, allow_inf_nan=False)
    below: float | None = Field(default=None, allow_inf_nan=False)
    above_step: str | None = Field(default=None, min_length=1)
    percent_of: str | None = None
    severity: Severity = "warning"
    remediation: str | None = Field(default=None, min_length=1)

    @property
    def has_limit(self) -> bool:
        return self.above is not None or self.below is not None or self.above_step is not None

    @model_validator(mode="after")
    def _consistent(self) -> Check:
        if (self.pattern is None) == (self.exit_nonzero is None):
            raise ValueError("a check has either `pattern` and `message`, or `exit_nonzero`")
        if self.exit_nonzero is not None:
            if self.message or self.group or self.percent_of or self.has_limit:
                raise ValueError("an `exit_nonzero` check has no message, group or limit")
            unknown = set(message_fields(self.exit_nonzero)) - {EXIT_STATUS_FIELD}
            if unknown:
                raise ValueError(
                    f"exit_nonzero {self.exit_nonzero!r}: unknown field(s) {sorted(unknown)}; "
                    f"only {{{EXIT_STATUS_FIELD}}}"
                )
            return self
        assert self.pattern is not None
        if self.message is None:
            raise ValueError("a check with a `pattern` needs a `message`")
        check_regex(self.pattern)
        groups = set(compiled(self.pattern).groupindex)
        reserved = groups & {LIMIT_FIELD, EXIT_STATUS_FIELD}
        if reserved:
            raise ValueError(
                f"pattern {self.pattern!r}: group name(s) {sorted(reserved)} are reserved"
            )
        limits = sum(x is not None for x in (self.above, self.below, self.above_step))
        if self.group is None:
            if limits or self.percent_of:
                raise ValueError("`above`, `below`, `above_step` and `percent_of` need a `group`")
        elif limits != 1:
            raise ValueError(f"group {self.group!r}: give one of `above`, `below`, `above_step`")
        for name in (self.group, self.percent_of):
            if name is not None and name not in groups:
                raise ValueError(f"pattern {self.pattern!r} has no group named {name!r}")
        allowed = groups | ({LIMIT_FIELD} if limits else set())
        unknown = set(message_fields(self.message)) - allowed
        if unknown:
            raise ValueError(
                f"message {self.message!r}: {sorted(unknown)} not among the pattern's "
                f"named groups {sorted(groups)}" + (" or {limit}" if limits else "")
            )
        return self


class Step(_Strict):
    """One command of a runbook.

    Diagnostics and verify steps say in ``explain`` what to look for in the output;
    remediations say ``when`` a finding justifies them and, in ``risk_note``, what they risk.
    Only diagnostics have ``findings``.
    """

    name: str = Field(min_length=1, max_length=200)
    command: str = Field(min_length=1, max_length=2000)
    explain: str | None = None
    risk_note: str | None = None
    when: str | None = None
    findings: tuple[Check, ...] = Field(default=(), max_length=50)


class Runbook(_Strict):
    """What to check, what to change and how to confirm it, for one kind of incident."""

    id: str = Field(pattern=_ID, max_length=64)
    title: str = Field(min_length=1)
    summary: str = Field(min_length=1)
    symptoms: tuple[str, ...] = Field(min_length=1)
    keywords: tuple[str, ...] = ()
    parameters: dict[str, Parameter] = Field(default_factory=dict)
    diagnostics: tuple[Step, ...] = Field(min_length=1)
    remediations: tuple[Step, ...] = Field(min_length=1)
    verify: tuple[Step, ...] = Field(min_length=1)

    @field_validator("parameters")
    @classmethod
    def _parameter_names(cls, value: dict[str, Parameter]) -> dict[str, Parameter]:
        for name in value:
            if not _PARAMETER_NAME.match(name):
                raise ValueError(f"parameter name {name!r} must match {_PARAMETER_NAME.pattern}")
        return value

    @model_validator(mode="after")
    def _steps_are_complete(self) -> Runbook:
        for kind, steps in (("diagnostics", self.diagnostics), ("verify", self.verify)):
            for step in steps:
                if not step.explain or step.risk_note or step.when:
                    raise ValueError(f"{kind} step {step.name!r}: needs `explain` only")
        for step in self.remediations:
            if not step.risk_note or not step.when or step.explain:
                raise ValueError(f"remediation {step.name!r}: needs `risk_note` and `when`")
        for kind, steps in (("remediation", self.remediations), ("verify", self.verify)):
            for step in steps:
                if step.findings:
                    raise ValueError(f"{kind} step {step.name!r}: only diagnostics have findings")
        remediations = {step.name for step in self.remediations}
        diagnostics = {step.name for step in self.diagnostics}
        for step in self.diagnostics:
            for check in step.findings:
                if check.remediation is not None and check.remediation not in remediations:
                    raise ValueError(
                        f"step {step.name!r}: finding names no remediation {check.remediation!r}"
                    )
                if check.above_step is not None and check.above_step not in diagnostics:
                    raise ValueError(
                        f"step {step.name!r}: above_step {check.above_step!r} "
                        "is not a diagnostics step"
                    )
        for step in self.steps:
            unknown = sorted(set(placeholders(step.command)) - self.parameters.keys())
            if unknown:
                raise ValueError(f"step {step.name!r}: unknown placeholder(s) {unknown}")
        return self

    @property
    def steps(self) -> tuple[Step, ...]:
        """Every step: diagnostics, remediations, verify."""
        return self.diagnostics + self.remediations + self.verify

    def render(self, step: Step, params: Mapping[str, str] | None = None) -> str:
        """``step.command`` with its placeholders filled from ``params``, else the defaults.

        Values are not quoted but checked: a plain word needs no quoting in any position,
        and refusing everything else is simpler to trust than escaping it.
        """
        given = dict(params or {})
        undeclared = sorted(given.keys() - self.parameters.keys())
        if undeclared:
            raise ValueError(f"runbook {self.id!r} has no parameter(s) {undeclared}")
        values: dict[str, str] = {}
        for name in placeholders(step.command):
            value = given.get(name, self.parameters[name].default)
            if value is None:
                raise ValueError(f"runbook {self.id!r}: parameter {name!r} needs a value")
            values[name] = check_value(name, value)
        return _PLACEHOLDER.sub(lambda m: values[m.group(1)], step.command)


def load_runbook(text: str, source: str) -> Runbook:
    """Parse one runbook file; ``source`` is its file name, which must be ``<id>.yaml``."""
    try:
        runbook = Runbook.model_validate(yaml.safe_load(text))
    except (yaml.YAMLError, ValueError) as exc:
        raise ValueError(f"{source}: {exc}") from exc
    if f"{runbook.id}.yaml" != source:
        raise ValueError(f"{source}: id {runbook.id!r} does not match the file name")
    return runbook


@functools.cache
def _builtin() -> tuple[Runbook, ...]:
    folder = resources.files("it0.agent").joinpath("runbooks")
    files = sorted(
        (entry for entry in folder.iterdir() if entry.name.endswith(".yaml")),
        key=lambda entry: entry.name,
    )
    return tuple(load_runbook(entry.read_text("utf-8"), entry.name) for entry in files)


def load_builtin() -> list[Runbook]:
    """The runbooks shipped with IT0, sorted by id; parsed once, a fresh list each call."""
    return list(_builtin())
