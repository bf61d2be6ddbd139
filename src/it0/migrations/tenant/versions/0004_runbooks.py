"""Tenant schema: the tenant's own runbooks, next to (or overriding) the built-in ones.

Revision ID: t0004
Revises: t0003
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from it0.core.db import TENANT, UTCDateTime

revision: str = "t0004"
down_revision: str | None = "t0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "runbooks",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("runbook_id", sa.String(100), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_runbooks"),
        sa.UniqueConstraint("runbook_id", name="uq_runbooks_runbook_id"),
        schema=TENANT,
    )


def downgrade() -> None:
    op.drop_table("runbooks", schema=TENANT)
