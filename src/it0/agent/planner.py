"""The offline runbook planner: what the agent does when no language model is configured.

Pure functions, no I/O. ``extract_targets`` finds the hosts a request names; after the
orchestrator has run a runbook's diagnostics, ``findings`` applies the runbook's checks to
their output, ``choose_remediations`` and ``render_params`` say what could be proposed, and
``summarize`` (or ``no_match_answer`` / ``no_target_answer``) writes the Markdown answer
from templates; ``verify_answer`` reports the verify steps once remediations ran.

How ``extract_targets`` reads a request, first rule that finds something wins:

1. host names, as whole words, case-insensitive (``web-1``, ``DB-2.eu``);
2. selector terms written out: ``env=prod``, ``role!=db``, ``role in (web,api)``, when the
   key is a server field (``env``, ``cluster``, ``name``...) or a label key some host has;
3. a label value, an environment or a cluster name (also in plural: ``dbs``, ``proxies``)
   next to a word that says it is about hosts: after ``on``/``in``/``at``/``across``/``all``/
   ``every``/``cluster``/``env`` or before ``hosts``/``servers``/``nodes``/``cluster``...
   ("on prod", "the db hosts", "in cluster eu-1"), or joined by ``and``/``or`` to one that
   is. Values shorter than two characters, numbers and common words never count. A value
   found under several keys is read as the environment, else the cluster, else the label
   key most hosts have it under;
4. "all hosts", "every server", "everywhere", "the fleet": every host;
5. nothing found and the inventory has exactly one host: that host.

Command output is untrusted: it is stripped of terminal escapes and control characters,
capped, and shown only in fenced code blocks; values a finding takes from it are escaped.
"""

from __future__ import annotations

import re
import shlex
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from it0.agent.runbooks import (
    EXIT_STATUS_FIELD,
    LIMIT_FIELD,
    SEVERITIES,
    Check,
    Runbook,
    Severity,
    Step,
    check_value,
    compiled,
    placeholders,
)
from it0.agent.search import tokenize
from it0.inventory.errors import SelectorError
from it0.inventory.selectors import FIELD_KEYS, LABEL_VALUE, Selector, parse_selector

MAX_LINES = 5000
"""Lines of each output stream a check looks at."""
MAX_LINE = 1000
"""Characters of a line a check looks at."""
MAX_CHARS = 256_000
"""Characters of each output stream a check looks at: bounds the work of any pattern."""
MAX_VALUE = 120
"""Characters of a value a finding takes from the output."""
DIGEST_LINES = 8
DIGEST_WIDTH = 160
DIGEST_HOSTS = 5
MAX_FINDINGS_SHOWN = 40
EVERY_HOST = "name=*"
"""The selector for every host (an empty selector is not accepted as a task's targets)."""

NO_MODEL_NOTICE = (
    "**No language model is configured**, so this answer was put together from IT0's "
    "runbooks with fixed templates, not written by a model.\n"
    "To configure one, set `IT0_AGENT_MODEL`:\n"
    "\n"
    "- `anthropic:claude-sonnet-4-6` with `ANTHROPIC_API_KEY`;\n"
    "- `openai:<model>` with `OPENAI_BASE_URL` and `OPENAI_API_KEY`, for any "
    "OpenAI-compatible server (Ollama, vLLM, ...);\n"
    "- `claude-sdk:<model>` for the Claude Agent SDK."
)


# --- targets ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Host:
    """What the planner needs to know of a server."""

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    environment: str | None = None
    cluster: str | None = None

    def matches(self, selector: Selector) -> bool:
        fields = {"name": self.name, "environment": self.environment, "cluster": self.cluster}
        return selector.matches(fields, self.labels)


@dataclass(frozen=True)
class Targets:
    """The hosts a request is about: a selector (None: none found), their names, and why."""

    selector: str | None
    names: tuple[str, ...]
    how: str


