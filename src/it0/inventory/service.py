"""Servers and clusters: lookups, changes (each audited in the caller's transaction), views."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from it0.audit import AuditContext
from it0.core.db import publish_after_commit
from it0.core.errors import ValidationFailed
from it0.inventory.errors import ClusterInUse, InventoryNotFound, NameTaken, UnknownReference
from it0.inventory.models import Cluster, Credential, Server
from it0.inventory.schemas import (
    ClusterCreate,
    ClusterPublic,
    ClusterUpdate,
    ServerCreate,
    ServerPublic,
    ServerUpdate,
)
from it0.inventory.selectors import (
    Selector,
    as_selector,
    cluster_matches,
    cluster_of,
    clusters_by_id,
    effective_labels,
)
from it0.platform import Platform

LOCALHOST = "localhost"
SERVER_CREATED = "server.created"


class Recorder(Protocol):
    """Writes audit events into ``session``'s transaction (``it0.auth.deps.AuditLog``)."""

    @property
    def platform(self) -> Platform: ...

    @property
    def session(self) -> AsyncSession: ...

    @property
    def tenant_pair(self) -> tuple[str, str]: ...

    async def record(
        self,
        action: str,
        resource_type: str,
        resource_id: object | None = None,
        summary: dict[str, Any] | None = None,
    ) -> None: ...


@dataclass
class TenantRecorder:
    """A ``Recorder`` for work outside a request: the CLI, the bootstrap."""

    platform: Platform
    session: AsyncSession
    tenant: tuple[str, str]  # (slug, schema)
    context: AuditContext

    @property
    def tenant_pair(self) -> tuple[str, str]:
        return self.tenant

    async def record(
        self,
        action: str,
        resource_type: str,
        resource_id: object | None = None,
        summary: dict[str, Any] | None = None,
    ) -> None:
        await self.platform.audit.record(
            self.session, self.tenant, self.context, action, resource_type, resource_id, summary
        )


# --- lookups --------------------------------------------------------------------------------

_M = TypeVar("_M", Server, Cluster)


async def _by_ref(session: AsyncSession, model: type[_M], ref: str) -> _M | None:
    try:
        found = await session.get(model, uuid.UUID(ref))
    except ValueError:
        found = None
    if found is None:
        found = await session.scalar(select(model).where(model.name == ref))
    return found


async def find_server(session: AsyncSession, ref: str) -> Server:
    """A server of this tenant by id or name."""
    server = await _by_ref(session, Server, ref)
    if server is None:
        raise InventoryNotFound(f"server {ref!r} not found")
    return server


async def find_cluster(session: AsyncSession, ref: str) -> Cluster:
    """A cluster of this tenant by id or name."""
    cluster = await _by_ref(session, Cluster, ref)
    if cluster is None:
        raise InventoryNotFound(f"cluster {ref!r} not found")
    return cluster


async def cluster_for(session: AsyncSession, ref: str | None) -> Cluster | None:
    """The cluster a request body names (None: no cluster); unknown ones are a 422."""
    if ref is None:
        return None
    cluster = await _by_ref(session, Cluster, ref)
    if cluster is None:
        raise UnknownReference(f"no cluster {ref!r}", details={"field": "cluster"})
    return cluster


async def check_credential(session: AsyncSession, credential_id: uuid.UUID | None) -> None:
    if credential_id is None:
        return
    if await session.scalar(select(Credential.id).where(Credential.id == credential_id)) is None:
        raise UnknownReference("no such credential", details={"field": "credential_id"})


async def credential_by_name(session: AsyncSession, name: str) -> uuid.UUID:
    found = await session.scalar(select(Credential.id).where(Credential.name == name))
    if found is None:
        raise UnknownReference(f"no credential {name!r}", details={"field": "credential"})
    return found


async def _ensure_name_free(
    session: AsyncSession, model: type[_M], name: str, what: str, self_id: uuid.UUID | None = None
) -> None:
    taken = await session.scalar(select(model.id).where(model.name == name))
    if taken is not None and taken != self_id:
        raise NameTaken(f"a {what} named {name!r} already exists", details={"field": "name"})


async def _apply_changes(
    session: AsyncSession, row: Server | Cluster, new: dict[str, Any], kind: str
) -> dict[str, Any]:
    """Set the fields of ``new`` that differ on ``row``; returns those, flushed."""
    changes = {k: v for k, v in new.items() if getattr(row, k) != v}
    for key, value in changes.items():
        setattr(row, key, value)
    if changes:
        await _flush(session, row.name, kind)
    return changes


