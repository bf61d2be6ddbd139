"""The database itself refuses to change or remove audit rows."""

from __future__ import annotations

import pytest
from sqlalchemy import delete, text, update
from sqlalchemy.exc import DBAPIError

from it0.audit.models import AuditCheckpoint, AuditEvent
from it0.platform import Platform
from tests.audit.helpers import APPEND_ONLY, SCHEMA, all_checkpoints, all_events, append, sign_head


@pytest.fixture
async def filled(platform: Platform) -> Platform:
    await append(platform, 3)
    assert await sign_head(platform) is not None
    return platform


@pytest.mark.parametrize("table", APPEND_ONLY)
@pytest.mark.parametrize(
    "statement",
    [
        'UPDATE "{schema}".{table} SET seq = seq + 100',
        'UPDATE "{schema}".{table} SET seq = seq'
        ' WHERE seq = (SELECT MIN(seq) FROM "{schema}".{table})',
        'DELETE FROM "{schema}".{table}',
        'DELETE FROM "{schema}".{table} WHERE seq = (SELECT MAX(seq) FROM "{schema}".{table})',
    ],
    ids=["update-all", "update-first", "delete-all", "delete-last"],
)
async def test_sql_update_and_delete_are_refused(
    filled: Platform, table: str, statement: str
) -> None:
    events, checkpoints = await all_events(filled), await all_checkpoints(filled)
    with pytest.raises(DBAPIError, match="append-only"):
        async with filled.db.session(SCHEMA, write=True) as session:
            await session.execute(text(statement.format(schema=SCHEMA, table=table)))
    assert [e.hash for e in await all_events(filled)] == [e.hash for e in events]
    assert [c.signature for c in await all_checkpoints(filled)] == [
        c.signature for c in checkpoints
    ]


async def test_orm_update_and_delete_are_refused(filled: Platform) -> None:
    attempts = [
        update(AuditEvent).where(AuditEvent.seq == 2).values(action="forged"),
        delete(AuditEvent).where(AuditEvent.seq == 2),
        update(AuditCheckpoint).values(head_hash="0" * 64),
        delete(AuditCheckpoint),
    ]
    for statement in attempts:
        with pytest.raises(DBAPIError, match="append-only"):
            async with filled.db.session(SCHEMA, write=True) as session:
                await session.execute(statement)

    # through the unit of work too
    async def edit_first() -> None:
        async with filled.db.session(SCHEMA, write=True) as session:
            event = await session.get(AuditEvent, 1)
            assert event is not None
            event.summary = '{"forged":true}'

    with pytest.raises(DBAPIError, match="append-only"):
        await edit_first()
    assert (await all_events(filled))[0].summary != '{"forged":true}'
    assert len(await all_checkpoints(filled)) == 1


@pytest.mark.parametrize("table", APPEND_ONLY)
async def test_truncate_is_refused(filled: Platform, backend: str, table: str) -> None:
    # SQLite has no TRUNCATE; its equivalent is the unqualified DELETE ("truncate
    # optimization"), which must not skip the triggers either
    statement = (
        f'TRUNCATE "{SCHEMA}".{table}'
        if backend == "postgresql"
        else f'DELETE FROM "{SCHEMA}".{table}'
    )
    before = len(await all_events(filled))
    with pytest.raises(DBAPIError, match="append-only"):
        async with filled.db.session(SCHEMA, write=True) as session:
            await session.execute(text(statement))
    assert len(await all_events(filled)) == before
    assert len(await all_checkpoints(filled)) == 1


async def test_appending_still_works_after_refusals(filled: Platform) -> None:
    with pytest.raises(DBAPIError):
        async with filled.db.session(SCHEMA, write=True) as session:
            await session.execute(delete(AuditEvent))
    before = len(await all_events(filled))
    [event] = await append(filled)
    assert event.seq == before + 1
