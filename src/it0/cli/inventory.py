"""``it0 servers`` and ``it0 clusters``: the inventory, directly against the database."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from pydantic import BaseModel, ValidationError

from it0.cli._common import DataDir, JsonOut, TenantOpt, cli_actor, err, out, print_rows, run
from it0.cli._common import tenant_ref as find_tenant

if TYPE_CHECKING:
    from it0.inventory.service import TenantRecorder
    from it0.platform import Platform

servers_app = typer.Typer(
    help="Servers: add, list, show, edit, remove, import, facts, host keys.",
    no_args_is_help=True,
)
clusters_app = typer.Typer(
    help="Clusters: named groups of servers with labels of their own.", no_args_is_help=True
)

T = TypeVar("T")
B = TypeVar("B", bound=BaseModel)

Labels = Annotated[list[str] | None, typer.Option("--label", "-l", help="key=value (repeatable)")]
RemoveLabels = Annotated[
    list[str] | None, typer.Option("--remove-label", help="label key to remove (repeatable)")
]
Selector = Annotated[
    str | None,
    typer.Option("--selector", "-s", help="e.g. 'env=prod,role in (web,api)' or 'web-1,web-2'"),
]
SERVER_COLUMNS = ["name", "address", "port", "kind", "environment", "cluster", "labels", "status"]
CLUSTER_COLUMNS = ["name", "description", "labels", "servers"]


def _labels(pairs: list[str] | None) -> dict[str, str]:
    labels: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            err.print(f"[red]error:[/red] --label wants key=value, not {pair!r}")
            raise typer.Exit(2)
        labels[key] = value
    return labels


def _body(model: type[B], values: dict[str, Any]) -> B:
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "value"
        err.print(f"[red]error:[/red] invalid {where}: {first.get('msg', 'invalid')}")
        raise typer.Exit(2) from None


def _in_tenant(
    tenant: str,
    data_dir: Path | None,
    work: Callable[[TenantRecorder], Awaitable[T]],
    *,
    write: bool = True,
) -> T:
    """Run ``work`` in one transaction of the tenant, audited as the CLI's user."""

    async def main(p: Platform) -> T:
        async with _recorder(p, tenant, write) as audit:
            return await work(audit)

    return run(main, data_dir)


@asynccontextmanager
async def _recorder(p: Platform, tenant: str, write: bool) -> AsyncIterator[TenantRecorder]:
    from it0.inventory.service import TenantRecorder

    ref = await find_tenant(p, tenant)
    async with p.db.session(ref.schema, write=write) as session:
        yield TenantRecorder(p, session, ref.pair, cli_actor())


def _selector(text: str | None) -> Any:
    """The parsed selector, or exit 2 naming where it went wrong (before any database work)."""
    from it0.inventory.errors import SelectorError
    from it0.inventory.selectors import parse_selector

    try:
        return parse_selector(text or "")
    except SelectorError as exc:
        err.print(f"[red]error:[/red] {exc.message}", highlight=False)
        if text:
            err.print(f"  {text}\n  {' ' * exc.position}^", highlight=False, markup=False)
        raise typer.Exit(2) from None


def _row(item: BaseModel) -> dict[str, Any]:
    row = item.model_dump(mode="json")
    row["labels"] = ",".join(f"{k}={v}" for k, v in sorted(row["labels"].items()))
    return row


def _show(item: BaseModel, as_json: bool) -> None:
    if as_json:
        out.print_json(item.model_dump_json())
        return
    for key, value in item.model_dump(mode="json").items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in sorted(value.items())) or "-"
        out.print(f"[bold]{key}[/bold]: {'-' if value is None else value}", highlight=False)


# --- servers --------------------------------------------------------------------------------