_STOP_TEXT = """
a about after again all also am an and any are as at be been before being both but by can
check could did do does doing down each few for from had has have having he her here him his
how i if in into is it its itself just me more most my no nor not now of off on once only or
other our out over own same she should so some such than that the their them then there these
they this those through to too under until up very was we were what when where which while
who whom why will with would you your yes ok true false none null default new old main please
fix look see show run restart stop start help host hosts server servers node nodes machine
machines box boxes instance instances vm vms cluster clusters env environment fleet everywhere
every across disk disks full high low slow load memory cpu service services error errors
"""
_STOP_WORDS = frozenset(_STOP_TEXT.split())
_PRE_TEXT = "on in at across all every each from for cluster env environment"
_PRE_CONTEXT = frozenset(_PRE_TEXT.split())
_SKIPPED = frozenset({"the", "our", "my", "your", "these", "those"})
_POST_TEXT = """
host hosts server servers node nodes machine machines box boxes instance instances vm vms
cluster clusters env environment environments fleet
"""
_POST_CONTEXT = frozenset(_POST_TEXT.split())
_JOINERS = frozenset({"and", "or", ",", "&"})
_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*|[,&]")
_NUMBER_WORD = re.compile(r"\d+(?:[.,]\d+)?")
_VALUE = re.compile(LABEL_VALUE)
_ALL_HOSTS = re.compile(
    r"\b(?:all|every|each)\s+(?:of\s+)?(?:the\s+|our\s+|my\s+)?"
    r"(?:hosts?|servers?|machines?|nodes?|box(?:es)?|instances?|vms?)\b"
    r"|\beverywhere\b|\bfleet\b|\ball\s+of\s+them\b",
    re.IGNORECASE,
)
_TERM = re.compile(
    r"(?<![\w.:/@+=!-])(?P<key>[A-Za-z0-9][A-Za-z0-9._/-]{0,127})\s*(?P<op>==|!=|=)\s*"
    r"(?P<value>\*|[A-Za-z0-9._:/@+-]{1,128})"
)
_IN_TERM = re.compile(
    r"(?<![\w.:/@+=!-])(?P<key>[A-Za-z0-9][A-Za-z0-9._/-]{0,127})\s+(?P<op>notin|in)\s*"
    r"\((?P<values>[^()]{1,1000})\)"
)


@dataclass(frozen=True)
class _Word:
    text: str  # lowercased, trailing dots removed
    start: int
    end: int


def _words(text: str) -> list[_Word]:
    words: list[_Word] = []
    for match in _WORD.finditer(text):
        word = match.group().rstrip(".")
        if word:
            words.append(_Word(word.lower(), match.start(), match.start() + len(word)))
    return words


def _singulars(word: str) -> list[str]:
    forms = [word]
    if word.endswith("ies") and len(word) > 4:
        forms.append(word[:-3] + "y")
    if word.endswith("es") and len(word) > 3:
        forms.append(word[:-2])
    if word.endswith("s") and len(word) > 2:
        forms.append(word[:-1])
    return forms


def _selected(hosts: Sequence[Host], selector: Selector) -> tuple[str, ...]:
    return tuple(host.name for host in hosts if host.matches(selector))


def _by_names(text: str, hosts: Sequence[Host]) -> list[str]:
    index: dict[str, str] = {}
    for host in hosts:
        index.setdefault(host.name.lower(), host.name)
    found: dict[str, None] = {}
    for word in _words(text):
        name = index.get(word.text)
        if name is not None and word.text not in _STOP_WORDS:
            found[name] = None
    return list(found)


def _written_selector(text: str, hosts: Sequence[Host]) -> str | None:
    keys = set(FIELD_KEYS) | {key for host in hosts for key in host.labels}
    terms: list[tuple[int, str]] = []
    for match in _TERM.finditer(text):
        key, value = match["key"], match["value"].rstrip(".")
        if key in keys and value:
            terms.append((match.start(), f"{key}{match['op']}{value}"))
    for match in _IN_TERM.finditer(text):
        values = [value.strip().rstrip(".") for value in match["values"].split(",")]
        if match["key"] in keys and all(_VALUE.match(value) for value in values):
            terms.append((match.start(), f"{match['key']} {match['op']} ({','.join(values)})"))
    valid: list[str] = []
    for _, term in sorted(terms):
        try:
            parse_selector(term)
        except SelectorError:
            continue
        if term not in valid:
            valid.append(term)
    return ",".join(valid) or None


