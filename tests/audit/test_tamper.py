"""Tampering by someone who gets past the triggers is found, naming the first bad event.

Each case is checked through ``AuditTrail.verify`` and through ``it0 audit verify``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from it0.audit.chain import event_hash
from it0.audit.models import AuditCheckpoint, AuditEvent
from it0.core.clock import uuid7
from it0.core.settings import Settings
from it0.platform import Platform
from tests.audit.helpers import (
    SLUG,
    all_checkpoints,
    all_events,
    append,
    export_checkpoints,
    head_seq,
    one_line,
    parse_export,
    run_cli,
    sign_head,
    superuser,
    verify,
)

EVENTS = 10  # bootstrap writes 2, the tests append the rest
K = 5  # the row that is tampered with

Tamper = Callable[[AsyncSession], Awaitable[None]]


# --- ways to tamper ---------------------------------------------------------------------------


async def _get(session: AsyncSession, seq: int) -> AuditEvent:
    event = await session.get(AuditEvent, seq)
    assert event is not None
    return event


async def modify_summary(session: AsyncSession) -> None:
    await session.execute(
        update(AuditEvent).where(AuditEvent.seq == K).values(summary='{"n":"forged"}')
    )


async def modify_action(session: AsyncSession) -> None:
    await session.execute(update(AuditEvent).where(AuditEvent.seq == K).values(action="forged"))


async def modify_actor_and_rehash(session: AsyncSession) -> None:
    event = await _get(session, K)
    event.actor_name = "somebody else"
    event.hash = event_hash(event.prev_hash, event)  # self-consistent, but 6 links to the old hash


async def modify_prev_hash(session: AsyncSession) -> None:
    await session.execute(update(AuditEvent).where(AuditEvent.seq == K).values(prev_hash="1" * 64))


async def delete_row(session: AsyncSession) -> None:
    await session.execute(delete(AuditEvent).where(AuditEvent.seq == K))


async def delete_first_row(session: AsyncSession) -> None:
    await session.execute(delete(AuditEvent).where(AuditEvent.seq == 1))


async def delete_row_and_renumber(session: AsyncSession) -> None:
    await session.execute(delete(AuditEvent).where(AuditEvent.seq == K))
    for seq in range(K + 1, EVENTS + 1):
        await session.execute(update(AuditEvent).where(AuditEvent.seq == seq).values(seq=seq - 1))


async def _insert_at(session: AsyncSession, at: int, *, proper_hash: bool, count: int = 1) -> None:
    # make room: renumber the rows from ``at`` on, highest first (seq is the primary key)
    for seq in range(EVENTS, at - 1, -1):
        await session.execute(
            update(AuditEvent).where(AuditEvent.seq == seq).values(seq=seq + count)
        )
    before = await _get(session, at - 1)
    prev_hash = before.hash
    for seq in range(at, at + count):
        forged = AuditEvent(
            seq=seq, id=uuid7(), occurred_at=before.occurred_at, actor_type="user",
            actor_id=before.actor_id, actor_name=before.actor_name, on_behalf_of=None,
            action="role.delete", resource_type="role", resource_id="r-forged",
            request_id=None, client_addr=None, summary='{"name":"auditor"}', prev_hash=prev_hash,
        )  # fmt: skip
        forged.hash = event_hash(prev_hash, forged) if proper_hash else "f" * 64
        prev_hash = forged.hash
        session.add(forged)
    await session.flush()


async def insert_forged(session: AsyncSession) -> None:
    """A forger who knows the algorithm: the new row's own hash and link are right."""
    await _insert_at(session, K, proper_hash=True)


async def insert_two_forged(session: AsyncSession) -> None:
    await _insert_at(session, K, proper_hash=True, count=2)


async def insert_forged_sloppy(session: AsyncSession) -> None:
    await _insert_at(session, K, proper_hash=False)


async def _move(session: AsyncSession, seq: int, to: int) -> None:
    await session.execute(update(AuditEvent).where(AuditEvent.seq == seq).values(seq=to))


async def swap_rows(session: AsyncSession) -> None:
    await _move(session, K, 10_000)
    await _move(session, K + 1, K)
    await _move(session, 10_000, K + 1)


async def swap_rows_far(session: AsyncSession) -> None:
    await _move(session, K, 10_000)
    await _move(session, EVENTS, K)
    await _move(session, 10_000, EVENTS)


