"""bounces and webhook_nonces tables: bounce facts in columns, replay nonces with expiry

Moves what 0001 kept as prose: each bounce report's Event (external_id "bounce:<report>|<id>",
detail "hard 5.1.1: <diagnostic>") becomes a `bounces` row (the event stays, as the audit
trail, without the dedupe key), and each Mailgun one-time token kept as an Event of kind
"webhook" becomes a `webhook_nonces` row expiring 15 minutes after it was seen.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28 06:20:00
"""

import re
from datetime import timedelta

import sqlalchemy as sa
from alembic import op

import newsletter.models

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# How 0001 worded a report: "<kind> <status or feedback type>: <diagnostic>".
DETAIL = re.compile(r"^(hard|soft|complaint|opt-out)(?: ([^:\s]*))?:? ?(.*)$", re.S)
NONCE_TTL = timedelta(seconds=900)
EVENT_KINDS = ("subscribe", "confirm", "unsubscribe", "preferences", "bounce", "complaint", "reactivate", "import")


def upgrade() -> None:
    bounces = op.create_table(
        "bounces",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("subscriber_id", sa.Integer(), nullable=False),
        sa.Column("issue_id", sa.Integer(), nullable=True),
        sa.Column(
            "kind",
            sa.Enum("hard", "soft", "complaint", "opt-out", name="bouncekind", native_enum=False, length=20),
            nullable=False,
        ),
        sa.Column("blame", sa.String(length=20), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("diagnostic", sa.Text(), nullable=False),
        sa.Column("source", sa.String(length=50), nullable=False),
        sa.Column("report_id", sa.String(length=500), nullable=False),
        sa.Column("created_at", newsletter.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["issue_id"], ["issues.id"], name=op.f("fk_bounces_issue_id_issues"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["subscriber_id"], ["subscribers.id"], name=op.f("fk_bounces_subscriber_id_subscribers"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bounces")),
        sa.UniqueConstraint("report_id", name=op.f("uq_bounces_report_id")),
        sa.CheckConstraint("kind IN ('hard', 'soft', 'complaint', 'opt-out')", name=op.f("ck_bounces_bouncekind")),
    )
    with op.batch_alter_table("bounces", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_bounces_created_at"), ["created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_bounces_issue_id"), ["issue_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_bounces_subscriber_id"), ["subscriber_id"], unique=False)
    nonces = op.create_table(
        "webhook_nonces",
        sa.Column("key", sa.String(length=500), nullable=False),
        sa.Column("expires_at", newsletter.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_webhook_nonces")),
    )
    with op.batch_alter_table("webhook_nonces", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_webhook_nonces_expires_at"), ["expires_at"], unique=False)
    _move_data(bounces, nonces)
    # No event is of kind "webhook" any more: the events CHECK (0005) drops it.
    _events_check(EVENT_KINDS)


def _move_data(bounces: sa.Table, nonces: sa.Table) -> None:
    conn = op.get_bind()
    events = sa.table(
        "events",
        sa.column("id", sa.Integer()),
        sa.column("kind", sa.String()),
        sa.column("subscriber_id", sa.Integer()),
        sa.column("issue_id", sa.Integer()),
        sa.column("source", sa.String()),
        sa.column("detail", sa.Text()),
        sa.column("external_id", sa.String()),
        sa.column("created_at", newsletter.models.UTCDateTime(timezone=True)),
    )
    reports = conn.execute(
        sa.select(events).where(events.c.external_id.like("bounce:%"), events.c.subscriber_id.is_not(None))
    ).all()
    rows = []
    for event in reports:
        match = DETAIL.match(event.detail or "")
        kind, status, diagnostic = match.groups() if match else ("soft", "", event.detail or "")
        feedback = kind in ("complaint", "opt-out")
        rows.append(
            {
                "subscriber_id": event.subscriber_id,
                "issue_id": event.issue_id,
                "kind": kind,
                # Unknown for old soft bounces: they keep counting in the soft window, as before.
                "blame": "" if feedback else "address" if kind == "hard" else "unknown",
                "status": "" if feedback else (status or "")[:20],
                "diagnostic": (status or "") if feedback else diagnostic,
                "source": event.source,
                "report_id": event.external_id.removeprefix("bounce:")[:500],
                "created_at": event.created_at,
            }
        )
    if rows:
        op.bulk_insert(bounces, rows)
        conn.execute(sa.update(events).where(events.c.id.in_([e.id for e in reports])).values(external_id=None))
    once = conn.execute(sa.select(events).where(events.c.kind == "webhook")).all()
    if once:
        op.bulk_insert(
            nonces,
            [
                {"key": e.external_id.removeprefix("once:")[:500], "expires_at": e.created_at + NONCE_TTL}
                for e in once
                if e.external_id
            ],
        )
        conn.execute(sa.delete(events).where(events.c.kind == "webhook"))


def _events_check(kinds: tuple[str, ...]) -> None:
    allowed = ", ".join(f"'{k}'" for k in kinds)
    with op.batch_alter_table("events") as batch_op:
        batch_op.drop_constraint(op.f("ck_events_eventkind"), type_="check")
        batch_op.create_check_constraint(op.f("ck_events_eventkind"), f"kind IN ({allowed})")


def downgrade() -> None:
    _events_check((*EVENT_KINDS, "webhook"))
    with op.batch_alter_table("webhook_nonces", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_webhook_nonces_expires_at"))
    op.drop_table("webhook_nonces")
    with op.batch_alter_table("bounces", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_bounces_subscriber_id"))
        batch_op.drop_index(batch_op.f("ix_bounces_issue_id"))
        batch_op.drop_index(batch_op.f("ix_bounces_created_at"))
    op.drop_table("bounces")
