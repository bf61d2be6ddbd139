"""The runbooks the agent works from: the built-in ones plus the tenant's, stored and audited.

A tenant runbook with a built-in one's id replaces it for that tenant. Before a tenant
runbook is stored, each diagnostic and verify command (rendered as the agent would fill it
in) must be ``read_only`` under the tenant's policy: the agent runs those without asking,
so a "diagnostic" that changes a machine must never reach it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from it0.agent.errors import InvalidRunbook, RunbookNotFound
from it0.agent.models import TenantRunbook
from it0.agent.runbooks import Runbook, load_builtin
from it0.inventory.service import Recorder
from it0.ops.policy import Risk
from it0.ops.rules import tenant_policy

Source = Literal["builtin", "tenant"]


@dataclass(frozen=True)
class Entry:
    """A runbook and where it comes from; ``row`` is set for the tenant's own."""

    runbook: Runbook
    source: Source
    row: TenantRunbook | None = None


async def tenant_runbooks(session: AsyncSession) -> list[TenantRunbook]:
    query = select(TenantRunbook).order_by(TenantRunbook.runbook_id)
    return list((await session.scalars(query)).all())


async def entries(session: AsyncSession) -> list[Entry]:
    """Every runbook the tenant sees, by id; its own win over built-in ones of the same id."""
    found = {runbook.id: Entry(runbook, "builtin") for runbook in load_builtin()}
    for row in await tenant_runbooks(session):
        found[row.runbook_id] = Entry(Runbook.model_validate(row.spec), "tenant", row)
    return [found[key] for key in sorted(found)]


async def runbooks(session: AsyncSession) -> list[Runbook]:
    """The built-in runbooks plus the tenant's, sorted by id."""
    return [entry.runbook for entry in await entries(session)]


async def find_entry(session: AsyncSession, runbook_id: str) -> Entry:
    row = await _row(session, runbook_id)
    if row is not None:
        return Entry(Runbook.model_validate(row.spec), "tenant", row)
    builtin = next((r for r in load_builtin() if r.id == runbook_id), None)
    if builtin is None:
        raise RunbookNotFound(f"runbook {runbook_id!r} not found")
    return Entry(builtin, "builtin")


async def check_read_only(session: AsyncSession, runbook: Runbook) -> None:
    """Raise ``InvalidRunbook`` naming the first diagnostic or verify step that is not
    ``read_only`` under the tenant's policy, rendered with each parameter's default/example."""
    policy = await tenant_policy(session)
    values = {
        name: parameter.default if parameter.default is not None else parameter.example or ""
        for name, parameter in runbook.parameters.items()
    }
    for kind, steps in (("diagnostics", runbook.diagnostics), ("verify", runbook.verify)):
        for step in steps:
            try:
                command = runbook.render(step, values)
            except ValueError as exc:
                raise InvalidRunbook(f"{kind} step {step.name!r}: {exc}") from exc
            risk = policy.classify(command).risk
            if risk is not Risk.READ_ONLY:
                raise InvalidRunbook(
                    f"{kind} step {step.name!r} is classified {risk.value}, not read_only: "
                    "the agent runs diagnostics and verify steps without approval",
                    details={"step": step.name, "kind": kind, "risk": risk.value},
                )


async def put_runbook(audit: Recorder, runbook: Runbook, created_by: str) -> tuple[Entry, bool]:
    """Store the tenant's runbook under its id; True when it was new (not a replacement)."""
    await check_read_only(audit.session, runbook)
    spec = runbook.model_dump(mode="json")
    overrides = any(r.id == runbook.id for r in load_builtin())
    row = await _row(audit.session, runbook.id)
    created = row is None
    if row is None:
        row = TenantRunbook(runbook_id=runbook.id, spec=spec, created_by=created_by)
        audit.session.add(row)
    else:
        row.spec = spec
    await audit.session.flush()
    action = "runbook.added" if created else "runbook.replaced"
    summary = {"runbook_id": runbook.id, "overrides_builtin": overrides, "runbook": spec}
    await audit.record(action, "runbook", row.id, summary)
    return Entry(runbook, "tenant", row), created


async def remove_runbook(audit: Recorder, runbook_id: str) -> None:
    """Only the tenant's own: removing an override brings the built-in one back."""
    row = await _row(audit.session, runbook_id)
    if row is None:
        raise RunbookNotFound(f"the tenant has no runbook {runbook_id!r}")
    await audit.session.delete(row)
    await audit.session.flush()
    await audit.record(
        "runbook.removed", "runbook", row.id, {"runbook_id": runbook_id, "runbook": row.spec}
    )


async def _row(session: AsyncSession, runbook_id: str) -> TenantRunbook | None:
    query = select(TenantRunbook).where(TenantRunbook.runbook_id == runbook_id)
    return (await session.scalars(query)).one_or_none()
