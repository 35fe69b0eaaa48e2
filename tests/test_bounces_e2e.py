"""End to end through a real SMTP server: VERP envelope sender, a bounce and a complaint fed
back from a Maildir, and the next issue reaching neither address."""

from __future__ import annotations

import dataclasses
import mailbox
from datetime import timedelta
from pathlib import Path

from conftest import SmtpServer
from sending_support import add_subscribers, build_issue, deliveries
from sqlalchemy.orm import Session, sessionmaker
from test_bounces_policy import arf, dsn

from newsletter import builder, sender, subscribers, tokens
from newsletter.config import Settings
from newsletter.inbound.mailfiles import import_path
from newsletter.inbound.policy import Policy
from newsletter.models import Article, SubscriberStatus, utcnow
from newsletter.stats import issue_bounces

DOMAIN = "bounce.example.com"


def _verp(settings: Settings) -> Settings:
    return dataclasses.replace(settings, bounces=dataclasses.replace(settings.bounces, return_path_domain=DOMAIN))


def _last_week_issue(sessions: sessionmaker[Session], settings: Settings) -> str:
    week = builder.current_week(settings, utcnow() - timedelta(days=7))
    start, _ = builder.week_bounds(settings, week)
    with sessions.begin() as s:
        s.add(
            Article(
                guid="last-week",
                url="https://example.com/news/last-week",
                title="Last week's news",
                category="news",
                summary="<p>Old news.</p>",
                published_at=start + timedelta(hours=12),
            )
        )
        builder.build(s, settings, week)
    return week


def test_envelope_sender_carries_a_bounce_token(
    sessions: sessionmaker[Session], settings: Settings, smtp_server: SmtpServer
) -> None:
    verp = _verp(settings)
    week = build_issue(sessions, verp)
    [email] = add_subscribers(sessions, 1)
    sender.send(sessions, verp, week)
    [received] = smtp_server.messages
    row = deliveries(sessions, week)[email]
    local, _, domain = received.mail_from.partition("@")
    assert domain == DOMAIN and local.startswith("bounces+")
    data = tokens.read(settings.newsletter.secret_key, tokens.BOUNCE, local.removeprefix("bounces+"))
    assert (data.subscriber_id, data.issue_id) == (row.subscriber_id, row.issue_id)
    # The From header stays the publisher's.
    assert received.message["From"] == settings.newsletter.from_address


def test_bounce_and_complaint_stop_the_next_issue(
    sessions: sessionmaker[Session], settings: Settings, smtp_server: SmtpServer, tmp_path: Path
) -> None:
    verp = _verp(settings)
    first = _last_week_issue(sessions, verp)
    readers = add_subscribers(sessions, 4)
    sender.send(sessions, verp, first, force=True)
    envelope = {m.rcpt_tos[0]: m.mail_from for m in smtp_server.messages}
    assert sorted(envelope) == sorted(readers)

    # The bounce names no recipient: only the VERP address ties it to reader0. The complaint
    # carries the original's headers, VERP return path included (with VERP on, reports need it).
    box = mailbox.Maildir(tmp_path / "bounces", create=True)
    box.add(dsn("", "5.1.1", "550 5.1.1 User unknown", delivered_to=envelope[readers[0]]))
    box.add(arf(readers[1], msgid="<fbl-1@fbl.example.net>", return_path=envelope[readers[1]]))
    tally = import_path(sessions, Policy.from_settings(verp), tmp_path / "bounces")
    assert tally.applied == {"hard": 1, "complaint": 1} and not tally.skipped
    issue_id = deliveries(sessions, first)[readers[0]].issue_id  # its own session: not nested below
    with sessions.begin() as s:
        status = {e: subscribers.get_by_email(s, e).status for e in readers}  # type: ignore[union-attr]
        stats = issue_bounces(s, issue_id)
    assert status == {
        readers[0]: SubscriberStatus.BOUNCED,
        readers[1]: SubscriberStatus.COMPLAINED,
        readers[2]: SubscriberStatus.ACTIVE,
        readers[3]: SubscriberStatus.ACTIVE,
    }
    assert (stats.delivered, stats.hard, stats.soft, stats.complaints) == (4, 1, 0, 1)
    assert stats.warning.startswith("complaint rate 25.00% is above 0.1%")

    second = build_issue(sessions, verp)
    assert second != first
    smtp_server.messages.clear()
    report = sender.send(sessions, verp, second)
    assert sorted(smtp_server.recipients()) == sorted(readers[2:])
    assert report.sent == 2