def _value_index(hosts: Sequence[Host]) -> dict[str, Counter[tuple[str, str]]]:
    """Lowercased value -> how many hosts have it, per (selector key, value as written)."""
    index: dict[str, Counter[tuple[str, str]]] = {}
    for host in hosts:
        pairs = [(key, value) for key, value in host.labels.items() if key not in FIELD_KEYS]
        if host.environment:
            pairs.append(("env", host.environment))
        if host.cluster:
            pairs.append(("cluster", host.cluster))
        for key, value in pairs:
            low = value.lower()
            if len(low) < 2 or low in _STOP_WORDS or _NUMBER_WORD.fullmatch(low):
                continue
            index.setdefault(low, Counter())[(key, value)] += 1
    return index


def _neighbour(words: list[_Word], i: int, step: int) -> str | None:
    j = i + step
    while 0 <= j < len(words) and words[j].text in _SKIPPED:
        j += step
    return words[j].text if 0 <= j < len(words) else None


def _choose_key(
    candidates: Counter[tuple[str, str]], before: str | None, after: str | None
) -> tuple[str, str]:
    hinted = {"cluster": "cluster", "env": "env", "environment": "env"}
    for hint in (before, after):
        key = hinted.get(hint or "")
        for candidate in candidates:
            if candidate[0] == key:
                return candidate
    rank = {"env": 0, "cluster": 1}
    return min(candidates, key=lambda c: (rank.get(c[0], 2), -candidates[c], c[0], c[1]))


def _by_values(text: str, hosts: Sequence[Host]) -> tuple[str, list[str]] | None:
    """The selector the label values, environments and clusters in ``text`` make, and the
    phrases they were found in."""
    index = _value_index(hosts)
    words = _words(text)
    matched: dict[int, tuple[str, str]] = {}
    context: set[int] = set()
    for i, word in enumerate(words):
        form = next((f for f in _singulars(word.text) if f in index), None)
        if form is None or word.text in _STOP_WORDS:
            continue
        before, after = _neighbour(words, i, -1), _neighbour(words, i, 1)
        matched[i] = _choose_key(index[form], before, after)
        if before in _PRE_CONTEXT or after in _POST_CONTEXT:
            context.add(i)
    changed = True
    while changed:  # "the web and db hosts": context spreads over and/or
        changed = False
        for i in matched.keys() - context:
            for step in (-1, 1):
                j = i + step
                while 0 <= j < len(words) and words[j].text in _SKIPPED | _JOINERS:
                    j += step
                joined = j != i + step and any(
                    words[k].text in _JOINERS for k in range(min(i, j) + 1, max(i, j))
                )
                if joined and j in context:
                    context.add(i)
                    changed = True
                    break
    if not context:
        return None
    values: dict[str, list[str]] = {}
    phrases: list[str] = []
    for i in sorted(context):
        key, value = matched[i]
        if value not in values.setdefault(key, []):
            values[key].append(value)
        first, last = i, i
        if _neighbour(words, i, -1) in _PRE_CONTEXT:
            first = max(i - 1, 0)
            while first > 0 and words[first].text in _SKIPPED:
                first -= 1
        if _neighbour(words, i, 1) in _POST_CONTEXT:
            last = min(i + 1, len(words) - 1)
            while last < len(words) - 1 and words[last].text in _SKIPPED:
                last += 1
        phrases.append(text[words[first].start : words[last].end])
    terms = [
        f"{key}={vals[0]}" if len(vals) == 1 else f"{key} in ({','.join(vals)})"
        for key, vals in values.items()
    ]
    return ",".join(terms), list(dict.fromkeys(phrases))


def _quoted(phrases: Iterable[str]) -> str:
    return ", ".join(f"'{phrase}'" for phrase in phrases)