async def _flush(session: AsyncSession, name: str, what: str) -> None:
    try:
        await session.flush()
    except IntegrityError as exc:  # lost a race with a request creating the same name
        raise NameTaken(
            f"a {what} named {name!r} already exists", details={"field": "name"}
        ) from exc


def _merge_labels(labels: Mapping[str, str], patch: Mapping[str, str | None]) -> dict[str, str]:
    merged = dict(labels)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


def _not_null(changes: Mapping[str, Any], fields: Sequence[str]) -> None:
    for name in fields:
        if name in changes and changes[name] is None:
            raise ValidationFailed(f"{name} cannot be null", details={"field": name})


# --- servers --------------------------------------------------------------------------------


def _server_summary(server: Server, cluster: Cluster | None) -> dict[str, Any]:
    return {
        "name": server.name,
        "address": server.address,
        "port": server.port,
        "kind": server.kind,
        "environment": server.environment,
        "cluster": cluster.name if cluster else None,
        "labels": server.labels,
    }


async def create_server(audit: Recorder, body: ServerCreate) -> Server:
    session = audit.session
    address = body.address or ("127.0.0.1" if body.kind == "local" else None)
    if address is None:
        raise ValidationFailed("an ssh server needs an address", details={"field": "address"})
    await _ensure_name_free(session, Server, body.name, "server")
    cluster = await cluster_for(session, body.cluster)
    await check_credential(session, body.credential_id)
    server = Server(
        name=body.name,
        address=address,
        port=body.port,
        username=body.username,
        kind=body.kind,
        environment=body.environment,
        labels=dict(body.labels),
        cluster_id=cluster.id if cluster else None,
        credential_id=body.credential_id,
        facts={},
    )
    session.add(server)
    await _flush(session, body.name, "server")
    await audit.record("server.create", "server", server.id, _server_summary(server, cluster))
    # the worker gathers its facts (first contact), once the server is committed
    publish_after_commit(
        session, SERVER_CREATED, {"tenant": audit.tenant_pair[0], "server_id": str(server.id)}
    )
    return server


async def update_server(audit: Recorder, server: Server, body: ServerUpdate) -> Server:
    """Apply the fields the body sets; audited only when something actually changed."""
    session = audit.session
    given = body.model_dump(exclude_unset=True)
    _not_null(given, ("name", "address", "port", "kind", "environment", "labels"))
    if "name" in given:
        await _ensure_name_free(session, Server, given["name"], "server", server.id)
    new: dict[str, Any] = {k: v for k, v in given.items() if k not in ("labels", "cluster")}
    cluster_name = None
    if "cluster" in given:
        cluster = await cluster_for(session, given["cluster"])
        new["cluster_id"], cluster_name = (cluster.id, cluster.name) if cluster else (None, None)
    if "credential_id" in given:
        await check_credential(session, given["credential_id"])
    if "labels" in given:
        new["labels"] = _merge_labels(server.labels, given["labels"])
    changes = await _apply_changes(session, server, new, "server")
    if not changes:
        return server
    summary = {k: v for k, v in changes.items() if k != "cluster_id"}
    if "cluster_id" in changes:
        summary["cluster"] = cluster_name  # the name says more in the trail than the id
    await audit.record(
        "server.update", "server", server.id, {"name": server.name, "changes": summary}
    )
    return server


async def delete_server(audit: Recorder, server: Server) -> None:
    await audit.session.delete(server)
    await audit.session.flush()
    await audit.record(
        "server.delete", "server", server.id, {"name": server.name, "address": server.address}
    )


async def register_control_plane(audit: Recorder) -> Server | None:
    """The control-plane host as server ``localhost`` (kind local), unless the name is taken."""
    if await audit.session.scalar(select(Server.id).where(Server.name == LOCALHOST)):
        return None
    body = ServerCreate(
        name=LOCALHOST,
        address="127.0.0.1",
        kind="local",
        environment="dev",
        labels={"it0.control-plane": "true"},
    )
    return await create_server(audit, body)


async def servers_public(session: AsyncSession, servers: Sequence[Server]) -> list[ServerPublic]:
    clusters = await clusters_by_id(session)
    return [server_public(s, cluster_of(s, clusters)) for s in servers]


