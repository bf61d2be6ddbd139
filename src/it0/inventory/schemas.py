"""Request and response bodies of the inventory API."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, Field

from it0.core.schemas import Body
from it0.inventory.selectors import FIELD_KEYS, LABEL_KEY, LABEL_VALUE, NAME

ENVIRONMENT = r"^[a-z][a-z0-9-]{0,31}$"
USERNAME = r"^[A-Za-z_][A-Za-z0-9._-]{0,63}$"
# a host name, an IPv4 or an IPv6 address (with a zone); no scheme, no port, no spaces
ADDRESS = r"^[A-Za-z0-9._:%-]{1,255}$"
MAX_LABELS = 64

Name = Annotated[str, Field(pattern=NAME, description="letters, digits, '.', '_', '-'")]
LabelKey = Annotated[str, Field(pattern=LABEL_KEY)]
LabelValue = Annotated[str, Field(pattern=LABEL_VALUE)]
Kind = Literal["ssh", "local"]
Environment = Annotated[
    str, Field(pattern=ENVIRONMENT, description="prod, staging, dev or a name of your own")
]
Reference = Annotated[str, Field(min_length=1, max_length=128, description="name or id")]


_L = TypeVar("_L", bound=dict[str, Any])


def _no_field_keys(labels: _L) -> _L:
    reserved = sorted(k for k in labels if k in FIELD_KEYS)
    if reserved:
        raise ValueError(
            f"label keys {', '.join(reserved)} are reserved for server fields in selectors"
        )
    return labels


Labels = Annotated[
    dict[LabelKey, LabelValue], Field(max_length=MAX_LABELS), AfterValidator(_no_field_keys)
]
# a merge patch: a key set to null is removed
LabelPatch = Annotated[
    dict[LabelKey, LabelValue | None],
    Field(max_length=MAX_LABELS, description="merged; a key set to null is removed"),
    AfterValidator(_no_field_keys),
]


class ServerCreate(Body):
    name: Name
    address: str | None = Field(
        default=None, pattern=ADDRESS, description="required for kind ssh; 127.0.0.1 for local"
    )
    port: int = Field(default=22, ge=1, le=65535)
    username: str | None = Field(default=None, pattern=USERNAME)
    kind: Kind = "ssh"
    environment: Environment = "dev"
    labels: Labels = Field(default_factory=dict)
    cluster: Reference | None = None
    credential_id: uuid.UUID | None = None


class ServerUpdate(Body):
    """Only the fields given change. ``labels`` is merged: a key set to null is removed."""

    name: Name | None = None
    address: str | None = Field(default=None, pattern=ADDRESS)
    port: int | None = Field(default=None, ge=1, le=65535)
    username: str | None = Field(default=None, pattern=USERNAME, description="null: none")
    kind: Kind | None = None
    environment: Environment | None = None
    labels: LabelPatch | None = None
    cluster: Reference | None = Field(default=None, description="null: no cluster")
    credential_id: uuid.UUID | None = Field(default=None, description="null: no credential")


class ServerPublic(BaseModel):
    id: uuid.UUID
    name: str
    address: str
    port: int
    username: str | None
    kind: str
    environment: str
    labels: dict[str, str] = Field(description="the server's own labels")
    effective_labels: dict[str, str] = Field(description="its cluster's labels, then its own")
    cluster_id: uuid.UUID | None
    cluster: str | None
    credential_id: uuid.UUID | None
    status: str
    last_seen_at: datetime | None
    facts: dict[str, Any]
    facts_at: datetime | None
    created_at: datetime
    updated_at: datetime


class ServerPage(BaseModel):
    items: list[ServerPublic]
    next_cursor: str | None = Field(description="pass back as cursor for the next page")


class ClusterCreate(Body):
    name: Name
    description: str = Field(default="", max_length=500)
    labels: Labels = Field(default_factory=dict)


class ClusterUpdate(Body):
    """Only the fields given change. ``labels`` is merged: a key set to null is removed."""

    name: Name | None = None
    description: str | None = Field(default=None, max_length=500)
    labels: LabelPatch | None = None


class ClusterPublic(BaseModel):
    id: uuid.UUID
    name: str
    description: str
    labels: dict[str, str]
    servers: int = Field(description="how many servers belong to it")
    created_at: datetime


class ClusterPage(BaseModel):
    items: list[ClusterPublic]
    next_cursor: str | None = Field(description="pass back as cursor for the next page")


class ServerFacts(BaseModel):
    id: uuid.UUID
    name: str
    status: str
    last_seen_at: datetime | None
    facts_at: datetime | None
    facts: dict[str, Any] = Field(description="os, kernel, arch, cpus, memory, disks, uptime")


class HostKeyTrust(Body):
    key: str | None = Field(
        default=None,
        min_length=1,
        max_length=16384,
        description="pin this OpenSSH public key; without it, the pending (refused) key",
    )


class HostKeyPublic(BaseModel):
    id: uuid.UUID
    name: str
    host_key: str | None
    fingerprint: str | None
    trusted_at: datetime | None
    pending_host_key: str | None
    pending_fingerprint: str | None


class HostKeySettings(Body):
    require_approved: bool = Field(
        description="refuse servers whose host key is not pinned (no trust on first use)"
    )
