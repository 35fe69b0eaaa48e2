"""indexes for the desk's subscriber search (address or name, from its start)

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_subscribers_email_prefix",
        "subscribers",
        ["email_key"],
        postgresql_ops={"email_key": "varchar_pattern_ops"},
    )
    op.create_index(
        "ix_subscribers_name_prefix",
        "subscribers",
        [sa.text("lower(name)")],
        postgresql_ops={"lower(name)": "text_pattern_ops"},
    )


def downgrade() -> None:
    op.drop_index("ix_subscribers_name_prefix", table_name="subscribers")
    op.drop_index("ix_subscribers_email_prefix", table_name="subscribers")
