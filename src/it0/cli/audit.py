"""``it0 audit``: verify, export, checkpoints."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from it0.cli._common import DataDir, TenantOpt, err, out, run, tenant_ref

audit_app = typer.Typer(help="The audit trail: verify, export.", no_args_is_help=True)
checkpoint_app = typer.Typer(help="Signed audit checkpoints.", no_args_is_help=True)
audit_app.add_typer(checkpoint_app, name="checkpoint")


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
            ref = await tenant_ref(p, slug)
            async with p.db.session(ref.schema) as session:
                results.append(await p.audit.verify(session, slug, exported, key))
        return results

    results = run(work, data_dir)
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
        ref = await tenant_ref(p, tenant)
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

    count = run(work, data_dir)
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
            ref = await tenant_ref(p, slug)
            async with p.db.session(ref.schema) as session:
                exported = await p.audit.export_checkpoints(session, slug)
            lines.extend(exported if not lines else exported[1:])
        return lines

    lines = run(work, data_dir)
    text = "".join(line + "\n" for line in lines)
    if output:
        output.write_text(text)
        err.print(f"wrote {len(lines) - 1} checkpoints to {output}")
    else:
        sys.stdout.write(text)
