"""HTTP routes of the inventory: servers and clusters."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response

from it0.auth.deps import Audit, PlatformDep, TenantSession, request_context, require
from it0.auth.tokens import Principal
from it0.inventory import reach, service
from it0.inventory.facts import gather_server_facts
from it0.inventory.models import Server
from it0.inventory.schemas import (
    ClusterCreate,
    ClusterPage,
    ClusterPublic,
    ClusterUpdate,
    HostKeyPublic,
    HostKeySettings,
    HostKeyTrust,
    ServerCreate,
    ServerFacts,
    ServerPage,
    ServerPublic,
    ServerUpdate,
)
from it0.inventory.selectors import resolve_page

router = APIRouter(prefix="/api/v1", tags=["inventory"])

Reader = Annotated[Principal, require("servers:read")]
Writer = Annotated[Principal, require("servers:write")]
Ref = Annotated[str, Path(min_length=1, max_length=128, description="id or name")]
SelectorQuery = Annotated[
    str | None,
    Query(
        max_length=2000,
        description="e.g. `env=prod,role in (web,api),!canary` or `web-1,web-2`",
    ),
]
Cursor = Annotated[
    str | None, Query(max_length=128, description="next_cursor of the previous page")
]
Limit = Annotated[int, Query(ge=1, le=500)]


# --- servers --------------------------------------------------------------------------------


@router.get("/servers")
async def list_servers(
    _: Reader,
    session: TenantSession,
    selector: SelectorQuery = None,
    cursor: Cursor = None,
    limit: Limit = 100,
) -> ServerPage:
    """Servers by name; pass ``next_cursor`` back as ``cursor`` for the next page."""
    servers, next_cursor = await resolve_page(session, selector, limit=limit, after=cursor)
    return ServerPage(items=await service.servers_public(session, servers), next_cursor=next_cursor)


@router.post("/servers", status_code=201)
async def create_server(body: ServerCreate, _: Writer, audit: Audit) -> ServerPublic:
    server = await service.create_server(audit, body)
    return (await service.servers_public(audit.session, [server]))[0]


@router.get("/servers/{id_or_name}")
async def get_server(id_or_name: Ref, _: Reader, session: TenantSession) -> ServerPublic:
    server = await service.find_server(session, id_or_name)
    return (await service.servers_public(session, [server]))[0]


@router.patch("/servers/{id_or_name}")
async def update_server(
    id_or_name: Ref, body: ServerUpdate, _: Writer, audit: Audit
) -> ServerPublic:
    server = await service.find_server(audit.session, id_or_name)
    server = await service.update_server(audit, server, body)
    return (await service.servers_public(audit.session, [server]))[0]


@router.delete("/servers/{id_or_name}", status_code=204)
async def delete_server(id_or_name: Ref, _: Writer, audit: Audit) -> Response:
    server = await service.find_server(audit.session, id_or_name)
    await service.delete_server(audit, server)
    return Response(status_code=204)


# --- facts and host keys -------------------------------------------------------------------


@router.post("/servers/{id_or_name}/facts")
async def gather_facts(
    id_or_name: Ref, principal: Writer, request: Request, p: PlatformDep
) -> ServerFacts:
    """Connect (fixed read-only commands), store and return the facts: OS, kernel, CPUs,
    memory, disks, uptime. A refused host key is 409, an unreachable host 424."""
    ctx = request_context(request, principal)
    server = await gather_server_facts(p, principal.tenant, id_or_name, ctx)
    return ServerFacts(
        id=server.id,
        name=server.name,
        status=server.status,
        last_seen_at=server.last_seen_at,
        facts_at=server.facts_at,
        facts=server.facts,
    )


def _host_key_public(server: Server) -> HostKeyPublic:
    return HostKeyPublic(
        id=server.id,
        name=server.name,
        host_key=server.host_key,
        fingerprint=reach.key_fingerprint(server.host_key),
        trusted_at=server.host_key_trusted_at,
        pending_host_key=server.pending_host_key,
        pending_fingerprint=reach.key_fingerprint(server.pending_host_key),
    )


@router.get("/servers/{id_or_name}/host-key")
async def get_host_key(id_or_name: Ref, _: Reader, session: TenantSession) -> HostKeyPublic:
    """The pinned host key, and a presented one that was refused (to compare before trust)."""
    return _host_key_public(await service.find_server(session, id_or_name))


@router.post("/servers/{id_or_name}/trust-host-key")
async def trust_host_key(
    id_or_name: Ref, body: HostKeyTrust, _: Writer, audit: Audit
) -> HostKeyPublic:
    """Pin the pending (refused) host key (body ``{}``), or the ``key`` given."""
    server = await service.find_server(audit.session, id_or_name)
    await reach.trust_host_key(audit, server, body.key)
    return _host_key_public(server)


@router.get("/settings/hostkeys")
async def get_host_key_settings(
    _: Annotated[Principal, require("policy:read")], session: TenantSession
) -> HostKeySettings:
    return HostKeySettings(require_approved=await reach.require_approved_keys(session))


@router.put("/settings/hostkeys")
async def put_host_key_settings(
    body: HostKeySettings, _: Annotated[Principal, require("policy:write")], audit: Audit
) -> HostKeySettings:
    """``require_approved``: no trust on first use; unpinned servers are refused."""
    value = await reach.set_require_approved_keys(audit, body.require_approved)
    return HostKeySettings(require_approved=value)


# --- clusters -------------------------------------------------------------------------------


@router.get("/clusters")
async def list_clusters(
    _: Reader,
    session: TenantSession,
    selector: SelectorQuery = None,
    cursor: Cursor = None,
    limit: Limit = 100,
) -> ClusterPage:
    """Clusters by name; ``selector`` matches ``name`` and the cluster's labels."""
    clusters, next_cursor = await service.list_clusters(
        session, selector, limit=limit, after=cursor
    )
    return ClusterPage(
        items=await service.clusters_public(session, clusters), next_cursor=next_cursor
    )


@router.post("/clusters", status_code=201)
async def create_cluster(body: ClusterCreate, _: Writer, audit: Audit) -> ClusterPublic:
    cluster = await service.create_cluster(audit, body)
    return (await service.clusters_public(audit.session, [cluster]))[0]


@router.get("/clusters/{id_or_name}")
async def get_cluster(id_or_name: Ref, _: Reader, session: TenantSession) -> ClusterPublic:
    cluster = await service.find_cluster(session, id_or_name)
    return (await service.clusters_public(session, [cluster]))[0]


@router.patch("/clusters/{id_or_name}")
async def update_cluster(
    id_or_name: Ref, body: ClusterUpdate, _: Writer, audit: Audit
) -> ClusterPublic:
    cluster = await service.find_cluster(audit.session, id_or_name)
    cluster = await service.update_cluster(audit, cluster, body)
    return (await service.clusters_public(audit.session, [cluster]))[0]


@router.delete("/clusters/{id_or_name}", status_code=204)
async def delete_cluster(
    id_or_name: Ref,
    _: Writer,
    audit: Audit,
    force: Annotated[bool, Query(description="detach its servers and delete anyway")] = False,
) -> Response:
    """A cluster that still has servers is kept (409) unless ``force`` is given."""
    cluster = await service.find_cluster(audit.session, id_or_name)
    await service.delete_cluster(audit, cluster, force=force)
    return Response(status_code=204)
