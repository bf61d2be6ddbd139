"""``it0 runbooks``: the runbooks the agent works from, and the tenant's own, via a server."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from it0.cli._common import JsonOut, err, out
from it0.cli._remote import (
    DEFAULT_URL,
    ApiKey,
    ServerUrl,
    api_client,
    list_table,
    print_fields,
    print_json,
    read_mapping,
)

runbooks_app = typer.Typer(
    help="Runbooks: the built-in ones and the tenant's own.", no_args_is_help=True
)

RunbookId = Annotated[str, typer.Argument(metavar="ID", help="the runbook's id")]
RunbookFile = Annotated[
    Path, typer.Argument(metavar="FILE", exists=True, dir_okay=False, help="YAML or JSON")
]


def _runbook_file(path: Path) -> dict[str, Any]:
    body = read_mapping(path, "one runbook with an `id`")
    if not isinstance(body.get("id"), str) or not body["id"]:
        err.print(f"[red]error:[/red] {escape(str(path))} must hold one runbook with an `id`")
        raise typer.Exit(2)
    return body


@runbooks_app.command("list")
def runbooks_list(
    query: Annotated[
        str | None, typer.Option("--query", "-q", help="search by symptoms, best first")
    ] = None,
    as_json: JsonOut = False,
    url: ServerUrl = DEFAULT_URL,
    key: ApiKey = None,
) -> None:
    """Every runbook by id, or the best matches of --query."""
    with api_client(url, key) as client:
        runbooks = client.runbooks(query)
    if as_json:
        print_json(runbooks)
        return
    columns = ("id", "title", "source") + (("score",) if query else ())
    table = list_table(*columns)
    for runbook in runbooks:
        row = [Text(runbook["id"]), Text(runbook["title"]), Text(runbook["source"])]
        if query:
            row.append(Text(f"{runbook.get('score') or 0:.2f}"))
        table.add_row(*row)
    out.print(table)


@runbooks_app.command("show")
def runbooks_show(
    runbook_id: RunbookId,
    as_json: JsonOut = False,
    url: ServerUrl = DEFAULT_URL,
    key: ApiKey = None,
) -> None:
    """A runbook: its symptoms, parameters and steps."""
    with api_client(url, key) as client:
        runbook = client.runbook(runbook_id)
    if as_json:
        print_json(runbook)
        return
    print_fields(
        [
            ("runbook", f"{runbook['id']}: {runbook['title']}"),
            ("source", runbook["source"]),
            ("added by", runbook.get("created_by")),
            ("summary", runbook["summary"]),
            ("symptoms", "; ".join(runbook["symptoms"])),
            (
                "parameters",
                ", ".join(
                    f"{name} ({spec.get('default') or spec.get('example')})"
                    for name, spec in runbook["parameters"].items()
                ),
            ),
        ]
    )
    table = Table("kind", "step", "command")
    for kind in ("diagnostics", "remediations", "verify"):
        for step in runbook[kind]:
            table.add_row(kind, Text(step["name"]), Text(step["command"]))
    out.print(table)


@runbooks_app.command("add")
def runbooks_add(file: RunbookFile, url: ServerUrl = DEFAULT_URL, key: ApiKey = None) -> None:
    """Add the tenant's runbook from a file, or replace the one with its id."""
    spec = _runbook_file(file)
    with api_client(url, key) as client:
        runbook = client.put_runbook(spec)
    out.print(f"runbook {runbook['id']} stored ({runbook['source']})", highlight=False)


@runbooks_app.command("rm")
def runbooks_rm(runbook_id: RunbookId, url: ServerUrl = DEFAULT_URL, key: ApiKey = None) -> None:
    """Remove the tenant's runbook; a built-in one it overrode comes back."""
    with api_client(url, key) as client:
        client.delete_runbook(runbook_id)
    out.print(f"runbook {runbook_id} removed", highlight=False)
