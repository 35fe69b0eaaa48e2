"""Bounce and complaint policy on SQLite and PostgreSQL: statuses, events, dedupe, bad input,
and the Maildir / mbox readers."""

from __future__ import annotations

import mailbox
from pathlib import Path

import pytest
from conftest import CORPORA
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from newsletter import subscribers, tokens
from newsletter.config import Settings
from newsletter.inbound.mailfiles import import_path
from newsletter.inbound.policy import Policy, Tally, process_message
from newsletter.models import Bounce, BounceKind, Delivery, DeliveryStatus, Issue, IssueStatus, SubscriberStatus
from newsletter.stats import IssueBounces, issue_bounces


def dsn(
    recipient: str,
    status: str,
    diagnostic: str,
    *,
    msgid: str = "<dsn-1@mx.example.net>",
    delivered_to: str = "news@example.com",
) -> bytes:
    """A Postfix-style RFC 3464 report."""
    final = f"Final-Recipient: rfc822; {recipient}\n" if recipient else ""
    return f"""Delivered-To: {delivered_to}
From: Mail Delivery System <MAILER-DAEMON@mx.example.net>
To: news@example.com
Subject: Undelivered Mail Returned to Sender
Message-ID: {msgid}
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B"

--B
Content-Type: text/plain

Your message could not be delivered.

--B
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.net

{final}Action: failed
Status: {status}
Diagnostic-Code: smtp; {diagnostic}

--B--
""".encode()


def arf(
    recipient: str, *, msgid: str = "<arf-1@fbl.example.net>", ftype: str = "abuse", return_path: str = ""
) -> bytes:
    """An RFC 5965 report; `return_path` is the original's envelope sender (our VERP address)."""
    original = f"Return-Path: <{return_path}>\n" if return_path else ""
    return f"""From: feedback@fbl.example.net
To: news@example.com
Subject: FW: Test Weekly
Message-ID: {msgid}
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="F"

--F
Content-Type: text/plain

This is an email abuse report.

--F
Content-Type: message/feedback-report

Feedback-Type: {ftype}
User-Agent: ExampleFBL/1.0
Version: 1
Original-Rcpt-To: {recipient}

--F
Content-Type: message/rfc822

{original}From: news@example.com
To: {recipient}
Subject: Test Weekly

hello
--F--
""".encode()


@pytest.fixture
def policy(settings: Settings) -> Policy:
    return Policy.from_settings(settings)


def _issues(session: Session, n: int) -> list[Issue]:
    issues = [Issue(week=f"2026-W{40 + i:02d}", status=IssueStatus.SENT) for i in range(n)]
    session.add_all(issues)
    session.flush()
    return issues


def _mailed(session: Session, email: str, issues: list[Issue]) -> int:
    sub = subscribers.add(session, email)
    session.flush()
    session.add_all(Delivery(issue_id=i.id, subscriber_id=sub.id, status=DeliveryStatus.SENT) for i in issues)
    return sub.id


def _run(sessions: sessionmaker[Session], policy: Policy, raw: bytes, tally: Tally | None = None) -> Tally:
    tally = tally or Tally()
    with sessions.begin() as s:
        process_message(s, policy, raw, source="test", where="test.eml", tally=tally)
    return tally


def _status(sessions: sessionmaker[Session], email: str) -> SubscriberStatus:
    with sessions.begin() as s:
        sub = subscribers.get_by_email(s, email)
        assert sub is not None
        return sub.status


