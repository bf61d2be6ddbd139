"""No change without its audit event: the session guard."""

from __future__ import annotations

import pytest
from sqlalchemy import delete, func, select, update

from it0.audit import UnauditedChange
from it0.auth.models import LoginThrottle, Role, User
from it0.core.clock import utcnow
from it0.platform import Platform
from tests.audit.helpers import SCHEMA, TENANT, TESTER, all_events


async def role_names(platform: Platform) -> list[str]:
    async with platform.db.session(SCHEMA) as session:
        return list((await session.scalars(select(Role.name).order_by(Role.name))).all())


async def display_name(platform: Platform, username: str = "admin") -> str:
    async with platform.db.session() as session:
        name = await session.scalar(select(User.display_name).where(User.username == username))
        assert name is not None
        return name


@pytest.mark.parametrize("flush", [False, True], ids=["pending", "flushed"])
async def test_unaudited_insert_is_refused(platform: Platform, flush: bool) -> None:
    events = len(await all_events(platform))

    async def sneak() -> None:
        async with platform.db.session(SCHEMA, write=True) as session:
            session.add(Role(name="sneaky", description="", permissions=["audit:read"]))
            if flush:
                await session.flush()

    with pytest.raises(UnauditedChange) as caught:
        await sneak()
    assert caught.value.details == {"tables": ["roles"]}
    assert await role_names(platform) == []
    assert len(await all_events(platform)) == events


@pytest.mark.parametrize("flush", [False, True], ids=["pending", "flushed"])
async def test_unaudited_update_of_a_platform_row_is_refused(
    platform: Platform, flush: bool
) -> None:
    before = await display_name(platform)

    async def rename() -> None:
        async with platform.db.session(SCHEMA, write=True) as session:
            user = await session.scalar(select(User).where(User.username == "admin"))
            assert user is not None
            user.display_name = "Mallory"
            if flush:
                await session.flush()

    with pytest.raises(UnauditedChange):
        await rename()
    assert await display_name(platform) == before


async def test_unaudited_bulk_statements_are_refused(platform: Platform) -> None:
    statements = [
        update(User).where(User.username == "admin").values(display_name="Mallory"),
        delete(Role),
    ]
    for statement in statements:
        with pytest.raises(UnauditedChange):
            async with platform.db.session(SCHEMA, write=True) as session:
                await session.execute(statement)
    assert await display_name(platform) != "Mallory"


async def test_unaudited_delete_is_refused(platform: Platform) -> None:
    async with platform.db.session(SCHEMA, write=True) as session:
        session.add(Role(name="keep", description="", permissions=[]))
        await platform.audit.record(session, TENANT, TESTER, "role.create", "role", "keep")

    async def remove() -> None:
        async with platform.db.session(SCHEMA, write=True) as session:
            role = await session.scalar(select(Role).where(Role.name == "keep"))
            assert role is not None
            await session.delete(role)

    with pytest.raises(UnauditedChange):
        await remove()
    assert await role_names(platform) == ["keep"]


async def test_audited_changes_commit(platform: Platform) -> None:
    events = len(await all_events(platform))
    async with platform.db.session(SCHEMA, write=True) as session:
        session.add(Role(name="auditor", description="", permissions=["audit:read"]))
        user = await session.scalar(select(User).where(User.username == "admin"))
        assert user is not None
        user.display_name = "The Admin"
        await platform.audit.record(session, TENANT, TESTER, "role.create", "role", "auditor")
    assert await role_names(platform) == ["auditor"]
    assert await display_name(platform) == "The Admin"
    assert [e.action for e in await all_events(platform)][events:] == ["role.create"]


async def test_exempt_statements_pass(platform: Platform) -> None:
    async with platform.db.session(SCHEMA, write=True) as session:
        await session.execute(
            update(User).where(User.username == "admin").values(display_name="Touched"),
            execution_options={"it0_audit_exempt": True},
        )
        await session.execute(
            update(User)
            .where(User.username == "admin")
            .values(is_active=True)
            .execution_options(it0_audit_exempt=True)
        )
    assert await display_name(platform) == "Touched"


async def test_bookkeeping_tables_need_no_event(platform: Platform) -> None:
    async with platform.db.session(write=True) as session:
        session.add(LoginThrottle(key="ip:10.0.0.9", failures=1, window_start=utcnow()))
    async with platform.db.session() as session:
        count = select(func.count()).select_from(LoginThrottle)
        assert await session.scalar(count) == 1


async def test_reads_need_no_event(platform: Platform) -> None:
    async with platform.db.session(SCHEMA, write=True) as session:
        user = await session.scalar(select(User).where(User.username == "admin"))
        assert user is not None
        user.display_name = user.display_name  # set to the same value: not a change
        assert await session.scalar(select(func.count()).select_from(Role)) == 0


async def test_each_transaction_needs_its_own_event(platform: Platform) -> None:
    """The audit of one commit does not cover the next transaction of the same session."""
    maker = platform.db.sessionmaker(SCHEMA, write=True)
    async with maker() as session:
        session.add(Role(name="first", description="", permissions=[]))
        await platform.audit.record(session, TENANT, TESTER, "role.create", "role", "first")
        await session.commit()
        session.add(Role(name="second", description="", permissions=[]))
        with pytest.raises(UnauditedChange):
            await session.commit()
        await session.rollback()
        # and a refused transaction leaves nothing behind for the next one
        session.add(Role(name="third", description="", permissions=[]))
        await platform.audit.record(session, TENANT, TESTER, "role.create", "role", "third")
        await session.commit()
    assert await role_names(platform) == ["first", "third"]
