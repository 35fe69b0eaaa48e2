"""who followed which tracked link ([tracking] per_subscriber, off by default)

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

import newsletter.models

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "subscriber_clicks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("subscriber_id", sa.Integer(), nullable=False),
        sa.Column("issue_id", sa.Integer(), nullable=False),
        sa.Column("article_id", sa.Integer(), nullable=False),
        sa.Column("clicked_at", newsletter.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["subscriber_id"],
            ["subscribers.id"],
            name=op.f("fk_subscriber_clicks_subscriber_id_subscribers"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["issue_id"], ["issues.id"], name=op.f("fk_subscriber_clicks_issue_id_issues"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["article_id"], ["articles.id"], name=op.f("fk_subscriber_clicks_article_id_articles"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subscriber_clicks")),
    )
    for column in ("subscriber_id", "issue_id", "article_id"):
        op.create_index(op.f(f"ix_subscriber_clicks_{column}"), "subscriber_clicks", [column])


def downgrade() -> None:
    op.drop_table("subscriber_clicks")
