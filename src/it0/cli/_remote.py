"""What ``it0 tasks``, ``it0 approvals`` and ``it0 orders`` share: the server and its renderings.

Unlike the data commands these never open the database themselves: a task runs on the
server's workers and an approval is a person's vote, so all of them need the server (``--url``)
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
from rich.table import Column, Table
from rich.text import Text

from it0.cli._common import err, out
from it0.client import ApiError, Client, ServerUnreachable

DEFAULT_URL = "http://127.0.0.1:8000"
SHORT_ID = 18  # "0190a1b2-c3d4-7e5f": the millisecond plus 12 random bits
ServerUrl = Annotated[str, typer.Option("--url", envvar="IT0_URL", help="the IT0 server")]
ApiKey = Annotated[
    str | None, typer.Option("--key", envvar="IT0_API_KEY", help="API key (required)")
]
Comment = Annotated[str, typer.Option("--comment", "-m", help="why")]

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
def api_client(url: str, key: str | None) -> Iterator[Client]:
    """A client; any error of the server becomes one red line and exit code 2."""
    key = key or _local_key(url)
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
        message = escape(one_line(_message(exc)))
        err.print(f"[red]error {exc.status}:[/red] {message}", soft_wrap=True, highlight=False)
        raise typer.Exit(2) from None


def _local_key(url: str) -> str | None:
    """The key the embedded default wrote at its first start, for a server on this machine."""
    from urllib.parse import urlsplit

    from it0.auth.bootstrap import read_local_key
    from it0.core.settings import Settings

    if urlsplit(url).hostname not in ("127.0.0.1", "localhost", "::1"):
        return None
    return read_local_key(Settings().data_dir)


def _message(exc: ApiError) -> str:
    """The server's message, plus the first field's complaint of a validation error."""
    fields = exc.details.get("fields") if isinstance(exc.details, dict) else None
    if isinstance(fields, list) and fields and isinstance(fields[0], dict):
        return f"{exc.message}: {fields[0].get('message', '')}"
    return exc.message


def print_json(body: Any) -> None:
    out.print_json(json.dumps(body))


# --- small renderings -----------------------------------------------------------------------


def one_line(text: str, limit: int = 0) -> str:
    first, *rest = text.strip().splitlines() or [""]
    line = first + (" …" if rest else "")
    return line[: limit - 1] + "…" if limit and len(line) > limit else line


def short_id(ident: Any) -> str:
    """A prefix the server resolves: ids are UUIDv7, whose first 12 digits are the creation
    millisecond, so a shorter prefix is shared by everything created around the same time."""
    return str(ident)[:SHORT_ID] if ident else ""


def list_table(*names: str) -> Table:
    """A table whose ``id`` column never wraps: a broken id cannot be copied."""
    return Table(*(Column(n, no_wrap=True) if n == "id" else n for n in names))


def styled(value: Any, styles: dict[str, str]) -> Text:
    text = str(value or "")
    return Text(text, style=styles.get(text, "red" if text else ""))


def command_of(steps: list[dict[str, Any]], limit: int = 60) -> str:
    if not steps:
        return ""
    more = f" (+{len(steps) - 1} steps)" if len(steps) > 1 else ""
    return one_line(str(steps[0].get("command", "")), limit) + more


_SPANS = ((120, 1, "s"), (7200, 60, "m"), (172800, 3600, "h"), (float("inf"), 86400, "d"))


def when(stamp: Any, *, relative: bool = False) -> str:
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


def print_fields(rows: list[tuple[str, Any]]) -> None:
    """Name and value a line, leaving out the empty ones."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for name, value in rows:
        if value not in (None, "", [], {}):
            grid.add_row(name, value if isinstance(value, Text) else Text(str(value)))
    out.print(grid)


def explain_risk(steps: list[dict[str, Any]], verdicts: list[dict[str, Any]]) -> None:
    """Each step's command and the policy's reasoning, part by part."""
    for index, step in enumerate(steps):
        verdict = verdicts[index] if index < len(verdicts) else {}
        title = Text(f"step {index + 1}" + (f" {step['name']}" if step.get("name") else ""))
        title.append("  ").append_text(styled(verdict.get("risk"), RISK_STYLE))
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
                    styled(part.get("risk"), RISK_STYLE),
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


def _jsonable(value: Any) -> Any:
    """YAML gives dates and times as objects; the API wants them as ISO text."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def read_mapping(path: Path, what: str) -> dict[str, Any]:
    """A request body from a YAML or JSON file; one line on stderr and exit 2 otherwise."""
    try:
        text = path.read_text()
        body = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        err.print(
            f"[red]error:[/red] cannot read {escape(str(path))}: {escape(one_line(str(exc)))}"
        )
        raise typer.Exit(2) from None
    if not isinstance(body, dict):
        err.print(f"[red]error:[/red] {escape(str(path))} must hold {what}")
        raise typer.Exit(2)
    return dict(_jsonable(body))
