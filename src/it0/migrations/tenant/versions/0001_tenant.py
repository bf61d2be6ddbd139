"""Tenant schema: roles, API keys, the append-only audit chain and its checkpoints.

Revision ID: t0001
Revises:
Create Date: 2026-11-21
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from it0.core.db import TENANT, UTCDateTime

revision: str = "t0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
APPEND_ONLY = ("audit_events", "audit_checkpoints")


def upgrade() -> None:
    op.create_table(
        "roles",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("description", sa.String(500), nullable=False),
        sa.Column("permissions", sa.JSON(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_roles"),
        sa.UniqueConstraint("name", name="uq_roles_name"),
        schema=TENANT,
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("prefix", sa.String(80), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("role", sa.String(64), nullable=False),
        sa.Column("created_by", sa.Uuid(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=True),
        sa.Column("revoked_at", UTCDateTime(), nullable=True),
        sa.Column("last_used_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
        sa.UniqueConstraint("prefix", name="uq_api_keys_prefix"),
        schema=TENANT,
    )
    op.create_table(
        "audit_events",
        sa.Column("seq", SEQ, nullable=False, autoincrement=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("occurred_at", UTCDateTime(), nullable=False),
        sa.Column("actor_type", sa.String(32), nullable=False),
        sa.Column("actor_id", sa.String(64), nullable=True),
        sa.Column("actor_name", sa.String(200), nullable=False),
        sa.Column("on_behalf_of", sa.String(64), nullable=True),
        sa.Column("action", sa.String(100), nullable=False),
        sa.Column("resource_type", sa.String(64), nullable=False),
        sa.Column("resource_id", sa.String(128), nullable=True),
        sa.Column("request_id", sa.String(64), nullable=True),
        sa.Column("client_addr", sa.String(64), nullable=True),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_audit_events"),
        sa.UniqueConstraint("id", name="uq_audit_events_id"),
        schema=TENANT,
    )
    op.create_index("ix_audit_events_occurred_at", "audit_events", ["occurred_at"], schema=TENANT)
    op.create_index("ix_audit_events_action", "audit_events", ["action"], schema=TENANT)
    op.create_table(
        "audit_checkpoints",
        sa.Column("seq", SEQ, nullable=False, autoincrement=False),
        sa.Column("head_hash", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("prev_signature", sa.String(128), nullable=True),
        sa.Column("signature", sa.String(128), nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_audit_checkpoints"),
        schema=TENANT,
    )
    config = op.get_context().config
    assert config is not None  # it0.core.migrate always passes one
    _refuse_changes(config.attributes["schema"])


def _refuse_changes(schema: str) -> None:
    """Make the database itself refuse UPDATE, DELETE (and on PostgreSQL TRUNCATE)."""
    if op.get_bind().dialect.name == "sqlite":
        for table in APPEND_ONLY:
            for verb in ("UPDATE", "DELETE"):
                op.execute(
                    f'CREATE TRIGGER "{schema}".{table}_no_{verb.lower()} BEFORE {verb} ON {table} '
                    f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END"
                )
        return
    op.execute(
        f'CREATE FUNCTION "{schema}".it0_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ '
        "BEGIN RAISE EXCEPTION '% is append-only (% refused)', TG_TABLE_NAME, TG_OP "
        "USING ERRCODE = 'insufficient_privilege'; END $$"
    )
    for table in APPEND_ONLY:
        op.execute(
            f'CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON "{schema}".{table} '
            f'FOR EACH ROW EXECUTE FUNCTION "{schema}".it0_append_only()'
        )
        op.execute(
            f'CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON "{schema}".{table} '
            f'FOR EACH STATEMENT EXECUTE FUNCTION "{schema}".it0_append_only()'
        )


def downgrade() -> None:
    for table in ("audit_checkpoints", "audit_events", "api_keys", "roles"):
        op.drop_table(table, schema=TENANT)
