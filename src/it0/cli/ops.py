"""``it0 tasks``, ``it0 approvals`` and ``it0 orders``: oversight through a running server.

Unlike the data commands these never open the database themselves: a task runs on the
server's workers and an approval is a person's vote, so both need the server (``--url``)
and an API key that says who is asking (``--key``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Column, Table
from rich.text import Text

from it0.cli._common import JsonOut, err, out
from it0.client import ApiError, Client, ServerUnreachable

tasks_app = typer.Typer(
    help="Tasks: run commands on servers, follow, cancel, retry.", no_args_is_help=True
)
approvals_app = typer.Typer(
    help="Approval requests: see what would run, vote.", no_args_is_help=True
)
orders_app = typer.Typer(
    help="Standing orders: pre-authorized work within a scope.", no_args_is_help=True
)

DEFAULT_URL = "http://127.0.0.1:8000"
SHORT_ID = 18  # "0190a1b2-c3d4-7e5f": the millisecond plus 12 random bits
ServerUrl = Annotated[str, typer.Option("--url", envvar="IT0_URL", help="the IT0 server")]
ApiKey = Annotated[
    str | None, typer.Option("--key", envvar="IT0_API_KEY", help="API key (required)")
]
Follow = Annotated[bool, typer.Option("--follow", "-f", help="stream output until it ends")]
Comment = Annotated[str, typer.Option("--comment", "-m", help="why")]
Reason = Annotated[str | None, typer.Option("--reason", "-r", help="why this has to run")]

HOST_DONE = frozenset({"ok", "failed", "unreachable", "skipped", "cancelled"})
STATUS_STYLE = {
    "succeeded": "green",
    "ok": "green",
    "approved": "green",
    "active": "green",
    "running": "cyan",
    "pending": "yellow",
    "pending_approval": "yellow",
    "paused": "yellow",
    "skipped": "yellow",
}
RISK_STYLE = {
    "read_only": "green",
    "low": "cyan",
    "high": "yellow",
    "critical": "bold red",
    "unknown": "magenta",
}


# --- talking to the server ------------------------------------------------------------------


@contextmanager
def _api(url: str, key: str | None) -> Iterator[Client]:
    """A client; any error of the server becomes one red line and exit code 2."""
    if not key:
        err.print("[red]error:[/red] an API key is needed: --key or IT0_API_KEY", soft_wrap=True)
        raise typer.Exit(2)
    try:
        with Client(url, key) as client:
            yield client
    except ServerUnreachable as exc:
        err.print(f"[red]error:[/red] {escape(exc.message)}", soft_wrap=True, highlight=False)
        raise typer.Exit(2) from None
    except ApiError as exc:
        message = escape(_one_line(_message(exc)))
        err.print(f"[red]error {exc.status}:[/red] {message}", soft_wrap=True, highlight=False)
        raise typer.Exit(2) from None


def _message(exc: ApiError) -> str:
    """The server's message, plus the first field's complaint of a validation error."""
    fields = exc.details.get("fields") if isinstance(exc.details, dict) else None
    if isinstance(fields, list) and fields and isinstance(fields[0], dict):
        return f"{exc.message}: {fields[0].get('message', '')}"
    return exc.message


def _print_json(body: Any) -> None:
    out.print_json(json.dumps(body))


# --- small renderings -----------------------------------------------------------------------


def _one_line(text: str, limit: int = 0) -> str:
    first, *rest = text.strip().splitlines() or [""]
    line = first + (" …" if rest else "")
    return line[: limit - 1] + "…" if limit and len(line) > limit else line


def _short(ident: Any) -> str:
    """A prefix the server resolves: ids are UUIDv7, whose first 12 digits are the creation
    millisecond, so a shorter prefix is shared by everything created around the same time."""
    return str(ident)[:SHORT_ID] if ident else ""


def _list_table(*names: str) -> Table:
    """A table whose ``id`` column never wraps: a broken id cannot be copied."""
    return Table(*(Column(n, no_wrap=True) if n == "id" else n for n in names))


def _styled(value: Any, styles: dict[str, str]) -> Text:
    text = str(value or "")
    return Text(text, style=styles.get(text, "red" if text else ""))


def _command_of(steps: list[dict[str, Any]], limit: int = 60) -> str:
    if not steps:
        return ""
    more = f" (+{len(steps) - 1} steps)" if len(steps) > 1 else ""
    return _one_line(str(steps[0].get("command", "")), limit) + more


_SPANS = ((120, 1, "s"), (7200, 60, "m"), (172800, 3600, "h"), (float("inf"), 86400, "d"))


def _when(stamp: Any, *, relative: bool = False) -> str:
    """An ISO time as ``2026-01-02 10:00:00 (in 59m)`` (or ``in 59m``); empty for none."""
    if not stamp:
        return ""
    moment = datetime.fromisoformat(str(stamp))
    if moment.tzinfo is None:  # SQLite keeps no zone; the server stores UTC
        moment = moment.replace(tzinfo=UTC)
    seconds = int((moment - datetime.now(UTC)).total_seconds())
    span = abs(seconds)
    amount = next(f"{span // size}{unit}" for limit, size, unit in _SPANS if span < limit)
    span_text = f"in {amount}" if seconds >= 0 else f"{amount} ago"
    return span_text if relative else f"{moment.astimezone():%Y-%m-%d %H:%M:%S} ({span_text})"


def _fields(rows: list[tuple[str, Any]]) -> None:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for name, value in rows:
        if value not in (None, "", [], {}):
            grid.add_row(name, value if isinstance(value, Text) else Text(str(value)))
    out.print(grid)


def _explain(steps: list[dict[str, Any]], verdicts: list[dict[str, Any]]) -> None:
    """Each step's command and the policy's reasoning, part by part."""
    for index, step in enumerate(steps):
        verdict = verdicts[index] if index < len(verdicts) else {}
        title = Text(f"step {index + 1}" + (f" {step['name']}" if step.get("name") else ""))
        title.append("  ").append_text(_styled(verdict.get("risk"), RISK_STYLE))
        if verdict.get("raised"):
            title.append(f" (raised for environment {verdict.get('env')})", style="yellow")
        out.print(title)
        out.print(Text(str(step.get("command", "")), style="bold"), soft_wrap=True)
        parts = verdict.get("parts") or []
        if parts:
            table = Table("part", "risk", "rule", "reason", box=None, padding=(0, 2, 0, 0))
            for part in parts:
                table.add_row(
                    Text(str(part.get("text", ""))),
                    _styled(part.get("risk"), RISK_STYLE),
                    Text(str(part.get("rule") or "")),
                    Text(str(part.get("reason") or "") + _via(part)),
                )
            out.print(table)


def _via(part: dict[str, Any]) -> str:
    """Where a nested command came from, e.g. ``sh -c`` or ``xargs``."""
    via = part.get("via")
    if isinstance(via, list):
        via = " > ".join(str(v) for v in via)
    return f" (via {via})" if via else ""


def _hosts_table(hosts: list[dict[str, Any]]) -> Table:
    table = Table("host", "batch", "status", "exit", "duration", "error")
    for host in hosts:
        duration = host.get("duration")
        table.add_row(
            Text(str(host["name"])),
            str(host.get("batch", "")),
            _styled(host.get("status"), STATUS_STYLE),
            "" if host.get("exit_status") is None else str(host["exit_status"]),
            "" if duration is None else f"{duration:.2f}s",
            Text(str(host.get("error") or ""), style="red"),
        )
    return table


class HostLines:
    """Output chunks to whole lines, each prefixed by its host (stderr in red)."""

    def __init__(self, hosts: list[str]) -> None:
        self.width = max((len(h) for h in hosts), default=0)
        self.partial: dict[tuple[str, str], str] = {}

    def feed(self, host: str, stream: str, text: str) -> None:
        *lines, rest = (self.partial.pop((host, stream), "") + text).split("\n")
        for line in lines:
            self.print(host, stream, line)
        if rest:
            self.partial[(host, stream)] = rest

    def flush(self, host: str | None = None) -> None:
        for key in [k for k in self.partial if host is None or k[0] == host]:
            self.print(*key, self.partial.pop(key))

    def print(self, host: str, stream: str, line: str) -> None:
        text = Text(f"{host:<{self.width}} | ", style="dim")
        text.append(line.rstrip("\r"), style="red" if stream == "stderr" else "")
        out.print(text, soft_wrap=True)


# --- tasks ----------------------------------------------------------------------------------


def _report_created(task: dict[str, Any]) -> None:
    line = Text(f"task {task['id']}  risk ")
    line.append_text(_styled(task["risk"], RISK_STYLE)).append("  status ")
    out.print(line.append_text(_styled(task["status"], STATUS_STYLE)), soft_wrap=True)
    if task.get("approval_id"):
        approval = task["approval_id"]
        out.print(f"waits for approval {approval}", highlight=False)
        out.print(f"  approve with: it0 approvals approve {approval}", highlight=False)


def _follow(client: Client, task: dict[str, Any], *, show: bool = True) -> dict[str, Any]:
    """Stream the task's events until it ends; its final state, with every host."""
    task_id = str(task["id"])
    lines = HostLines(list(task.get("servers") or []))
    done: set[str] = set()
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=out,
        transient=True,
        disable=not show,
    )
    bar = progress.add_task(str(task["status"]), total=len(task.get("servers") or []))
    waiting = False
    try:
        with progress:
            for event in client.events(task_id):
                kind, data = event["event"], event["data"]
                if not show or not isinstance(data, dict):
                    continue
                if kind in ("task", "status"):
                    status = str(data.get("status"))
                    progress.update(bar, description=status)
                    if status == "pending_approval" and not waiting:
                        waiting = True
                        out.print(
                            f"waiting for approval {task.get('approval_id') or ''} …",
                            highlight=False,
                        )
                elif kind == "host":
                    host = str(data.get("host"))
                    if data.get("status") in HOST_DONE:
                        lines.flush(host)
                        done.add(host)
                        progress.update(bar, completed=len(done))
                    if data.get("status") in ("failed", "unreachable") and data.get("error"):
                        out.print(Text(f"{host} | {data['error']}", style="red"), soft_wrap=True)
                elif kind == "output":
                    lines.feed(str(data.get("host")), str(data.get("stream")), str(data["text"]))
                elif kind == "note":
                    out.print(Text(str(data.get("message")), style="yellow"))
            lines.flush()
    except KeyboardInterrupt:
        err.print(f"stopped following; the task goes on (it0 tasks cancel {task_id})")
        raise typer.Exit(130) from None
    return client.task(task_id)


