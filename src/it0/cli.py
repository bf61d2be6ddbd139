"""The ``it0`` command.

Data commands (tenant, user, apikey, audit) work directly against the configured database
(``IT0_DATA_DIR`` / ``IT0_DATABASE_URL``), which is how a fresh install is bootstrapped and
administered on the machine that runs it. Given ``--url`` (or ``IT0_URL``) and an API key
(``--key`` / ``IT0_API_KEY``) they talk to a running server over its API instead.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, TypeVar

import httpx
import typer
from rich.console import Console
from rich.table import Table

from it0.bench import app as bench_app
from it0.core.settings import ALL_ROLES, Role, Settings

T = TypeVar("T")
app = typer.Typer(help="IT0: AI-powered operations for server clusters.", no_args_is_help=True)
tenant_app = typer.Typer(help="Tenants (platform administrators).", no_args_is_help=True)
user_app = typer.Typer(help="Users and their roles in a tenant.", no_args_is_help=True)
apikey_app = typer.Typer(help="API keys.", no_args_is_help=True)
audit_app = typer.Typer(help="The audit trail: verify, export.", no_args_is_help=True)
checkpoint_app = typer.Typer(help="Signed audit checkpoints.", no_args_is_help=True)
app.add_typer(tenant_app, name="tenant")
app.add_typer(user_app, name="user")
app.add_typer(apikey_app, name="apikey")
app.add_typer(audit_app, name="audit")
audit_app.add_typer(checkpoint_app, name="checkpoint")
app.add_typer(bench_app, name="bench")

out = Console()
err = Console(stderr=True)

DataDir = Annotated[Path | None, typer.Option("--data-dir", help="data directory (IT0_DATA_DIR)")]
TenantOpt = Annotated[str, typer.Option("--tenant", "-t", help="tenant slug")]
Url = Annotated[str | None, typer.Option("--url", envvar="IT0_URL", help="a running server")]
Key = Annotated[str | None, typer.Option("--key", envvar="IT0_API_KEY", help="API key for --url")]
JsonOut = Annotated[bool, typer.Option("--json", help="print JSON")]


def _settings(data_dir: Path | None = None) -> Settings:
    settings = Settings()
    if data_dir is not None:
        settings = settings.model_copy(update={"data_dir": data_dir})
    return settings


def _run(work: Callable[[Any], Awaitable[T]], data_dir: Path | None = None) -> T:
    """Run ``work(platform)`` against the configured database, closing it afterwards."""
    from it0.audit import install_audit_guard
    from it0.core.errors import IT0Error
    from it0.platform import Platform

    install_audit_guard()

    async def main() -> T:
        platform = Platform.create(_settings(data_dir))
        try:
            return await work(platform)
        finally:
            await platform.close()

    try:
        return asyncio.run(main())
    except IT0Error as exc:
        err.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(2) from None


def _cli_actor() -> Any:
    from it0.audit import Actor, AuditContext

    return AuditContext(Actor.system(f"cli:{getpass.getuser()}"))


def _remote(url: str, key: str | None, method: str, path: str, **kwargs: Any) -> Any:
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


def _table(rows: list[dict[str, Any]], columns: list[str], as_json: bool) -> None:
    if as_json:
        out.print_json(json.dumps(rows, default=str))
        return
    table = Table(*columns)
    for row in rows:
        table.add_row(*("" if row.get(c) is None else str(row.get(c)) for c in columns))
    out.print(table)


# --- serve and migrate ---------------------------------------------------------------------


@app.command()
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
    from it0.auth.bootstrap import bootstrap
    from it0.core.logging import configure_logging

    settings = _settings(data_dir)
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
        result = _run(bootstrap, settings.data_dir)
        if result.admin_password:
            err.print(
                "\n[bold green]IT0 is set up.[/bold green] Tenant [bold]default[/bold], "
                f"user [bold]admin[/bold], password: [bold yellow]{result.admin_password}"
                "[/bold yellow]\n"
                "This password is shown once; change it with `it0 user passwd admin`.\n",
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
    )


@app.command()
def migrate(data_dir: DataDir = None) -> None:
    """Apply migrations to the platform schema and every tenant schema."""
    from it0.core.migrate import upgrade_all

    async def work(p: Any) -> list[str]:
        return await upgrade_all(p.db)

    schemas = _run(work, data_dir)
    out.print(f"migrated platform schema and {len(schemas)} tenant schema(s)")


# --- tenants -------------------------------------------------------------------------------


@tenant_app.command("create")
def tenant_create(
    slug: str,
    name: Annotated[str, typer.Option(help="display name")] = "",
    owner: Annotated[str | None, typer.Option(help="username to make owner")] = None,
    data_dir: DataDir = None,
    url: Url = None,
    key: Key = None,
) -> None:
    """Create a tenant and its schema."""
    if url:
        body = _remote(url, key, "POST", "/api/v1/tenants", json={"slug": slug, "name": name})
        out.print(f"created tenant [bold]{body['slug']}[/bold]")
        return
    from sqlalchemy import select

    from it0.auth.models import User
    from it0.auth.service import create_tenant

    async def work(p: Any) -> Any:
        owner_id = None
        if owner:
            async with p.db.session() as session:
                owner_id = await session.scalar(select(User.id).where(User.username == owner))
            if owner_id is None:
                err.print(f"[red]error:[/red] no user {owner!r}")
                raise typer.Exit(2)
        return await create_tenant(p, slug, name, _cli_actor(), owner_id=owner_id)

    tenant = _run(work, data_dir)
    out.print(f"created tenant [bold]{tenant.slug}[/bold] (schema {tenant.schema_name})")


@tenant_app.command("list")
def tenant_list(
    data_dir: DataDir = None, url: Url = None, key: Key = None, as_json: JsonOut = False
) -> None:
    """List tenants."""
    if url:
        rows = _remote(url, key, "GET", "/api/v1/tenants")
    else:
        from it0.auth.service import list_tenants

        async def work(p: Any) -> list[dict[str, Any]]:
            return [
                {"slug": t.slug, "name": t.name, "created_at": t.created_at}
                for t in await list_tenants(p)
            ]

        rows = _run(work, data_dir)
    _table(rows, ["slug", "name", "created_at"], as_json)


# --- users ---------------------------------------------------------------------------------


async def _tenant_ref(p: Any, slug: str) -> Any:
    from it0.auth.tokens import find_tenant

    async with p.db.session() as session:
        return await find_tenant(session, slug)


def _new_password(prompt: bool) -> str:
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


@user_app.command("add")
def user_add(
    username: str,
    tenant: TenantOpt = "default",
    role: Annotated[
        str, typer.Option(help="owner, admin, operator, viewer or a custom role")
    ] = "viewer",
    prompt: Annotated[bool, typer.Option("--prompt-password", help="type the password")] = False,
    data_dir: DataDir = None,
) -> None:
    """Add a user to a tenant (a generated password is printed once unless you type one)."""
    from it0.auth.permissions import TENANT_PERMISSIONS
    from it0.auth.service import add_member

    password = _new_password(prompt)

    async def work(p: Any) -> None:
        ref = await _tenant_ref(p, tenant)
        async with p.db.session(ref.schema, write=True) as session:
            await add_member(
                p,
                session,
                ref,
                _cli_actor(),
                username=username,
                password=password,
                role=role,
                granter=TENANT_PERMISSIONS,
                may_adopt=True,
            )

    _run(work, data_dir)
    out.print(f"added [bold]{username}[/bold] to {tenant} as {role}")
    if not prompt:
        out.print(f"password (shown once): [bold yellow]{password}[/bold yellow]", highlight=False)


@user_app.command("list")
def user_list(
    tenant: TenantOpt = "default",
    data_dir: DataDir = None,
    url: Url = None,
    key: Key = None,
    as_json: JsonOut = False,
) -> None:
    """List the members of a tenant."""
    if url:
        rows = _remote(url, key, "GET", "/api/v1/users")
    else:
        from it0.auth.service import members

        async def work(p: Any) -> list[dict[str, Any]]:
            ref = await _tenant_ref(p, tenant)
            async with p.db.session(ref.schema) as session:
                return [
                    {
                        "username": u.username,
                        "role": r,
                        "is_active": u.is_active,
                        "created_at": u.created_at,
                    }
                    for u, r in await members(session, ref.id)
                ]

        rows = _run(work, data_dir)
    _table(rows, ["username", "role", "is_active", "created_at"], as_json)


@user_app.command("passwd")
def user_passwd(
    username: str,
    tenant: TenantOpt = "default",
    generate: Annotated[bool, typer.Option(help="generate and print one")] = False,
    data_dir: DataDir = None,
) -> None:
    """Set a user's password."""
    from sqlalchemy import select

    from it0.auth.models import User
    from it0.auth.service import member, set_password

    password = _new_password(not generate)

    async def work(p: Any) -> None:
        ref = await _tenant_ref(p, tenant)
        async with p.db.session(ref.schema, write=True) as session:
            user_id = await session.scalar(select(User.id).where(User.username == username))
            if user_id is None:
                err.print(f"[red]error:[/red] no user {username!r}")
                raise typer.Exit(2)
            user, _ = await member(session, ref.id, user_id)
            await set_password(p, session, ref, _cli_actor(), user, password)

    _run(work, data_dir)
    out.print(f"password of [bold]{username}[/bold] changed")
    if generate:
        out.print(f"password (shown once): [bold yellow]{password}[/bold yellow]", highlight=False)