@servers_app.command("add")
def server_add(
    name: str,
    address: Annotated[str | None, typer.Option(help="host name or IP (local: 127.0.0.1)")] = None,
    port: Annotated[int, typer.Option(help="SSH port")] = 22,
    user: Annotated[str | None, typer.Option(help="SSH user")] = None,
    env: Annotated[str, typer.Option(help="prod, staging, dev or your own")] = "dev",
    label: Labels = None,
    cluster: Annotated[str | None, typer.Option(help="cluster name")] = None,
    credential: Annotated[str | None, typer.Option(help="vault credential name")] = None,
    kind: Annotated[str, typer.Option(help="ssh, or local for this host itself")] = "ssh",
    tenant: TenantOpt = "default",
    data_dir: DataDir = None,
) -> None:
    """Add a server."""
    from it0.inventory import service
    from it0.inventory.schemas import ServerCreate

    values: dict[str, Any] = {
        "name": name,
        "address": address,
        "port": port,
        "username": user,
        "environment": env,
        "labels": _labels(label),
        "cluster": cluster,
        "kind": kind,
    }
    _body(ServerCreate, values)

    async def work(audit: TenantRecorder) -> None:
        if credential is not None:
            values["credential_id"] = await service.credential_by_name(audit.session, credential)
        await service.create_server(audit, ServerCreate.model_validate(values))

    _in_tenant(tenant, data_dir, work)
    out.print(f"added server [bold]{name}[/bold]")


@servers_app.command("list")
def server_list(
    selector: Selector = None,
    tenant: TenantOpt = "default",
    data_dir: DataDir = None,
    as_json: JsonOut = False,
) -> None:
    """List servers, all or those a selector picks."""
    from it0.inventory import service
    from it0.inventory.selectors import resolve

    parsed = _selector(selector)

    async def work(audit: TenantRecorder) -> list[dict[str, Any]]:
        servers = await service.servers_public(audit.session, await resolve(audit.session, parsed))
        return [s.model_dump(mode="json") if as_json else _row(s) for s in servers]

    print_rows(_in_tenant(tenant, data_dir, work, write=False), SERVER_COLUMNS, as_json)


@servers_app.command("show")
def server_show(
    name: str, tenant: TenantOpt = "default", data_dir: DataDir = None, as_json: JsonOut = False
) -> None:
    """Show one server (by name or id)."""
    from it0.inventory import service

    async def work(audit: TenantRecorder) -> BaseModel:
        server = await service.find_server(audit.session, name)
        return (await service.servers_public(audit.session, [server]))[0]

    _show(_in_tenant(tenant, data_dir, work, write=False), as_json)


@servers_app.command("edit")
def server_edit(
    name: str,
    rename: Annotated[str | None, typer.Option(help="new name")] = None,
    address: Annotated[str | None, typer.Option()] = None,
    port: Annotated[int | None, typer.Option()] = None,
    user: Annotated[str | None, typer.Option(help="SSH user")] = None,
    env: Annotated[str | None, typer.Option()] = None,
    kind: Annotated[str | None, typer.Option(help="ssh or local")] = None,
    label: Labels = None,
    remove_label: RemoveLabels = None,
    cluster: Annotated[str | None, typer.Option(help="move to this cluster")] = None,
    no_cluster: Annotated[
        bool, typer.Option("--no-cluster", help="take out of its cluster")
    ] = False,
    credential: Annotated[str | None, typer.Option(help="vault credential name")] = None,
    no_credential: Annotated[bool, typer.Option("--no-credential")] = False,
    tenant: TenantOpt = "default",
    data_dir: DataDir = None,
) -> None:
    """Change a server; only the options given change."""
    from it0.inventory import service
    from it0.inventory.schemas import ServerUpdate

    values: dict[str, Any] = {
        k: v
        for k, v in {
            "name": rename,
            "address": address,
            "port": port,
            "username": user,
            "environment": env,
            "kind": kind,
            "cluster": cluster,
        }.items()
        if v is not None
    }
    patch: dict[str, str | None] = {**_labels(label), **dict.fromkeys(remove_label or [])}
    if patch:
        values["labels"] = patch
    if no_cluster:
        values["cluster"] = None
    if no_credential:
        values["credential_id"] = None
    _body(ServerUpdate, values)

    async def work(audit: TenantRecorder) -> None:
        server = await service.find_server(audit.session, name)
        if credential is not None:
            values["credential_id"] = await service.credential_by_name(audit.session, credential)
        await service.update_server(audit, server, ServerUpdate.model_validate(values))

    _in_tenant(tenant, data_dir, work)
    out.print(f"updated server [bold]{rename or name}[/bold]")


