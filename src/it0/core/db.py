"""Database engine, model bases and tenant binding.

Platform tables (tenants, users, memberships, tokens) live in the schema named
``platform`` in the models; every other table lives in the placeholder schema ``tenant``.
Neither name exists in the database: a session translates them (SQLAlchemy
``schema_translate_map``) to the real platform schema and to exactly one tenant's schema.
A session that was not bound to a tenant therefore fails on any tenant table instead of
reaching the wrong one.

On PostgreSQL each tenant is a schema. On SQLite each tenant is a database file under
``<data_dir>/tenants/`` that is attached, under the tenant's schema name, to the connection
that serves the session; any other tenant attached earlier is detached first.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import DateTime, MetaData, event, text
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.sql import Executable
from sqlalchemy.types import TypeDecorator

from it0.core.settings import Settings
from it0.core.sqlite import dbapi as sqlite_dbapi

PLATFORM = "platform"
TENANT = "tenant"
PG_PLATFORM_SCHEMA = "it0"
OUTBOX = "it0_outbox"
AFTER_COMMIT = "it0_after_commit"

log = logging.getLogger(__name__)
Publisher = Callable[[str, dict[str, Any]], Awaitable[Any]]


def publish_after_commit(session: AsyncSession, topic: str, payload: dict[str, Any]) -> None:
    """Publish an event once ``session`` has committed (never when it rolls back)."""
    session.info.setdefault(OUTBOX, []).append((topic, payload))


def call_after_commit(session: AsyncSession, callback: Callable[[], None]) -> None:
    """Call ``callback`` once ``session`` has committed (never when it rolls back), before
    the events are published. It must not block: start a task for anything longer."""
    session.info.setdefault(AFTER_COMMIT, []).append(callback)


_NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

_SCHEMA_RE = re.compile(r"^t_[a-z][a-z0-9_]{0,48}$")


class PlatformBase(DeclarativeBase):
    metadata = MetaData(schema=PLATFORM, naming_convention=_NAMING)


class TenantBase(DeclarativeBase):
    metadata = MetaData(schema=TENANT, naming_convention=_NAMING)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC, also on SQLite (which stores no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def tenant_schema_name(slug: str) -> str:
    """The schema (PostgreSQL) or attached database name (SQLite) of a tenant."""
    name = "t_" + slug.replace("-", "_")
    if not _SCHEMA_RE.match(name):
        raise ValueError(f"invalid tenant slug {slug!r}")
    return name


def advisory_key(name: str) -> int:
    """A stable signed 64-bit key for ``pg_advisory_*lock`` derived from a name."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