def _finish(detail: dict[str, Any], as_json: bool) -> None:
    """The summary of a followed task; exit 1 unless it succeeded."""
    if as_json:
        _print_json(detail)
    else:
        if detail.get("hosts"):
            out.print(_hosts_table(detail["hosts"]))
        line = Text(f"task {_short(detail['id'])} ").append_text(
            _styled(detail["status"], STATUS_STYLE)
        )
        counts = ", ".join(f"{n} {s}" for s, n in sorted((detail.get("counts") or {}).items()))
        out.print(line.append(f" ({counts})" if counts else ""), soft_wrap=True)
        if detail.get("message"):
            out.print(Text(str(detail["message"]), style="yellow"))
    if detail["status"] != "succeeded":
        raise typer.Exit(1)


def _submitted(client: Client, task: dict[str, Any], follow: bool, as_json: bool) -> None:
    if follow:
        if not as_json:
            _report_created(task)
        _finish(_follow(client, task, show=not as_json), as_json)
    elif as_json:
        _print_json(task)
    else:
        _report_created(task)


def _rollout(
    batch_size: int | None,
    batch_percent: float | None,
    pause: float | None,
    max_failures: int | None,
) -> dict[str, Any] | None:
    if batch_size is not None and batch_percent is not None:
        err.print("[red]error:[/red] give --batch-size or --batch-percent, not both")
        raise typer.Exit(2)
    rollout = {
        "batch_size": batch_size,
        "batch_percent": batch_percent,
        "pause_seconds": pause,
        "max_failures": max_failures,
    }
    given = {k: v for k, v in rollout.items() if v is not None}
    return given or None


