"""Facts of a server: gathered with a fixed read-only script, stored, audited.

Three steps, each in its own place: a short transaction decrypts the credential (audited
``credential.use``); the script runs with no transaction open; a second transaction
stores the outcome. A refused host key and an unreachable host are recorded there too,
so they stay on the trail although the caller gets an error.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from it0.audit import Actor, AuditContext
from it0.auth.errors import UnknownTenant
from it0.auth.tokens import TenantRef, find_tenant
from it0.core.bus import Handler, Message
from it0.core.clock import utcnow
from it0.core.errors import IT0Error
from it0.execution import (
    FACTS_SCRIPT,
    ExecutionError,
    HostFacts,
    HostKeyChanged,
    HostKeyUnknown,
    RunResult,
    Unreachable,
    parse_facts,
)
from it0.inventory.errors import InventoryNotFound
from it0.inventory.models import Server
from it0.inventory.reach import pin_host_key, record_refusal, target_for
from it0.inventory.service import SERVER_CREATED, TenantRecorder, find_server
from it0.platform import Platform

log = logging.getLogger(__name__)

FACTS_GROUP = "facts"
FACTS_OUTPUT_CAP = 256 * 1024
WORKER = AuditContext(Actor.system("worker:facts"))


async def gather_server_facts(
    p: Platform, tenant: TenantRef, ref: str, ctx: AuditContext
) -> Server:
    """Gather, store and return the server's facts; execution errors are raised after the
    outcome (status, refused host key) is committed."""
    async with p.db.session(tenant.schema, write=True) as session:
        server = await find_server(session, ref)
        target = await target_for(p, session, tenant, server, purpose="facts", ctx=ctx)
        server_id = server.id
    result: RunResult | None = None
    failure: ExecutionError | None = None
    try:
        result = await p.executor.run_on(
            target,
            FACTS_SCRIPT,
            timeout=p.settings.exec_command_timeout,
            output_cap=min(FACTS_OUTPUT_CAP, p.settings.exec_output_cap),
        )
        if not result.ok:
            failure = ExecutionError(
                f"gathering facts on {target.name} failed (exit {result.exit_status})", target
            )
    except ExecutionError as exc:
        failure = exc
    async with p.db.session(tenant.schema, write=True) as session:
        stored = await session.get(Server, server_id)
        if stored is None:  # deleted meanwhile
            raise InventoryNotFound(f"server {ref!r} not found")
        audit = TenantRecorder(p, session, tenant.pair, ctx)
        if failure is None:
            assert result is not None
            await _store(audit, stored, result)
        else:
            await _record_failure(audit, stored, failure)
    if failure is not None:
        raise failure
    return stored


async def _store(audit: TenantRecorder, server: Server, result: RunResult) -> None:
    facts = parse_facts(result.stdout)
    if result.host_key_new and result.host_key is not None and server.host_key is None:
        await pin_host_key(audit, server, result.host_key, source="first use")
    now = utcnow()
    server.facts = dict(facts)
    server.facts_at = now
    server.status = "reachable"
    server.last_seen_at = now
    await audit.session.flush()
    await audit.record("server.facts", "server", server.id, {"ok": True, **summary(server, facts)})


async def _record_failure(audit: TenantRecorder, server: Server, failure: ExecutionError) -> None:
    if isinstance(failure, HostKeyChanged | HostKeyUnknown):
        await record_refusal(audit, server, failure)
        return
    server.status = "unreachable" if isinstance(failure, Unreachable) else "error"
    await audit.session.flush()
    await audit.record(
        "server.facts",
        "server",
        server.id,
        {"name": server.name, "ok": False, "error": failure.code},
    )


def summary(server: Server, facts: HostFacts) -> dict[str, Any]:
    """What the trail keeps of the facts (no secrets: the script reads none)."""
    return {
        "name": server.name,
        "os": facts["os"].get("pretty_name") or facts["os"].get("name"),
        "kernel": facts["kernel"],
        "cpu_count": facts["cpu_count"],
        "memory_total_bytes": facts["memory_total_bytes"],
        "disks": len(facts["disks"]),
    }


# --- first contact: the worker gathers the facts of every new server ------------------------


def on_server_created(p: Platform) -> Handler:
    """Idempotent: a server that has facts already, or is gone, is left alone."""

    async def handle(message: Message) -> None:
        slug, server_id = message.payload.get("tenant"), message.payload.get("server_id")
        try:
            async with p.db.session() as session:
                tenant = await find_tenant(session, str(slug))
            sid = uuid.UUID(str(server_id))
        except (UnknownTenant, ValueError):
            log.warning("server.created for an unknown tenant or server id: ignored")
            return
        async with p.db.session(tenant.schema) as session:
            server = await session.get(Server, sid)
            if server is None or server.facts_at is not None:
                return
        try:
            await gather_server_facts(p, tenant, str(sid), WORKER)
        except IT0Error as exc:  # recorded on the server (status, pending key) where it applies
            log.info("first facts of server %s: %s (%s)", sid, exc.code, exc.message)

    return handle


def subscribe_fact_gathering(p: Platform) -> None:
    p.bus.subscribe(SERVER_CREATED, FACTS_GROUP, on_server_created(p))