# --- API keys ------------------------------------------------------------------------------


@apikey_app.command("create")
def apikey_create(
    name: str,
    tenant: TenantOpt = "default",
    user: Annotated[str, typer.Option(help="the key acts as this user")] = "admin",
    role: Annotated[str | None, typer.Option(help="defaults to the user's role")] = None,
    expires_days: Annotated[int | None, typer.Option(min=1, help="expire after N days")] = None,
    data_dir: DataDir = None,
    url: Url = None,
    key: Key = None,
) -> None:
    """Create an API key; it is printed once."""
    expires = datetime.now(UTC) + timedelta(days=expires_days) if expires_days else None
    if url:
        body = _remote(
            url,
            key,
            "POST",
            "/api/v1/api-keys",
            json={
                "name": name,
                "role": role,
                "expires_at": expires.isoformat() if expires else None,
            },
        )
        out.print(body["key"], highlight=False)
        return
    from sqlalchemy import select

    from it0.auth.models import User
    from it0.auth.roles import permissions_of
    from it0.auth.service import create_api_key, member

    async def work(p: Any) -> str:
        ref = await _tenant_ref(p, tenant)
        async with p.db.session(ref.schema, write=True) as session:
            user_id = await session.scalar(select(User.id).where(User.username == user))
            if user_id is None:
                err.print(f"[red]error:[/red] no user {user!r}")
                raise typer.Exit(2)
            _, membership = await member(session, ref.id, user_id)
            _, plaintext = await create_api_key(
                p,
                session,
                ref,
                _cli_actor(),
                user_id=user_id,
                name=name,
                role=role or membership.role,
                expires_at=expires,
                granter=await permissions_of(session, membership.role),
            )
            return plaintext

    plaintext = _run(work, data_dir)
    err.print("API key (shown once):")
    out.print(plaintext, highlight=False)