CASES: dict[str, tuple[Tamper, int]] = {
    "modify-summary": (modify_summary, K),
    "modify-action": (modify_action, K),
    "modify-and-rehash": (modify_actor_and_rehash, K),
    "modify-prev-hash": (modify_prev_hash, K),
    "delete-middle": (delete_row, K),
    "delete-first": (delete_first_row, 1),
    "delete-and-renumber": (delete_row_and_renumber, K),
    "insert-forged": (insert_forged, K),
    "insert-two-forged": (insert_two_forged, K),
    "insert-forged-bad-hash": (insert_forged_sloppy, K),
    "swap-neighbours": (swap_rows, K),
    "swap-far": (swap_rows_far, K),
}


@pytest.fixture
async def ten(platform: Platform) -> Platform:
    await append(platform, EVENTS - await head_seq(platform))
    assert await head_seq(platform) == EVENTS
    assert (await verify(platform)).ok
    return platform


@pytest.mark.parametrize("case", list(CASES))
async def test_tampering_names_the_first_bad_seq(
    ten: Platform, settings: Settings, case: str
) -> None:
    tamper, first_bad = CASES[case]
    async with superuser(ten) as session:
        await tamper(session)

    result = await verify(ten)
    assert not result.ok
    assert result.first_bad_seq == first_bad, result.problem
    assert result.problem

    cli = await run_cli(settings, "audit", "verify", "--tenant", SLUG)
    assert cli.exit_code == 1, cli.output
    assert f"TAMPERED {SLUG}: first bad seq {first_bad}:" in one_line(cli.stdout)


async def test_intact_chain_verifies_through_the_cli(ten: Platform, settings: Settings) -> None:
    cli = await run_cli(settings, "audit", "verify")
    assert cli.exit_code == 0, cli.output
    assert f"ok {SLUG}: {EVENTS} events verified, 0 checkpoints" in one_line(cli.stdout)


