"""``it0 orders``: standing orders, work pre-authorized within a scope, through a running server."""

from __future__ import annotations

import json
from pathlib import Path
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
    list_table,
    one_line,
    print_fields,
    print_json,
    read_mapping,
    styled,
    when,
)

orders_app = typer.Typer(
    help="Standing orders: pre-authorized work within a scope.", no_args_is_help=True
)

OrderRef = Annotated[str, typer.Argument(metavar="REF", help="number, id or name")]
OrderFile = Annotated[
    Path, typer.Option("--file", "-f", exists=True, dir_okay=False, help="YAML or JSON")
]


def _trigger(order: dict[str, Any]) -> str:
    trigger = order.get("trigger") or {}
    if trigger.get("type") == "cron":
        return f"cron {trigger['cron']} {trigger.get('timezone', '')}".strip()
    if trigger.get("type") == "event":
        return f"event {trigger['topic']}"
    return ""


def _order_line(order: dict[str, Any]) -> None:
    line = Text(f"standing order #{order['number']} {order['name']}: ")
    line.append_text(styled(order["status"], STATUS_STYLE))
    if order.get("status_reason"):
        line.append(f" ({order['status_reason']})")
    out.print(line, soft_wrap=True)


def _order_file(path: Path) -> dict[str, Any]:
    return read_mapping(path, "one standing order (a mapping)")


@orders_app.command("list")
def orders_list(
    status: Annotated[str | None, typer.Option(help="e.g. active, pending_approval")] = None,
    as_json: JsonOut = False,
    url: ServerUrl = DEFAULT_URL,
    key: ApiKey = None,
) -> None:
    """Standing orders by number."""
    with api_client(url, key) as client:
        orders = client.orders(status)
    if as_json:
        print_json(orders)
        return
    table = list_table("#", "name", "status", "owner", "targets", "max risk", "trigger", "expires")
    for order in orders:
        table.add_row(
            str(order["number"]),
            Text(order["name"]),
            styled(order["status"], STATUS_STYLE),
            Text(order["owner"]),
            Text(one_line(order["scope"].get("targets", ""), 30)),
            styled(order["scope"].get("max_risk"), RISK_STYLE),
            Text(_trigger(order)),
            when(order["expires_at"], relative=True),
        )
    out.print(table)


@orders_app.command("show")
def orders_show(
    ref: OrderRef, as_json: JsonOut = False, url: ServerUrl = DEFAULT_URL, key: ApiKey = None
) -> None:
    """A standing order: its scope, trigger, limits and state."""
    with api_client(url, key) as client:
        order = client.order(ref)
    if as_json:
        print_json(order)
        return
    action = order.get("action") or {}
    limit = order["rate_limit"]
    print_fields(
        [
            ("order", f"#{order['number']} {order['name']} (version {order['version']})"),
            ("id", str(order["id"])),
            ("status", styled(order["status"], STATUS_STYLE)),
            ("why", order.get("status_reason")),
            ("description", order["description"]),
            ("owner", order["owner"]),
            ("approved by", order.get("approved_by")),
            ("targets", order["scope"].get("targets")),
            ("max risk", styled(order["scope"].get("max_risk"), RISK_STYLE)),
            ("trigger", _trigger(order)),
            ("action", json.dumps(action) if action else ""),
            ("rate limit", f"{limit.get('max_runs')} runs / {limit.get('window_seconds')}s"),
            ("expires", when(order["expires_at"])),
            ("next run", when(order.get("next_run_at"))),
            ("last run", when(order.get("last_run_at"))),
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
    with api_client(url, key) as client:
        order = client.create_order(body)
    if as_json:
        print_json(order)
        return
    _order_line(order)
    out.print(f"  approve with: it0 orders approve {order['number']}", highlight=False)


@orders_app.command("update")
def orders_update(
    ref: OrderRef, file: OrderFile, url: ServerUrl = DEFAULT_URL, key: ApiKey = None
) -> None:
    """Change an order from a file of fields; it stops until approved again."""
    changes = _order_file(file)
    with api_client(url, key) as client:
        _order_line(client.update_order(ref, changes))


def _decide(action: str, ref: str, comment: str, url: str, key: str | None) -> None:
    with api_client(url, key) as client:
        _order_line(client.decide_order(ref, action, comment))


@orders_app.command("approve")
def orders_approve(
    ref: OrderRef,
    comment: Comment = "",
    version: Annotated[
        int | None,
        typer.Option(help="the version you reviewed (default: the one shown now)", min=1),
    ] = None,
    url: ServerUrl = DEFAULT_URL,
    key: ApiKey = None,
) -> None:
    """Approve a proposed (or changed, or resumed) order; never your own or your edit.

    The server approves exactly one version: a newer one than reviewed is refused.
    """
    with api_client(url, key) as client:
        if version is None:
            order = client.order(ref)
            version = int(order["version"])
            out.print(
                f"approving standing order #{order['number']} {order['name']} version {version}",
                highlight=False,
            )
        _order_line(client.decide_order(ref, "approve", comment, version))


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
