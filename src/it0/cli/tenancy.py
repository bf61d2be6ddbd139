"""``it0 tenant``, ``it0 user`` and ``it0 apikey``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer

from it0.cli._common import (
    DataDir,
    JsonOut,
    Key,
    TenantOpt,
    Url,
    cli_actor,
    err,
    new_password,
    out,
    print_rows,
    remote,
    run,
    tenant_ref,
)

tenant_app = typer.Typer(help="Tenants (platform administrators).", no_args_is_help=True)
user_app = typer.Typer(help="Users and their roles in a tenant.", no_args_is_help=True)
apikey_app = typer.Typer(help="API keys.", no_args_is_help=True)


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
        body = remote(url, key, "POST", "/api/v1/tenants", json={"slug": slug, "name": name})
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
        return await create_tenant(p, slug, name, cli_actor(), owner_id=owner_id)

    tenant = run(work, data_dir)
    out.print(f"created tenant [bold]{tenant.slug}[/bold] (schema {tenant.schema_name})")


@tenant_app.command("list")
def tenant_list(
    data_dir: DataDir = None, url: Url = None, key: Key = None, as_json: JsonOut = False
) -> None:
    """List tenants."""
    if url:
        rows = remote(url, key, "GET", "/api/v1/tenants")
    else:
        from it0.auth.service import list_tenants

        async def work(p: Any) -> list[dict[str, Any]]:
            return [
                {"slug": t.slug, "name": t.name, "created_at": t.created_at}
                for t in await list_tenants(p)
            ]

        rows = run(work, data_dir)
    print_rows(rows, ["slug", "name", "created_at"], as_json)


# --- users ---------------------------------------------------------------------------------


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

    password = new_password(prompt)

    async def work(p: Any) -> None:
        ref = await tenant_ref(p, tenant)
        async with p.db.session(ref.schema, write=True) as session:
            await add_member(
                p,
                session,
                ref,
                cli_actor(),
                username=username,
                password=password,
                role=role,
                granter=TENANT_PERMISSIONS,
                may_adopt=True,
            )

    run(work, data_dir)
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
        rows = remote(url, key, "GET", "/api/v1/users")
    else:
        from it0.auth.service import members

        async def work(p: Any) -> list[dict[str, Any]]:
            ref = await tenant_ref(p, tenant)
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

        rows = run(work, data_dir)
    print_rows(rows, ["username", "role", "is_active", "created_at"], as_json)


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

    password = new_password(not generate)

    async def work(p: Any) -> None:
        ref = await tenant_ref(p, tenant)
        async with p.db.session(ref.schema, write=True) as session:
            user_id = await session.scalar(select(User.id).where(User.username == username))
            if user_id is None:
                err.print(f"[red]error:[/red] no user {username!r}")
                raise typer.Exit(2)
            user, _ = await member(session, ref.id, user_id)
            await set_password(p, session, ref, cli_actor(), user, password)

    run(work, data_dir)
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
        body = remote(
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
        ref = await tenant_ref(p, tenant)
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
                cli_actor(),
                user_id=user_id,
                name=name,
                role=role or membership.role,
                expires_at=expires,
                granter=await permissions_of(session, membership.role),
            )
            return plaintext

    plaintext = run(work, data_dir)
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
        rows = remote(url, key, "GET", "/api/v1/api-keys")
    else:
        from sqlalchemy import select

        from it0.auth.models import ApiKey

        async def work(p: Any) -> list[dict[str, Any]]:
            ref = await tenant_ref(p, tenant)
            async with p.db.session(ref.schema) as session:
                keys = (await session.scalars(select(ApiKey).order_by(ApiKey.created_at))).all()
                return [k.public() for k in keys]

        rows = run(work, data_dir)
    print_rows(
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
        remote(url, key, "DELETE", f"/api/v1/api-keys/{parsed}")
    else:
        from it0.auth.service import revoke_api_key

        async def work(p: Any) -> None:
            ref = await tenant_ref(p, tenant)
            async with p.db.session(ref.schema, write=True) as session:
                await revoke_api_key(p, session, ref, cli_actor(), parsed)

        run(work, data_dir)
    out.print(f"revoked {parsed}")
