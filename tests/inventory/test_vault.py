"""The vault: master key files, envelope encryption bound to its slot, master key rotation."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import stat
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy import select, update

from it0.audit import Actor, AuditContext, install_audit_guard
from it0.audit.models import AuditEvent
from it0.auth.service import create_tenant
from it0.auth.tokens import TenantRef, find_tenant
from it0.core.errors import ConfigurationError
from it0.inventory.models import VaultKey
from it0.inventory.vault import (
    DecryptionFailed,
    MasterKeyring,
    MasterKeyUnavailable,
    RotationUnfinished,
    Slot,
    Vault,
    VaultError,
    drop_previous_master_key,
    install_master_key,
    load_or_create_master_key,
    previous_path,
    rotate_master_key,
    vault_status,
)
from it0.platform import Platform
from tests.audit.helpers import run_cli
from tests.conftest import make_settings

CTX = AuditContext(Actor.system("vault-test"))
SLOT = Slot("things", "0190-record", "secret")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


# --- master key files (no database) ---------------------------------------------------------


def test_master_key_file_is_created_0600_and_then_reused(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "master.key"
    key, created = load_or_create_master_key(path)
    assert created
    assert _mode(path) == 0o600
    assert _mode(path.parent) == 0o700
    assert base64.b64decode(path.read_text().strip()) == key.key
    assert len(key.key) == 32
    again, created_again = load_or_create_master_key(path)
    assert not created_again
    assert again.key == key.key
    assert again.id == key.id
    assert len(key.id) == 16
    assert key.id not in _b64(key.key)
    assert _b64(key.key) not in repr(key)
    assert [p.name for p in path.parent.iterdir()] == ["master.key"]  # no temp file left


def test_processes_starting_at_once_share_one_master_key(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "master.key"
    barrier = threading.Barrier(8)
    results: list[tuple[bytes, bool]] = []
    lock = threading.Lock()

    def start() -> None:
        barrier.wait()
        key, created = load_or_create_master_key(path)
        with lock:
            results.append((key.key, created))

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({key for key, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    assert [p.name for p in path.parent.iterdir()] == ["master.key"]


def test_master_key_from_the_environment_creates_no_file(tmp_path: Path) -> None:
    key = secrets.token_bytes(32)
    settings = make_settings(tmp_path / "data", None, master_key=SecretStr(_b64(key)))
    vault = Vault.from_settings(settings)
    assert vault.keyring.current.key == key
    assert vault.keyring.current.source == "IT0_MASTER_KEY"
    assert not settings.master_key_path.exists()


@pytest.mark.parametrize(
    "value", ["not base64 at all!", _b64(b"short"), _b64(secrets.token_bytes(48)), ""]
)
def test_a_malformed_master_key_is_a_clear_error(tmp_path: Path, value: str) -> None:
    settings = make_settings(tmp_path / "env", None, master_key=SecretStr(value))
    with pytest.raises(ConfigurationError) as env_error:
        Vault.from_settings(settings)
    assert "IT0_MASTER_KEY" in env_error.value.message
    assert "base64 of 32 bytes" in env_error.value.message

    path = tmp_path / "file" / "master.key"
    path.parent.mkdir()
    path.write_text(value)
    path.chmod(0o600)
    with pytest.raises(ConfigurationError) as file_error:
        Vault.from_settings(make_settings(tmp_path / "data", None, master_key_file=path))
    assert str(path) in file_error.value.message
    for message in (env_error.value.message, file_error.value.message):
        assert not value or value not in message


def test_installing_a_key_keeps_the_previous_one(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "master.key"
    old, _ = load_or_create_master_key(path)
    new = secrets.token_bytes(32)
    install_master_key(path, new)
    assert base64.b64decode(path.read_text()) == new
    assert base64.b64decode(previous_path(path).read_text()) == old.key
    assert _mode(path) == 0o600
    assert _mode(previous_path(path)) == 0o600
    ring = MasterKeyring(path)
    assert ring.current.key == new
    assert ring.get(old.id).key == old.key
    assert sorted(p.name for p in path.parent.iterdir()) == ["master.key", "master.key.previous"]
    install_master_key(path, new)  # the same key again changes nothing
    assert base64.b64decode(previous_path(path).read_text()) == old.key


# --- encryption (both databases) ------------------------------------------------------------


async def _tenant(p: Platform, slug: str = "default") -> TenantRef:
    async with p.db.session() as session:
        return await find_tenant(session, slug)


async def _seal(p: Platform, tenant: TenantRef, plaintext: str, slot: Slot = SLOT) -> str:
    """Encrypt in a write transaction, audited as a route would be."""
    async with p.db.session(tenant.schema, write=True) as session:
        ciphertext = await p.vault.encrypt(session, tenant.id, plaintext, slot)
        await p.audit.record(session, tenant.pair, CTX, "test.seal", "thing")
    return ciphertext


async def _open(p: Platform, tenant: TenantRef, ciphertext: str, slot: Slot = SLOT) -> str:
    async with p.db.session(tenant.schema) as session:
        return await p.vault.decrypt(session, tenant.id, ciphertext, slot)


async def _vault_keys(p: Platform, tenant: TenantRef) -> list[VaultKey]:
    async with p.db.session(tenant.schema) as session:
        return list((await session.scalars(select(VaultKey).order_by(VaultKey.id))).all())


@asynccontextmanager
async def _platform(p: Platform, **changes: object) -> AsyncIterator[Platform]:
    """Another platform process on the same database and data dir, with changed settings."""
    install_audit_guard()
    other = Platform.create(p.settings.model_copy(update=changes))
    try:
        yield other
    finally:
        await other.close()


async def test_round_trip_creates_the_tenants_data_key_once(platform: Platform) -> None:
    tenant = await _tenant(platform)
    assert await _vault_keys(platform, tenant) == []
    first = await _seal(platform, tenant, "correct horse battery staple")
    second = await _seal(platform, tenant, "correct horse battery staple")
    for ciphertext in (first, second):
        version, key_id, payload = ciphertext.split(":")
        assert (version, key_id) == ("v1", "1")
        assert len(base64.b64decode(payload)) == 12 + len("correct horse battery staple") + 16
        assert await _open(platform, tenant, ciphertext) == "correct horse battery staple"
    assert first != second  # a fresh nonce every time
    [row] = await _vault_keys(platform, tenant)
    assert row.id == 1
    assert row.active
    assert row.master_key_id == platform.vault.keyring.current.id
    assert row.wrapped_key.startswith("v1:")
    assert _b64(platform.vault.keyring.current.key) not in row.wrapped_key
    assert await _open(platform, tenant, await _seal(platform, tenant, "")) == ""
    assert await _open(platform, tenant, await _seal(platform, tenant, "ünïcødé ✓")) == "ünïcødé ✓"


async def test_concurrent_first_uses_create_one_data_key(platform: Platform) -> None:
    await create_tenant(platform, "acme", "Acme", CTX)
    tenant = await _tenant(platform, "acme")
    sealed = await asyncio.gather(*(_seal(platform, tenant, f"secret {i}") for i in range(4)))
    assert [r.id for r in await _vault_keys(platform, tenant)] == [1]
    for i, ciphertext in enumerate(sealed):
        assert await _open(platform, tenant, ciphertext) == f"secret {i}"


def _flip(ciphertext: str, at: int) -> str:
    head, payload = ciphertext.rsplit(":", 1)
    raw = bytearray(base64.b64decode(payload))
    raw[at] ^= 0x01
    return f"{head}:{base64.b64encode(bytes(raw)).decode()}"


async def test_a_ciphertext_opens_only_in_its_own_slot_and_untouched(platform: Platform) -> None:
    tenant = await _tenant(platform)
    ciphertext = await _seal(platform, tenant, "s3cret")
    elsewhere = [
        Slot("things", "0190-other-record", "secret"),  # another row
        Slot("things", "0190-record", "passphrase"),  # another field
        Slot("others", "0190-record", "secret"),  # another table
    ]
    for slot in elsewhere:
        with pytest.raises(DecryptionFailed, match="changed, or copied from another"):
            await _open(platform, tenant, ciphertext, slot)
    tampered = [
        _flip(ciphertext, 0),  # nonce
        _flip(ciphertext, 13),  # ciphertext
        _flip(ciphertext, -1),  # tag
        ciphertext[:-8] + "AAAAAAA=",
        ciphertext.rsplit(":", 1)[0] + ":",
        ciphertext.rsplit(":", 1)[0] + ":not base64!",
    ]
    for bad in tampered:
        with pytest.raises(DecryptionFailed):
            await _open(platform, tenant, bad)
    with pytest.raises(DecryptionFailed, match="does not exist"):
        await _open(platform, tenant, ciphertext.replace("v1:1:", "v1:2:", 1))
    for bad in (ciphertext.replace("v1:", "v2:", 1), "plaintext", "v1:x:AAAA"):
        with pytest.raises(DecryptionFailed, match="unknown format"):
            await _open(platform, tenant, bad)
    assert await _open(platform, tenant, ciphertext) == "s3cret"


async def test_tenants_have_their_own_data_keys(platform: Platform) -> None:
    default = await _tenant(platform)
    await create_tenant(platform, "acme", "Acme", CTX)
    acme = await _tenant(platform, "acme")
    ciphertext = await _seal(platform, default, "default's secret")
    await _seal(platform, acme, "acme's secret")
    # same data key id, different key: default's ciphertext means nothing in acme
    with pytest.raises(DecryptionFailed):
        await _open(platform, acme, ciphertext)
    # and a wrapped data key copied into another tenant does not unwrap there
    [row] = await _vault_keys(platform, default)
    async with platform.db.session(acme.schema, write=True) as session:
        await session.execute(
            update(VaultKey).where(VaultKey.id == 1).values(wrapped_key=row.wrapped_key)
        )
        await platform.audit.record(session, acme.pair, CTX, "test.copy", "vault_key", 1)
    with pytest.raises(VaultError, match="does not unwrap"):
        await _open(platform, acme, await _seal(platform, acme, "x"))


async def test_a_wrong_master_key_is_a_clear_error(platform: Platform) -> None:
    tenant = await _tenant(platform)
    ciphertext = await _seal(platform, tenant, "s3cret")
    stored_id = platform.vault.keyring.current.id
    wrong = secrets.token_bytes(32)
    async with _platform(platform, master_key=SecretStr(_b64(wrong))) as other:
        with pytest.raises(MasterKeyUnavailable) as error:
            await _open(other, tenant, ciphertext)
        message = error.value.message
        assert stored_id in message
        assert "IT0_MASTER_KEY" in message
        assert _b64(wrong) not in message
        assert _b64(platform.vault.keyring.current.key) not in message
    # a different key file in place of the right one: the same clear error
    key_file = platform.settings.master_key_path
    right = key_file.read_bytes()
    key_file.write_text(_b64(wrong))
    try:
        async with _platform(platform) as other:
            with pytest.raises(MasterKeyUnavailable, match=stored_id):
                await _open(other, tenant, ciphertext)
    finally:
        key_file.write_bytes(right)


# --- rotation -------------------------------------------------------------------------------


async def _fill(p: Platform, slugs: list[str]) -> dict[str, tuple[TenantRef, str]]:
    """One secret in each tenant (created unless it is ``default``), by slug."""
    sealed = {}
    for slug in slugs:
        if slug != "default":
            await create_tenant(p, slug, slug.title(), CTX)
        tenant = await _tenant(p, slug)
        sealed[slug] = (tenant, await _seal(p, tenant, f"the secret of {slug}"))
    return sealed


async def _all_open(p: Platform, sealed: dict[str, tuple[TenantRef, str]]) -> None:
    for slug, (tenant, ciphertext) in sealed.items():
        assert await _open(p, tenant, ciphertext) == f"the secret of {slug}"


async def test_rotation_rewraps_every_tenant_and_survives_dropping_the_old_key(
    platform: Platform,
) -> None:
    sealed = await _fill(platform, ["default", "acme", "beta"])
    await create_tenant(platform, "empty", "Empty", CTX)  # no vault key yet: nothing to do
    old = platform.vault.keyring.current
    key_file = platform.settings.master_key_path
    async with _platform(platform) as running:  # another process, started before rotation
        await _all_open(running, sealed)
        new = secrets.token_bytes(32)
        report = await rotate_master_key(platform, CTX, new)

        assert report.installed
        assert report.rewrapped == {"default": 1, "acme": 1, "beta": 1}
        assert report.previous_master_key_id == old.id
        assert base64.b64decode(key_file.read_text()) == new
        assert base64.b64decode(previous_path(key_file).read_text()) == old.key
        assert _mode(key_file) == _mode(previous_path(key_file)) == 0o600
        new_id = platform.vault.keyring.current.id
        assert report.master_key_id == new_id != old.id
        for tenant, _ in sealed.values():
            [row] = await _vault_keys(platform, tenant)
            assert row.master_key_id == new_id
            assert row.rewrapped_at is not None
        assert {t.slug: t.master_key_ids for t in await vault_status(platform)} == {
            "default": (new_id,),
            "acme": (new_id,),
            "beta": (new_id,),
            "empty": (),
        }
        # the data keys did not change: the stored secrets open as they are, also in the
        # process that started with the old key only (it re-reads the key files)
        await _all_open(platform, sealed)
        await _all_open(running, sealed)
        # and it wraps a new tenant's first data key with the new master key
        empty = await _tenant(running, "empty")
        await _seal(running, empty, "the secret of empty")
        assert [r.master_key_id for r in await _vault_keys(running, empty)] == [new_id]

    # every tenant's rotation is audited, without key material
    for slug, (tenant, _) in sealed.items():
        async with platform.db.session(tenant.schema) as session:
            events = (
                await session.scalars(select(AuditEvent).where(AuditEvent.action == "vault.rotate"))
            ).all()
        assert len(events) == 1, slug
        assert events[0].actor_name == "vault-test"
        assert events[0].resource_type == "vault_key"
        assert json.loads(events[0].summary) == {
            "from_master_key": old.id,
            "to_master_key": new_id,
        }
        for material in (_b64(new), _b64(old.key)):
            assert material not in events[0].summary

    # a second rotation with nothing left over finds nothing to re-wrap
    assert (await rotate_master_key(platform, CTX, None)).rewrapped == {}

    assert await drop_previous_master_key(platform) == old.id
    assert not previous_path(key_file).exists()
    async with _platform(platform) as fresh:  # started after the old key is gone
        assert fresh.vault.keyring.current.key == new
        await _all_open(fresh, sealed)
        with pytest.raises(MasterKeyUnavailable):
            fresh.vault.keyring.get(old.id)


async def test_an_unfinished_rotation_is_resumed_not_overwritten(platform: Platform) -> None:
    sealed = await _fill(platform, ["default", "acme"])
    old = platform.vault.keyring.current
    key_file = platform.settings.master_key_path
    # a rotation that stopped right after installing its key
    install_master_key(key_file, secrets.token_bytes(32))
    with pytest.raises(RotationUnfinished, match="--resume") as error:
        await rotate_master_key(platform, CTX, secrets.token_bytes(32))
    assert error.value.details == {"tenants": ["acme", "default"]}
    with pytest.raises(RotationUnfinished, match="still wraps"):
        await drop_previous_master_key(platform)
    assert base64.b64decode(previous_path(key_file).read_text()) == old.key  # untouched
    await _all_open(platform, sealed)

    report = await rotate_master_key(platform, CTX, None)
    assert not report.installed
    assert report.rewrapped == {"default": 1, "acme": 1}
    assert await drop_previous_master_key(platform) == old.id
    assert await drop_previous_master_key(platform) is None
    async with _platform(platform) as fresh:
        await _all_open(fresh, sealed)


async def test_rotation_refuses_a_master_key_from_the_environment(platform: Platform) -> None:
    key = SecretStr(_b64(secrets.token_bytes(32)))
    async with _platform(platform, master_key=key) as other:
        with pytest.raises(ConfigurationError, match="IT0_MASTER_KEY_FILE"):
            await rotate_master_key(other, CTX, secrets.token_bytes(32))


async def test_rotation_from_the_command_line(platform: Platform, tmp_path: Path) -> None:
    sealed = await _fill(platform, ["default", "acme"])
    old = platform.vault.keyring.current
    settings = platform.settings

    result = await run_cli(settings, "vault", "rotate-master-key")
    assert result.exit_code == 0, result.output
    assert "re-wrapped 1 vault key(s) of tenant acme" in result.output
    assert "re-wrapped 1 vault key(s) of tenant default" in result.output
    assert f"the previous key {old.id} is kept" in result.output
    generated = base64.b64decode(settings.master_key_path.read_text())
    assert _b64(generated) not in result.output

    given = secrets.token_bytes(32)
    key_file = tmp_path / "new.key"
    key_file.write_text(_b64(given))
    result = await run_cli(settings, "vault", "rotate-master-key", "--new-key-file", key_file)
    assert result.exit_code == 0, result.output
    assert base64.b64decode(settings.master_key_path.read_text()) == given
    assert base64.b64decode(previous_path(settings.master_key_path).read_text()) == generated

    result = await run_cli(settings, "vault", "status")
    assert result.exit_code == 0, result.output
    ring = MasterKeyring(settings.master_key_path)
    assert f"current master key {ring.current.id}" in result.output
    assert result.output.count(ring.current.id) == 3  # the header and both tenants

    bad = tmp_path / "bad.key"
    bad.write_text("not a key")
    result = await run_cli(settings, "vault", "rotate-master-key", "--new-key-file", bad)
    assert result.exit_code == 2
    assert "base64 of 32 bytes" in result.output
    result = await run_cli(settings, "vault", "rotate-master-key", "--generate", "--resume")
    assert result.exit_code == 2

    result = await run_cli(settings, "vault", "drop-previous-key")
    assert result.exit_code == 0, result.output
    assert not previous_path(settings.master_key_path).exists()
    async with _platform(platform) as fresh:
        await _all_open(fresh, sealed)