def test_hard_bounce_suppresses_at_once_and_is_recorded_once(sessions: sessionmaker[Session], policy: Policy) -> None:
    with sessions.begin() as s:
        issues = _issues(s, 1)
        _mailed(s, "gone@example.org", issues)
        _mailed(s, "fine@example.org", issues)
    raw = dsn("gone@example.org", "5.1.1", "550 5.1.1 <gone@example.org>: Recipient address rejected: User unknown")
    tally = _run(sessions, policy, raw)
    assert tally.applied == {"hard": 1} and tally.suppressed == 1
    assert _status(sessions, "gone@example.org") == SubscriberStatus.BOUNCED
    assert _status(sessions, "fine@example.org") == SubscriberStatus.ACTIVE
    again = _run(sessions, policy, raw)
    assert again.skipped == {"duplicate report": 1} and not again.applied
    with sessions.begin() as s:
        [row] = s.scalars(select(Bounce)).all()
        assert (row.kind, row.status, row.blame, row.issue_id) == (BounceKind.HARD, "5.1.1", "address", issues[0].id)
        assert row.diagnostic.startswith("550 5.1.1") and "User unknown" in row.diagnostic
        assert row.source == "test" and row.report_id.startswith("<dsn-1@mx.example.net>|")


def test_complaint_suppresses_and_opt_out_unsubscribes(sessions: sessionmaker[Session], policy: Policy) -> None:
    with sessions.begin() as s:
        issues = _issues(s, 1)
        _mailed(s, "angry@example.org", issues)
        _mailed(s, "leaving@example.org", issues)
        _mailed(s, "bounced@example.org", issues)
    _run(sessions, policy, arf("angry@example.org"))
    _run(sessions, policy, arf("leaving@example.org", msgid="<arf-2@x>", ftype="opt-out"))
    _run(sessions, policy, dsn("bounced@example.org", "5.1.1", "550 user unknown"))
    _run(sessions, policy, arf("bounced@example.org", msgid="<arf-3@x>"))
    assert _status(sessions, "angry@example.org") == SubscriberStatus.COMPLAINED
    assert _status(sessions, "leaving@example.org") == SubscriberStatus.UNSUBSCRIBED
    # A complaint outranks a bounce: the address must never be mailed again either way.
    assert _status(sessions, "bounced@example.org") == SubscriberStatus.COMPLAINED
    # A later hard bounce does not turn a complaint back into a bounce.
    _run(sessions, policy, dsn("angry@example.org", "5.1.1", "550 user unknown", msgid="<dsn-9@x>"))
    assert _status(sessions, "angry@example.org") == SubscriberStatus.COMPLAINED


def test_soft_bounces_across_issues(sessions: sessionmaker[Session], settings: Settings) -> None:
    policy = Policy(settings.newsletter.secret_key, "bounces", soft_limit=3, soft_issues=5, max_bytes=10**6)
    with sessions.begin() as s:
        issues = _issues(s, 4)
        sid = _mailed(s, "full@example.org", issues)
        secret = settings.newsletter.secret_key
        verp = [f"bounces+{tokens.make(secret, tokens.BOUNCE, sid, i.id)}@bounce.example.com" for i in issues]
    full = "552 5.2.2 <full@example.org>: Mailbox full"
    _run(sessions, policy, dsn("full@example.org", "5.2.2", full, msgid="<a@x>", delivered_to=verp[0]))
    # A second report about the same issue counts once.
    _run(sessions, policy, dsn("full@example.org", "4.2.2", full, msgid="<b@x>", delivered_to=verp[0]))
    _run(sessions, policy, dsn("full@example.org", "5.2.2", full, msgid="<c@x>", delivered_to=verp[1]))
    with sessions.begin() as s:
        sub = subscribers.get_by_email(s, "full@example.org")
        assert sub is not None and sub.status == SubscriberStatus.ACTIVE and sub.soft_bounces == 2
    tally = _run(sessions, policy, dsn("full@example.org", "5.2.2", full, msgid="<d@x>", delivered_to=verp[3]))
    assert tally.suppressed == 1
    assert _status(sessions, "full@example.org") == SubscriberStatus.BOUNCED


