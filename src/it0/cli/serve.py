"""``it0 serve`` and ``it0 migrate``."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from it0.cli._common import DataDir, err, out, run, settings_for
from it0.core.settings import ALL_ROLES, Role


def serve(
    host: Annotated[str | None, typer.Option(help="bind address (default 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default 8000)")] = None,
    data_dir: DataDir = None,
    roles: Annotated[
        str, typer.Option(help="comma-separated: api,worker,scheduler,voice")
    ] = ",".join(ALL_ROLES),
    migrate: Annotated[bool, typer.Option(help="apply migrations and bootstrap first")] = True,
) -> None:
    """Start the platform (every role in one process by default)."""
    import uvicorn

    from it0.app import create_app
    from it0.auth.bootstrap import bootstrap_with_cli_key
    from it0.core.logging import configure_logging

    settings = settings_for(data_dir)
    update: dict[str, Any] = {}
    if host:
        update["host"] = host
    if port:
        update["port"] = port
    settings = settings.model_copy(update=update)
    chosen = [r.strip() for r in roles.split(",") if r.strip()]
    unknown = [r for r in chosen if r not in ALL_ROLES]
    if unknown or not chosen:
        err.print(
            f"[red]error:[/red] unknown role(s) {unknown}; choose from {', '.join(ALL_ROLES)}"
        )
        raise typer.Exit(2)
    configure_logging(settings.log_level, settings.log_json)
    if migrate:
        result = run(bootstrap_with_cli_key, settings.data_dir)
        if result.admin_password:
            err.print(
                "\n[bold green]IT0 is set up.[/bold green] Tenant [bold]default[/bold], "
                f"user [bold]admin[/bold], password: [bold yellow]{result.admin_password}"
                "[/bold yellow]\n"
                "This password is shown once; change it with `it0 user passwd admin`.\n"
                "The CLI on this machine uses the admin's key in "
                f'{settings.data_dir / "cli.key"}: try `it0 ask "disk is full on localhost"`.\n',
                highlight=False,
            )
    typed_roles: list[Role] = [r for r in ALL_ROLES if r in chosen]
    application = create_app(settings, typed_roles)
    uvicorn.run(
        application,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        proxy_headers=False,
        ws="websockets-sansio",
    )


def migrate(data_dir: DataDir = None) -> None:
    """Apply migrations to the platform schema and every tenant schema."""
    from it0.core.migrate import upgrade_all

    async def work(p: Any) -> list[str]:
        return await upgrade_all(p.db)

    schemas = run(work, data_dir)
    out.print(f"migrated platform schema and {len(schemas)} tenant schema(s)")