async def test_api_verify_reports_tampering(
    ten: Platform, client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    before = (await client.get("/api/v1/audit/verify", headers=admin)).json()
    assert before["ok"] is True
    async with superuser(ten) as session:
        await modify_summary(session)
    report = (await client.get("/api/v1/audit/verify", headers=admin)).json()
    assert report["ok"] is False
    assert report["first_bad_seq"] == K
    assert str(K) in report["problem"]


# --- a cut-off tail and the checkpoints that reveal it ---------------------------------------


async def cut_tail(platform: Platform, keep: int, *, checkpoints: bool) -> None:
    async with superuser(platform) as session:
        await session.execute(delete(AuditEvent).where(AuditEvent.seq > keep))
        if checkpoints:
            await session.execute(delete(AuditCheckpoint))


async def test_cut_tail_is_found_by_an_exported_checkpoint(
    ten: Platform, settings: Settings, tmp_path: Path
) -> None:
    exported_file = tmp_path / "checkpoints.jsonl"
    cli = await run_cli(settings, "audit", "checkpoint", "export", "-o", exported_file)
    assert cli.exit_code == 0, cli.output
    exported, key = parse_export(exported_file.read_text().splitlines())
    assert [cp["seq"] for cp in exported] == [EVENTS]  # the export signed the head first

    head = EVENTS - 3
    await cut_tail(ten, head, checkpoints=True)

    result = await verify(ten, exported, key)
    assert not result.ok
    assert result.first_bad_seq == head + 1
    assert f"{head + 1}..{EVENTS}" in (result.problem or "")

    cli = await run_cli(settings, "audit", "verify", "-t", SLUG, "--checkpoints", exported_file)
    assert cli.exit_code == 1, cli.output
    assert f"first bad seq {head + 1}:" in one_line(cli.stdout)


async def test_cut_tail_without_any_checkpoint_is_undetectable(
    ten: Platform, settings: Settings
) -> None:
    """The reason checkpoints exist: a shorter chain is still a valid chain."""
    await sign_head(ten)
    await cut_tail(ten, EVENTS - 3, checkpoints=True)
    result = await verify(ten)
    assert result.ok
    assert result.events == EVENTS - 3
    cli = await run_cli(settings, "audit", "verify", "-t", SLUG)
    assert cli.exit_code == 0, cli.output


async def test_cut_tail_is_found_by_a_stored_checkpoint(ten: Platform, settings: Settings) -> None:
    await sign_head(ten)
    head = EVENTS - 2
    await cut_tail(ten, head, checkpoints=False)
    result = await verify(ten)
    assert result.first_bad_seq == head + 1, result.problem
    cli = await run_cli(settings, "audit", "verify")
    assert cli.exit_code == 1
    assert f"first bad seq {head + 1}:" in one_line(cli.stdout)


async def test_export_through_the_library_matches_the_cli(
    ten: Platform, settings: Settings
) -> None:
    await sign_head(ten)
    lines = await export_checkpoints(ten)
    exported, key = parse_export(lines)
    assert [cp["seq"] for cp in exported] == [EVENTS]
    assert all(cp["tenant"] == SLUG for cp in exported)
    assert (await verify(ten, exported, key)).ok
    cli = await run_cli(settings, "audit", "checkpoint", "export", "-t", SLUG)
    assert cli.exit_code == 0, cli.output
    assert cli.stdout.splitlines() == lines  # nothing new to sign: the same file


async def test_rewritten_chain_is_found_by_checkpoints(small_platform: Platform) -> None:
    """Changing an event and re-hashing everything after it leaves a valid chain; the
    signed checkpoints no longer match, and the report points after the last one that does."""
    p = small_platform
    await append(p, 12 - await head_seq(p))  # checkpoints at 5 and 10
    exported, key = parse_export(await export_checkpoints(p))
    assert [cp["seq"] for cp in exported] == [5, 10]
    async with superuser(p) as session:
        events = list((await session.scalars(select(AuditEvent).order_by(AuditEvent.seq))).all())
        prev = events[6].prev_hash
        for event in events[6:]:  # seq 7 onwards
            if event.seq == 7:
                event.action = "forged"
            event.prev_hash = prev
            event.hash = prev = event_hash(prev, event)
    rewritten = await all_events(p)
    assert rewritten[6].action == "forged"

    stored = await verify(p)
    assert not stored.ok
    assert stored.first_bad_seq == 6, stored.problem  # checkpoint 5 still matches

    async with superuser(p) as session:
        await session.execute(delete(AuditCheckpoint))
    assert (await verify(p)).ok  # without any checkpoint the rewrite cannot be seen
    with_file = await verify(p, exported, key)
    assert with_file.first_bad_seq == 6, with_file.problem


# --- forged checkpoints ----------------------------------------------------------------------


async def test_forged_stored_checkpoint_signature_is_reported(small_platform: Platform) -> None:
    p = small_platform
    await append(p, 12 - await head_seq(p))
    [first, _] = await all_checkpoints(p)
    flipped = ("0" if first.signature[0] != "0" else "1") + first.signature[1:]
    async with superuser(p) as session:
        await session.execute(
            update(AuditCheckpoint)
            .where(AuditCheckpoint.seq == first.seq)
            .values(signature=flipped)
        )
    result = await verify(p)
    assert not result.ok
    assert result.first_bad_seq == first.seq
    assert "bad signature" in (result.problem or "")


async def test_checkpoint_moved_to_another_head_is_reported(small_platform: Platform) -> None:
    """A signature covers seq and head hash: moving a checkpoint breaks it."""
    p = small_platform
    await append(p, 12 - await head_seq(p))
    events = await all_events(p)
    async with superuser(p) as session:
        await session.execute(
            update(AuditCheckpoint)
            .where(AuditCheckpoint.seq == 10)
            .values(seq=12, head_hash=events[11].hash)
        )
    result = await verify(p)
    assert result.first_bad_seq == 12
    assert "bad signature" in (result.problem or "")


async def test_stored_checkpoint_removed_from_the_middle_is_reported(
    small_platform: Platform,
) -> None:
    p = small_platform
    await append(p, 16 - await head_seq(p))  # checkpoints at 5, 10, 15
    async with superuser(p) as session:
        await session.execute(delete(AuditCheckpoint).where(AuditCheckpoint.seq == 10))
    result = await verify(p)
    assert result.first_bad_seq == 15  # its prev_signature names the deleted one
    assert "does not link" in (result.problem or "")


async def test_exported_checkpoint_with_bad_signature_is_ignored(
    ten: Platform, tmp_path: Path
) -> None:
    await sign_head(ten)
    exported, key = parse_export(await export_checkpoints(ten))
    forged = [{**exported[0], "seq": EVENTS + 5}]  # claims a longer chain, signature no longer fits
    result = await verify(ten, forged, key)
    assert result.ok
    assert any("bad signature" in w for w in result.warnings)
    # an exported file checked against another key is ignored likewise
    other = Ed25519PrivateKey.generate().public_key()
    result = await verify(ten, exported, other)
    assert result.ok
    assert result.checkpoints == 1  # only the stored one counted
    assert result.warnings


async def test_exported_checkpoints_of_another_tenant_are_not_applied(ten: Platform) -> None:
    await sign_head(ten)
    exported, key = parse_export(await export_checkpoints(ten))
    elsewhere = [{**cp, "tenant": "acme"} for cp in exported]
    result = await verify(ten, elsewhere, key)
    assert result.ok
    assert result.checkpoints == 1  # the stored one; the other tenant's are skipped
