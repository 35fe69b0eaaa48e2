"""editors' choices per issue article; a schedule chosen on the desk

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "issue_choices",
        sa.Column("issue_id", sa.Integer(), nullable=False),
        sa.Column("article_id", sa.Integer(), nullable=False),
        sa.Column("excluded", sa.Boolean(), nullable=False),
        sa.Column("section", sa.String(length=64), nullable=True),
        sa.Column("position", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["article_id"], ["articles.id"], name=op.f("fk_issue_choices_article_id_articles"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["issue_id"], ["issues.id"], name=op.f("fk_issue_choices_issue_id_issues"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("issue_id", "article_id", name=op.f("pk_issue_choices")),
    )
    with op.batch_alter_table("issues") as batch:
        batch.add_column(sa.Column("scheduled_by", sa.String(length=320), server_default="", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("issues") as batch:
        batch.drop_column("scheduled_by")
    op.drop_table("issue_choices")
