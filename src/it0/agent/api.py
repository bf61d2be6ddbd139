"""HTTP routes of the agent: the runbook library (built-in plus the tenant's own)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Query, Response

from it0.agent import library
from it0.agent.errors import InvalidRunbook
from it0.agent.runbooks import Runbook
from it0.agent.search import RunbookIndex
from it0.auth.deps import Audit, TenantSession, require
from it0.auth.tokens import Principal

router = APIRouter(prefix="/api/v1", tags=["agent"])

AgentUser = Annotated[Principal, require("agent:use")]
PolicyWriter = Annotated[Principal, require("policy:write")]
RunbookId = Annotated[str, Path(min_length=1, max_length=64)]


class RunbookPublic(Runbook):
    """A runbook as the library serves it: where it comes from and, for a search, its score."""

    source: library.Source
    score: float | None = None
    created_by: str | None = None
    updated_at: datetime | None = None


def _public(entry: library.Entry, score: float | None = None) -> RunbookPublic:
    row = entry.row
    return RunbookPublic.model_validate(
        {
            **entry.runbook.model_dump(),
            "source": entry.source,
            "score": score,
            "created_by": row.created_by if row else None,
            "updated_at": row.updated_at if row else None,
        }
    )


@router.get("/runbooks")
async def list_runbooks(
    _: AgentUser,
    session: TenantSession,
    q: Annotated[str | None, Query(max_length=1000, description="search by symptoms")] = None,
    limit: Annotated[int, Query(ge=1, le=100, description="results of a search")] = 5,
) -> list[RunbookPublic]:
    """Every runbook by id, or with ``q`` the best matches first."""
    entries = await library.entries(session)
    if not q:
        return [_public(entry) for entry in entries]
    by_id = {entry.runbook.id: entry for entry in entries}
    found = RunbookIndex([entry.runbook for entry in entries]).search(q, limit)
    return [_public(by_id[runbook.id], round(score, 4)) for runbook, score in found]


@router.get("/runbooks/{runbook_id}")
async def get_runbook(runbook_id: RunbookId, _: AgentUser, session: TenantSession) -> RunbookPublic:
    return _public(await library.find_entry(session, runbook_id))


@router.put("/runbooks/{runbook_id}", responses={201: {"description": "Created"}})
async def put_runbook(
    runbook_id: RunbookId, body: Runbook, principal: PolicyWriter, audit: Audit, response: Response
) -> RunbookPublic:
    """Add (201) or replace (200) the tenant's runbook; one with a built-in id overrides it.

    Diagnostics and verify steps must be ``read_only`` under the tenant's policy.
    """
    if body.id != runbook_id:
        raise InvalidRunbook(f"the body's id {body.id!r} is not the path's {runbook_id!r}")
    entry, created = await library.put_runbook(audit, body, principal.username)
    response.status_code = 201 if created else 200
    return _public(entry)


@router.delete("/runbooks/{runbook_id}", status_code=204)
async def delete_runbook(runbook_id: RunbookId, _: PolicyWriter, audit: Audit) -> None:
    """Remove the tenant's runbook; built-in ones cannot be removed, only overridden."""
    await library.remove_runbook(audit, runbook_id)
