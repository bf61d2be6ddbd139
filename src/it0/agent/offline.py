"""The agent without a language model: a deterministic runbook planner.

It matches the request to runbooks (BM25 over titles, symptoms and keywords), finds the
hosts the request names, runs the best runbook's read-only diagnostics on them through
the oversight path, reads the output with the runbook's findings checks, answers from
templates, and requests approval for the remediations the findings point to. When those
are decided, the session resumes: the outcome is reported and the runbook's verify steps
run. Every answer says that no language model is configured and how to configure one.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import select

from it0.agent import library, planner
from it0.agent.conversation import TurnOutcome
from it0.agent.events import Emit
from it0.agent.models import AgentWait
from it0.agent.runbooks import Runbook, Step, check_value
from it0.agent.runtime import approval_event
from it0.agent.search import RunbookIndex
from it0.agent.toolbox import Pending
from it0.agent.tools import OpsToolbox, Outcome
from it0.inventory.models import Cluster, Server
from it0.platform import Platform

MIN_SCORE = 1.0
MAX_REMEDIATIONS = 2
PLAN = "offline-plan"


async def run_turn(
    p: Platform,
    toolbox: OpsToolbox,
    emit: Emit,
    prompt: str | None,
    waits: Sequence[AgentWait],
    history: list[dict[str, Any]],
) -> TurnOutcome:
    if prompt is None:
        return await _continue(toolbox, emit, waits, history)
    hosts = await _hosts(toolbox)
    async with p.db.session(toolbox.tenant.schema) as session:
        runbooks = [entry.runbook for entry in await library.entries(session)]
    found = RunbookIndex(runbooks).search(prompt, 4)
    found = [(runbook, score) for runbook, score in found if score >= MIN_SCORE]
    if not found:
        await _say(emit, planner.no_match_answer(prompt, len(hosts), runbooks))
        return TurnOutcome()
    runbook, others = found[0][0], [r for r, _ in found[1:]]
    targets = planner.extract_targets(prompt, hosts)
    if targets.selector is None or not targets.names:
        await _say(emit, planner.no_target_answer(prompt, hosts, runbook, targets))
        return TurnOutcome()
    given = request_params(runbook, prompt, hosts)
    await emit(
        "text",
        {
            "delta": f"Checking {', '.join(targets.names)} with the runbook "
            f"“{runbook.title}” ({len(runbook.diagnostics)} read-only steps)…\n\n"
        },
    )
    results, calls = await _run_steps(toolbox, emit, runbook, runbook.diagnostics, targets, given)
    findings = planner.findings(runbook, results)
    requested, more = await _request_fixes(toolbox, emit, runbook, targets, findings, given)
    answer = planner.summarize(prompt, runbook, targets, results, findings, others, requested)
    if toolbox.pending:
        answer += "\n\nAnother person approves with " + ", ".join(
            f"`it0 approvals approve {p.approval_id}`" for p in toolbox.pending
        )
    await _say(emit, answer)
    plan = {
        "kind": PLAN,
        "runbook": runbook.id,
        "params": given,
        "selector": targets.selector,
        "names": list(targets.names),
        "requested": requested,
    }
    return TurnOutcome(
        history=[*history, plan],
        tool_calls=calls + more,
        paused=bool(toolbox.pending),
    )


async def _continue(
    toolbox: OpsToolbox, emit: Emit, waits: Sequence[AgentWait], history: list[dict[str, Any]]
) -> TurnOutcome:
    """After the remediations were decided: say how each went, then run the verify steps."""
    plan = next((h for h in reversed(history) if h.get("kind") == PLAN), None)
    lines = [planner.NO_MODEL_NOTICE, ""]
    ran = False
    for wait in waits:
        outcome = await toolbox.outcome(wait.task_id)
        lines.append(_decided(outcome))
        ran = ran or outcome.status == "succeeded"
    await _say(emit, "\n".join(lines))
    if not plan or not ran:
        return TurnOutcome(history=history)
    async with toolbox.platform.db.session(toolbox.tenant.schema) as session:
        try:
            runbook = (await library.find_entry(session, plan["runbook"])).runbook
        except Exception:
            return TurnOutcome(history=history)
    targets = planner.Targets(
        selector=plan["selector"], names=tuple(plan["names"]), how="as before"
    )
    params = {k: v for k, v in (plan.get("params") or {}).items() if k in runbook.parameters}
    results, calls = await _run_steps(toolbox, emit, runbook, runbook.verify, targets, params)
    await _say(emit, planner.verify_answer(runbook, results))
    return TurnOutcome(history=history, tool_calls=calls)


def _decided(outcome: Outcome) -> str:
    head = f"- Task `{outcome.task_id}` was **{outcome.status}**"
    if outcome.message:
        head += f": {outcome.message}"
    if outcome.status not in ("succeeded", "failed"):
        return head + " — nothing ran."
    hosts = ", ".join(f"{h.host} {h.status}" for h in outcome.hosts)
    return f"{head} ({hosts})."


async def _run_steps(
    toolbox: OpsToolbox,
    emit: Emit,
    runbook: Runbook,
    steps: Sequence[Step],
    targets: planner.Targets,
    params: Mapping[str, str],
) -> tuple[list[planner.HostResult], int]:
    """Each step as its own task, all at once; a failing step does not hide the others."""
    assert targets.selector is not None
    selector = targets.selector

    async def one(index: int, step: Step) -> tuple[Step, str, Outcome | Pending | str]:
        try:
            command = runbook.render(step, params)
        except ValueError as exc:
            return step, step.command, f"not run: {exc}"
        call_id = f"offline-{index}"
        args = {"selector": selector, "command": command, "reason": _reason(runbook, step)}
        await emit("tool_call", {"id": call_id, "name": "run_command", "args": args})
        result = await toolbox.submit(selector, command, args["reason"])
        if isinstance(result, Pending):
            await emit("approval_required", approval_event(call_id, result))
            content = result.message()
        elif isinstance(result, Outcome):
            content = toolbox.describe(result)
        else:
            content = result
        await emit("tool_result", {"id": call_id, "name": "run_command", "content": content})
        return step, command, result

    ran = await asyncio.gather(*(one(i, step) for i, step in enumerate(steps)))
    by_host: dict[str, list[planner.StepResult]] = {name: [] for name in targets.names}
    for step, command, result in ran:
        for name in targets.names:
            by_host.setdefault(name, []).append(_step_result(step, command, result, name))
    results = [planner.HostResult(host=name, steps=tuple(by_host[name])) for name in by_host]
    return results, sum(1 for _, _, r in ran if not isinstance(r, str))


def _step_result(
    step: Step, command: str, result: Outcome | Pending | str, host: str
) -> planner.StepResult:
    if isinstance(result, str):
        return planner.StepResult(step.name, command, None, "", "", result)
    if isinstance(result, Pending):
        why = f"needs approval under this tenant's policy (task {result.task_id})"
        return planner.StepResult(step.name, command, None, "", "", why)
    found = next((h for h in result.hosts if h.host == host), None)
    if found is None:
        return planner.StepResult(step.name, command, None, "", "", f"task {result.status}")
    error = found.error
    if error is None and found.status not in ("ok", "failed"):
        error = found.status
    return planner.StepResult(
        step.name, command, found.exit_status, found.stdout, found.stderr, error
    )


async def _request_fixes(
    toolbox: OpsToolbox,
    emit: Emit,
    runbook: Runbook,
    targets: planner.Targets,
    findings: Sequence[planner.Finding],
    given: Mapping[str, str],
) -> tuple[dict[str, str], int]:
    """Ask for approval of the remediations the findings support, on the hosts they concern."""
    params = {**given, **planner.render_params(runbook, findings)}
    requested: dict[str, str] = {}
    calls = 0
    # an informational finding suggests a fix; only a warning or worse asks a person for one
    serious = [f for f in findings if f.severity != "info"]
    for index, step in enumerate(planner.choose_remediations(runbook, serious)):
        if len(requested) >= MAX_REMEDIATIONS:
            break
        try:
            command = runbook.render(step, params)
        except ValueError:
            continue  # a parameter no finding filled: the summary suggests it instead
        hosts = sorted({f.host for f in findings if f.remediation == step.name})
        selector = ",".join(hosts) if hosts else targets.selector
        assert selector is not None
        reason = "; ".join(dict.fromkeys(f.message for f in findings if f.remediation == step.name))
        reason = f"runbook {runbook.id}: {reason or step.when}"[:2000]
        call_id = f"offline-fix-{index}"
        args = {"selector": selector, "command": command, "reason": reason}
        await emit("tool_call", {"id": call_id, "name": "run_command", "args": args})
        result = await toolbox.submit(selector, command, reason)
        calls += 1
        if isinstance(result, Pending):
            await emit("approval_required", approval_event(call_id, result))
            requested[step.name] = result.task_id
            content = result.message()
        elif isinstance(result, Outcome):  # a standing order covered it: it ran already
            requested[step.name] = result.task_id
            content = toolbox.describe(result)
        else:
            content = result
        await emit("tool_result", {"id": call_id, "name": "run_command", "content": content})
    return requested, calls


# --- what the request says about the runbook's parameters ------------------------------------

_W = r"([a-z][a-z0-9@_-]*(?:\.service)?)"
_SERVICE = [
    re.compile(rf"\b{_W}\.service\b".replace("(?:\\.service)?", "")),
    re.compile(rf"\b{_W}\s+(?:service|unit|daemon|process|workers?)\b"),
    re.compile(rf"\b(?:service|unit|daemon)\s+{_W}"),
    re.compile(rf"\b(?:restart|start|stop|reload)\s+{_W}"),
    re.compile(
        rf"\b{_W}\s+(?:is|was|keeps|won't|wont|doesn't|isn't|has|got|crashed|crashes|"
        r"failed|fails|died|stopped|returns|gives|throws|cannot|can't)\b"
    ),
]
_PATH = re.compile(r"(?<![\w/])(/[\w.@+-]+(?:/[\w.@+-]+)*/?)")
_PORT = re.compile(r"(?:port|:)\s*(\d{2,5})\b|\b(\d{2,5})/tcp\b", re.IGNORECASE)
_PID = re.compile(r"\bp?pid\s*(\d{1,9})\b", re.IGNORECASE)
_DEVICE = re.compile(r"\b((?:sd|vd|xvd)[a-z]\d*|nvme\d+n\d+(?:p\d+)?)\b")
_DOMAIN = re.compile(r"\b((?:[a-z0-9-]+\.)+[a-z]{2,63})\b", re.IGNORECASE)
_COMMON = frozenset(
    {
        "the",
        "a",
        "an",
        "it",
        "this",
        "that",
        "there",
        "what",
        "which",
        "who",
        "why",
        "how",
        "my",
        "our",
        "its",
        "all",
        "any",
        "some",
        "every",
        "not",
        "no",
        "server",
        "servers",
        "host",
        "hosts",
        "machine",
        "machines",
        "system",
        "service",
        "services",
        "unit",
        "units",
        "process",
        "processes",
        "app",
        "application",
        "disk",
        "disks",
        "memory",
        "ram",
        "swap",
        "load",
        "cpu",
        "dns",
        "time",
        "clock",
        "certificate",
        "cert",
        "port",
        "file",
        "files",
        "space",
        "log",
        "logs",
        "inode",
        "inodes",
        "zombie",
        "zombies",
        "journal",
        "partition",
        "filesystem",
        "network",
        "connection",
        "connections",
        "io",
        "latency",
        "something",
        "everything",
    }
)


def _pattern_value(name: str, text: str) -> str | None:
    lowered = text.lower()
    found: re.Match[str] | None = None
    if name in ("path", "dir", "cert_path", "log_file"):
        found = _PATH.search(text)
    elif name == "port":
        found = _PORT.search(text)
    elif name in ("pid", "ppid"):
        found = _PID.search(text)
    elif name == "device":
        found = _DEVICE.search(lowered)
    elif name == "host":
        found = _DOMAIN.search(lowered)
    if found is None:
        return None
    return next(group for group in found.groups() if group)


def request_params(runbook: Runbook, text: str, hosts: Sequence[planner.Host]) -> dict[str, str]:
    """Values for the runbook's parameters that the request names: a service, a path, a port…

    Only plain words (``check_value``) are taken; a parameter the request does not fill keeps
    its default, and a step that needs a value nobody gave is reported as not run.
    """
    taken = {h.name.lower() for h in hosts}
    taken |= {v.lower() for h in hosts for v in (*h.labels.values(), h.environment or "")}
    lowered = text.lower()
    services = [
        match
        for pattern in _SERVICE
        for match in pattern.findall(lowered)
        if match not in _COMMON and match not in taken
    ]
    found: dict[str, str] = {}
    for name in runbook.parameters:
        value: str | None
        if name in ("service", "unit"):
            value = services[0] if services else None
        else:
            value = _pattern_value(name, text)
            if name == "host" and value in taken:
                value = None
        if value is None:
            continue
        try:
            found[name] = check_value(name, value)
        except ValueError:
            continue
    return found


def _reason(runbook: Runbook, step: Step) -> str:
    return f"runbook {runbook.id}: {step.name}"


async def _hosts(toolbox: OpsToolbox) -> list[planner.Host]:
    if "servers:read" not in toolbox.permissions:
        return []
    async with toolbox.platform.db.session(toolbox.tenant.schema) as session:
        clusters = {c.id: c.name for c in (await session.scalars(select(Cluster))).all()}
        servers = (await session.scalars(select(Server).order_by(Server.name))).all()
    return [
        planner.Host(
            name=s.name,
            labels=dict(s.labels),
            environment=s.environment,
            cluster=clusters.get(s.cluster_id) if s.cluster_id else None,
        )
        for s in servers
    ]


async def _say(emit: Emit, text: str) -> None:
    """The answer in paragraphs, so a terminal renders it as it comes."""
    for paragraph in text.split("\n\n"):
        await emit("text", {"delta": paragraph + "\n\n"})
