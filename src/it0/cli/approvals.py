"""``it0 approvals``: see exactly what a request would run and vote on it, as a person."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from it0.cli._common import JsonOut, out
from it0.cli._remote import (
    DEFAULT_URL,
    RISK_STYLE,
    STATUS_STYLE,
    ApiKey,
    Comment,
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

approvals_app = typer.Typer(
    help="Approval requests: see what would run, vote.", no_args_is_help=True
)


@approvals_app.command("list")
def approvals_list(
    every: Annotated[bool, typer.Option("--all", help="decided ones too")] = False,
    as_json: JsonOut = False,
    url: ServerUrl = DEFAULT_URL,
    key: ApiKey = None,
) -> None:
    """Approval requests waiting for a vote (all of them with --all)."""
    with api_client(url, key) as client:
        approvals = client.approvals(None if every else "pending")
    if as_json:
        print_json(approvals)
        return
    columns = ["id", "risk", "approvals", "requested by", "targets", "command", "expires"]
    table = list_table(*columns, *(["status"] if every else []))
    for approval in approvals:
        table.add_row(
            short_id(approval["id"]),
            styled(approval["risk"], RISK_STYLE),
            f"{approval['approvals']}/{approval['required']}",
            Text(str(approval["requested_by"].get("name", ""))),
            Text(one_line(approval["targets"], 30)),
            Text(command_of(approval["steps"], 40)),
            when(approval["expires_at"], relative=True),
            *([styled(approval["status"], STATUS_STYLE)] if every else []),
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
    with api_client(url, key) as client:
        approval = client.approval(ref)
    if as_json:
        print_json(approval)
        return
    print_fields(
        [
            ("approval", str(approval["id"])),
            ("status", styled(approval["status"], STATUS_STYLE)),
            ("risk", styled(approval["risk"], RISK_STYLE)),
            ("approvals", f"{approval['approvals']} of {approval['required']}"),
            ("task", str(approval["task_id"])),
            ("requested by", approval["requested_by"].get("name")),
            ("reason", approval["reason"]),
            ("targets", approval["targets"]),
            ("hosts", ", ".join(approval["servers"])),
            ("sudo", "yes" if approval.get("sudo") else ""),
            ("expires", when(approval["expires_at"])),
            ("payload", approval["payload_hash"]),
        ]
    )
    explain_risk(approval["steps"], approval.get("verdicts") or [])
    if approval["votes"]:
        table = Table("voter", "decision", "comment", "via", "at")
        for vote in approval["votes"]:
            table.add_row(
                Text(vote["voter"]),
                styled(vote["decision"], {"approve": "green"}),
                Text(vote["comment"]),
                vote["via"],
                when(vote["created_at"]),
            )
        out.print(table)


def _voted(approval: dict[str, Any]) -> None:
    status = approval["status"]
    line = Text(f"approval {short_id(approval['id'])}: ").append_text(styled(status, STATUS_STYLE))
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
    with api_client(url, key) as client:
        _voted(client.approve(ref, comment))


@approvals_app.command("reject")
def approvals_reject(
    ref: Annotated[str, typer.Argument(metavar="ID")],
    comment: Comment = "",
    url: ServerUrl = DEFAULT_URL,
    key: ApiKey = None,
) -> None:
    """Reject: one rejection ends the request."""
    with api_client(url, key) as client:
        _voted(client.reject(ref, comment))
