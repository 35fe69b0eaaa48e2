"""editors of the desk

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

import newsletter.models

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "editors",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("email_key", sa.String(length=320), nullable=False),
        sa.Column("password_hash", sa.String(length=200), nullable=False),
        sa.Column("session_key", sa.String(length=64), nullable=False),
        sa.Column("created_at", newsletter.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_login_at", newsletter.models.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_editors")),
        sa.UniqueConstraint("email_key", name=op.f("uq_editors_email_key")),
    )


def downgrade() -> None:
    op.drop_table("editors")