def server_public(server: Server, cluster: Cluster | None) -> ServerPublic:
    return ServerPublic(
        id=server.id,
        name=server.name,
        address=server.address,
        port=server.port,
        username=server.username,
        kind=server.kind,
        environment=server.environment,
        labels=server.labels,
        effective_labels=effective_labels(server, cluster),
        cluster_id=server.cluster_id,
        cluster=cluster.name if cluster else None,
        credential_id=server.credential_id,
        status=server.status,
        last_seen_at=server.last_seen_at,
        facts=server.facts,
        facts_at=server.facts_at,
        created_at=server.created_at,
        updated_at=server.updated_at,
    )


# --- clusters -------------------------------------------------------------------------------


async def create_cluster(audit: Recorder, body: ClusterCreate) -> Cluster:
    session = audit.session
    await _ensure_name_free(session, Cluster, body.name, "cluster")
    cluster = Cluster(name=body.name, description=body.description, labels=dict(body.labels))
    session.add(cluster)
    await _flush(session, body.name, "cluster")
    await audit.record(
        "cluster.create",
        "cluster",
        cluster.id,
        {"name": cluster.name, "description": cluster.description, "labels": cluster.labels},
    )
    return cluster


async def update_cluster(audit: Recorder, cluster: Cluster, body: ClusterUpdate) -> Cluster:
    session = audit.session
    given = body.model_dump(exclude_unset=True)
    _not_null(given, ("name", "description", "labels"))
    if "name" in given:
        await _ensure_name_free(session, Cluster, given["name"], "cluster", cluster.id)
    new = dict(given)
    if "labels" in given:
        new["labels"] = _merge_labels(cluster.labels, given["labels"])
    changes = await _apply_changes(session, cluster, new, "cluster")
    if not changes:
        return cluster
    await audit.record(
        "cluster.update", "cluster", cluster.id, {"name": cluster.name, "changes": changes}
    )
    return cluster


async def delete_cluster(audit: Recorder, cluster: Cluster, *, force: bool = False) -> int:
    """Delete a cluster; one with servers only with ``force``, which detaches them (they lose
    the labels they inherited). Returns how many servers were detached."""
    session = audit.session
    members = await _member_count(session, cluster.id)
    if members and not force:
        raise ClusterInUse(
            f"cluster {cluster.name!r} has {members} server(s); move them or delete with force",
            details={"servers": members},
        )
    if members:
        await session.execute(
            update(Server).where(Server.cluster_id == cluster.id).values(cluster_id=None)
        )
    await session.delete(cluster)
    await session.flush()
    await audit.record(
        "cluster.delete", "cluster", cluster.id, {"name": cluster.name, "detached": members}
    )
    return members


async def _member_count(session: AsyncSession, cluster_id: uuid.UUID) -> int:
    count = await session.scalar(
        select(func.count()).select_from(Server).where(Server.cluster_id == cluster_id)
    )
    return int(count or 0)


async def list_clusters(
    session: AsyncSession,
    selector: Selector | str | None = None,
    *,
    limit: int | None = None,
    after: str | None = None,
) -> tuple[list[Cluster], str | None]:
    """Clusters by name (there are few: filtered in Python), and the next page's cursor."""
    selector = as_selector(selector)
    query = select(Cluster).order_by(Cluster.name)
    if after is not None:
        query = query.where(Cluster.name > after)
    found = [c for c in (await session.scalars(query)).all() if cluster_matches(selector, c)]
    if limit is not None and len(found) > limit:
        found = found[:limit]
        return found, found[-1].name
    return found, None


async def clusters_public(
    session: AsyncSession, clusters: Sequence[Cluster]
) -> list[ClusterPublic]:
    ids = [c.id for c in clusters]
    counts: dict[uuid.UUID, int] = {}
    if ids:
        rows = await session.execute(
            select(Server.cluster_id, func.count())
            .where(Server.cluster_id.in_(ids))
            .group_by(Server.cluster_id)
        )
        counts = {cid: int(n) for cid, n in rows if cid is not None}
    return [
        ClusterPublic(
            id=c.id,
            name=c.name,
            description=c.description,
            labels=c.labels,
            servers=counts.get(c.id, 0),
            created_at=c.created_at,
        )
        for c in clusters
    ]
