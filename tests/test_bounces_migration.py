"""Migration 0006 on SQLite and PostgreSQL: bounce reports kept as prose in `events` (0001's
shape) become `bounces` rows, and Mailgun tokens kept as events become `webhook_nonces`."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from alembic import command
from sqlalchemy import Engine, select, text

from newsletter.db import alembic_config, make_engine, session_factory
from newsletter.models import Bounce, BounceKind, Event, EventKind, WebhookNonce

SEEN = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)


@pytest.fixture
def old_engine(db_url: str) -> Iterator[Engine]:
    """A database at revision 0005 (before 0006) holding what the old code wrote."""
    engine = make_engine(db_url)
    command.upgrade(alembic_config(engine), "0005")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO subscribers (id, email, email_key, name, status, consent_source, "
                "status_changed_at, created_at, attributes, soft_bounces) VALUES "
                "(1, 'gone@example.org', 'gone@example.org', '', 'bounced', '', :t, :t, '{}', 0), "
                "(2, 'full@example.org', 'full@example.org', '', 'active', '', :t, :t, '{}', 1)"
            ),
            {"t": SEEN.replace(tzinfo=None)},
        )
        conn.execute(
            text(
                "INSERT INTO issues (id, week, status, subject, intro, created_at) "
                "VALUES (7, '2026-W47', 'sent', '', '', :t)"
            ),
            {"t": SEEN.replace(tzinfo=None)},
        )
        rows = [
            ("bounce", 1, "imap", "hard 5.1.1: 550 5.1.1 <gone@example.org>: User unknown", "bounce:<a@x>|1"),
            ("bounce", 2, "maildir", "soft 4.2.2: 452 4.2.2 Mailbox full", "bounce:<b@x>|2"),
            ("complaint", 2, "webhook:ses", "complaint abuse: Amazon SES complaint (abuse)", "bounce:ses:fb-1|2"),
            ("bounce", 1, "smtp", "550 5.1.1 user unknown", None),  # a send-time bounce: no report
            ("webhook", None, "webhook:mailgun", "one-time signature token", "once:mailgun:tok-1"),
        ]
        for kind, sub, source, detail, external in rows:
            conn.execute(
                text(
                    "INSERT INTO events (kind, subscriber_id, issue_id, source, detail, external_id, "
                    "created_at) VALUES (:k, :s, 7, :src, :d, :e, :t)"
                ),
                {"k": kind, "s": sub, "src": source, "d": detail, "e": external, "t": SEEN.replace(tzinfo=None)},
            )
    yield engine
    engine.dispose()


def test_upgrade_moves_reports_into_bounces_and_tokens_into_nonces(old_engine: Engine) -> None:
    command.upgrade(alembic_config(old_engine), "head")
    with session_factory(old_engine).begin() as s:
        bounces = {b.report_id: b for b in s.scalars(select(Bounce))}
        nonces = list(s.scalars(select(WebhookNonce)))
        events = list(s.scalars(select(Event).order_by(Event.id)))
    assert set(bounces) == {"<a@x>|1", "<b@x>|2", "ses:fb-1|2"}
    hard, soft, complaint = bounces["<a@x>|1"], bounces["<b@x>|2"], bounces["ses:fb-1|2"]
    assert (hard.kind, hard.status, hard.blame, hard.subscriber_id, hard.issue_id, hard.source) == (
        BounceKind.HARD,
        "5.1.1",
        "address",
        1,
        7,
        "imap",
    )
    assert hard.diagnostic == "550 5.1.1 <gone@example.org>: User unknown" and hard.created_at == SEEN
    # Old soft bounces keep counting in the soft window (blame unknown is counted).
    assert (soft.kind, soft.status, soft.blame, soft.diagnostic) == (
        BounceKind.SOFT,
        "4.2.2",
        "unknown",
        "452 4.2.2 Mailbox full",
    )
    assert (complaint.kind, complaint.status, complaint.diagnostic) == (BounceKind.COMPLAINT, "", "abuse")
    assert [(n.key, n.expires_at) for n in nonces] == [("mailgun:tok-1", SEEN + timedelta(minutes=15))]
    # The audit events stay (without their dedupe key); the token events are gone.
    assert [(e.kind, e.external_id) for e in events] == [
        (EventKind.BOUNCE, None),
        (EventKind.BOUNCE, None),
        (EventKind.COMPLAINT, None),
        (EventKind.BOUNCE, None),
    ]
