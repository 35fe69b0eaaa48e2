"""What the sender does with each kind of reply, against a real aiosmtpd server: only a
reply that names the address bounces; greylisting defers one reader without slowing the
run; replies that blame us or our message stop the run and bounce nobody."""

from __future__ import annotations

from collections import Counter

import pytest
from conftest import SmtpServer
from sending_support import add_subscribers, build_issue, deliveries, issue_status, with_smtp
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from newsletter import ledger, sender, subscribers
from newsletter.config import Settings
from newsletter.errors import RefusedByServer
from newsletter.feedback import HOLD, MIN_RATE, SPREAD, Pace
from newsletter.models import Subscriber, SubscriberStatus

BLOCKLISTED = "550 5.7.1 Service unavailable; Client host [127.0.0.1] blocked using zen.spamhaus.org"


def statuses(sessions: sessionmaker[Session]) -> Counter[str]:
    with sessions.begin() as s:
        return Counter(str(status) for status in s.scalars(select(Subscriber.status)))


@pytest.mark.parametrize(
    "reply, row, bounced",
    [
        ("550 5.1.1 <r@x>: Recipient address rejected: User unknown", "failed", True),
        ("550 5.2.1 The email account that you tried to reach is disabled", "failed", False),  # a suspension
        ("552 5.2.2 Mailbox full", "failed", False),
        ("550 Rejected", "failed", False),
        ("554 5.7.1 Message rejected as spam by content filter", "failed", False),
        ("451 4.7.1 Greylisted, try again later", "failed", False),  # still greylisted after max_attempts
        ("452 4.2.2 Mailbox busy", "failed", False),
        ("550 5.7.1 Client host [127.0.0.1] blocked using zen.spamhaus.org", "pending", False),  # us: never used up
        ("550 5.7.26 Unauthenticated email is not accepted due to the sender's domain DMARC policy", "pending", False),
    ],
)
def test_only_a_reply_naming_the_address_bounces(
    reply: str, row: str, bounced: bool, sessions: sessionmaker[Session], settings: Settings, smtp_server: SmtpServer
) -> None:
    week = build_issue(sessions, settings)
    emails = add_subscribers(sessions, 3)
    smtp_server.faults.rcpt[emails[1]] = reply
    report = sender.send(sessions, settings, week)
    assert sorted(smtp_server.recipients()) == [emails[0], emails[2]]
    got = deliveries(sessions, week)[emails[1]]
    assert (got.status, got.last_reply.split(" (gave up")[0].removeprefix(ledger.REFUSED_US)) == (row, reply)
    assert report.bounced == int(bounced)
    assert statuses(sessions)["bounced"] == int(bounced)
    assert issue_status(sessions, week) == ("sending" if row == "pending" else "sent")
    if row == "pending":  # left for the next run (not hammered now), and said so
        assert got.last_reply.startswith(ledger.REFUSED_US)
        assert any(n.startswith("1 recipients were refused with replies that blame us") for n in report.notes)


def test_greylisting_defers_only_that_reader_who_then_gets_it_once(
    sessions: sessionmaker[Session], settings: Settings, smtp_server: SmtpServer
) -> None:
    """1 in 13 greylisted at RCPT the first time (Postgrey): retried in the same run, and
    the run's pace never drops."""
    week = build_issue(sessions, settings)
    emails = add_subscribers(sessions, 65)
    greylisted = emails[::13]
    for email in greylisted:
        smtp_server.faults.rcpt_once[email] = ["451 4.7.1 Greylisted, see http://postgrey.schweikert.ch/help/x.html"]
    report = sender.send(sessions, with_smtp(settings, rate_per_second=200), week)
    assert Counter(smtp_server.recipients()) == Counter(emails)  # everyone, once
    assert sorted(smtp_server.handler.refused) == sorted(greylisted)
    rows = deliveries(sessions, week)
    assert {e: rows[e].attempts for e in greylisted} == dict.fromkeys(greylisted, 2)
    assert not any("slow down" in note for note in report.notes)
    assert (report.sent, report.retrying, report.bounced, report.remaining) == (65, 5, 0, 0)


