"""store verification codes only as SHA-256 hashes

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

# The header every revision repeats is Alembic's (script.py.mako): how it finds and orders them.
from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.alter_column("verify_emails", "secret_code", new_column_name="secret_code_hash")
    # Codes already sent keep working: their hash is what the API now compares against.
    op.execute(
        "UPDATE verify_emails SET secret_code_hash = "
        "encode(sha256(convert_to(secret_code_hash, 'UTF8')), 'hex')"
    )


def downgrade() -> None:
    # Hashes cannot be turned back into codes; unused codes stop working after a downgrade.
    op.alter_column("verify_emails", "secret_code_hash", new_column_name="secret_code")
