"""``it0 tasks``: run commands on servers through a running server, follow, cancel, retry."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from it0.cli._common import JsonOut, err, out
from it0.cli._remote import (
    DEFAULT_URL,
    RISK_STYLE,
    STATUS_STYLE,
    ApiKey,
    ServerUrl,
    api_client,
    command_of,
    explain_risk,
    list_table,
    one_line,
    print_fields,
    print_json,
    short_id,
    styled,
    when,
)
from it0.client import Client

tasks_app = typer.Typer(
    help="Tasks: run commands on servers, follow, cancel, retry.", no_args_is_help=True
)

Follow = Annotated[bool, typer.Option("--follow", "-f", help="stream output until it ends")]
Reason = Annotated[str | None, typer.Option("--reason", "-r", help="why this has to run")]

HOST_DONE = frozenset({"ok", "failed", "unreachable", "skipped", "cancelled"})


# --- rendering hosts and their output -------------------------------------------------------


def _hosts_table(hosts: list[dict[str, Any]]) -> Table:
    table = Table("host", "batch", "status", "exit", "duration", "error")
    for host in hosts:
        duration = host.get("duration")
        table.add_row(
            Text(str(host["name"])),
            str(host.get("batch", "")),
            styled(host.get("status"), STATUS_STYLE),
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


# --- submitting and following ---------------------------------------------------------------


def _report_created(task: dict[str, Any]) -> None:
    line = Text(f"task {task['id']}  risk ")
    line.append_text(styled(task["risk"], RISK_STYLE)).append("  status ")
    out.print(line.append_text(styled(task["status"], STATUS_STYLE)), soft_wrap=True)
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
        print_json(detail)
    else:
        if detail.get("hosts"):
            out.print(_hosts_table(detail["hosts"]))
        line = Text(f"task {short_id(detail['id'])} ").append_text(
            styled(detail["status"], STATUS_STYLE)
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
        print_json(task)
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


# --- commands -------------------------------------------------------------------------------


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
    with api_client(url, key) as client:
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
    with api_client(url, key) as client:
        page = client.tasks(status=status, risk=risk, limit=limit)
    if as_json:
        print_json(page)
        return
    table = list_table("id", "status", "risk", "targets", "command", "requested by", "created")
    for task in page["items"]:
        table.add_row(
            short_id(task["id"]),
            styled(task["status"], STATUS_STYLE),
            styled(task["risk"], RISK_STYLE),
            Text(one_line(task["targets"], 30)),
            Text(command_of(task["steps"], 40)),
            Text(str(task["requested_by"].get("name", ""))),
            when(task["created_at"], relative=True),
        )
    out.print(table)


def _show_task(task: dict[str, Any]) -> None:
    authorization = task.get("authorization") or {}
    by = authorization.get("by")
    approvers = ", ".join(authorization.get("approvers") or [])
    print_fields(
        [
            ("task", str(task["id"])),
            ("status", styled(task["status"], STATUS_STYLE)),
            ("risk", styled(task["risk"], RISK_STYLE)),
            ("targets", task["targets"]),
            ("servers", ", ".join(task["servers"])),
            ("requested by", task["requested_by"].get("name")),
            ("reason", task["reason"]),
            ("sudo", "yes" if task.get("sudo") else ""),
            ("approval", task.get("approval_id")),
            ("authorized by", f"{by} {approvers}".strip() if by else ""),
            ("created", when(task["created_at"])),
            ("started", when(task.get("started_at"))),
            ("finished", when(task.get("finished_at"))),
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
    with api_client(url, key) as client:
        task = client.task(ref)
    if as_json:
        print_json(task)
        return
    _show_task(task)
    explain_risk(task["steps"], task.get("verdicts") or [])
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
    with api_client(url, key) as client:
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
    with api_client(url, key) as client:
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
    with api_client(url, key) as client:
        _submitted(client, client.retry_task(ref, reason), follow, as_json)
