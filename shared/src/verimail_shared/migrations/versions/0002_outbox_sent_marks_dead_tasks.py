"""outbox, one email per job, dead tasks

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMPTZ = sa.DateTime(timezone=True)
NOW = sa.text("now()")


def upgrade() -> None:
    op.add_column("verify_emails", sa.Column("job_id", sa.String(64), nullable=True))
    op.add_column("verify_emails", sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True))
    op.create_unique_constraint("verify_emails_job_id_key", "verify_emails", ["job_id"])

    op.create_table(
        "outbox",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), primary_key=True),
        sa.Column("job_id", sa.String(64), nullable=False, unique=True),
        sa.Column("task", sa.String(100), nullable=False),
        sa.Column("payload", JSONB(), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("dispatched_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
    )
    # The relay only ever looks for rows not dispatched yet; keep that lookup small.
    op.create_index(
        "ix_outbox_undispatched",
        "outbox",
        ["id"],
        postgresql_where=sa.text("dispatched_at IS NULL"),
    )
    # ...and for rows handed to Redis but not finished, to find any that Redis lost.
    op.create_index(
        "ix_outbox_unfinished",
        "outbox",
        ["dispatched_at"],
        postgresql_where=sa.text("dispatched_at IS NOT NULL AND completed_at IS NULL"),
    )

    op.create_table(
        "dead_tasks",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), primary_key=True),
        sa.Column("job_id", sa.String(64), nullable=False, index=True),
        sa.Column("task", sa.String(100), nullable=False),
        sa.Column("queue", sa.String(100), nullable=False),
        sa.Column("payload", JSONB(), nullable=False),
        sa.Column("tries", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.Column("failed_at", TIMESTAMPTZ, server_default=NOW, nullable=False),
        sa.Column("requeued_at", sa.DateTime(timezone=True), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("dead_tasks")
    op.drop_table("outbox")
    op.drop_constraint("verify_emails_job_id_key", "verify_emails")
    op.drop_column("verify_emails", "sent_at")
    op.drop_column("verify_emails", "job_id")
