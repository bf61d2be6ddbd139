"""The credential vault: envelope encryption with AES-256-GCM.

Each tenant has a data key (table ``vault_keys``, created on first use) that encrypts its
secrets. The data key is stored wrapped (encrypted) by the platform's master key, which
never touches the database: ``IT0_MASTER_KEY`` (base64 of 32 bytes) or a key file,
``IT0_MASTER_KEY_FILE`` (default ``<data dir>/keys/master.key``, created mode 0600 on first
start).

Formats (all AES-256-GCM with a random 96-bit nonce; ``b64`` is standard base64):

* a secret: ``v1:<data key id>:b64(nonce || ciphertext || tag)``; the associated data is
  ``it0/v1/<data key id>/<table>/<record id>/<field>``, so a ciphertext copied to another
  row or field does not decrypt, and neither does one whose header was edited.
* a wrapped data key: ``v1:b64(nonce || ciphertext || tag)``; the associated data is
  ``it0/vault-key/v1/<tenant id>/<data key id>``; the row records the id of the master key
  that wrapped it (``master_key_id``, a keyed hash of the key, never the key).

Master key rotation (``it0 vault rotate-master-key``) re-wraps every tenant's data key under
a new master key while the platform runs; the data keys stay the same, so no secret is
re-encrypted:

1. the new key is installed: the key file's current key is copied to ``<file>.previous``,
   then the new key replaces the key file (each write atomic: temp file, fsync, rename);
2. every tenant's data keys are re-wrapped, each tenant in its own audited transaction;
3. the vault unwraps with whichever key a row names: the key file's or ``<file>.previous``.
   A running process that meets a key id it does not hold re-reads the key files, so it
   follows a rotation without a restart (on several hosts, copy ``master.key`` and
   ``master.key.previous`` to every host before dropping the previous key).

The previous key stays until ``it0 vault drop-previous-key``, which refuses while any data
key is still wrapped by it. A new rotation refuses to start before the last one finished
(``--resume`` finishes it), so the previous key is never overwritten while still in use.
With ``IT0_MASTER_KEY`` set that key alone is used and key files are not read; rotation
then needs the key moved into a key file first.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import secrets
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from it0.audit import AuditContext
from it0.auth.models import Tenant
from it0.core.clock import utcnow
from it0.core.errors import ConfigurationError, ConflictError, IT0Error
from it0.core.settings import Settings
from it0.inventory.models import VaultKey

if TYPE_CHECKING:
    from it0.platform import Platform

log = logging.getLogger("it0.vault")

VERSION = "v1"
KEY_BYTES = 32
NONCE_BYTES = 12


class VaultError(IT0Error):
    """The vault cannot do its work; never the client's fault, and never carries a secret."""

    code = "vault_error"
    status = 500


class MasterKeyUnavailable(VaultError):
    code = "master_key_unavailable"


class DecryptionFailed(VaultError):
    code = "vault_decrypt_failed"


class RotationUnfinished(ConflictError):
    code = "rotation_unfinished"


# --- master keys ----------------------------------------------------------------------------


@dataclass(frozen=True)
class MasterKey:
    key: bytes = field(repr=False)
    source: str

    @property
    def id(self) -> str:
        """A keyed hash of the key: names it in ``vault_keys`` without revealing it."""
        return hmac.new(self.key, b"it0 vault master key id", hashlib.sha256).hexdigest()[:16]


def decode_master_key(text: str | bytes, source: str) -> MasterKey:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != KEY_BYTES:
        # the message names where the key came from, never its content
        raise ConfigurationError(f"{source} must hold a master key: base64 of 32 bytes")
    return MasterKey(raw, source)


def encode_master_key(key: bytes) -> bytes:
    return base64.b64encode(key) + b"\n"


def previous_path(path: Path) -> Path:
    return path.with_name(path.name + ".previous")