@servers_app.command("rm")
def server_rm(name: str, tenant: TenantOpt = "default", data_dir: DataDir = None) -> None:
    """Remove a server (by name or id)."""
    from it0.inventory import service

    async def work(audit: TenantRecorder) -> None:
        await service.delete_server(audit, await service.find_server(audit.session, name))

    _in_tenant(tenant, data_dir, work)
    out.print(f"removed server [bold]{name}[/bold]")


@servers_app.command("import")
def server_import(
    file: Annotated[Path, typer.Argument(help="Ansible inventory: .ini (or none) or .yml")],
    tenant: TenantOpt = "default",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="show what would change")] = False,
    data_dir: DataDir = None,
    as_json: JsonOut = False,
) -> None:
    """Create or update servers from an Ansible inventory; running it again changes nothing."""
    import dataclasses
    import json

    from it0.core.errors import IT0Error
    from it0.inventory.importer import ImportReport, import_inventory, parse_inventory

    try:
        hosts = parse_inventory(file.read_text(encoding="utf-8"), file.name)
    except (OSError, UnicodeDecodeError) as exc:
        err.print(f"[red]error:[/red] cannot read {file}: {exc}")
        raise typer.Exit(2) from None
    except IT0Error as exc:
        err.print(f"[red]error:[/red] {file}: {exc.message}")
        raise typer.Exit(2) from None

    async def work(audit: TenantRecorder) -> ImportReport:
        return await import_inventory(audit, hosts, dry_run=dry_run, source=file.name)

    report = _in_tenant(tenant, data_dir, work, write=not dry_run)
    if as_json:
        out.print_json(json.dumps(dataclasses.asdict(report)))
        return
    for warning in report.warnings:
        err.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)
    prefix = "would be " if dry_run else ""
    for what, names in (
        ("created", report.created),
        ("updated", report.updated),
        ("unchanged", report.unchanged),
    ):
        out.print(f"{prefix}{what} ({len(names)}): {', '.join(names) or '-'}", highlight=False)
    if report.clusters_created:
        out.print(f"clusters {prefix}created: {', '.join(report.clusters_created)}")
    for name, why in report.skipped.items():
        out.print(f"skipped {name}: {why}", highlight=False)


# --- facts and host keys -------------------------------------------------------------------


@servers_app.command("facts")
def server_facts(
    name: str, tenant: TenantOpt = "default", data_dir: DataDir = None, as_json: JsonOut = False
) -> None:
    """Gather a server's facts now (fixed read-only commands) and show them."""
    import json

    from it0.inventory.facts import gather_server_facts

    async def main(p: Platform) -> dict[str, Any]:
        ref = await find_tenant(p, tenant)
        server = await gather_server_facts(p, ref, name, cli_actor())
        return {"name": server.name, "status": server.status, "facts": server.facts}

    gathered = run(main, data_dir)
    if as_json:
        out.print_json(json.dumps(gathered, default=str))
        return
    _print_facts(gathered["name"], gathered["status"], gathered["facts"])


