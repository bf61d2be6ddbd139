"""Tenant schema: tasks, task hosts and output, approvals and votes, standing orders, rules.

Revision ID: t0003
Revises: t0002
Create Date: 2026-11-21
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from it0.core.db import TENANT, UTCDateTime

revision: str = "t0003"
down_revision: str | None = "t0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SeqType = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "tasks",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("payload_hash", sa.String(64), nullable=False),
        sa.Column("selector", sa.Text(), nullable=False),
        sa.Column("server_names", sa.JSON(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("risk", sa.String(16), nullable=False),
        sa.Column("verdicts", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("source", sa.String(20), nullable=False),
        sa.Column("requested_by", sa.Uuid(), nullable=False),
        sa.Column("requester", sa.JSON(), nullable=False),
        sa.Column("standing_order_id", sa.Uuid(), nullable=True),
        sa.Column("authorization", sa.JSON(), nullable=False),
        sa.Column("authorized_by", sa.String(20), nullable=True),
        sa.Column("retry_of", sa.Uuid(), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("worker_id", sa.String(64), nullable=True),
        sa.Column("lease_until", UTCDateTime(), nullable=True),
        sa.Column("counts", sa.JSON(), nullable=False),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("approved_at", UTCDateTime(), nullable=True),
        sa.Column("started_at", UTCDateTime(), nullable=True),
        sa.Column("finished_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_tasks"),
        schema=TENANT,
    )
    op.create_index("ix_tasks_status", "tasks", ["status"], schema=TENANT)
    op.create_index("ix_tasks_standing_order_id", "tasks", ["standing_order_id"], schema=TENANT)
    op.create_table(
        "task_hosts",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("task_id", sa.Uuid(), nullable=False),
        sa.Column("server_id", sa.Uuid(), nullable=False),
        sa.Column("server_name", sa.String(128), nullable=False),
        sa.Column("batch", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("exit_status", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("steps", sa.JSON(), nullable=False),
        sa.Column("stdout", sa.Text(), nullable=False),
        sa.Column("stderr", sa.Text(), nullable=False),
        sa.Column("truncated", sa.Boolean(), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=True),
        sa.Column("finished_at", UTCDateTime(), nullable=True),
        sa.Column("duration", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_task_hosts"),
        sa.UniqueConstraint("task_id", "server_id", name="uq_task_hosts_server"),
        sa.ForeignKeyConstraint(
            ["task_id"],
            [f"{TENANT}.tasks.id"],
            name="fk_task_hosts_task_id_tasks",
            ondelete="CASCADE",
        ),
        schema=TENANT,
    )
    op.create_index("ix_task_hosts_task_id", "task_hosts", ["task_id"], schema=TENANT)
    op.create_table(
        "task_output",
        sa.Column("seq", SeqType, autoincrement=True, nullable=False),
        sa.Column("task_id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_task_output"),
        schema=TENANT,
    )
    op.create_index("ix_task_output_task_seq", "task_output", ["task_id", "seq"], schema=TENANT)
    op.create_table(
        "approvals",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("task_id", sa.Uuid(), nullable=False),
        sa.Column("payload_hash", sa.String(64), nullable=False),
        sa.Column("risk", sa.String(16), nullable=False),
        sa.Column("required", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("requested_by", sa.Uuid(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("decided_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_approvals"),
        sa.UniqueConstraint("task_id", name="uq_approvals_task_id"),
        sa.ForeignKeyConstraint(
            ["task_id"],
            [f"{TENANT}.tasks.id"],
            name="fk_approvals_task_id_tasks",
            ondelete="CASCADE",
        ),
        schema=TENANT,
    )
    op.create_index("ix_approvals_status", "approvals", ["status"], schema=TENANT)
    op.create_index("ix_approvals_expires_at", "approvals", ["expires_at"], schema=TENANT)
    op.create_table(
        "approval_votes",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("approval_id", sa.Uuid(), nullable=False),
        sa.Column("voter_id", sa.Uuid(), nullable=False),
        sa.Column("voter_name", sa.String(128), nullable=False),
        sa.Column("decision", sa.String(8), nullable=False),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.Column("via", sa.String(16), nullable=False),
        sa.Column("payload_hash", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_approval_votes"),
        sa.UniqueConstraint("approval_id", "voter_id", name="uq_votes_voter"),
        sa.ForeignKeyConstraint(
            ["approval_id"],
            [f"{TENANT}.approvals.id"],
            name="fk_approval_votes_approval_id_approvals",
        ),
        schema=TENANT,
    )
    op.create_index(
        "ix_approval_votes_approval_id", "approval_votes", ["approval_id"], schema=TENANT
    )
    op.create_table(
        "approval_link_uses",
        sa.Column("jti", sa.String(64), nullable=False),
        sa.Column("approval_id", sa.Uuid(), nullable=False),
        sa.Column("used_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("jti", name="pk_approval_link_uses"),
        schema=TENANT,
    )
    op.create_table(
        "standing_orders",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("owner_id", sa.Uuid(), nullable=False),
        sa.Column("owner_name", sa.String(128), nullable=False),
        sa.Column("changed_by", sa.Uuid(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("trigger", sa.JSON(), nullable=True),
        sa.Column("scope", sa.JSON(), nullable=False),
        sa.Column("action", sa.JSON(), nullable=True),
        sa.Column("rate_limit", sa.JSON(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("missed_runs", sa.String(16), nullable=False),
        sa.Column("pause_after_failures", sa.Integer(), nullable=False),
        sa.Column("consecutive_failures", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("next_run_at", UTCDateTime(), nullable=True),
        sa.Column("last_run_at", UTCDateTime(), nullable=True),
        sa.Column("approved_by", sa.Uuid(), nullable=True),
        sa.Column("approved_by_name", sa.String(128), nullable=True),
        sa.Column("approved_at", UTCDateTime(), nullable=True),
        sa.Column("status_reason", sa.Text(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_standing_orders"),
        sa.UniqueConstraint("number", name="uq_standing_orders_number"),
        sa.UniqueConstraint("name", name="uq_standing_orders_name"),
        schema=TENANT,
    )
    op.create_index("ix_standing_orders_status", "standing_orders", ["status"], schema=TENANT)
    op.create_index(
        "ix_standing_orders_next_run_at", "standing_orders", ["next_run_at"], schema=TENANT
    )
    op.create_table(
        "policy_rules",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("relaxes", sa.Boolean(), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_policy_rules"),
        schema=TENANT,
    )
    config = op.get_context().config
    assert config is not None  # it0.core.migrate always passes one
    _votes_are_final(config.attributes["schema"])


def _votes_are_final(schema: str) -> None:
    """A vote, once cast, can be neither changed nor withdrawn, not even by hand."""
    if op.get_bind().dialect.name == "sqlite":
        for verb in ("UPDATE", "DELETE"):
            op.execute(
                f'CREATE TRIGGER "{schema}".approval_votes_no_{verb.lower()} BEFORE {verb} '
                "ON approval_votes BEGIN SELECT RAISE(ABORT, 'approval_votes is append-only'); END"
            )
        return
    op.execute(
        f'CREATE TRIGGER approval_votes_append_only BEFORE UPDATE OR DELETE ON "{schema}".'
        f'approval_votes FOR EACH ROW EXECUTE FUNCTION "{schema}".it0_append_only()'
    )
    op.execute(
        f'CREATE TRIGGER approval_votes_no_truncate BEFORE TRUNCATE ON "{schema}".'
        f'approval_votes FOR EACH STATEMENT EXECUTE FUNCTION "{schema}".it0_append_only()'
    )


def downgrade() -> None:
    for table in (
        "policy_rules",
        "standing_orders",
        "approval_link_uses",
        "approval_votes",
        "approvals",
        "task_output",
        "task_hosts",
        "tasks",
    ):
        op.drop_table(table, schema=TENANT)