def _write_private(path: Path, data: bytes, *, replace: bool) -> bool:
    """Write ``data`` to a mode 0600 temp file, fsync it, then move it into place.

    With ``replace`` the move is an atomic rename over any existing file; without it the
    file is linked into place only if ``path`` does not exist yet (returns False if taken).
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        tmp.unlink(missing_ok=True)
    return True


def read_master_key_file(path: Path) -> MasterKey:
    if path.stat().st_mode & 0o077:
        log.warning("master key file %s is readable by other users; chmod 600 it", path)
    return decode_master_key(path.read_bytes(), str(path))


def load_or_create_master_key(path: Path) -> tuple[MasterKey, bool]:
    """The key file's key, creating the file (mode 0600) on first use; and whether it was.

    Two processes starting at once never overwrite each other's key: the new key is linked
    into place, which fails if the other process was first, and then its key is read.
    """
    if path.exists():
        return read_master_key_file(path), False
    key = secrets.token_bytes(KEY_BYTES)
    if not _write_private(path, encode_master_key(key), replace=False):
        return read_master_key_file(path), False
    return MasterKey(key, str(path)), True


def install_master_key(path: Path, key: bytes) -> None:
    """Make ``key`` the key file's key, keeping the key it replaces as ``<file>.previous``.

    The previous key is written first, so a process re-reading the files at any moment
    finds every key that wraps a data key.
    """
    current = path.read_bytes() if path.exists() else None
    if current is not None:
        if decode_master_key(current, str(path)).key == key:
            return
        _write_private(previous_path(path), current, replace=True)
    _write_private(path, encode_master_key(key), replace=True)


class MasterKeyring:
    """Every master key this process can find; it wraps with ``current``."""

    def __init__(self, path: Path, env_key: MasterKey | None = None) -> None:
        self.path = path
        self.env_key = env_key
        self._keys: dict[str, MasterKey] = {}
        self.current: MasterKey = env_key or load_or_create_master_key(path)[0]
        self.reload()

    def reload(self) -> None:
        """Re-read the key files (after a rotation by another process)."""
        if self.env_key is not None:  # IT0_MASTER_KEY alone; key files are not consulted
            self._keys = {self.env_key.id: self.env_key}
            return
        keys: dict[str, MasterKey] = {}
        for candidate in (previous_path(self.path), self.path):
            if candidate.exists():
                key = read_master_key_file(candidate)
                keys[key.id] = key
                self.current = key
        keys[self.current.id] = self.current
        self._keys = keys

    def get(self, key_id: str) -> MasterKey:
        key = self._keys.get(key_id)
        if key is None:
            self.reload()
            key = self._keys.get(key_id)
        if key is None:
            raise MasterKeyUnavailable(
                f"a vault key is wrapped by master key {key_id}, which this process does not "
                f"hold (it holds {', '.join(sorted(self._keys))}); check IT0_MASTER_KEY, "
                f"IT0_MASTER_KEY_FILE and {previous_path(self.path).name}"
            )
        return key

    @property
    def previous(self) -> MasterKey | None:
        path = previous_path(self.path)
        if self.env_key is not None or not path.exists():
            return None
        return read_master_key_file(path)


# --- data keys and secrets ------------------------------------------------------------------


@dataclass(frozen=True)
class Slot:
    """Where a ciphertext lives; bound into it as associated data."""

    table: str
    record_id: uuid.UUID | str
    field: str

    def aad(self, data_key_id: int) -> bytes:
        return f"it0/{VERSION}/{data_key_id}/{self.table}/{self.record_id}/{self.field}".encode()


def _seal(key: bytes, plaintext: bytes, aad: bytes) -> str:
    nonce = secrets.token_bytes(NONCE_BYTES)
    return base64.b64encode(nonce + AESGCM(key).encrypt(nonce, plaintext, aad)).decode()


def _open(key: bytes, sealed: str, aad: bytes) -> bytes:
    """Raises ``InvalidTag`` or ``ValueError`` for anything but an untouched ciphertext."""
    raw = base64.b64decode(sealed, validate=True)
    if len(raw) < NONCE_BYTES + 16:
        raise ValueError("too short")
    return AESGCM(key).decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], aad)


def _wrap_aad(tenant_id: uuid.UUID, data_key_id: int) -> bytes:
    return f"it0/vault-key/{VERSION}/{tenant_id}/{data_key_id}".encode()


@dataclass(frozen=True)
class Rewrapped:
    data_key_id: int
    from_master_key: str
    to_master_key: str


class Vault:
    """Encrypts and decrypts a tenant's secrets in the caller's session (bound to it)."""

    def __init__(self, keyring: MasterKeyring) -> None:
        self.keyring = keyring

    @classmethod
    def from_settings(cls, settings: Settings) -> Vault:
        env = settings.master_key
        env_key = (
            None if env is None else decode_master_key(env.get_secret_value(), "IT0_MASTER_KEY")
        )
        return cls(MasterKeyring(settings.master_key_path, env_key))

    async def encrypt(
        self, session: AsyncSession, tenant_id: uuid.UUID, plaintext: str, slot: Slot
    ) -> str:
        key_id, key = await self._active_data_key(session, tenant_id)
        return f"{VERSION}:{key_id}:{_seal(key, plaintext.encode(), slot.aad(key_id))}"

    async def decrypt(
        self, session: AsyncSession, tenant_id: uuid.UUID, ciphertext: str, slot: Slot
    ) -> str:
        version, _, rest = ciphertext.partition(":")
        key_text, _, sealed = rest.partition(":")
        if version != VERSION or not (key_text.isascii() and key_text.isdigit()):
            raise DecryptionFailed(f"a stored secret of {slot.table} has an unknown format")
        key_id = int(key_text)
        key = await self._data_key(session, tenant_id, key_id)
        try:
            return _open(key, sealed, slot.aad(key_id)).decode()
        except (InvalidTag, ValueError) as exc:
            raise DecryptionFailed(
                f"the stored {slot.field} of {slot.table} {slot.record_id} does not decrypt: "
                "it was changed, or copied from another record or field"
            ) from exc

    async def rewrap(self, session: AsyncSession, tenant_id: uuid.UUID) -> list[Rewrapped]:
        """Re-wrap the tenant's data keys that the current master key does not wrap yet."""
        self.keyring.reload()
        current = self.keyring.current
        rows = (
            await session.scalars(
                select(VaultKey)
                .where(VaultKey.master_key_id != current.id)
                .order_by(VaultKey.id)
                .with_for_update()
            )
        ).all()
        done = []
        for row in rows:
            key = self._unwrap(row, tenant_id)
            done.append(Rewrapped(row.id, row.master_key_id, current.id))
            row.wrapped_key = self._wrap(current, key, tenant_id, row.id)
            row.master_key_id = current.id
            row.rewrapped_at = utcnow()
        await session.flush()
        return done

    def _wrap(self, master: MasterKey, key: bytes, tenant_id: uuid.UUID, key_id: int) -> str:
        return f"{VERSION}:{_seal(master.key, key, _wrap_aad(tenant_id, key_id))}"

    def _unwrap(self, row: VaultKey, tenant_id: uuid.UUID) -> bytes:
        master = self.keyring.get(row.master_key_id)
        version, _, sealed = row.wrapped_key.partition(":")
        try:
            if version != VERSION:
                raise ValueError("unknown version")
            return _open(master.key, sealed, _wrap_aad(tenant_id, row.id))
        except (InvalidTag, ValueError) as exc:
            raise VaultError(
                f"vault key {row.id} of this tenant does not unwrap with master key "
                f"{master.id}: the row was changed or copied from another tenant"
            ) from exc

    async def _data_key(self, session: AsyncSession, tenant_id: uuid.UUID, key_id: int) -> bytes:
        # unwrapped per use, never cached: a cached key could outlive a rolled-back creation
        row = await session.get(VaultKey, key_id)
        if row is None:
            raise DecryptionFailed(f"vault key {key_id} of this tenant does not exist")
        return self._unwrap(row, tenant_id)

    async def _active_data_key(
        self, session: AsyncSession, tenant_id: uuid.UUID
    ) -> tuple[int, bytes]:
        # one statement, so that the choice below rests on one snapshot: with the active key
        # and the highest id read apart, two first uses could create two keys
        ids = (await session.execute(select(VaultKey.id, VaultKey.active))).all()
        active = [key_id for key_id, is_active in ids if is_active]
        if active:
            return max(active), await self._data_key(session, tenant_id, max(active))
        return await self._create_data_key(
            session, tenant_id, max((i for i, _ in ids), default=0) + 1
        )

    async def _create_data_key(
        self, session: AsyncSession, tenant_id: uuid.UUID, key_id: int
    ) -> tuple[int, bytes]:
        """The tenant's first data key, in the caller's transaction (audited with it)."""
        self.keyring.reload()  # wrap with the newest master key, even mid-rotation
        current = self.keyring.current
        dialect = session.get_bind().dialect.name
        insert = pg_insert if dialect == "postgresql" else sqlite_insert
        # a request that creates the same key at the same time wins or loses the insert,
        # never fails our transaction; the key that won is then read back
        await session.execute(
            insert(VaultKey)
            .values(
                id=key_id,
                wrapped_key=self._wrap(current, secrets.token_bytes(KEY_BYTES), tenant_id, key_id),
                master_key_id=current.id,
                active=True,
                created_at=utcnow(),
            )
            .on_conflict_do_nothing(index_elements=["id"])
        )
        row = await session.scalar(
            select(VaultKey).where(VaultKey.active).order_by(VaultKey.id.desc()).limit(1)
        )
        if row is None:
            raise VaultError("the vault key of this tenant could not be created")
        return row.id, self._unwrap(row, tenant_id)


