"""indexes for the operator console's signup lookup

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A support person types the address as the user wrote it to them, in any case.
    op.create_index("ix_users_email_lower", "users", [sa.text("lower(email)")])
    # A user's tasks not run yet have no verify_emails row: find them by the payload.
    op.create_index("ix_outbox_username", "outbox", [sa.text("(payload->>'username')")])


def downgrade() -> None:
    op.drop_index("ix_outbox_username", "outbox")
    op.drop_index("ix_users_email_lower", "users")