def test_verp_token_names_the_subscriber_when_the_report_does_not(
    sessions: sessionmaker[Session], policy: Policy, settings: Settings
) -> None:
    with sessions.begin() as s:
        issues = _issues(s, 2)
        sid = _mailed(s, "alias@example.org", issues)
        token = tokens.make(settings.newsletter.secret_key, tokens.BOUNCE, sid, issues[0].id)
    raw = dsn("", "5.1.1", "550 5.1.1 unknown user", delivered_to=f"bounces+{token}@bounce.example.com")
    tally = _run(sessions, policy, raw)
    assert tally.applied == {"hard": 1}
    with sessions.begin() as s:
        row = s.scalars(select(Bounce)).one()
        assert (row.subscriber_id, row.issue_id) == (sid, issues[0].id)


def test_bad_input_is_counted_and_skipped(sessions: sessionmaker[Session], settings: Settings) -> None:
    policy = Policy(settings.newsletter.secret_key, "bounces", soft_limit=3, soft_issues=5, max_bytes=5000)
    with sessions.begin() as s:
        issues = _issues(s, 1)
        _mailed(s, "known@example.org", issues)
        subscribers.add(s, "never@example.org")
    tally = Tally()
    for raw in [
        dsn("stranger@example.org", "5.1.1", "550 user unknown", msgid="<1@x>"),
        dsn("never@example.org", "5.1.1", "550 user unknown", msgid="<2@x>"),
        dsn("", "5.1.1", "550 user unknown", msgid="<3@x>", delivered_to="bounces+forged.token@b.example.com"),
        dsn("known@example.org", "5.1.1", "550 user unknown", msgid="<4@x>") + b"x" * 6000,
        b"Subject: Out of office\n\nI am away.",
        b"\x00\x01 not a message at all",
        dsn("known@example.org", "5.1.1", "550 user unknown", msgid="<5@x>"),
    ]:
        _run(sessions, policy, raw, tally)
    assert tally.messages == 7
    assert tally.skipped == {
        "address not on the list": 1,
        "address never mailed": 1,
        "invalid token": 1,
        "no recipient in report": 1,
        "oversized message": 1,
        "not a bounce or complaint": 2,
    }
    assert tally.applied == {"hard": 1}
    assert _status(sessions, "known@example.org") == SubscriberStatus.BOUNCED
    assert _status(sessions, "never@example.org") == SubscriberStatus.ACTIVE
    assert any("stranger@example.org" in p and "not on the list" in p for p in tally.problems)


def test_maildir_and_mbox_import(sessions: sessionmaker[Session], policy: Policy, tmp_path: Path) -> None:
    with sessions.begin() as s:
        issues = _issues(s, 1)
        for email in ("a@example.org", "b@example.org", "kijitora@example.co.jp", "c@example.org"):
            _mailed(s, email, issues)
    maildir = mailbox.Maildir(tmp_path / "Maildir", create=True)
    maildir.add(dsn("a@example.org", "5.1.1", "550 user unknown", msgid="<m1@x>"))
    maildir.add(arf("b@example.org", msgid="<m2@x>"))
    postfix = CORPORA / "bounces" / "postfix__lhost-postfix-04.eml"
    if postfix.exists():
        maildir.add(postfix.read_bytes())
    maildir.add(b"From: friend@example.org\nSubject: Re: your newsletter\n\nThanks!\n")
    tally = import_path(sessions, policy, tmp_path / "Maildir")
    assert tally.applied == ({"hard": 2, "complaint": 1} if postfix.exists() else {"hard": 1, "complaint": 1})
    assert tally.skipped == {"not a bounce or complaint": 1}
    assert import_path(sessions, policy, tmp_path / "Maildir").applied == {}  # rerun: all duplicates
    box = mailbox.mbox(tmp_path / "bounces.mbox", create=True)
    box.add(dsn("c@example.org", "5.2.2", "552 mailbox full", msgid="<m3@x>"))
    box.flush()
    assert import_path(sessions, policy, tmp_path / "bounces.mbox").applied == {"soft": 1}
    assert _status(sessions, "a@example.org") == SubscriberStatus.BOUNCED
    assert _status(sessions, "b@example.org") == SubscriberStatus.COMPLAINED
    assert _status(sessions, "c@example.org") == SubscriberStatus.ACTIVE
    with sessions.begin() as s:
        assert s.scalar(select(func.count()).select_from(Bounce)) == (4 if postfix.exists() else 3)