@tasks_app.command("run")
def tasks_run(
    targets: Annotated[str, typer.Argument(help="a server selector, e.g. 'env=prod' or web-1")],
    command: Annotated[str | None, typer.Argument(help="the shell command")] = None,
    script: Annotated[
        Path | None, typer.Option("--script", exists=True, dir_okay=False, help="a script file")
    ] = None,
    reason: Reason = None,
    sudo: Annotated[bool, typer.Option("--sudo", help="run as root")] = False,
    timeout: Annotated[float | None, typer.Option(min=0.001, help="seconds per host")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="hosts per batch")] = None,
    batch_percent: Annotated[
        float | None, typer.Option(min=0.001, max=100, help="batch size in %")
    ] = None,
    pause: Annotated[float | None, typer.Option(min=0, help="seconds between batches")] = None,
    max_failures: Annotated[int | None, typer.Option(min=0, help="failed hosts tolerated")] = None,
    follow: Follow = False,
    as_json: JsonOut = False,
    url: ServerUrl = DEFAULT_URL,
    key: ApiKey = None,
) -> None:
    """Run a command (or --script) on the targets; anything not read-only waits for approval."""
    if (command is None) == (script is None):
        err.print("[red]error:[/red] give a COMMAND or --script FILE (one of them)")
        raise typer.Exit(2)
    rollout = _rollout(batch_size, batch_percent, pause, max_failures)
    with _api(url, key) as client:
        task = client.create_task(
            targets,
            command=command,
            script=script.read_text() if script else None,
            reason=reason or "",
            sudo=sudo,
            timeout=timeout,
            rollout=rollout,
        )
        _submitted(client, task, follow, as_json)