@apikey_app.command("list")
def apikey_list(
    tenant: TenantOpt = "default",
    data_dir: DataDir = None,
    url: Url = None,
    key: Key = None,
    as_json: JsonOut = False,
) -> None:
    """List API keys (never their secrets)."""
    if url:
        rows = _remote(url, key, "GET", "/api/v1/api-keys")
    else:
        from sqlalchemy import select

        from it0.auth.models import ApiKey

        async def work(p: Any) -> list[dict[str, Any]]:
            ref = await _tenant_ref(p, tenant)
            async with p.db.session(ref.schema) as session:
                keys = (await session.scalars(select(ApiKey).order_by(ApiKey.created_at))).all()
                return [k.public() for k in keys]

        rows = _run(work, data_dir)
    _table(
        rows, ["id", "name", "prefix", "role", "expires_at", "revoked_at", "last_used_at"], as_json
    )


@apikey_app.command("revoke")
def apikey_revoke(
    key_id: str,
    tenant: TenantOpt = "default",
    data_dir: DataDir = None,
    url: Url = None,
    key: Key = None,
) -> None:
    """Revoke an API key by id."""
    import uuid

    try:
        parsed = uuid.UUID(key_id)
    except ValueError:
        err.print("[red]error:[/red] KEY_ID must be a key's id (see `it0 apikey list`)")
        raise typer.Exit(2) from None
    if url:
        _remote(url, key, "DELETE", f"/api/v1/api-keys/{parsed}")
    else:
        from it0.auth.service import revoke_api_key

        async def work(p: Any) -> None:
            ref = await _tenant_ref(p, tenant)
            async with p.db.session(ref.schema, write=True) as session:
                await revoke_api_key(p, session, ref, _cli_actor(), parsed)

        _run(work, data_dir)
    out.print(f"revoked {parsed}")


