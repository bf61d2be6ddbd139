"""Alembic migrations for the platform schema and for every tenant schema.

The same scripts serve SQLite and PostgreSQL: they name the placeholder schemas
``platform`` and ``tenant``, and the connection translates them. Migrations ship inside
the package so that an installed ``it0`` can migrate its own database.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from alembic import command
from alembic.config import Config
from sqlalchemy import select, text
from sqlalchemy.engine import Connection

from it0.core.db import Database, PlatformBase, TenantBase, advisory_key

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
Kind = Literal["platform", "tenant"]


def _config(kind: Kind, connection: Connection, schema: str | None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS / kind))
    cfg.attributes.update(connection=connection, kind=kind, schema=schema)
    return cfg


def run_env() -> None:
    """Body of both ``env.py`` files: migrate the connection handed over in the config."""
    from alembic import context

    cfg = context.config
    kind: Kind = cfg.attributes["kind"]
    metadata = PlatformBase.metadata if kind == "platform" else TenantBase.metadata
    context.configure(
        connection=cfg.attributes["connection"],
        target_metadata=metadata,
        version_table_schema=cfg.attributes["schema"],
        transactional_ddl=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def upgrade_platform(db: Database) -> None:
    async with db.bind(None, write=True).connect() as conn:
        if not db.is_sqlite:
            # several processes may start at once; one migrates, the others wait
            await conn.execute(
                text("SELECT pg_advisory_xact_lock(:k)"), {"k": advisory_key("it0:migrate")}
            )
            await conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{db.platform_schema}"'))
        await conn.run_sync(
            lambda sync: command.upgrade(_config("platform", sync, db.platform_schema), "head")
        )
        await conn.commit()


async def upgrade_tenant(db: Database, schema: str, *, create: bool = False) -> None:
    engine = db.bind(schema, write=True).execution_options(it0_create_tenant=create)
    async with engine.connect() as conn:
        if not db.is_sqlite:
            await conn.execute(
                text("SELECT pg_advisory_xact_lock(:k)"),
                {"k": advisory_key(f"it0:migrate:{schema}")},
            )
            await conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        await conn.run_sync(lambda sync: command.upgrade(_config("tenant", sync, schema), "head"))
        await conn.commit()


async def upgrade_all(db: Database) -> list[str]:
    """Migrate the platform schema, then every tenant; returns the tenant schemas migrated."""
    from it0.auth.models import Tenant

    await upgrade_platform(db)
    async with db.session() as session:
        schemas = list((await session.scalars(select(Tenant.schema_name))).all())
    for schema in schemas:
        await upgrade_tenant(db, schema)
    return schemas