class Database:
    """The engine and the sessions bound to the platform schema or one tenant."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.is_sqlite = settings.is_sqlite
        if self.is_sqlite:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
            self.tenant_dir.mkdir(parents=True, exist_ok=True)
            url = (
                settings.database_url or f"sqlite+aiosqlite:///{settings.data_dir / 'platform.db'}"
            )
            self.engine: AsyncEngine = create_async_engine(
                url, pool_size=8, max_overflow=8, module=sqlite_dbapi()
            )
            _install_sqlite_hooks(self.engine, self.tenant_dir)
            self.platform_schema: str | None = None
        else:
            assert settings.database_url is not None
            self.engine = create_async_engine(
                settings.database_url, pool_size=10, max_overflow=10, pool_pre_ping=True
            )
            self.platform_schema = PG_PLATFORM_SCHEMA
        self._makers: dict[tuple[str | None, bool], async_sessionmaker[AsyncSession]] = {}
        self._deferred: dict[Hashable, asyncio.Task[None]] = {}
        self.publisher: Publisher | None = None  # the event bus, set by the platform

    @property
    def tenant_dir(self) -> Path:
        return self.settings.data_dir / "tenants"

    def translate_map(self, tenant_schema: str | None) -> dict[str | None, str | None]:
        mapping: dict[str | None, str | None] = {PLATFORM: self.platform_schema}
        if tenant_schema is not None:
            if not _SCHEMA_RE.match(tenant_schema):
                raise ValueError(f"invalid tenant schema {tenant_schema!r}")
            mapping[TENANT] = tenant_schema
        return mapping

    def bind(self, tenant_schema: str | None, *, write: bool = False) -> AsyncEngine:
        """An engine view whose connections are bound to the platform and one tenant schema.

        ``write`` starts SQLite transactions with ``BEGIN IMMEDIATE`` so that writers queue
        for the lock up front instead of failing half-way when a reader upgrades.
        """
        return self.engine.execution_options(
            schema_translate_map=self.translate_map(tenant_schema),
            it0_tenant_schema=tenant_schema,
            it0_write=write,
        )

    def sessionmaker(
        self, tenant_schema: str | None, *, write: bool = False
    ) -> async_sessionmaker[AsyncSession]:
        key = (tenant_schema, write)
        maker = self._makers.get(key)
        if maker is None:
            maker = async_sessionmaker(
                self.bind(tenant_schema, write=write), expire_on_commit=False, autoflush=False
            )
            self._makers[key] = maker
        return maker

    @asynccontextmanager
    async def session(
        self, tenant_schema: str | None = None, *, write: bool = False
    ) -> AsyncIterator[AsyncSession]:
        """A session that commits when the block ends normally and rolls back otherwise."""
        async with self.sessionmaker(tenant_schema, write=write)() as session:
            try:
                yield session
                await session.commit()
            except BaseException:
                session.info.pop(OUTBOX, None)
                session.info.pop(AFTER_COMMIT, None)
                await session.rollback()
                raise
            for callback in session.info.pop(AFTER_COMMIT, []):
                try:
                    callback()
                except Exception:  # committed already: the caller's work stands
                    log.exception("an after-commit callback failed")
            await self._publish(session.info.pop(OUTBOX, []))

    async def _publish(self, events: list[tuple[str, dict[str, Any]]]) -> None:
        for topic, payload in events:
            if self.publisher is None:
                continue
            try:
                await self.publisher(topic, payload)
            except Exception as exc:  # committed already: a lost event must not fail the request
                log.warning("publishing %s after commit failed: %s", topic, type(exc).__name__)

    def defer_write(self, tenant_schema: str | None, key: Hashable, statement: Executable) -> None:
        """Run a bookkeeping write (e.g. a "last used at" stamp) in its own transaction,
        after the caller's work and off its connection.

        A request that wrote from inside its own session would need a second pooled
        connection while holding the first: a burst as large as the pool then waits on
        itself. Deferred, a burst costs one write per ``key``: while one is pending, more
        for the same key are dropped. A failed write is logged, never raised.
        """
        if key in self._deferred:
            return
        task = asyncio.create_task(self._write_deferred(tenant_schema, statement))
        self._deferred[key] = task
        task.add_done_callback(lambda _: self._deferred.pop(key, None))

    async def _write_deferred(self, tenant_schema: str | None, statement: Executable) -> None:
        try:
            async with self.session(tenant_schema, write=True) as session:
                await session.execute(statement, execution_options={"it0_audit_exempt": True})
        except Exception as exc:
            log.warning("deferred bookkeeping write failed: %s", type(exc).__name__)

    async def deferred_writes_done(self) -> None:
        """Wait for the deferred writes started so far."""
        await asyncio.gather(*self._deferred.values(), return_exceptions=True)

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        await self.deferred_writes_done()
        await self.engine.dispose()


def _install_sqlite_hooks(engine: AsyncEngine, tenant_dir: Path) -> None:
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below emit BEGIN itself (pysqlite's own implicit
        # transactions would defeat BEGIN IMMEDIATE and break ATTACH).
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        for pragma in (
            "PRAGMA journal_mode=WAL",
            # FULL, as SQLite already uses for attached tenant files: an acknowledged change
            # and its audit event survive a power loss
            "PRAGMA synchronous=FULL",
            "PRAGMA foreign_keys=ON",
            "PRAGMA busy_timeout=10000",
        ):
            cursor.execute(pragma)
        cursor.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        options = conn.get_execution_options()
        _attach_only(conn, options.get("it0_tenant_schema"), tenant_dir)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if options.get("it0_write") else "BEGIN")


def _attach_only(conn: Connection, schema: str | None, tenant_dir: Path) -> None:
    """Attach ``schema``'s database file and detach every other tenant (outside a transaction)."""
    attached: set[str] = conn.info.setdefault("it0_attached", set())
    for other in sorted(attached - {schema} if schema else attached):
        conn.exec_driver_sql(f'DETACH DATABASE "{other}"')
        attached.discard(other)
    if schema is None or schema in attached:
        return
    if not _SCHEMA_RE.match(schema):
        raise ValueError(f"invalid tenant schema {schema!r}")
    path = tenant_dir / f"{schema}.db"
    if not path.exists() and not conn.get_execution_options().get("it0_create_tenant"):
        raise LookupError(f"tenant database {path.name} does not exist")
    conn.exec_driver_sql(f'ATTACH DATABASE ? AS "{schema}"', (str(path),))
    conn.exec_driver_sql(f'PRAGMA "{schema}".journal_mode=WAL')
    attached.add(schema)