def _print_facts(name: str, status: str, facts: dict[str, Any]) -> None:
    from rich.table import Table

    os_release = facts.get("os") or {}
    memory, available = facts.get("memory_total_bytes"), facts.get("memory_available_bytes")
    rows = {
        "server": f"{name} ({status})",
        "OS": os_release.get("pretty_name") or os_release.get("name") or "-",
        "kernel": f"{facts.get('kernel') or '-'} ({facts.get('arch') or '-'})",
        "hostname": facts.get("hostname") or "-",
        "CPUs": facts.get("cpu_count") or "-",
        "memory": f"{_size(memory)} total, {_size(available)} available",
        "uptime": _duration(facts.get("uptime_seconds")),
    }
    for key, value in rows.items():
        out.print(f"[bold]{key}[/bold]: {value}", highlight=False)
    disks = Table("mountpoint", "filesystem", "type", "size", "used", "free")
    for disk in facts.get("disks") or []:
        disks.add_row(
            disk["mountpoint"],
            disk["filesystem"],
            disk["type"],
            _size(disk["size_bytes"]),
            _size(disk["used_bytes"]),
            _size(disk["available_bytes"]),
        )
    out.print(disks)


def _size(value: int | None) -> str:
    if value is None:
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return "-"  # pragma: no cover


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes = int(seconds) // 60
    days, hours, mins = minutes // 1440, minutes // 60 % 24, minutes % 60
    return f"{days}d {hours}h {mins}m"


@servers_app.command("trust")
def server_trust(
    name: str,
    key: Annotated[
        str | None, typer.Option("--key", help='pin this key ("ssh-ed25519 AAAA...")')
    ] = None,
    tenant: TenantOpt = "default",
    data_dir: DataDir = None,
) -> None:
    """Trust a server's pending (refused) host key, or pin the --key given."""
    from it0.inventory import reach, service

    async def work(audit: TenantRecorder) -> tuple[str | None, str | None]:
        server = await service.find_server(audit.session, name)
        old = reach.key_fingerprint(server.host_key)
        return old, reach.key_fingerprint(await reach.trust_host_key(audit, server, key))

    old, new = _in_tenant(tenant, data_dir, work)
    out.print(f"trusted host key of [bold]{name}[/bold]: {new} (was {old or 'none'})")


@servers_app.command("known-hosts")
def server_known_hosts(
    file: Annotated[Path, typer.Argument(help="an OpenSSH known_hosts file")],
    tenant: TenantOpt = "default",
    data_dir: DataDir = None,
    as_json: JsonOut = False,
) -> None:
    """Pin host keys from a known_hosts file for servers whose address or name matches."""
    import dataclasses
    import json

    from it0.inventory.reach import KnownHostsReport, import_known_hosts

    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        err.print(f"[red]error:[/red] cannot read {file}: {exc}")
        raise typer.Exit(2) from None

    async def work(audit: TenantRecorder) -> KnownHostsReport:
        return await import_known_hosts(audit, text, source=file.name)

    report = _in_tenant(tenant, data_dir, work)
    if as_json:
        out.print_json(json.dumps(dataclasses.asdict(report)))
        return
    for what, names in (("pinned", report.pinned), ("unchanged", report.unchanged)):
        out.print(f"{what} ({len(names)}): {', '.join(names) or '-'}", highlight=False)
    out.print(f"conflicts ({len(report.conflicts)}): {', '.join(report.conflicts) or '-'}")
    for name, why in report.conflicts.items():
        err.print(f"[yellow]conflict:[/yellow] {name}: {why} (not changed)", highlight=False)
    if report.skipped_lines:
        out.print(f"skipped lines: {report.skipped_lines}")


@servers_app.command("require-approved-keys")
def server_require_approved_keys(
    state: Annotated[str, typer.Argument(help="on: no trust on first use; off: TOFU")],
    tenant: TenantOpt = "default",
    data_dir: DataDir = None,
) -> None:
    """Require pre-approved host keys (on) or trust a server's first key (off)."""
    from it0.inventory.reach import set_require_approved_keys

    if state not in ("on", "off"):
        err.print("[red]error:[/red] say on or off")
        raise typer.Exit(2)

    async def work(audit: TenantRecorder) -> bool:
        return await set_require_approved_keys(audit, state == "on")

    on = _in_tenant(tenant, data_dir, work)
    out.print(f"approved host keys required: {'on' if on else 'off'}")


