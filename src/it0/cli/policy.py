"""``it0 policy``: how IT0 classifies a command line, and why."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from it0.cli._common import JsonOut
from it0.ops.policy import Policy, Risk, Verdict

app = typer.Typer(help="The command risk policy.", no_args_is_help=True)

_STYLE = {
    Risk.READ_ONLY: "green",
    Risk.LOW: "cyan",
    Risk.UNKNOWN: "yellow",
    Risk.HIGH: "red",
    Risk.CRITICAL: "bold red",
}


@app.callback()
def policy() -> None:
    """The command risk policy (keeps ``explain`` a subcommand)."""


@app.command("explain")
def explain(
    command: Annotated[str, typer.Argument(help="the command line (quote it)")],
    env: Annotated[
        str | None, typer.Option("--env", help="the server's environment, e.g. prod")
    ] = None,
    as_json: JsonOut = False,
) -> None:
    """Classify a command line with the built-in rules and show every part."""
    verdict = Policy.default().classify(command, env)
    if as_json:
        typer.echo(json.dumps(verdict.to_json()))
        return
    _print(verdict)


def _label(risk: Risk) -> str:
    return f"[{_STYLE[risk]}]{risk.value}[/{_STYLE[risk]}]"


def _print(verdict: Verdict) -> None:
    out = Console()  # created here so that it sizes itself to the terminal of this run
    approval = "needs approval" if verdict.needs_approval else "runs without approval"
    raised = f" (raised one level for {verdict.env})" if verdict.raised else ""
    out.print(f"{_label(verdict.risk)}{raised}: {approval}")
    table = Table("command", "class", "rule", "reason", "via")
    for part in verdict.parts:
        via = " > ".join(part.via)
        table.add_row(
            escape(part.text),
            _label(part.risk),
            escape(part.rule),
            escape(part.reason),
            escape(via),
        )
    out.print(table)