def test_issue_bounce_stats_and_complaint_warning(sessions: sessionmaker[Session], policy: Policy) -> None:
    with sessions.begin() as s:
        issues = _issues(s, 2)
        for i in range(20):
            _mailed(s, f"r{i}@example.org", issues[:1])
        _mailed(s, "other-issue@example.org", issues[1:])
    _run(sessions, policy, dsn("r0@example.org", "5.1.1", "550 user unknown", msgid="<1@x>"))
    _run(sessions, policy, dsn("r1@example.org", "4.2.2", "452 mailbox full", msgid="<2@x>"))
    _run(sessions, policy, dsn("r1@example.org", "4.2.2", "452 mailbox full", msgid="<3@x>"))
    _run(sessions, policy, arf("r2@example.org"))
    _run(sessions, policy, arf("other-issue@example.org", msgid="<4@x>"))  # mailed only the second
    with sessions.begin() as s:
        first = issue_bounces(s, issues[0].id)
        second = issue_bounces(s, issues[1].id)
    assert (first.delivered, first.hard, first.soft, first.complaints) == (20, 1, 1, 1)
    assert first.complaint_rate == pytest.approx(0.05)
    assert first.warning == "complaint rate 5.00% is above 0.1%: mailbox providers start filtering the list at 0.3%"
    assert (second.delivered, second.complaints) == (1, 1)
    assert IssueBounces(delivered=1000, hard=0, soft=0, complaints=1).warning == ""
    assert IssueBounces(delivered=999, hard=0, soft=0, complaints=1).warning.startswith("complaint rate 0.10%")