def test_a_blocklisted_client_stops_the_run_bounces_nobody_and_resumes_after_delisting(
    sessions: sessionmaker[Session], settings: Settings, smtp_server: SmtpServer
) -> None:
    week = build_issue(sessions, settings)
    emails = [
        e
        for domain in ("example.org", "example.net", "example.com")
        for e in add_subscribers(sessions, 40, prefix=f"r-{domain.split('.')[1]}-")
    ]
    with sessions.begin() as s:  # spread over three domains, interleaved as a real list is
        for i, sub in enumerate(s.scalars(select(Subscriber).order_by(Subscriber.id))):
            sub.email = sub.email.replace("@example.org", "@" + ("example.org", "example.net", "example.com")[i % 3])
            sub.email_key = sub.email
    emails = [
        e.replace("@example.org", "@" + ("example.org", "example.net", "example.com")[i % 3])
        for i, e in enumerate(emails)
    ]
    smtp_server.faults.rcpt_all = BLOCKLISTED
    with pytest.raises(RefusedByServer) as err:
        sender.send(sessions, settings, week)
    message = str(err.value)
    assert message.startswith("the server refuses us, not the readers: ")
    assert f"got {BLOCKLISTED!r}; nobody was marked bounced. Get the sending IP or domain delisted" in message
    assert "\n" not in message
    assert len(smtp_server.handler.refused) <= 30 + settings.smtp.concurrency  # stopped within a few dozen
    assert smtp_server.messages == [] and statuses(sessions) == Counter(active=120)
    assert issue_status(sessions, week) == "sending"
    assert {d.status for d in deliveries(sessions, week).values()} == {"pending"}

    smtp_server.faults.rcpt_all = ""  # delisted
    report = sender.send(sessions, settings, week)
    assert Counter(smtp_server.recipients()) == Counter(emails)
    assert (report.bounced, report.failed, report.remaining) == (0, 0, 0)
    assert issue_status(sessions, week) == "sent"


@pytest.mark.parametrize(
    "reply", ["500 Line too long (see RFC5321 4.5.3.1.6)", "552 5.3.4 Message size exceeds fixed maximum message size"]
)
def test_replies_about_our_message_stop_the_run_and_bounce_nobody(
    reply: str, sessions: sessionmaker[Session], settings: Settings, smtp_server: SmtpServer
) -> None:
    week = build_issue(sessions, settings)
    emails = add_subscribers(sessions, 30)
    for email in emails:
        smtp_server.faults.data[email] = [reply] * 5
    with pytest.raises(
        RefusedByServer,
        match=r"^the server refuses our message itself \(.*\) for 3 recipients: "
        r"our error, nobody was marked bounced\. Fix what the reply names",
    ):
        sender.send(sessions, settings, week)
    rows = deliveries(sessions, week)
    assert {d.status for d in rows.values()} == {"pending"}  # nothing failed, nothing bounced
    assert statuses(sessions) == Counter(active=30)
    assert issue_status(sessions, week) == "sending"


def test_one_readers_message_refused_fails_that_row_only(
    sessions: sessionmaker[Session], settings: Settings, smtp_server: SmtpServer
) -> None:
    week = build_issue(sessions, settings)
    emails = add_subscribers(sessions, 4)
    smtp_server.faults.data[emails[2]] = ["554 5.6.0 Message is malformed"] * 5
    report = sender.send(sessions, settings, week)
    row = deliveries(sessions, week)[emails[2]]
    assert (row.status, row.attempts, report.bounced) == ("failed", 3, 0)
    with sessions.begin() as s:
        assert subscribers.get_by_email(s, emails[2]).status == SubscriberStatus.ACTIVE
    assert sorted(smtp_server.recipients()) == sorted(set(emails) - {emails[2]})


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_pace_halves_once_per_episode_and_climbs_back_a_tenth_per_clean_second() -> None:
    clock = Clock()
    pace = Pace(100.0, clock=clock)
    assert pace.slow_down() == 50.0
    clock.now += HOLD / 2
    assert pace.slow_down() is None  # the same burst of replies: counted once
    clock.now += HOLD
    assert pace.slow_down() == 25.0
    for expected in (35.0, 45.0, 55.0):  # +10 (a tenth of 100) per clean second
        clock.now += 1
        pace.clean()
        assert pace.rate == pytest.approx(expected)
    clock.now += 10
    pace.clean()
    assert pace.rate == 100.0  # back to [smtp] rate_per_second, not beyond


def test_unlimited_pace_slows_from_the_achieved_rate_and_returns_to_unlimited() -> None:
    clock = Clock()
    pace = Pace(0.0, clock=clock, sleep=lambda _: _never())
    for _ in range(400):  # 400 messages in 2 s
        clock.now += 0.005
        pace.attempts.append(clock.now)
    assert pace.slow_down() == pytest.approx(100.0)
    clock.now += 20
    pace.clean()
    assert pace.rate == 0.0


async def _never() -> None:
    raise AssertionError("no wait expected")


def test_only_temporary_failures_across_many_recipients_slow_the_pace() -> None:
    clock = Clock()
    greylisting = Pace(0.0, clock=clock)
    signals = []
    for i in range(1300):  # 1 in 13 greylisted, 100 messages a second
        clock.now += 0.01
        greylisting.attempts.append(clock.now)
        if i % 13 == 0:
            signals.append(greylisting.failed_for(f"r{i}@example.org"))
    assert not any(signals)
    struggling = Pace(0.0, clock=clock)
    results = []
    for i in range(SPREAD):
        clock.now += 0.01
        struggling.attempts.append(clock.now)
        results.append(struggling.failed_for(f"s{i}@example.org"))
    assert results[-1] and not any(results[:-1])
    assert struggling.slow_down() is not None and struggling.rate >= MIN_RATE
