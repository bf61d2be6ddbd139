"""What every command shares: consoles, common options, running work against the database."""

from __future__ import annotations

import asyncio
import getpass
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import httpx
import typer
from rich.console import Console
from rich.table import Table

from it0.core.settings import Settings

T = TypeVar("T")

out = Console()
err = Console(stderr=True)

DataDir = Annotated[Path | None, typer.Option("--data-dir", help="data directory (IT0_DATA_DIR)")]
TenantOpt = Annotated[str, typer.Option("--tenant", "-t", help="tenant slug")]
Url = Annotated[str | None, typer.Option("--url", envvar="IT0_URL", help="a running server")]
Key = Annotated[str | None, typer.Option("--key", envvar="IT0_API_KEY", help="API key for --url")]
JsonOut = Annotated[bool, typer.Option("--json", help="print JSON")]


def settings_for(data_dir: Path | None = None) -> Settings:
    """The settings from the environment; an invalid one is one line per error and exit 2."""
    from pydantic import ValidationError

    try:
        settings = Settings()
    except ValidationError as exc:
        for error in exc.errors():
            name = "IT0_" + "_".join(str(part) for part in error["loc"]).upper()
            message = str(error["msg"]).removeprefix("Value error, ").removeprefix(f"{name} ")
            err.print(f"[red]error:[/red] {name}: {message}", soft_wrap=True, highlight=False)
        raise typer.Exit(2) from None
    if data_dir is not None:
        settings = settings.model_copy(update={"data_dir": data_dir})
    return settings


def run(work: Callable[[Any], Awaitable[T]], data_dir: Path | None = None) -> T:
    """Run ``work(platform)`` against the configured database, closing it afterwards."""
    from it0.audit import install_audit_guard
    from it0.core.errors import IT0Error
    from it0.platform import Platform

    install_audit_guard()

    async def main() -> T:
        platform = Platform.create(settings_for(data_dir))
        try:
            return await work(platform)
        finally:
            await platform.close()

    try:
        return asyncio.run(main())
    except IT0Error as exc:
        err.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(2) from None


def cli_actor() -> Any:
    from it0.audit import Actor, AuditContext

    return AuditContext(Actor.system(f"cli:{getpass.getuser()}"))


def remote(url: str, key: str | None, method: str, path: str, **kwargs: Any) -> Any:
    if not key:
        err.print("[red]error:[/red] --url needs an API key (--key or IT0_API_KEY)")
        raise typer.Exit(2)
    try:
        response = httpx.request(
            method,
            url.rstrip("/") + path,
            timeout=30,
            headers={"Authorization": f"Bearer {key}"},
            **kwargs,
        )
    except httpx.HTTPError as exc:
        err.print(f"[red]error:[/red] cannot reach {url}: {exc}")
        raise typer.Exit(2) from None
    if response.status_code >= 400:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:200]
        err.print(f"[red]error {response.status_code}:[/red] {message}")
        raise typer.Exit(2)
    return response.json() if response.content else None


def print_rows(rows: list[dict[str, Any]], columns: list[str], as_json: bool) -> None:
    if as_json:
        out.print_json(json.dumps(rows, default=str))
        return
    table = Table(*columns)
    for row in rows:
        table.add_row(*("" if row.get(c) is None else str(row.get(c)) for c in columns))
    out.print(table)


async def tenant_ref(p: Any, slug: str) -> Any:
    from it0.auth.tokens import find_tenant

    async with p.db.session() as session:
        return await find_tenant(session, slug)


def new_password(prompt: bool) -> str:
    if not prompt:
        import secrets

        return secrets.token_urlsafe(15)
    first = typer.prompt("password", hide_input=True)
    if typer.prompt("repeat", hide_input=True) != first:
        err.print("[red]error:[/red] passwords differ")
        raise typer.Exit(2)
    if len(first) < 10:
        err.print("[red]error:[/red] a password needs at least 10 characters")
        raise typer.Exit(2)
    return str(first)
