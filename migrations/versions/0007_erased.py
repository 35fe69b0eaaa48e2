"""one-way hashes of erased addresses

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

import newsletter.models

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "erased",
        sa.Column("email_hash", sa.String(length=64), nullable=False),
        sa.Column("erased_at", newsletter.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("email_hash", name=op.f("pk_erased")),
    )


def downgrade() -> None:
    op.drop_table("erased")
