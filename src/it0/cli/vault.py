"""``it0 credentials`` (secrets typed or read here, stored by the vault) and ``it0 vault``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from it0.cli._common import (
    DataDir,
    JsonOut,
    TenantOpt,
    cli_actor,
    err,
    out,
    print_rows,
    run,
    tenant_ref,
)

credentials_app = typer.Typer(help="SSH keys and passwords (write-only).", no_args_is_help=True)
vault_app = typer.Typer(help="The vault's master key.", no_args_is_help=True)


def _secret(label: str, *, repeat: bool) -> str:
    first = str(typer.prompt(label, hide_input=True))
    if repeat and typer.prompt("repeat", hide_input=True) != first:
        err.print(f"[red]error:[/red] the {label}s differ")
        raise typer.Exit(2)
    return first


@credentials_app.command("add")
def credentials_add(
    name: str,
    key_file: Annotated[
        Path | None, typer.Option("--key-file", help="SSH private key (OpenSSH or PEM)")
    ] = None,
    passphrase_prompt: Annotated[
        bool, typer.Option("--passphrase-prompt", help="type the key's passphrase")
    ] = False,
    password_prompt: Annotated[
        bool, typer.Option("--password-prompt", help="type a login password instead of a key")
    ] = False,
    username: Annotated[str | None, typer.Option(help="login name on the servers")] = None,
    sudo_password_prompt: Annotated[
        bool, typer.Option("--sudo-password-prompt", help="type a password for sudo")
    ] = False,
    tenant: TenantOpt = "default",
    data_dir: DataDir = None,
) -> None:
    """Store an SSH key (--key-file) or a password (--password-prompt), encrypted."""
    from pydantic import SecretStr, ValidationError

    from it0.inventory.credentials import CredentialCreate, CredentialPublic, create_credential

    if (key_file is None) == (not password_prompt):
        err.print("[red]error:[/red] give exactly one of --key-file and --password-prompt")
        raise typer.Exit(2)
    if passphrase_prompt and key_file is None:
        err.print("[red]error:[/red] --passphrase-prompt goes with --key-file")
        raise typer.Exit(2)
    values: dict[str, Any] = {"name": name, "username": username}
    if key_file is not None:
        try:
            values.update(kind="ssh_key", private_key=SecretStr(key_file.read_text()))
        except (OSError, UnicodeDecodeError) as exc:
            err.print(f"[red]error:[/red] cannot read {key_file}: {type(exc).__name__}")
            raise typer.Exit(2) from None
        if passphrase_prompt:
            values["passphrase"] = SecretStr(_secret("passphrase", repeat=False))
    else:
        values.update(kind="password", password=SecretStr(_secret("password", repeat=True)))
    if sudo_password_prompt:
        values["sudo_password"] = SecretStr(_secret("sudo password", repeat=True))
    try:
        body = CredentialCreate.model_validate(values)
    except ValidationError as exc:
        # location and reason only: pydantic's own text quotes the input, which may be secret
        for problem in exc.errors():
            where = ".".join(str(p) for p in problem["loc"]) or "input"
            err.print(f"[red]error:[/red] {where}: {problem['msg']}")
        raise typer.Exit(2) from None

    async def work(p: Any) -> CredentialPublic:
        ref = await tenant_ref(p, tenant)
        async with p.db.session(ref.schema, write=True) as session:
            row = await create_credential(p, session, ref, cli_actor(), body)
            return CredentialPublic.of(row)

    created = run(work, data_dir)
    what = f"{created.key_type} {created.fingerprint}" if created.key_type else "password"
    out.print(f"added credential [bold]{created.name}[/bold] ({what})", highlight=False)


@credentials_app.command("list")
def credentials_list(
    tenant: TenantOpt = "default", data_dir: DataDir = None, as_json: JsonOut = False
) -> None:
    """List credentials (never their secrets)."""
    from it0.inventory.credentials import CredentialPublic, list_credentials

    async def work(p: Any) -> list[dict[str, Any]]:
        ref = await tenant_ref(p, tenant)
        async with p.db.session(ref.schema) as session:
            rows = await list_credentials(session)
            return [CredentialPublic.of(r).model_dump(mode="json") for r in rows]

    columns = ["name", "kind", "username", "key_type", "fingerprint", "has_sudo_password"]
    print_rows(run(work, data_dir), [*columns, "created_at", "last_used_at"], as_json)


@credentials_app.command("rm")
def credentials_rm(name: str, tenant: TenantOpt = "default", data_dir: DataDir = None) -> None:
    """Delete a credential; servers using it are left without one."""
    from it0.inventory.credentials import credential_by_name, delete_credential

    async def work(p: Any) -> None:
        ref = await tenant_ref(p, tenant)
        async with p.db.session(ref.schema, write=True) as session:
            row = await credential_by_name(session, name)
            await delete_credential(p, session, ref, cli_actor(), row)

    run(work, data_dir)
    out.print(f"deleted credential [bold]{name}[/bold]")


# --- the vault ------------------------------------------------------------------------------


@vault_app.command("rotate-master-key")
def vault_rotate(
    new_key_file: Annotated[
        Path | None,
        typer.Option("--new-key-file", help="the new key (base64 of 32 bytes) is in this file"),
    ] = None,
    generate: Annotated[bool, typer.Option("--generate", help="generate the new key")] = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="finish an interrupted rotation, no new key")
    ] = False,
    data_dir: DataDir = None,
) -> None:
    """Re-wrap every tenant's vault key under a new master key, while the platform runs.

    The new key becomes the key file; the one it replaces is kept beside it as
    `<key file>.previous` until `it0 vault drop-previous-key`. On several hosts, copy both
    files to every host after this command and before dropping the previous key.
    """
    import secrets

    from it0.core.errors import IT0Error
    from it0.inventory.vault import decode_master_key, rotate_master_key

    if sum((new_key_file is not None, generate, resume)) > 1:
        err.print("[red]error:[/red] give one of --new-key-file, --generate and --resume")
        raise typer.Exit(2)
    new_key: bytes | None = None
    if new_key_file is not None:
        try:
            new_key = decode_master_key(new_key_file.read_bytes(), str(new_key_file)).key
        except OSError as exc:
            err.print(f"[red]error:[/red] cannot read {new_key_file}: {type(exc).__name__}")
            raise typer.Exit(2) from None
        except IT0Error as exc:
            err.print(f"[red]error:[/red] {exc.message}")
            raise typer.Exit(2) from None
    elif not resume:
        new_key = secrets.token_bytes(32)

    report = run(lambda p: rotate_master_key(p, cli_actor(), new_key), data_dir)
    if report.installed:
        out.print(f"installed master key {report.master_key_id}")
    for slug, count in sorted(report.rewrapped.items()):
        out.print(f"re-wrapped {count} vault key(s) of tenant {slug}")
    out.print(
        f"every vault key is wrapped by master key {report.master_key_id}"
        + (
            f"; the previous key {report.previous_master_key_id} is kept until "
            "`it0 vault drop-previous-key`"
            if report.previous_master_key_id
            else ""
        ),
        highlight=False,
    )


@vault_app.command("status")
def vault_status_cmd(data_dir: DataDir = None, as_json: JsonOut = False) -> None:
    """The master keys, and which of them wraps each tenant's vault keys."""
    from it0.inventory.vault import vault_status

    async def work(p: Any) -> list[dict[str, Any]]:
        ring = p.vault.keyring
        ring.reload()
        previous = ring.previous
        err.print(f"current master key {ring.current.id} ({ring.current.source})")
        if previous is not None:
            err.print(f"previous master key {previous.id} ({previous.source})")
        return [
            {
                "tenant": t.slug,
                "vault_keys": t.data_keys,
                "master_keys": ",".join(t.master_key_ids),
            }
            for t in await vault_status(p)
        ]

    print_rows(run(work, data_dir), ["tenant", "vault_keys", "master_keys"], as_json)


@vault_app.command("drop-previous-key")
def vault_drop_previous(data_dir: DataDir = None) -> None:
    """Delete `<key file>.previous`; refused while a vault key is still wrapped by it."""
    from it0.inventory.vault import drop_previous_master_key

    dropped = run(drop_previous_master_key, data_dir)
    out.print(f"deleted previous master key {dropped}" if dropped else "no previous master key")
