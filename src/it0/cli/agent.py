"""``it0 ask`` and ``it0 chat``: talk to the agent of a running server.

The answer streams as it is written; tool calls and their results show as dim lines, and
a command that waits for approval shows its approval id and how to decide it. With
``--wait`` the command stays until the approval is decided and the agent has gone on.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from rich.markup import escape
from rich.panel import Panel

from it0.cli._common import err, out
from it0.cli._remote import DEFAULT_URL, ApiKey, ServerUrl, api_client, one_line
from it0.client import Client
from it0.client.rest import Event

SessionOpt = Annotated[
    str | None, typer.Option("--session", "-s", help="go on with this conversation")
]
Wait = Annotated[
    bool, typer.Option("--wait", help="stay until pending approvals are decided and answered")
]
JsonEvents = Annotated[bool, typer.Option("--json", help="print the events as JSON lines")]


class Renderer:
    """Prints a turn's events to the terminal; remembers what the caller needs next."""

    def __init__(self, as_json: bool = False) -> None:
        self.as_json = as_json
        self.last_seq = 0
        self.status: str | None = None
        self.pending: list[str] = []
        self.failed = False
        self._midline = False

    def show(self, event: Event) -> None:
        kind, data = event["event"], event["data"]
        if event["id"]:
            self.last_seq = max(self.last_seq, int(event["id"]))
        if kind == "done" and isinstance(data, dict):
            self.status = data.get("status")
        if kind == "error":
            self.failed = True
        if self.as_json:
            sys.stdout.write(json.dumps({"event": kind, "id": event["id"], "data": data}) + "\n")
            sys.stdout.flush()
            return
        if not isinstance(data, dict):
            return
        if kind == "text":
            text = str(data.get("delta") or data.get("content") or "")
            out.print(escape(text), end="", soft_wrap=True, highlight=False)
            self._midline = not text.endswith("\n")
            return
        self._newline()
        if kind == "tool_call":
            args = data.get("args") or {}
            what = args.get("command") or args.get("selector") or args.get("query") or ""
            where = (
                f" on {args['selector']}" if args.get("command") and args.get("selector") else ""
            )
            out.print(
                f"[dim]→ {escape(data.get('name', ''))}{escape(where)}: "
                f"{escape(one_line(str(what), 100))}[/dim]",
                highlight=False,
            )
        elif kind == "tool_result":
            first = one_line(str(data.get("content", "")), 100)
            out.print(f"[dim]  ← {escape(first)}[/dim]", highlight=False)
        elif kind == "approval_required":
            self.pending.append(str(data.get("approval_id")))
            hosts = ", ".join(data.get("hosts") or [])
            out.print(
                Panel(
                    f"[bold]{escape(str(data.get('command')))}[/bold] on {escape(hosts)} "
                    f"is [yellow]{escape(str(data.get('risk')))}[/yellow]\n"
                    f"task {data.get('task_id')}\n"
                    f"approval {data.get('approval_id')} — another person approves with\n"
                    f"  it0 approvals approve {data.get('approval_id')}",
                    title="approval required",
                    border_style="yellow",
                )
            )
        elif kind == "resumed":
            out.print(
                f"[cyan]↻ task {escape(str(data.get('task_id')))} was "
                f"{escape(str(data.get('status')))}; the agent goes on[/cyan]"
            )
        elif kind == "error":
            err.print(f"[red]error:[/red] {escape(str(data.get('message')))}", highlight=False)
        elif kind == "done":
            usage = data.get("usage") or {}
            turn = usage.get("turn") or {}
            tokens = turn.get("input_tokens", 0) + turn.get("output_tokens", 0)
            note = f"{tokens} tokens, " if tokens else ""
            out.print(
                f"[dim]({note}{turn.get('tool_calls', 0)} tool calls; "
                f"{escape(str(self.status))})[/dim]"
            )

    def _newline(self) -> None:
        if self._midline:
            out.print()
            self._midline = False


def _turn(client: Client, session_id: str, text: str, renderer: Renderer, wait: bool) -> None:
    for event in client.ask(session_id, text):
        renderer.show(event)
    if wait and renderer.status == "waiting_approval":
        if not renderer.as_json:
            out.print("[dim]waiting for the approval to be decided (Ctrl-C to stop waiting)…[/dim]")
        _follow(client, session_id, renderer)


def _follow(client: Client, session_id: str, renderer: Renderer) -> None:
    for event in client.session_events(session_id, renderer.last_seq, follow=True):
        renderer.show(event)


def _session(client: Client, session_id: str | None, title: str) -> str:
    if session_id:
        return str(client.session(session_id)["id"])
    return str(client.create_session(title[:200])["id"])


def ask(
    question: Annotated[str, typer.Argument(help="what to ask, in plain language")],
    session: SessionOpt = None,
    wait: Wait = False,
    as_json: JsonEvents = False,
    url: ServerUrl = DEFAULT_URL,
    key: ApiKey = None,
) -> None:
    """Ask the agent one question; the answer streams to the terminal."""
    renderer = Renderer(as_json)
    with api_client(url, key) as client:
        session_id = _session(client, session, question)
        try:
            _turn(client, session_id, question, renderer, wait)
        except KeyboardInterrupt:
            err.print(f"\n[dim]stopped following; the session is {session_id}[/dim]")
            raise typer.Exit(130) from None
    if not as_json and renderer.status == "waiting_approval" and not wait:
        out.print(
            f"[dim]session {session_id} waits for approval; follow it with "
            f"`it0 chat --session {session_id}`[/dim]"
        )
    if renderer.failed:
        raise typer.Exit(1)


def chat(
    session: SessionOpt = None,
    url: ServerUrl = DEFAULT_URL,
    key: ApiKey = None,
) -> None:
    """Talk with the agent; /wait follows a pending approval, /new starts over, /quit ends."""
    renderer = Renderer()
    with api_client(url, key) as client:
        session_id = _session(client, session, "Chat") if session else None
        if session_id:
            detail = client.session(session_id)
            out.print(f"[dim]conversation {session_id}: {escape(detail['title'])}[/dim]")
            renderer.last_seq = max((e["seq"] for e in detail["events"]), default=0)
            if detail["status"] != "idle":
                _follow(client, session_id, renderer)
        while True:
            try:
                text = out.input("[bold cyan]you>[/bold cyan] ").strip()
            except (EOFError, KeyboardInterrupt):
                out.print()
                return
            if not text:
                continue
            if text in ("/quit", "/exit"):
                return
            if text == "/new":
                session_id = None
                out.print("[dim]a new conversation starts with your next message[/dim]")
                continue
            if text == "/wait":
                if session_id:
                    _follow(client, session_id, renderer)
                continue
            if session_id is None:
                session_id = _session(client, None, text)
            try:
                _turn(client, session_id, text, renderer, wait=False)
            except KeyboardInterrupt:
                out.print("\n[dim]stopped following this answer (it goes on on the server)[/dim]")
