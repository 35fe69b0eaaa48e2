"""status columns accept only the statuses the code knows (CHECK constraints)

A row with a misspelt or retired status would be skipped by every query that selects by
status: a subscriber neither mailed nor suppressed, a delivery neither open nor settled.
The values are spelled out here, not read from models.py, so this revision means the same
thing after a later one adds a status.

On SQLite a CHECK can only be added by rebuilding the table (Alembic's batch mode), and
dropping the old table would cascade-delete every delivery, event and category choice
pointing at it: env.py turns foreign keys off around SQLite migrations for that reason
(and checks them afterwards).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28 06:40:00
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

CHECKS = {
    "subscribers": ("status", "subscriberstatus", ("pending", "active", "unsubscribed", "bounced", "complained")),
    "issues": ("status", "issuestatus", ("draft", "sending", "sent")),
    "deliveries": ("status", "deliverystatus", ("pending", "sending", "sent", "failed", "skipped")),
    "events": (
        "kind",
        "eventkind",
        (
            "subscribe",
            "confirm",
            "unsubscribe",
            "preferences",
            "bounce",
            "complaint",
            "reactivate",
            "import",
            "webhook",
        ),
    ),
}


def upgrade() -> None:
    for table, (column, enum_name, values) in CHECKS.items():
        allowed = ", ".join(f"'{v}'" for v in values)
        with op.batch_alter_table(table) as batch_op:
            batch_op.create_check_constraint(op.f(f"ck_{table}_{enum_name}"), f"{column} IN ({allowed})")


def downgrade() -> None:
    for table, (_column, enum_name, _values) in CHECKS.items():
        with op.batch_alter_table(table) as batch_op:
            batch_op.drop_constraint(op.f(f"ck_{table}_{enum_name}"), type_="check")
