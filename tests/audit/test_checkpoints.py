"""Signed checkpoints: every N events, at shutdown when the head moved, linked and verifiable."""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from it0.app import checkpoint_all, create_app
from it0.audit import Actor, AuditContext
from it0.audit.chain import AuditTrail, checkpoint_payload
from it0.audit.models import AuditCheckpoint
from it0.auth.service import create_tenant
from it0.platform import Platform
from tests.audit.conftest import CHECKPOINT_EVERY
from tests.audit.helpers import (
    SLUG,
    all_checkpoints,
    all_events,
    append,
    head_seq,
    sign_head,
    verify,
)


def signature_ok(trail: AuditTrail, slug: str, cp: AuditCheckpoint) -> bool:
    try:
        trail.public_key.verify(bytes.fromhex(cp.signature), checkpoint_payload(slug, cp))
    except InvalidSignature:
        return False
    return True


async def test_a_checkpoint_every_n_events(small_platform: Platform) -> None:
    p = small_platform
    assert p.audit.checkpoint_every == CHECKPOINT_EVERY
    await append(p, 12 - await head_seq(p))
    events = {e.seq: e for e in await all_events(p)}
    assert max(events) == 12

    checkpoints = await all_checkpoints(p)
    assert [cp.seq for cp in checkpoints] == [5, 10]
    first, second = checkpoints
    assert first.prev_signature is None
    assert second.prev_signature == first.signature
    for cp in checkpoints:
        assert cp.head_hash == events[cp.seq].hash
        assert cp.key_id == p.audit.key_id
        assert signature_ok(p.audit, SLUG, cp)
        assert not signature_ok(p.audit, "acme", cp)  # the tenant is part of what is signed
    result = await verify(p)
    assert result.ok, result.problem
    assert (result.events, result.checkpoints) == (12, 2)


async def test_no_checkpoint_before_n_events(platform: Platform) -> None:
    await append(platform, 10)
    assert await all_checkpoints(platform) == []


async def test_checkpoint_all_signs_only_heads_that_moved(small_platform: Platform) -> None:
    p = small_platform
    await append(p, 12 - await head_seq(p))
    assert await checkpoint_all(p) == 1
    checkpoints = await all_checkpoints(p)
    assert [cp.seq for cp in checkpoints] == [5, 10, 12]
    assert checkpoints[2].prev_signature == checkpoints[1].signature
    assert signature_ok(p.audit, SLUG, checkpoints[2])

    assert await checkpoint_all(p) == 0  # nothing new
    assert await sign_head(p) is None
    await append(p, 3)  # 15: checkpointed on the way
    assert await checkpoint_all(p) == 0
    assert [cp.seq for cp in await all_checkpoints(p)] == [5, 10, 12, 15]
    await append(p, 1)
    assert await checkpoint_all(p) == 1
    assert [cp.seq for cp in await all_checkpoints(p)] == [5, 10, 12, 15, 16]
    assert (await verify(p)).ok


async def test_checkpoint_all_covers_every_tenant(platform: Platform) -> None:
    await create_tenant(platform, "acme", "Acme", AuditContext(Actor.system("test")))
    assert await checkpoint_all(platform) == 2
    assert [cp.seq for cp in await all_checkpoints(platform, "t_acme")] == [1]
    [acme_cp] = await all_checkpoints(platform, "t_acme")
    assert signature_ok(platform.audit, "acme", acme_cp)
    assert await checkpoint_all(platform) == 0
    await append(platform, 1, tenant=("acme", "t_acme"))
    assert await checkpoint_all(platform) == 1
    assert [cp.seq for cp in await all_checkpoints(platform, "t_acme")] == [1, 2]
    assert (await verify(platform, slug="acme", schema="t_acme")).ok


async def test_shutdown_signs_the_head_when_it_moved(platform: Platform) -> None:
    app = create_app(platform=platform)
    await append(platform, 3)
    head = await head_seq(platform)
    async with app.router.lifespan_context(app):
        assert await all_checkpoints(platform) == []  # not at start
    [cp] = await all_checkpoints(platform)
    assert cp.seq == head
    assert signature_ok(platform.audit, SLUG, cp)

    async with app.router.lifespan_context(app):
        pass
    assert len(await all_checkpoints(platform)) == 1  # the head did not move

    async with app.router.lifespan_context(app):
        await append(platform, 2)
    checkpoints = await all_checkpoints(platform)
    assert [c.seq for c in checkpoints] == [head, head + 2]
    assert checkpoints[1].prev_signature == cp.signature
    assert (await verify(platform)).ok


async def test_checkpoints_of_another_key_are_flagged(platform: Platform) -> None:
    """After a key change old checkpoints cannot be checked: a warning, not a failure."""
    await append(platform, 2)
    await sign_head(platform)
    other = AuditTrail(Ed25519PrivateKey.generate())
    async with platform.db.session("t_default") as session:
        result = await other.verify(session, SLUG)
    assert result.ok
    assert any("another key" in w for w in result.warnings)


async def test_checkpoint_signed_with_a_forged_key_is_reported(platform: Platform) -> None:
    """A checkpoint written with someone else's key but claiming the platform's key id."""
    await append(platform, 2)
    forger = AuditTrail(Ed25519PrivateKey.generate())
    forger.key_id = platform.audit.key_id
    async with platform.db.session("t_default", write=True) as session:
        await forger.checkpoint(session, ("default", "t_default"))
    result = await verify(platform)
    assert not result.ok
    assert result.first_bad_seq == await head_seq(platform)
    assert "bad signature" in (result.problem or "")
