"""Servers, clusters, credentials and the tenant's vault key (tenant schema)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, ForeignKey, Integer, String, Text, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from it0.core.clock import utcnow, uuid7
from it0.core.db import TenantBase, UTCDateTime


class Cluster(TenantBase):
    __tablename__ = "clusters"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid7)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    description: Mapped[str] = mapped_column(String(500), default="")
    labels: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Credential(TenantBase):
    """Write-only secrets: ciphertexts of the vault's versioned format, never plaintext."""

    __tablename__ = "credentials"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid7)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    kind: Mapped[str] = mapped_column(String(16))  # ssh_key | password
    username: Mapped[str | None] = mapped_column(String(64), default=None)
    secret: Mapped[str] = mapped_column(Text)  # private key or password
    passphrase: Mapped[str | None] = mapped_column(Text, default=None)
    sudo_password: Mapped[str | None] = mapped_column(Text, default=None)
    key_type: Mapped[str | None] = mapped_column(String(32), default=None)
    fingerprint: Mapped[str | None] = mapped_column(String(128), default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)


class Server(TenantBase):
    __tablename__ = "servers"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid7)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    address: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer, default=22)
    username: Mapped[str | None] = mapped_column(String(64), default=None)
    kind: Mapped[str] = mapped_column(String(8), default="ssh")  # ssh | local
    environment: Mapped[str] = mapped_column(String(32), default="dev", index=True)
    labels: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    cluster_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("clusters.id", ondelete="SET NULL"), default=None, index=True
    )
    credential_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("credentials.id", ondelete="SET NULL"), default=None
    )
    status: Mapped[str] = mapped_column(String(16), default="unknown")
    last_seen_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    facts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    facts_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    # pinned host key ("ssh-ed25519 AAAA..."), and a different one seen but not trusted
    host_key: Mapped[str | None] = mapped_column(Text, default=None)
    host_key_trusted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    pending_host_key: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class VaultKey(TenantBase):
    """The tenant's data key, wrapped by the platform's master key."""

    __tablename__ = "vault_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    wrapped_key: Mapped[str] = mapped_column(Text)
    master_key_id: Mapped[str] = mapped_column(String(64))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    rewrapped_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)


class TenantSetting(TenantBase):
    """Per-tenant settings by key (e.g. ``hostkeys.require_approved``)."""

    __tablename__ = "tenant_settings"

    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[Any] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