# --- audit ---------------------------------------------------------------------------------


def _read_checkpoints(path: Path) -> tuple[list[dict[str, Any]], Any]:
    from it0.audit.chain import load_public_key

    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    header = next((x for x in lines if x.get("type") == "it0.audit.checkpoints"), None)
    key = load_public_key(header["public_key"]) if header else None
    return [x for x in lines if "signature" in x], key


@audit_app.command("verify")
def audit_verify(
    tenant: Annotated[
        str | None, typer.Option("--tenant", "-t", help="default: every tenant")
    ] = None,
    checkpoints: Annotated[
        Path | None, typer.Option(help="exported checkpoints (JSON Lines)")
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Recompute the hash chain(s); exit 1 and name the first bad event if tampered."""
    from it0.auth.service import list_tenants

    exported, key = _read_checkpoints(checkpoints) if checkpoints else ([], None)

    async def work(p: Any) -> list[Any]:
        slugs = [tenant] if tenant else [t.slug for t in await list_tenants(p)]
        results = []
        for slug in slugs:
            ref = await _tenant_ref(p, slug)
            async with p.db.session(ref.schema) as session:
                results.append(await p.audit.verify(session, slug, exported, key))
        return results

    results = _run(work, data_dir)
    bad = False
    for r in results:
        for warning in r.warnings:
            err.print(f"[yellow]warning[/yellow] {r.tenant}: {warning}")
        if r.ok:
            out.print(
                f"[green]ok[/green] {r.tenant}: {r.events} events verified, "
                f"{r.checkpoints} checkpoints"
            )
        else:
            bad = True
            out.print(
                f"[red]TAMPERED[/red] {r.tenant}: first bad seq {r.first_bad_seq}: {r.problem}"
            )
    raise typer.Exit(1 if bad else 0)


@audit_app.command("export")
def audit_export(
    tenant: TenantOpt = "default",
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="file (default stdout)")
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Write every audit event of a tenant as JSON Lines, oldest first."""
    from sqlalchemy import select

    from it0.audit.chain import canonical_json, event_fields
    from it0.audit.models import AuditEvent

    async def work(p: Any) -> int:
        ref = await _tenant_ref(p, tenant)
        sink = output.open("w") if output else sys.stdout
        count = 0
        try:
            async with p.db.session(ref.schema) as session:
                result = await session.stream_scalars(select(AuditEvent).order_by(AuditEvent.seq))
                async for event in result:
                    fields = event_fields(event)
                    fields["summary"] = json.loads(event.summary)
                    fields.update(prev_hash=event.prev_hash, hash=event.hash)
                    sink.write(canonical_json(fields) + "\n")
                    count += 1
        finally:
            if output:
                sink.close()
        return count

    count = _run(work, data_dir)
    err.print(f"exported {count} events")


@checkpoint_app.command("export")
def checkpoint_export(
    tenant: Annotated[
        str | None, typer.Option("--tenant", "-t", help="default: every tenant")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="file (default stdout)")
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Write signed checkpoints (after signing the current heads) to keep off this host."""
    from it0.app import checkpoint_all
    from it0.auth.service import list_tenants

    async def work(p: Any) -> list[str]:
        await checkpoint_all(p)
        slugs = [tenant] if tenant else [t.slug for t in await list_tenants(p)]
        lines: list[str] = []
        for slug in slugs:
            ref = await _tenant_ref(p, slug)
            async with p.db.session(ref.schema) as session:
                exported = await p.audit.export_checkpoints(session, slug)
            lines.extend(exported if not lines else exported[1:])
        return lines

    lines = _run(work, data_dir)
    text = "".join(line + "\n" for line in lines)
    if output:
        output.write_text(text)
        err.print(f"wrote {len(lines) - 1} checkpoints to {output}")
    else:
        sys.stdout.write(text)


def main() -> None:
    app()