def test_replies_that_blame_the_message_or_us_never_bounce_a_reader(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    """Policy by reason, not by digit: 5xx 'mailbox full', spam and blocklist refusals stay soft, and
    only the mailbox's own troubles count toward the soft window (here: one strike suppresses)."""
    policy = Policy(settings.newsletter.secret_key, "bounces", soft_limit=1, soft_issues=1, max_bytes=10**6)
    with sessions.begin() as s:
        issues = _issues(s, 1)
        for email in ("full@example.org", "spam@example.org", "listed@example.org", "dmarc@example.org"):
            _mailed(s, email, issues)
    replies = {
        "full@example.org": ("5.2.2", "552 5.2.2 <full@example.org>: Mailbox full"),
        "spam@example.org": ("5.7.1", "550 5.7.1 Message rejected as spam by Content Filtering"),
        "listed@example.org": (
            "5.7.1",
            "554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org",
        ),
        "dmarc@example.org": (
            "5.7.26",
            "550 5.7.26 Unauthenticated email from example.com is not accepted due to domain's DMARC policy",
        ),
    }
    for n, (email, (status, text)) in enumerate(replies.items()):
        assert _run(sessions, policy, dsn(email, status, text, msgid=f"<{n}@x>")).applied == {"soft": 1}
    with sessions.begin() as s:
        blames = {row.diagnostic: row.blame for row in s.execute(select(Bounce.diagnostic, Bounce.blame))}
    assert sorted(blames.values()) == ["content", "mailbox", "sender", "sender"]
    # The full mailbox and the spam verdict are the reader's mailbox talking: they count (limit 1);
    # a blocklist or DMARC refusal blames us and suppresses nobody.
    assert _status(sessions, "full@example.org") == SubscriberStatus.BOUNCED
    assert _status(sessions, "spam@example.org") == SubscriberStatus.BOUNCED
    assert _status(sessions, "listed@example.org") == SubscriberStatus.ACTIVE
    assert _status(sessions, "dmarc@example.org") == SubscriberStatus.ACTIVE


def test_with_verp_only_a_valid_token_changes_anything(sessions: sessionmaker[Session], settings: Settings) -> None:
    """Issue 13 item 2: anyone can mail the bounce address. With VERP on, a hand-made report naming a
    reader (no token, a forged token, or another reader's token) suppresses nobody."""
    policy = Policy(settings.newsletter.secret_key, "bounces", 3, 5, 10**6, verp=True)
    with sessions.begin() as s:
        issues = _issues(s, 1)
        victim = _mailed(s, "victim@example.org", issues)
        other = _mailed(s, "other@example.org", issues)
        token = tokens.make(settings.newsletter.secret_key, tokens.BOUNCE, other, issues[0].id)
    dead = "550 5.1.1 <victim@example.org>: User unknown"
    no_token = _run(sessions, policy, dsn("victim@example.org", "5.1.1", dead, msgid="<1@x>"))
    forged = _run(
        sessions,
        policy,
        dsn(
            "victim@example.org",
            "5.1.1",
            dead,
            msgid="<2@x>",
            delivered_to="bounces+WzEsMV0.forgedforgedforgedforged@b.example.com",
        ),
    )
    assert no_token.skipped == {"no valid VERP token": 1} and forged.skipped["no valid VERP token"] == 1
    # The other reader's token, with the victim's address in the report: only the token's reader is
    # affected, and since the report names another address it is no evidence that theirs is dead.
    misdirected = _run(
        sessions,
        policy,
        dsn("victim@example.org", "5.1.1", dead, msgid="<3@x>", delivered_to=f"bounces+{token}@b.example.com"),
    )
    assert misdirected.applied == {"soft": 1}
    assert _status(sessions, "victim@example.org") == SubscriberStatus.ACTIVE
    assert _status(sessions, "other@example.org") == SubscriberStatus.ACTIVE
    with sessions.begin() as s:
        assert [tuple(r) for r in s.execute(select(Bounce.subscriber_id, Bounce.kind))] == [(other, BounceKind.SOFT)]
    own = dsn(
        "other@example.org",
        "5.1.1",
        "550 5.1.1 user unknown",
        msgid="<4@x>",
        delivered_to=f"bounces+{token}@b.example.com",
    )
    assert _run(sessions, policy, own).applied == {"hard": 1}
    assert _status(sessions, "other@example.org") == SubscriberStatus.BOUNCED
    assert victim != other


def test_without_verp_an_address_read_out_of_prose_only_counts_soft(
    sessions: sessionmaker[Session], policy: Policy, settings: Settings
) -> None:
    """A prose bounce (qmail style) names addresses in free text, where a quoted line can name
    another reader: without our token it is not evidence enough to remove anyone at once."""
    with sessions.begin() as s:
        issues = _issues(s, 1)
        sid = _mailed(s, "gone@example.org", issues)
        token = tokens.make(settings.newsletter.secret_key, tokens.BOUNCE, sid, issues[0].id)

    def prose(msgid: str, delivered_to: str = "news@example.com") -> bytes:
        return f"""Delivered-To: {delivered_to}
From: MAILER-DAEMON@mx.example.net
To: news@example.com
Subject: failure notice
Message-ID: {msgid}

Hi. This is the qmail-send program at mx.example.net.
I'm afraid I wasn't able to deliver your message to the following addresses.

<gone@example.org>:
192.0.2.1 does not like recipient.
Remote host said: 550 5.1.1 <gone@example.org>... User unknown
""".encode()

    tally = _run(sessions, policy, prose("<p-1@x>"))
    assert tally.applied == {"soft": 1} and tally.suppressed == 0
    assert _status(sessions, "gone@example.org") == SubscriberStatus.ACTIVE
    with sessions.begin() as s:
        assert s.scalars(select(Bounce.blame)).one() == "address"  # the reply's words are kept
        assert subscribers.get_by_email(s, "gone@example.org").soft_bounces == 1  # counted in the window
    # The same report carrying our token names the reader for sure: hard.
    tally = _run(sessions, policy, prose("<p-2@x>", delivered_to=f"bounces+{token}@bounce.example.com"))
    assert tally.applied == {"hard": 1} and tally.suppressed == 1
    assert _status(sessions, "gone@example.org") == SubscriberStatus.BOUNCED