# --- clusters -------------------------------------------------------------------------------


@clusters_app.command("add")
def cluster_add(
    name: str,
    description: Annotated[str, typer.Option()] = "",
    label: Labels = None,
    tenant: TenantOpt = "default",
    data_dir: DataDir = None,
) -> None:
    """Add a cluster; its servers inherit its labels."""
    from it0.inventory import service
    from it0.inventory.schemas import ClusterCreate

    body = _body(
        ClusterCreate, {"name": name, "description": description, "labels": _labels(label)}
    )

    async def work(audit: TenantRecorder) -> None:
        await service.create_cluster(audit, body)

    _in_tenant(tenant, data_dir, work)
    out.print(f"added cluster [bold]{name}[/bold]")


@clusters_app.command("list")
def cluster_list(
    selector: Selector = None,
    tenant: TenantOpt = "default",
    data_dir: DataDir = None,
    as_json: JsonOut = False,
) -> None:
    """List clusters (a selector matches their name and labels)."""
    from it0.inventory import service

    parsed = _selector(selector)

    async def work(audit: TenantRecorder) -> list[dict[str, Any]]:
        clusters, _ = await service.list_clusters(audit.session, parsed)
        public = await service.clusters_public(audit.session, clusters)
        return [c.model_dump(mode="json") if as_json else _row(c) for c in public]

    print_rows(_in_tenant(tenant, data_dir, work, write=False), CLUSTER_COLUMNS, as_json)


@clusters_app.command("show")
def cluster_show(
    name: str, tenant: TenantOpt = "default", data_dir: DataDir = None, as_json: JsonOut = False
) -> None:
    """Show one cluster (by name or id)."""
    from it0.inventory import service

    async def work(audit: TenantRecorder) -> BaseModel:
        cluster = await service.find_cluster(audit.session, name)
        return (await service.clusters_public(audit.session, [cluster]))[0]

    _show(_in_tenant(tenant, data_dir, work, write=False), as_json)


@clusters_app.command("edit")
def cluster_edit(
    name: str,
    rename: Annotated[str | None, typer.Option(help="new name")] = None,
    description: Annotated[str | None, typer.Option()] = None,
    label: Labels = None,
    remove_label: RemoveLabels = None,
    tenant: TenantOpt = "default",
    data_dir: DataDir = None,
) -> None:
    """Change a cluster; only the options given change."""
    from it0.inventory import service
    from it0.inventory.schemas import ClusterUpdate

    values: dict[str, Any] = {
        k: v for k, v in {"name": rename, "description": description}.items() if v is not None
    }
    patch: dict[str, str | None] = {**_labels(label), **dict.fromkeys(remove_label or [])}
    if patch:
        values["labels"] = patch
    body = _body(ClusterUpdate, values)

    async def work(audit: TenantRecorder) -> None:
        await service.update_cluster(audit, await service.find_cluster(audit.session, name), body)

    _in_tenant(tenant, data_dir, work)
    out.print(f"updated cluster [bold]{rename or name}[/bold]")


@clusters_app.command("rm")
def cluster_rm(
    name: str,
    force: Annotated[bool, typer.Option(help="detach its servers and remove anyway")] = False,
    tenant: TenantOpt = "default",
    data_dir: DataDir = None,
) -> None:
    """Remove a cluster; one that still has servers only with --force."""
    from it0.inventory import service

    async def work(audit: TenantRecorder) -> int:
        cluster = await service.find_cluster(audit.session, name)
        return await service.delete_cluster(audit, cluster, force=force)

    detached = _in_tenant(tenant, data_dir, work)
    note = f" ({detached} server(s) detached)" if detached else ""
    out.print(f"removed cluster [bold]{name}[/bold]{note}")