# --- rotation (platform-wide) ---------------------------------------------------------------


@dataclass
class RotationReport:
    master_key_id: str
    previous_master_key_id: str | None
    installed: bool
    rewrapped: dict[str, int] = field(default_factory=dict)  # tenant slug -> data keys


@dataclass(frozen=True)
class TenantKeys:
    slug: str
    data_keys: int
    master_key_ids: tuple[str, ...]


async def _tenants(p: Platform) -> list[Tenant]:
    async with p.db.session() as session:
        return list((await session.scalars(select(Tenant).order_by(Tenant.slug))).all())


async def vault_status(p: Platform) -> list[TenantKeys]:
    """Per tenant: how many data keys, and which master keys wrap them."""
    status = []
    for tenant in await _tenants(p):
        async with p.db.session(tenant.schema_name) as session:
            rows = (await session.execute(select(VaultKey.id, VaultKey.master_key_id))).all()
        status.append(TenantKeys(tenant.slug, len(rows), tuple(sorted({m for _, m in rows}))))
    return status


def _not_current(status: list[TenantKeys], current: str) -> dict[str, tuple[str, ...]]:
    return {t.slug: t.master_key_ids for t in status if set(t.master_key_ids) - {current}}


async def rotate_master_key(
    p: Platform, ctx: AuditContext, new_key: bytes | None
) -> RotationReport:
    """Install ``new_key`` (None: keep the current one) and re-wrap every tenant's data keys.

    Each tenant is re-wrapped in its own transaction with a ``vault.rotate`` audit event.
    Refuses a new key while an earlier rotation is unfinished: that would overwrite the
    previous key while data keys still need it.
    """
    if p.settings.master_key is not None:
        raise ConfigurationError(
            "the master key comes from IT0_MASTER_KEY; rotation installs the new key as a key "
            "file, so move the key into IT0_MASTER_KEY_FILE first (and unset IT0_MASTER_KEY)"
        )
    ring = p.vault.keyring
    ring.reload()
    installed = False
    if new_key is not None and new_key != ring.current.key:
        if len(new_key) != KEY_BYTES:
            raise ConfigurationError("a master key is 32 bytes")
        unfinished = _not_current(await vault_status(p), ring.current.id)
        if unfinished:
            raise RotationUnfinished(
                "an earlier master key rotation has not finished (tenants "
                f"{', '.join(sorted(unfinished))}); finish it with "
                "`it0 vault rotate-master-key --resume` first",
                details={"tenants": sorted(unfinished)},
            )
        install_master_key(ring.path, new_key)
        ring.reload()
        installed = True
    previous = ring.previous
    report = RotationReport(ring.current.id, previous.id if previous else None, installed)
    # a process that has not re-read the key files yet may still wrap a new tenant's first
    # data key with the old key: passes repeat until one finds nothing left to re-wrap
    for _ in range(5):
        moved = 0
        for tenant in await _tenants(p):
            async with p.db.session(tenant.schema_name, write=True) as session:
                for done in await p.vault.rewrap(session, tenant.id):
                    await p.audit.record(
                        session,
                        (tenant.slug, tenant.schema_name),
                        ctx,
                        "vault.rotate",
                        "vault_key",
                        done.data_key_id,
                        {
                            "from_master_key": done.from_master_key,
                            "to_master_key": done.to_master_key,
                        },
                    )
                    report.rewrapped[tenant.slug] = report.rewrapped.get(tenant.slug, 0) + 1
                    moved += 1
        if not moved:
            break
    return report


async def drop_previous_master_key(p: Platform) -> str | None:
    """Delete ``<key file>.previous`` once no data key is wrapped by it; its id, or None."""
    ring = p.vault.keyring
    ring.reload()
    previous = ring.previous
    if previous is None:
        return None
    if previous.id != ring.current.id:
        users = [t.slug for t in await vault_status(p) if previous.id in t.master_key_ids]
        if users:
            raise RotationUnfinished(
                f"the previous master key still wraps the vault keys of {', '.join(users)}; "
                "run `it0 vault rotate-master-key --resume` first",
                details={"tenants": users},
            )
    previous_path(ring.path).unlink()
    ring.reload()
    return previous.id
