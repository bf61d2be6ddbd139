"""Credentials: SSH keys and passwords, stored encrypted by the vault, never shown again.

The API is write-only for secrets: they go in with ``POST /api/v1/credentials`` and come
back out only through ``open_credential``, which the executor calls to connect, and which
records every use (a ``credential.use`` audit event; ``last_used_at`` to the minute).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Literal

import asyncssh
from fastapi import APIRouter, Response
from pydantic import BaseModel, Field, SecretStr, model_validator
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from it0.audit import AuditContext
from it0.auth.deps import Audit, PlatformDep, TenantSession, require
from it0.auth.tokens import LAST_USED_PRECISION, Principal, TenantRef
from it0.core.clock import utcnow, uuid7
from it0.core.errors import ConflictError, NotFoundError, ValidationFailed
from it0.core.schemas import Body
from it0.inventory.models import Credential, Server
from it0.inventory.vault import Slot
from it0.platform import Platform

CredentialKind = Literal["ssh_key", "password"]
NAME = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$"
USERNAME = r"^[A-Za-z0-9_][A-Za-z0-9._@-]{0,63}$"
KEY_TYPES = frozenset(
    {"ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "ssh-rsa"}
)
TABLE = "credentials"


class InvalidPrivateKey(ValidationFailed):
    code = "invalid_private_key"


# --- request and response bodies ------------------------------------------------------------


class CredentialCreate(Body):
    name: str = Field(pattern=NAME)
    kind: CredentialKind
    username: str | None = Field(default=None, pattern=USERNAME)
    private_key: SecretStr | None = Field(
        default=None, min_length=1, max_length=65536, description="OpenSSH or PEM (ssh_key)"
    )
    passphrase: SecretStr | None = Field(
        default=None, min_length=1, max_length=1024, description="of an encrypted private key"
    )
    password: SecretStr | None = Field(default=None, min_length=1, max_length=1024)
    sudo_password: SecretStr | None = Field(default=None, min_length=1, max_length=1024)

    @model_validator(mode="after")
    def _fields_of_kind(self) -> CredentialCreate:
        if self.kind == "ssh_key" and (self.private_key is None or self.password is not None):
            raise ValueError("kind ssh_key takes private_key (and passphrase), not password")
        if self.kind == "password" and (
            self.password is None or self.private_key is not None or self.passphrase is not None
        ):
            raise ValueError("kind password takes password, not private_key or passphrase")
        return self


class CredentialPublic(BaseModel):
    id: uuid.UUID
    name: str
    kind: CredentialKind
    username: str | None
    key_type: str | None
    fingerprint: str | None = Field(description="SHA256:... of the public key")
    created_at: datetime
    last_used_at: datetime | None
    has_sudo_password: bool

    @classmethod
    def of(cls, row: Credential) -> CredentialPublic:
        return cls(
            id=row.id,
            name=row.name,
            kind="ssh_key" if row.kind == "ssh_key" else "password",
            username=row.username,
            key_type=row.key_type,
            fingerprint=row.fingerprint,
            created_at=row.created_at,
            last_used_at=row.last_used_at,
            has_sudo_password=row.sudo_password is not None,
        )


@dataclass(frozen=True)
class DecryptedCredential:
    """A credential ready for use; its secrets never show in a repr (or a log line)."""

    id: uuid.UUID
    name: str
    kind: CredentialKind
    username: str | None
    key_type: str | None
    fingerprint: str | None
    private_key: str | None = field(default=None, repr=False)
    passphrase: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    sudo_password: str | None = field(default=None, repr=False)

    def ssh_key(self) -> asyncssh.SSHKey:
        """The private key for ``asyncssh.connect(client_keys=[...])``."""
        if self.private_key is None:
            raise ValueError(f"credential {self.name!r} holds no private key")
        return asyncssh.import_private_key(self.private_key, self.passphrase)


# --- service --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParsedKey:
    key_type: str
    fingerprint: str


def parse_private_key(private_key: str, passphrase: str | None) -> ParsedKey:
    """Type and fingerprint of a private key; ``InvalidPrivateKey`` says why it is not one.

    Messages are ours: a parser's message could quote the input.
    """
    try:
        key = asyncssh.import_private_key(private_key, passphrase)
    except asyncssh.KeyEncryptionError as exc:
        if "bcrypt" in str(exc):
            raise InvalidPrivateKey(
                "this server cannot decrypt passphrase-protected keys in OpenSSH format (it "
                "lacks bcrypt); upload the key unencrypted or as encrypted PKCS#8 PEM",
                details={"field": "private_key"},
            ) from None
        raise InvalidPrivateKey(
            "the passphrase does not decrypt the private key", details={"field": "passphrase"}
        ) from None
    except Exception:  # asyncssh raises several types for malformed input; all mean "invalid"
        if not _looks_encrypted(private_key):
            message, where = "not a valid private key (OpenSSH or PEM format)", "private_key"
        elif passphrase is None:
            message, where = "the private key is encrypted: give its passphrase", "passphrase"
        else:
            message, where = "the passphrase does not decrypt the private key", "passphrase"
        raise InvalidPrivateKey(message, details={"field": where}) from None
    key_type = key.get_algorithm()
    if key_type not in KEY_TYPES:
        raise InvalidPrivateKey(
            f"unsupported key type {key_type}; use ed25519, ECDSA or RSA",
            details={"field": "private_key"},
        )
    return ParsedKey(key_type, key.get_fingerprint("sha256"))


def _looks_encrypted(private_key: str) -> bool:
    """Whether the key parses, but wants a passphrase."""
    try:
        asyncssh.import_private_key(private_key)
    except asyncssh.KeyImportError as exc:
        return "passphrase" in str(exc).lower()
    except Exception:
        return False
    return False


def _slot(credential_id: uuid.UUID, name: str) -> Slot:
    return Slot(TABLE, credential_id, name)


async def create_credential(
    p: Platform, session: AsyncSession, tenant: TenantRef, ctx: AuditContext, body: CredentialCreate
) -> Credential:
    """Validate, encrypt and store a credential; audited as ``credential.create``."""
    secret = body.private_key or body.password
    assert secret is not None  # guaranteed by CredentialCreate
    passphrase = body.passphrase.get_secret_value() if body.passphrase else None
    parsed = None
    if body.kind == "ssh_key":
        # in a thread: a key's passphrase KDF can take a while; before the first query, so
        # no write lock is held meanwhile
        parsed = await asyncio.to_thread(parse_private_key, secret.get_secret_value(), passphrase)
    if await session.scalar(select(Credential.id).where(Credential.name == body.name)):
        raise ConflictError(f"a credential named {body.name!r} exists")
    row = Credential(
        id=uuid7(),
        name=body.name,
        kind=body.kind,
        username=body.username,
        key_type=parsed.key_type if parsed else None,
        fingerprint=parsed.fingerprint if parsed else None,
        created_at=utcnow(),
    )
    sudo = body.sudo_password.get_secret_value() if body.sudo_password else None
    for column, plaintext in (
        ("secret", secret.get_secret_value()),
        ("passphrase", passphrase),
        ("sudo_password", sudo),
    ):
        if plaintext is not None:
            ciphertext = await p.vault.encrypt(session, tenant.id, plaintext, _slot(row.id, column))
            setattr(row, column, ciphertext)
    session.add(row)
    try:
        await session.flush()
    except IntegrityError as exc:  # lost a race with a request creating the same name
        raise ConflictError(f"a credential named {body.name!r} exists") from exc
    await p.audit.record(
        session,
        tenant.pair,
        ctx,
        "credential.create",
        "credential",
        row.id,
        {
            "name": row.name,
            "kind": row.kind,
            "username": row.username,
            "key_type": row.key_type,
            "fingerprint": row.fingerprint,
            "sudo": row.sudo_password is not None,
        },
    )
    return row


async def list_credentials(session: AsyncSession) -> list[Credential]:
    return list((await session.scalars(select(Credential).order_by(Credential.name))).all())


async def get_credential(session: AsyncSession, credential_id: uuid.UUID) -> Credential:
    row = await session.get(Credential, credential_id)
    if row is None:
        raise NotFoundError("credential not found")
    return row


async def credential_by_name(session: AsyncSession, name: str) -> Credential:
    row = await session.scalar(select(Credential).where(Credential.name == name))
    if row is None:
        raise NotFoundError(f"no credential named {name!r}")
    return row


async def delete_credential(
    p: Platform, session: AsyncSession, tenant: TenantRef, ctx: AuditContext, row: Credential
) -> None:
    """Delete a credential; servers that used it are left without one (and counted)."""
    servers = await session.scalar(
        select(func.count(Server.id)).where(Server.credential_id == row.id)
    )
    await session.delete(row)
    await session.flush()
    await p.audit.record(
        session,
        tenant.pair,
        ctx,
        "credential.delete",
        "credential",
        row.id,
        {"name": row.name, "servers_unset": servers or 0},
    )


async def open_credential(
    p: Platform,
    session: AsyncSession,
    tenant: TenantRef,
    credential_id: uuid.UUID,
    *,
    server_id: uuid.UUID | None,
    purpose: str,
    ctx: AuditContext,
    servers: Sequence[str] = (),
) -> DecryptedCredential:
    """Decrypt a credential for use and record the use (``purpose``: "facts", "task:<id>").

    One decryption may serve many servers (a task on a fleet): ``servers`` names them all
    in the one audit event.

    Needs a write session: it audits ``credential.use`` and sets ``last_used_at``.
    """
    row = await get_credential(session, credential_id)

    async def reveal(ciphertext: str | None, name: str) -> str | None:
        if ciphertext is None:
            return None
        return await p.vault.decrypt(session, tenant.id, ciphertext, _slot(row.id, name))

    secret = await reveal(row.secret, "secret")
    used = DecryptedCredential(
        id=row.id,
        name=row.name,
        kind="ssh_key" if row.kind == "ssh_key" else "password",
        username=row.username,
        key_type=row.key_type,
        fingerprint=row.fingerprint,
        private_key=secret if row.kind == "ssh_key" else None,
        passphrase=await reveal(row.passphrase, "passphrase"),
        password=secret if row.kind == "password" else None,
        sudo_password=await reveal(row.sudo_password, "sudo_password"),
    )
    now = utcnow()
    if row.last_used_at is None or now - row.last_used_at > LAST_USED_PRECISION:
        row.last_used_at = now  # to the minute, as API keys: a fleet's tasks write it once
    await p.audit.record(
        session,
        tenant.pair,
        ctx,
        "credential.use",
        "credential",
        row.id,
        {
            "name": row.name,
            "server_id": str(server_id) if server_id else None,
            "purpose": purpose,
            **({"servers": list(servers)} if servers else {}),
        },
    )
    return used


# --- routes ---------------------------------------------------------------------------------

router = APIRouter(prefix="/api/v1/credentials", tags=["credentials"])
Reader = Annotated[Principal, require("servers:read")]
Writer = Annotated[Principal, require("servers:write")]


@router.get("")
async def read_credentials(_: Reader, session: TenantSession) -> list[CredentialPublic]:
    """Credentials of the tenant, without their secrets."""
    return [CredentialPublic.of(row) for row in await list_credentials(session)]


@router.post("", status_code=201)
async def add_credential(
    body: CredentialCreate, principal: Writer, audit: Audit, p: PlatformDep
) -> CredentialPublic:
    """Store an SSH key or a password; the secrets are never returned."""
    row = await create_credential(p, audit.session, principal.tenant, audit.context, body)
    return CredentialPublic.of(row)


@router.get("/{credential_id}")
async def read_credential(
    credential_id: uuid.UUID, _: Reader, session: TenantSession
) -> CredentialPublic:
    return CredentialPublic.of(await get_credential(session, credential_id))


@router.delete("/{credential_id}", status_code=204)
async def remove_credential(
    credential_id: uuid.UUID, principal: Writer, audit: Audit, p: PlatformDep
) -> Response:
    row = await get_credential(audit.session, credential_id)
    await delete_credential(p, audit.session, principal.tenant, audit.context, row)
    return Response(status_code=204)