@tasks_app.command("list")
def tasks_list(
    status: Annotated[str | None, typer.Option(help="e.g. running, failed")] = None,
    risk: Annotated[str | None, typer.Option(help="read_only, low, high, critical")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 20,
    as_json: JsonOut = False,
    url: ServerUrl = DEFAULT_URL,
    key: ApiKey = None,
) -> None:
    """Tasks, newest first."""
    with _api(url, key) as client:
        page = client.tasks(status=status, risk=risk, limit=limit)
    if as_json:
        _print_json(page)
        return
    table = _list_table("id", "status", "risk", "targets", "command", "requested by", "created")
    for task in page["items"]:
        table.add_row(
            _short(task["id"]),
            _styled(task["status"], STATUS_STYLE),
            _styled(task["risk"], RISK_STYLE),
            Text(_one_line(task["targets"], 30)),
            Text(_command_of(task["steps"], 40)),
            Text(str(task["requested_by"].get("name", ""))),
            _when(task["created_at"], relative=True),
        )
    out.print(table)


def _show_task(task: dict[str, Any]) -> None:
    authorization = task.get("authorization") or {}
    by = authorization.get("by")
    approvers = ", ".join(authorization.get("approvers") or [])
    _fields(
        [
            ("task", str(task["id"])),
            ("status", _styled(task["status"], STATUS_STYLE)),
            ("risk", _styled(task["risk"], RISK_STYLE)),
            ("targets", task["targets"]),
            ("servers", ", ".join(task["servers"])),
            ("requested by", task["requested_by"].get("name")),
            ("reason", task["reason"]),
            ("sudo", "yes" if task.get("sudo") else ""),
            ("approval", task.get("approval_id")),
            ("authorized by", f"{by} {approvers}".strip() if by else ""),
            ("created", _when(task["created_at"])),
            ("started", _when(task.get("started_at"))),
            ("finished", _when(task.get("finished_at"))),
            ("message", task.get("message")),
        ]
    )


@tasks_app.command("show")
def tasks_show(
    ref: Annotated[str, typer.Argument(metavar="ID", help="task id or unique prefix")],
    output: Annotated[bool, typer.Option("--output", help="print each host's output")] = False,
    as_json: JsonOut = False,
    url: ServerUrl = DEFAULT_URL,
    key: ApiKey = None,
) -> None:
    """A task: what runs, why the policy rated it so, and each host's outcome."""
    with _api(url, key) as client:
        task = client.task(ref)
    if as_json:
        _print_json(task)
        return
    _show_task(task)
    _explain(task["steps"], task.get("verdicts") or [])
    if task["hosts"]:
        out.print(_hosts_table(task["hosts"]))
    if output:
        _stored_output(task)


def _stored_output(task: dict[str, Any]) -> None:
    lines = HostLines([h["name"] for h in task["hosts"]])
    for host in task["hosts"]:
        for stream in ("stdout", "stderr"):
            lines.feed(host["name"], stream, host[stream])
        lines.flush(host["name"])
        if host.get("truncated"):
            out.print(Text(f"{host['name']} | (output truncated)", style="yellow"))


@tasks_app.command("cancel")
def tasks_cancel(
    ref: Annotated[str, typer.Argument(metavar="ID")],
    url: ServerUrl = DEFAULT_URL,
    key: ApiKey = None,
) -> None:
    """Cancel a task: before it runs at once, while running its hosts stop shortly."""
    with _api(url, key) as client:
        task = client.cancel_task(ref)
    if task["status"] == "cancelled":
        out.print(f"task {task['id']} cancelled", highlight=False)
    else:
        out.print(f"task {task['id']} is {task['status']}; cancel requested", highlight=False)


@tasks_app.command("logs")
def tasks_logs(
    ref: Annotated[str, typer.Argument(metavar="ID")],
    follow: Follow = False,
    url: ServerUrl = DEFAULT_URL,
    key: ApiKey = None,
) -> None:
    """A task's output per host; with --follow, live until the task ends."""
    with _api(url, key) as client:
        task = client.task(ref)
        if follow:
            _finish(_follow(client, task), as_json=False)
            return
    if not task["hosts"]:
        out.print(f"no output yet: the task is {task['status']}", highlight=False)
    _stored_output(task)


@tasks_app.command("retry")
def tasks_retry(
    ref: Annotated[str, typer.Argument(metavar="ID")],
    reason: Reason = None,
    follow: Follow = False,
    as_json: JsonOut = False,
    url: ServerUrl = DEFAULT_URL,
    key: ApiKey = None,
) -> None:
    """The same request as a new task, classified and authorized afresh."""
    with _api(url, key) as client:
        _submitted(client, client.retry_task(ref, reason), follow, as_json)


# --- approvals ------------------------------------------------------------------------------


@approvals_app.command("list")
def approvals_list(
    every: Annotated[bool, typer.Option("--all", help="decided ones too")] = False,
    as_json: JsonOut = False,
    url: ServerUrl = DEFAULT_URL,
    key: ApiKey = None,
) -> None:
    """Approval requests waiting for a vote (all of them with --all)."""
    with _api(url, key) as client:
        approvals = client.approvals(None if every else "pending")
    if as_json:
        _print_json(approvals)
        return
    columns = ["id", "risk", "approvals", "requested by", "targets", "command", "expires"]
    table = _list_table(*columns, *(["status"] if every else []))
    for approval in approvals:
        table.add_row(
            _short(approval["id"]),
            _styled(approval["risk"], RISK_STYLE),
            f"{approval['approvals']}/{approval['required']}",
            Text(str(approval["requested_by"].get("name", ""))),
            Text(_one_line(approval["targets"], 30)),
            Text(_command_of(approval["steps"], 40)),
            _when(approval["expires_at"], relative=True),
            *([_styled(approval["status"], STATUS_STYLE)] if every else []),
        )
    out.print(table)


@approvals_app.command("show")
def approvals_show(
    ref: Annotated[str, typer.Argument(metavar="ID", help="approval id or unique prefix")],
    as_json: JsonOut = False,
    url: ServerUrl = DEFAULT_URL,
    key: ApiKey = None,
) -> None:
    """Exactly what would run, where, why the policy asks for approval, and the votes."""
    with _api(url, key) as client:
        approval = client.approval(ref)
    if as_json:
        _print_json(approval)
        return
    _fields(
        [
            ("approval", str(approval["id"])),
            ("status", _styled(approval["status"], STATUS_STYLE)),
            ("risk", _styled(approval["risk"], RISK_STYLE)),
            ("approvals", f"{approval['approvals']} of {approval['required']}"),
            ("task", str(approval["task_id"])),
            ("requested by", approval["requested_by"].get("name")),
            ("reason", approval["reason"]),
            ("targets", approval["targets"]),
            ("hosts", ", ".join(approval["servers"])),
            ("sudo", "yes" if approval.get("sudo") else ""),
            ("expires", _when(approval["expires_at"])),
            ("payload", approval["payload_hash"]),
        ]
    )
    _explain(approval["steps"], approval.get("verdicts") or [])
    if approval["votes"]:
        table = Table("voter", "decision", "comment", "via", "at")
        for vote in approval["votes"]:
            table.add_row(
                Text(vote["voter"]),
                _styled(vote["decision"], {"approve": "green"}),
                Text(vote["comment"]),
                vote["via"],
                _when(vote["created_at"]),
            )
        out.print(table)


def _voted(approval: dict[str, Any]) -> None:
    status = approval["status"]
    line = Text(f"approval {_short(approval['id'])}: ").append_text(_styled(status, STATUS_STYLE))
    line.append(f" ({approval['approvals']} of {approval['required']} approvals)")
    out.print(line, soft_wrap=True)
    if status == "approved":
        out.print(f"  follow with: it0 tasks logs {approval['task_id']} --follow", highlight=False)


@approvals_app.command("approve")
def approvals_approve(
    ref: Annotated[str, typer.Argument(metavar="ID")],
    comment: Comment = "",
    url: ServerUrl = DEFAULT_URL,
    key: ApiKey = None,
) -> None:
    """Approve exactly what `approvals show` shows; never your own request."""
    with _api(url, key) as client:
        _voted(client.approve(ref, comment))


@approvals_app.command("reject")
def approvals_reject(
    ref: Annotated[str, typer.Argument(metavar="ID")],
    comment: Comment = "",
    url: ServerUrl = DEFAULT_URL,
    key: ApiKey = None,
) -> None:
    """Reject: one rejection ends the request."""
    with _api(url, key) as client:
        _voted(client.reject(ref, comment))


# --- standing orders ------------------------------------------------------------------------


def _trigger(order: dict[str, Any]) -> str:
    trigger = order.get("trigger") or {}
    if trigger.get("type") == "cron":
        return f"cron {trigger['cron']} {trigger.get('timezone', '')}".strip()
    if trigger.get("type") == "event":
        return f"event {trigger['topic']}"
    return ""


def _order_line(order: dict[str, Any]) -> None:
    line = Text(f"standing order #{order['number']} {order['name']}: ")
    line.append_text(_styled(order["status"], STATUS_STYLE))
    if order.get("status_reason"):
        line.append(f" ({order['status_reason']})")
    out.print(line, soft_wrap=True)


def _jsonable(value: Any) -> Any:
    """YAML gives dates and times as objects; the API wants them as ISO text."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def _order_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
        body = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        err.print(
            f"[red]error:[/red] cannot read {escape(str(path))}: {escape(_one_line(str(exc)))}"
        )
        raise typer.Exit(2) from None
    if not isinstance(body, dict):
        err.print(f"[red]error:[/red] {escape(str(path))} must hold one standing order (a mapping)")
        raise typer.Exit(2)
    return dict(_jsonable(body))


OrderRef = Annotated[str, typer.Argument(metavar="REF", help="number, id or name")]
OrderFile = Annotated[
    Path, typer.Option("--file", "-f", exists=True, dir_okay=False, help="YAML or JSON")
]


@orders_app.command("list")
def orders_list(
    status: Annotated[str | None, typer.Option(help="e.g. active, pending_approval")] = None,
    as_json: JsonOut = False,
    url: ServerUrl = DEFAULT_URL,
    key: ApiKey = None,
) -> None:
    """Standing orders by number."""
    with _api(url, key) as client:
        orders = client.orders(status)
    if as_json:
        _print_json(orders)
        return
    table = _list_table("#", "name", "status", "owner", "targets", "max risk", "trigger", "expires")
    for order in orders:
        table.add_row(
            str(order["number"]),
            Text(order["name"]),
            _styled(order["status"], STATUS_STYLE),
            Text(order["owner"]),
            Text(_one_line(order["scope"].get("targets", ""), 30)),
            _styled(order["scope"].get("max_risk"), RISK_STYLE),
            Text(_trigger(order)),
            _when(order["expires_at"], relative=True),
        )
    out.print(table)


@orders_app.command("show")
def orders_show(
    ref: OrderRef, as_json: JsonOut = False, url: ServerUrl = DEFAULT_URL, key: ApiKey = None
) -> None:
    """A standing order: its scope, trigger, limits and state."""
    with _api(url, key) as client:
        order = client.order(ref)
    if as_json:
        _print_json(order)
        return
    action = order.get("action") or {}
    limit = order["rate_limit"]
    _fields(
        [
            ("order", f"#{order['number']} {order['name']} (version {order['version']})"),
            ("id", str(order["id"])),
            ("status", _styled(order["status"], STATUS_STYLE)),
            ("why", order.get("status_reason")),
            ("description", order["description"]),
            ("owner", order["owner"]),
            ("approved by", order.get("approved_by")),
            ("targets", order["scope"].get("targets")),
            ("max risk", _styled(order["scope"].get("max_risk"), RISK_STYLE)),
            ("trigger", _trigger(order)),
            ("action", json.dumps(action) if action else ""),
            ("rate limit", f"{limit.get('max_runs')} runs / {limit.get('window_seconds')}s"),
            ("expires", _when(order["expires_at"])),
            ("next run", _when(order.get("next_run_at"))),
            ("last run", _when(order.get("last_run_at"))),
        ]
    )
    table = Table("#", "command template", "parameters")
    for index, template in enumerate(order["scope"].get("commands", [])):
        params = ", ".join(
            f"{name}: {spec.get('type', 'string')}" for name, spec in template["params"].items()
        )
        table.add_row(str(index), Text(template["template"]), Text(params))
    out.print(table)


@orders_app.command("create")
def orders_create(
    file: OrderFile, as_json: JsonOut = False, url: ServerUrl = DEFAULT_URL, key: ApiKey = None
) -> None:
    """Propose a standing order from a file; another person has to approve it."""
    body = _order_file(file)
    with _api(url, key) as client:
        order = client.create_order(body)
    if as_json:
        _print_json(order)
        return
    _order_line(order)
    out.print(f"  approve with: it0 orders approve {order['number']}", highlight=False)


@orders_app.command("update")
def orders_update(
    ref: OrderRef, file: OrderFile, url: ServerUrl = DEFAULT_URL, key: ApiKey = None
) -> None:
    """Change an order from a file of fields; it stops until approved again."""
    changes = _order_file(file)
    with _api(url, key) as client:
        _order_line(client.update_order(ref, changes))


def _decide(action: str, ref: str, comment: str, url: str, key: str | None) -> None:
    with _api(url, key) as client:
        _order_line(client.decide_order(ref, action, comment))


@orders_app.command("approve")
def orders_approve(
    ref: OrderRef, comment: Comment = "", url: ServerUrl = DEFAULT_URL, key: ApiKey = None
) -> None:
    """Approve a proposed (or changed, or resumed) order; never your own."""
    _decide("approve", ref, comment, url, key)


@orders_app.command("reject")
def orders_reject(
    ref: OrderRef, comment: Comment = "", url: ServerUrl = DEFAULT_URL, key: ApiKey = None
) -> None:
    """Reject a proposed order."""
    _decide("reject", ref, comment, url, key)


@orders_app.command("pause")
def orders_pause(
    ref: OrderRef, comment: Comment = "", url: ServerUrl = DEFAULT_URL, key: ApiKey = None
) -> None:
    """Take an order's authority away at once."""
    _decide("pause", ref, comment, url, key)


@orders_app.command("resume")
def orders_resume(ref: OrderRef, url: ServerUrl = DEFAULT_URL, key: ApiKey = None) -> None:
    """Ask to re-enable a paused order; it waits for another person's approval."""
    _decide("resume", ref, "", url, key)
