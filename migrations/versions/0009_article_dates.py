"""articles keep an unknown date as unknown, and the category their source named

`published_at` may be NULL: a date that could not be read (or none given) is stored as
unknown, never replaced by the time the article was first seen (`created_at`, which the
issue builder uses to place such an article). `unknown_category` keeps the category a
source named that is not in [[categories]] (the article is filed in the default section),
so that adding it later files the article there (`newsletter db upgrade`).

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

import newsletter.models

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("articles") as batch_op:
        batch_op.alter_column("published_at", existing_type=newsletter.models.UTCDateTime(timezone=True), nullable=True)
        batch_op.add_column(sa.Column("unknown_category", sa.String(length=300), nullable=False, server_default=""))


def downgrade() -> None:
    op.execute("UPDATE articles SET published_at = created_at WHERE published_at IS NULL")
    with op.batch_alter_table("articles") as batch_op:
        batch_op.drop_column("unknown_category")
        batch_op.alter_column(
            "published_at", existing_type=newsletter.models.UTCDateTime(timezone=True), nullable=False
        )