def extract_targets(text: str, hosts: Sequence[Host]) -> Targets:
    """The hosts ``text`` is about, by the rules in the module docstring."""
    names = _by_names(text, hosts)
    if names:
        return Targets(",".join(names), tuple(names), f"named in the request: {', '.join(names)}")
    written = _written_selector(text, hosts)
    if written is not None:
        found = _selected(hosts, parse_selector(written))
        tail = "" if found else "; it matches no host"
        return Targets(written, found, f"selector written in the request: {written}{tail}")
    by_values = _by_values(text, hosts)
    if by_values is not None:
        selector, phrases = by_values
        found = _selected(hosts, parse_selector(selector))
        tail = "" if found else "; no host matches"
        return Targets(selector, found, f"hosts with {selector} ({_quoted(phrases)}){tail}")
    every = _ALL_HOSTS.search(text)
    if every is not None and hosts:
        names_all = tuple(host.name for host in hosts)
        return Targets(EVERY_HOST, names_all, f"every host ('{every.group()}')")
    if len(hosts) == 1:
        only = hosts[0].name
        return Targets(only, (only,), f"the only host in the inventory: {only}")
    return Targets(
        None, (), f"no host was named in the request (the inventory has {len(hosts)} hosts)"
    )


# --- findings ---------------------------------------------------------------------------


@dataclass(frozen=True)
class StepResult:
    """One step as it ran on one host; ``error`` when it could not run (unreachable...)."""

    name: str
    command: str
    exit_status: int | None
    stdout: str
    stderr: str
    error: str | None = None


@dataclass(frozen=True)
class HostResult:
    host: str
    steps: tuple[StepResult, ...]


@dataclass(frozen=True)
class Finding:
    """What a check found on a host; ``values`` are the pattern's named groups, cleaned,
    and ``evidence`` the output line (or the exit status) it was found in."""

    host: str
    step: str
    severity: Severity
    message: str
    remediation: str | None
    evidence: str = ""
    values: tuple[tuple[str, str], ...] = ()


_CONTROL = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"  # CSI: colours, cursor movement
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"  # OSC: titles, hyperlinks
    r"|\x1b[@-_]?"
    r"|[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]"
)
_NUMBER = re.compile(r"[+-]?\d+(?:[.,]\d+)?")


def clean(text: str) -> str:
    """``text`` without terminal escapes, control and bidi characters; tabs and newlines stay."""
    return _CONTROL.sub("", text)


