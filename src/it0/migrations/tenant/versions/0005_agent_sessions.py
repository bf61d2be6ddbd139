"""Tenant schema: agent conversations, the events they showed, and calls waiting on approval.

Revision ID: t0005
Revises: t0004
Create Date: 2026-11-21
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from it0.core.db import TENANT, UTCDateTime

revision: str = "t0005"
down_revision: str | None = "t0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "agent_sessions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("username", sa.String(128), nullable=False),
        sa.Column("permissions", sa.JSON(), nullable=False),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("status", sa.String(24), nullable=False),
        sa.Column("history", sa.JSON(), nullable=False),
        sa.Column("runtime_session", sa.String(200), nullable=True),
        sa.Column("turns", sa.Integer(), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("tool_calls", sa.Integer(), nullable=False),
        sa.Column("turn_started_at", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_agent_sessions"),
        schema=TENANT,
    )
    op.create_index(
        "ix_agent_sessions_user", "agent_sessions", ["user_id", "updated_at"], schema=TENANT
    )
    op.create_table(
        "agent_events",
        sa.Column("seq", SEQ, autoincrement=True, nullable=False),
        sa.Column("session_id", sa.Uuid(), nullable=False),
        sa.Column("turn", sa.Integer(), nullable=False),
        sa.Column("type", sa.String(24), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_agent_events"),
        schema=TENANT,
    )
    op.create_index(
        "ix_agent_events_session_seq", "agent_events", ["session_id", "seq"], schema=TENANT
    )
    op.create_table(
        "agent_waits",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("session_id", sa.Uuid(), nullable=False),
        sa.Column("task_id", sa.Uuid(), nullable=False),
        sa.Column("tool_call_id", sa.String(200), nullable=True),
        sa.Column("result", sa.Text(), nullable=True),
        sa.Column("status", sa.String(24), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("resolved_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_agent_waits"),
        schema=TENANT,
    )
    op.create_index("ix_agent_waits_session_id", "agent_waits", ["session_id"], schema=TENANT)
    op.create_index("ix_agent_waits_task_id", "agent_waits", ["task_id"], schema=TENANT)


def downgrade() -> None:
    op.drop_table("agent_waits", schema=TENANT)
    op.drop_table("agent_events", schema=TENANT)
    op.drop_table("agent_sessions", schema=TENANT)