def _cap(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _lines(text: str) -> Iterator[str]:
    seen = 0
    for i, line in enumerate(text[: MAX_CHARS * 2].splitlines()):
        seen += min(len(line), MAX_LINE)
        if i >= MAX_LINES or seen > MAX_CHARS:
            return
        yield clean(line[: MAX_LINE * 2])[:MAX_LINE]


def _number(text: str | None) -> float | None:
    """``93``, ``0.52``, ``0,52`` (a comma locale), ``-127``; anything else is None."""
    if text is None or not _NUMBER.fullmatch(text.strip()):
        return None
    return float(text.strip().replace(",", "."))


def _limit_text(value: float) -> str:
    return str(int(value)) if value.is_integer() else f"{value:.6g}"


def _first_number(result: StepResult | None) -> float | None:
    if result is None or result.error is not None:
        return None
    match = _NUMBER.search(clean(result.stdout))
    return None if match is None else _number(match.group())


_Hit = tuple[int, str, str, tuple[tuple[str, str], ...]]  # line index, message, evidence, values


def _line_hits(check: Check, result: StepResult, step_limit: float | None) -> Iterator[_Hit]:
    assert check.pattern is not None
    assert check.message is not None
    regex = compiled(check.pattern)
    lines = [*_lines(result.stdout), *_lines(result.stderr)]
    for n, line in enumerate(lines):
        match = regex.search(line)
        if match is None:
            continue
        values = {
            name: _cap(value.replace("\t", " ").strip(), MAX_VALUE)
            for name, value in match.groupdict().items()
            if value is not None
        }
        fields: dict[str, str] = {name: values.get(name, "") for name in match.groupdict()}
        if check.group is not None:
            number = _number(match.group(check.group))
            if number is None:
                continue
            if check.percent_of is not None:
                base = _number(match.group(check.percent_of))
                if not base:
                    continue
                number = 100 * number / base
            if check.above is not None:
                limit, fires = check.above, number > check.above
            elif check.below is not None:
                limit, fires = check.below, number < check.below
            elif step_limit is not None:
                limit, fires = step_limit, number > step_limit
            else:
                return  # the step that gives the limit did not run or printed no number
            if not fires:
                continue
            fields[LIMIT_FIELD] = _limit_text(limit)
        message = check.message.format_map(fields)
        yield n, message, _cap(line.strip(), 300), tuple(values.items())


def _exit_hits(check: Check, result: StepResult) -> Iterator[_Hit]:
    assert check.exit_nonzero is not None
    if result.exit_status is not None and result.exit_status != 0:
        status = str(result.exit_status)
        message = check.exit_nonzero.format_map({EXIT_STATUS_FIELD: status})
        yield 0, message, f"exit status {status}", ()


def findings(runbook: Runbook, results: Sequence[HostResult]) -> list[Finding]:
    """The runbook's checks applied to its diagnostics' results: critical first, then by
    host and step order; one finding per host and message (the most severe)."""
    steps = {step.name: (i, step) for i, step in enumerate(runbook.diagnostics)}
    rank = {severity: i for i, severity in enumerate(SEVERITIES)}
    found: list[tuple[tuple[int, str, int, int, int], Finding]] = []
    for host_result in results:
        by_name = {result.name: result for result in host_result.steps}
        for result in host_result.steps:
            entry = steps.get(result.name)
            if entry is None or result.error is not None:
                continue
            index, step = entry
            for c, check in enumerate(step.findings):
                if check.exit_nonzero is not None:
                    hits = _exit_hits(check, result)
                else:
                    limit = None
                    if check.above_step is not None:
                        limit = _first_number(by_name.get(check.above_step))
                    hits = _line_hits(check, result, limit)
                for n, message, evidence, values in hits:
                    finding = Finding(
                        host_result.host,
                        step.name,
                        check.severity,
                        message,
                        check.remediation,
                        evidence,
                        values,
                    )
                    key = (rank[check.severity], host_result.host, index, c, n)
                    found.append((key, finding))
    found.sort(key=lambda item: item[0])
    seen: set[tuple[str, str]] = set()
    unique: list[Finding] = []
    for _, finding in found:
        if (finding.host, finding.message) not in seen:
            seen.add((finding.host, finding.message))
            unique.append(finding)
    return unique


def choose_remediations(runbook: Runbook, findings: Sequence[Finding]) -> list[Step]:
    """The remediations the findings point to, once each, in runbook order."""
    wanted = {finding.remediation for finding in findings}
    return [step for step in runbook.remediations if step.name in wanted]


def render_params(runbook: Runbook, findings: Sequence[Finding]) -> dict[str, str]:
    """Parameter values taken from the findings' named groups of the same name.

    The first finding with a value that ``check_value`` accepts wins, findings that point
    to a remediation before the others; values that are not plain words are skipped.
    """
    ordered = [f for f in findings if f.remediation] + [f for f in findings if not f.remediation]
    params: dict[str, str] = {}
    for finding in ordered:
        for name, value in finding.values:
            if name not in runbook.parameters or name in params:
                continue
            try:
                params[name] = check_value(name, value)
            except ValueError:
                continue
    return params


# --- Markdown ---------------------------------------------------------------------------

_MARKDOWN = re.compile(r"([\\`*_\[\]<>#|~&!])")
_BACKTICKS = re.compile(r"`+")
_RELEVANT = re.compile(
    r"error|fail|denied|refused|timed? ?out|warn|critical|fatal|cannot|can't|unable|"
    r"not found|no such|killed|expired",
    re.IGNORECASE,
)
_SEPARATOR = re.compile(r"^[\s=\-_*#~.]*$")
_SEVERITY_TITLES: dict[Severity, str] = {
    "critical": "Critical",
    "warning": "Warning",
    "info": "Info",
}


def _md(text: str) -> str:
    """``text`` with Markdown's special characters escaped, for text from the output."""
    return _MARKDOWN.sub(r"\\\1", clean(text).replace("\n", " "))


def _code(text: str) -> str:
    """``text`` as inline code, whatever backticks it holds."""
    text = clean(text).replace("\n", " ")
    ticks = "`" * (max((len(run) for run in _BACKTICKS.findall(text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{ticks}{pad}{text}{pad}{ticks}"


def _fence(lines: Sequence[str], indent: str = "", info: str = "text") -> list[str]:
    """``lines`` as a fenced code block that nothing in them can close."""
    longest = max((len(run) for line in lines for run in _BACKTICKS.findall(line)), default=0)
    ticks = "`" * max(3, longest + 1)
    body = [f"{indent}{line}" if line else "" for line in lines]
    return [f"{indent}{ticks}{info}", *body, f"{indent}{ticks}"]


def _digest(text: str) -> tuple[list[str], int]:
    """The first few meaningful lines of ``text``, then up to three more that look like
    errors, capped; and how many meaningful lines were left out."""
    lines = [line for line in _lines(text) if not _SEPARATOR.match(line)]
    shown = lines[:DIGEST_LINES]
    extra = [line for line in lines[DIGEST_LINES:] if _RELEVANT.search(line)][:3]
    if extra:
        shown.append("...")
        shown += extra
    left = len(lines) - len(shown) + (1 if extra else 0)
    return [_cap(line.rstrip(), DIGEST_WIDTH) for line in shown], max(left, 0)


def _step_state(result: StepResult) -> str:
    if result.error is not None:
        return f"**not run**: {_md(_cap(result.error, 300))}"
    if result.exit_status is None:
        return "exit status unknown"
    if result.exit_status != 0:
        return f"**failed** (exit status {result.exit_status})"
    return "exit status 0"


def _why(request: str, runbook: Runbook) -> str:
    document: set[str] = set()
    for text in (runbook.title, runbook.summary, *runbook.symptoms, *runbook.keywords):
        document.update(tokenize(text))
    words = list(dict.fromkeys(re.findall(r"[a-z0-9]+", request.lower())))
    shared = [w for w in words if any(t in document for t in tokenize(w))][:8]
    query = set(tokenize(request))
    symptom = max(runbook.symptoms, key=lambda s: len(query & set(tokenize(s))))
    if not shared:
        return "It was the closest runbook to the request."
    why = f"Matched on {', '.join(_code(word) for word in shared)}"
    if query & set(tokenize(symptom)):
        why += f"; closest symptom: {_code(symptom)}"
    return why + "."


def _names_line(names: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(_code(name) for name in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _render(runbook: Runbook, step: Step, params: Mapping[str, str]) -> tuple[str, list[str]]:
    """The command filled in, and the parameters that still need a value."""
    values = {name: value for name, value in params.items() if name in runbook.parameters}
    try:
        return runbook.render(step, values), []
    except ValueError:
        return step.command, [
            name
            for name in dict.fromkeys(placeholders(step.command))
            if name not in values and runbook.parameters[name].default is None
        ]


def _findings_section(found: Sequence[Finding]) -> list[str]:
    out = ["### Findings", ""]
    if not found:
        out.append("The runbook's checks found nothing wrong in the output below.")
        return out
    shown = 0
    for severity in SEVERITIES:
        group = [f for f in found if f.severity == severity]
        if not group:
            continue
        out += [f"**{_SEVERITY_TITLES[severity]}** ({len(group)})", ""]
        for finding in group:
            if shown >= MAX_FINDINGS_SHOWN:
                break
            shown += 1
            out.append(f"- {_code(finding.host)} · {finding.step}: {_md(finding.message)}")
            if finding.evidence:
                out += _fence([finding.evidence], indent="  ")
        out.append("")
    if len(found) > shown:
        out += [f"... and {len(found) - shown} more findings.", ""]
    return out


def _output_section(
    title: str, names: Sequence[str], results: Sequence[HostResult], found: Sequence[Finding]
) -> list[str]:
    """Per host, each step without a finding: its state and a digest of its output."""
    with_findings = {(f.host, f.step) for f in found}
    out = [title, ""]
    for host_result in results[:DIGEST_HOSTS]:
        errors = {step.error for step in host_result.steps}
        if host_result.steps and None not in errors and len(errors) == 1:
            error = next(iter(errors)) or ""
            out.append(f"- {_code(host_result.host)}: **no step ran**: {_md(_cap(error, 300))}")
            continue
        rest = [
            step
            for step in host_result.steps
            if (host_result.host, step.name) not in with_findings or step.error is not None
        ]
        if not rest:
            out.append(f"- {_code(host_result.host)}: every step is covered by the findings")
            continue
        out.append(f"- {_code(host_result.host)}")
        for step in rest:
            out.append(f"  - **{step.name}** {_code(step.command)}: {_step_state(step)}")
            if step.error is not None:
                continue
            shown, left = _digest(step.stdout)
            if step.exit_status not in (0, None) or not shown:
                errors_shown, errors_left = _digest(step.stderr)
                shown, left = shown + errors_shown, left + errors_left
            if shown:
                out += _fence(shown, indent="    ")
            else:
                out.append("    (no output)")
            if left:
                out.append(f"    ({left} more lines)")
    if len(results) > DIGEST_HOSTS:
        out.append(f"- ... and {len(results) - DIGEST_HOSTS} more hosts")
    missing = [name for name in names if name not in {r.host for r in results}]
    if missing:
        out.append(f"- no results from {_names_line(missing)}")
    if len(out) == 2:
        out.append("No other step ran.")
    out.append("")
    return out


def _remediation_lines(
    runbook: Runbook,
    step: Step,
    number: int,
    targets: Targets,
    support: Sequence[Finding],
    params: Mapping[str, str],
    requested: Mapping[str, str],
) -> list[str]:
    command, missing = _render(runbook, step, params)
    indent = "   "
    out = [f"{number}. **{step.name}**"]
    if support:
        why = "; ".join(f"{_md(f.message)} ({_code(f.host)})" for f in support[:3])
        more = f" and {len(support) - 3} more" if len(support) > 3 else ""
        out[0] += f", because {why}{more}"
    task = requested.get(step.name)
    if task is not None:
        out.append(
            f"{indent}**Requested for approval** as task {_code(task)}. See the request with "
            "`it0 approvals list` and approve it with `it0 approvals approve <approval-id>`; "
            f"then follow it with `it0 tasks logs {shlex.quote(clean(task))} --follow`."
        )
    else:
        out.append(f"{indent}**Suggested only**: not requested; nothing runs unless you ask.")
    out.append(f"{indent}When: {step.when} Risk: {step.risk_note}")
    if missing:
        hints = ", ".join(f"`{name}` (e.g. {runbook.parameters[name].example})" for name in missing)
        out.append(f"{indent}Fill in {hints}.")
    lines = [command]
    selector = ",".join(sorted({f.host for f in support})) or targets.selector
    if task is None and selector and not missing:
        lines.append(
            f"# to request it: it0 tasks run {shlex.quote(selector)} {shlex.quote(command)}"
        )
    out += _fence(lines, indent=indent, info="sh")
    return out


def summarize(
    request: str,
    runbook: Runbook,
    targets: Targets,
    results: Sequence[HostResult],
    findings: Sequence[Finding],
    other_matches: Sequence[Runbook],
    requested: Mapping[str, str] | None = None,
) -> str:
    """The answer after the runbook's diagnostics ran: the no-model notice, the runbook and
    why it matched, the hosts, the findings by severity, a digest of the other output, the
    remediations (requested ones with their task id), the verify steps, other runbooks.

    ``requested`` maps a remediation's name to the id of the task submitted for approval.
    """
    requested = requested or {}
    params = render_params(runbook, findings)
    out = [NO_MODEL_NOTICE, "", f"## Runbook: {runbook.title}", ""]
    out += [f"{_why(request, runbook)} {runbook.summary}", ""]
    hosts = _names_line(targets.names) if targets.names else "none"
    out += [f"**Hosts:** {hosts} ({_md(targets.how)}).", ""]
    out += _findings_section(findings)
    out += _output_section("### Other output", targets.names, results, findings)

    chosen = choose_remediations(runbook, findings)
    ordered = chosen + [s for s in runbook.remediations if s not in chosen and s.name in requested]
    ordered += [s for s in runbook.remediations if s not in ordered]
    out += ["### Proposed remediations", ""]
    if not chosen:
        out += ["No finding points to a remediation; these are the runbook's options.", ""]
    for number, step in enumerate(ordered, 1):
        support = [f for f in findings if f.remediation == step.name]
        out += _remediation_lines(runbook, step, number, targets, support, params, requested)
    out.append("")

    out += ["### Verify afterwards", ""]
    for step in runbook.verify:
        command, _ = _render(runbook, step, params)
        out.append(f"- **{step.name}**: {step.explain}")
        out += _fence([command], indent="  ", info="sh")
    out.append("")

    if other_matches:
        out += ["**Other runbooks that may fit:**", ""]
        out += [f"- {other.title} ({_code(other.id)})" for other in other_matches]
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def _examples(runbooks: Sequence[Runbook], where: Sequence[str]) -> list[str]:
    lines: list[str] = []
    for i, runbook in enumerate(runbooks[:4]):
        lines.append(f"- {_code(f'{runbook.symptoms[0]} {where[i % len(where)]}')}")
    return lines


def no_match_answer(request: str, hosts_count: int, suggestions: Sequence[Runbook]) -> str:
    """The answer when no runbook matched the request well enough."""
    out = [NO_MODEL_NOTICE, "", "## No runbook matches this request", ""]
    out += [
        "Without a model IT0 answers only what one of its runbooks covers, and none matched "
        "this request well enough. Describe the symptom and say which hosts, for example:",
        "",
    ]
    examples = suggestions or ()
    where = ["on web-1", "on the db hosts", "in prod", "on env=staging"]
    out += _examples(examples, where) or [
        f"- {_code('disk is full on web-1')}",
        f"- {_code('nginx is down on the web servers')}",
    ]
    out.append("")
    if suggestions:
        out += ["**Runbooks:**", ""]
        out += [f"- {r.title} ({_code(r.id)})" for r in suggestions]
        out.append("")
    if hosts_count == 0:
        out.append("The inventory has no hosts yet: add one with `it0 servers add`.")
    else:
        count = f"{hosts_count} hosts" if hosts_count != 1 else "1 host"
        out.append(f"The inventory has {count}; `it0 servers list` shows them.")
    return "\n".join(out).rstrip() + "\n"


def no_target_answer(
    request: str, hosts: Sequence[Host], runbook: Runbook, targets: Targets | None = None
) -> str:
    """The answer when a runbook matched but the request names no host IT0 could find."""
    out = [NO_MODEL_NOTICE, "", f"## Runbook: {runbook.title}", ""]
    out += [f"{_why(request, runbook)} {runbook.summary}", ""]
    if targets is not None and targets.selector is not None:
        out.append(f"The request selects {_code(targets.selector)}, which matches no host.")
    else:
        out.append("The request does not say which hosts to look at.")
    if not hosts:
        out += ["", "The inventory has no hosts yet: add one with `it0 servers add`."]
        return "\n".join(out).rstrip() + "\n"
    out += ["Nothing ran. Name the hosts and ask again, for example:", ""]
    symptom = runbook.symptoms[0]
    where = [f"on {hosts[0].name}"]
    labels = Counter(
        (key, value)
        for host in hosts
        for key, value in host.labels.items()
        if key not in FIELD_KEYS
    )
    if labels:
        (key, value), _ = labels.most_common(1)[0]
        where += [f"on the {value} hosts", f"on {key}={value}"]
    environments = Counter(host.environment for host in hosts if host.environment)
    if environments:
        where.append(f"in {environments.most_common(1)[0][0]}")
    where.append("on all servers")
    out += [f"- {_code(f'{symptom} {place}')}" for place in where]
    out += ["", "The runbook's read-only diagnostics would then run on them:", ""]
    for step in runbook.diagnostics:
        out.append(f"- **{step.name}**: {step.explain}")
    out += ["", f"The inventory has {len(hosts)} hosts; `it0 servers list` shows them."]
    return "\n".join(out).rstrip() + "\n"


def verify_answer(runbook: Runbook, results: Sequence[HostResult]) -> str:
    """The verify steps' output after remediations ran: what to look for, then per host each
    step's state and a digest. Without the no-model notice: it follows a message that has it."""
    out = [f"### Verify: {runbook.title}", "", "What to look for:", ""]
    out += [f"- **{step.name}**: {step.explain}" for step in runbook.verify]
    out.append("")
    names = [result.host for result in results]
    out += _output_section("### Output", names, results, [])
    return "\n".join(out).rstrip() + "\n"
