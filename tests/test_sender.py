"""The sending engine against a real aiosmtpd server, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.header import decode_header, make_header

import pytest
from aiosmtpd.controller import Controller
from conftest import Received, RecordingHandler, SmtpServer, free_port
from sending_support import add_subscribers, body, build_issue, deliveries, issue_status, with_smtp
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from newsletter import ledger, sender, subscribers, tokens
from newsletter.config import Password, Settings, SmtpSettings
from newsletter.db import make_engine, session_factory
from newsletter.errors import Conflict, InvalidInput, NotFound, TransportUnavailable
from newsletter.models import Delivery, Event, EventKind, Issue, Subscriber, SubscriberStatus, utcnow
from newsletter.transport import SmtpTransport


def smtp_at(port: int, **changes: object) -> SmtpTransport:
    """A real SMTP transport to the aiosmtpd server on 127.0.0.1:`port`."""
    return SmtpTransport(SmtpSettings(host="127.0.0.1", port=port, **changes))  # type: ignore[arg-type]


def test_each_active_subscriber_gets_one_message_with_their_sections_and_links(
    sessions: sessionmaker[Session], settings: Settings, smtp_server: SmtpServer
) -> None:
    week = build_issue(sessions, settings)
    everyone = add_subscribers(sessions, 3)
    events_only = add_subscribers(sessions, 1, prefix="events", categories=("events",))
    with sessions.begin() as s:
        subscribers.add(s, "pending@example.org", status=SubscriberStatus.PENDING)
        subscribers.add(s, "gone@example.org", status=SubscriberStatus.UNSUBSCRIBED)

    report = sender.send(sessions, settings, week)

    assert sorted(smtp_server.recipients()) == sorted(everyone + events_only)
    assert (report.sent, report.failed, report.remaining) == (4, 0, 0)
    assert issue_status(sessions, week) == "sent"
    rows = deliveries(sessions, week)
    assert {e: (d.status, d.attempts) for e, d in rows.items()} == dict.fromkeys(everyone + events_only, ("sent", 1))
    assert all(d.last_reply.startswith("250") and d.sent_at for d in rows.values())
    by_rcpt = {m.rcpt_tos[0]: m for m in smtp_server.messages}
    msg = by_rcpt["reader1@example.org"].message
    sid = rows["reader1@example.org"].subscriber_id
    issue_id = rows["reader1@example.org"].issue_id
    assert msg["To"] == "Reader 1 <reader1@example.org>"
    assert msg.get_content_type() == "multipart/alternative"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    unsubscribe = tokens.unsubscribe_url(settings, sid, issue_id)
    assert f"<{unsubscribe}>" in msg["List-Unsubscribe"] and "mailto:unsubscribe@example.com" in msg["List-Unsubscribe"]
    assert msg["Message-ID"].startswith(f"<nl.{issue_id}.{sid}.") and msg["Date"] and msg["List-Id"]
    assert unsubscribe in body(msg, "html") and unsubscribe in body(msg, "plain")
    assert tokens.preferences_url(settings, sid) in body(msg, "plain")
    assert "Reader 1" in body(msg, "plain")
    # The events-only reader gets the events section and not the others.
    events_text = body(by_rcpt["events0@example.org"].message, "plain")
    assert "Events headline" in events_text and "Products headline" not in events_text
    assert "Products headline" in body(msg, "plain")
    # A second run sends nothing more.
    again = sender.send(sessions, settings, week)
    assert again.sent == 0 and len(smtp_server.messages) == 4


def test_4xx_is_retried_with_backoff_until_accepted(
    sessions: sessionmaker[Session], settings: Settings, smtp_server: SmtpServer
) -> None:
    week = build_issue(sessions, settings)
    emails = add_subscribers(sessions, 3)
    smtp_server.faults.data["reader0@example.org"] = ["451 4.3.0 try again later"]
    smtp_server.faults.rcpt["reader1@example.org"] = "452 4.2.2 mailbox busy"

    report = sender.send(sessions, settings, week)

    assert Counter(smtp_server.recipients()) == Counter([emails[0], emails[2]])
    rows = deliveries(sessions, week)
    assert rows["reader0@example.org"].attempts == 2 and rows["reader0@example.org"].status == "sent"
    assert report.retrying == 3 and report.failed == 1
    # The RCPT fault persists: it fails after max_attempts (3), reply recorded.
    assert rows["reader1@example.org"].status == "failed"
    assert rows["reader1@example.org"].attempts == 3
    assert "452 4.2.2 mailbox busy" in rows["reader1@example.org"].last_reply


def test_retry_due_later_waits_for_the_next_run(
    sessions: sessionmaker[Session], settings: Settings, smtp_server: SmtpServer
) -> None:
    week = build_issue(sessions, settings)
    add_subscribers(sessions, 2)
    smtp_server.faults.data["reader0@example.org"] = ["421 4.7.0 slow down"]
    report = sender.send(sessions, with_smtp(settings, retry_delay=3600), week)
    assert any(n.startswith("the server asked to slow down (421 4.7.0 slow down): ") for n in report.notes)
    row = deliveries(sessions, week)["reader0@example.org"]
    assert (row.status, row.attempts) == ("pending", 1) and row.next_attempt_at > utcnow()
    assert report.remaining == 1 and issue_status(sessions, week) == "sending"
    assert any("retries are due" in n for n in report.notes)
    with sessions.begin() as s:  # time passes
        d = s.merge(row)
        d.next_attempt_at = utcnow() - timedelta(seconds=1)
    sender.send(sessions, settings, week)
    assert Counter(smtp_server.recipients()) == Counter({"reader0@example.org": 1, "reader1@example.org": 1})
    assert issue_status(sessions, week) == "sent"


@pytest.mark.parametrize("where", ["rcpt", "data"])
def test_5xx_fails_the_delivery_and_bounces_only_an_unknown_address(
    where: str, sessions: sessionmaker[Session], settings: Settings, smtp_server: SmtpServer
) -> None:
    week = build_issue(sessions, settings)
    add_subscribers(sessions, 3)
    if where == "rcpt":
        smtp_server.faults.rcpt["reader2@example.org"] = "550 5.1.1 no such user"
    else:
        smtp_server.faults.data["reader2@example.org"] = ["554 5.7.1 rejected as spam"]

    report = sender.send(sessions, settings, week)

    # A reply naming the address bounces; one about the content (a filter) fails the row only.
    bounced = where == "rcpt"
    assert sorted(smtp_server.recipients()) == ["reader0@example.org", "reader1@example.org"]
    assert (report.sent, report.failed, report.bounced) == (2, 1, int(bounced))
    row = deliveries(sessions, week)["reader2@example.org"]
    assert row.status == "failed" and row.attempts == 1 and row.last_reply.startswith("55")
    with sessions.begin() as s:
        sub = subscribers.get_by_email(s, "reader2@example.org")
        if not bounced:
            assert sub.status == SubscriberStatus.ACTIVE
            return
        assert sub.status == SubscriberStatus.BOUNCED
        event = s.scalar(select(Event).where(Event.subscriber_id == sub.id, Event.kind == EventKind.BOUNCE))
        assert event.source == "smtp" and event.detail.startswith("55") and event.issue_id == row.issue_id
    assert issue_status(sessions, week) == "sent"


def test_dropped_connection_mid_data_reconnects_and_delivers_once(
    sessions: sessionmaker[Session], settings: Settings, smtp_server: SmtpServer
) -> None:
    week = build_issue(sessions, settings)
    emails = add_subscribers(sessions, 6)
    smtp_server.faults.drop_on_data.add("reader3@example.org")
    sender.send(sessions, with_smtp(settings, concurrency=2), week)
    assert Counter(smtp_server.recipients()) == Counter(emails)
    assert deliveries(sessions, week)["reader3@example.org"].attempts == 2


def test_server_down_is_one_clear_error_and_the_issue_stays_resumable(
    sessions: sessionmaker[Session], settings: Settings, smtp_server: SmtpServer
) -> None:
    week = build_issue(sessions, settings)
    emails = add_subscribers(sessions, 5)
    port = free_port()
    down = smtp_at(port, timeout=2, concurrency=4)
    with pytest.raises(TransportUnavailable) as err:
        sender.send(sessions, settings, week, transport=down)
    assert f"cannot connect to SMTP server 127.0.0.1:{port}" in str(err.value)
    assert "run `newsletter send` again" in str(err.value)
    rows = deliveries(sessions, week)
    assert {d.status for d in rows.values()} == {"pending"}
    assert all(d.claimed_by == "" for d in rows.values())  # reservations given back

    sender.send(sessions, settings, week)
    assert Counter(smtp_server.recipients()) == Counter(emails)
    assert issue_status(sessions, week) == "sent"


class UnsubscribeAfterFirst:
    """A real SMTP transport; once the first message is accepted, the last reader
    unsubscribes through the web app's code path (a separate committed transaction)."""

    def __init__(self, inner: SmtpTransport, sessions: sessionmaker[Session], email: str) -> None:
        self.inner, self.sessions, self.email, self.done = inner, sessions, email, False

    async def send(self, envelope_from: str, recipient: str, data: bytes, **kw: object) -> str:
        reply = await self.inner.send(envelope_from, recipient, data, **kw)  # type: ignore[arg-type]
        if not self.done:
            self.done = True
            with self.sessions.begin() as s:
                subscribers.unsubscribe(s, subscribers.get_by_email(s, self.email), source="one-click")
        return reply

    async def close(self) -> None:
        await self.inner.close()


def test_unsubscribe_during_a_send_is_honoured(
    sessions: sessionmaker[Session], settings: Settings, smtp_server: SmtpServer
) -> None:
    week = build_issue(sessions, settings)
    emails = add_subscribers(sessions, 4)
    transport = UnsubscribeAfterFirst(SmtpTransport(settings.smtp), sessions, emails[-1])
    report = sender.send(
        sessions, with_smtp(settings, concurrency=1), week, tuning=sender.Tuning(batch_size=2), transport=transport
    )
    assert sorted(smtp_server.recipients()) == emails[:-1]
    row = deliveries(sessions, week)[emails[-1]]
    assert row.status == "skipped" and "unsubscribed" in row.last_reply
    assert report.remaining == 0 and issue_status(sessions, week) == "sent"


def test_stale_issue_is_refused_unless_forced(
    sessions: sessionmaker[Session], settings: Settings, smtp_server: SmtpServer
) -> None:
    week = build_issue(sessions, settings)
    add_subscribers(sessions, 1)
    with sessions.begin() as s:
        s.scalar(select(Issue).where(Issue.week == week)).scheduled_at = utcnow() - timedelta(hours=100)
    with pytest.raises(Conflict, match=r"100 hours ago \(more than \[delivery\] max_age_hours = 72\); pass --force"):
        sender.send(sessions, settings, week)
    assert smtp_server.messages == []
    sender.send(sessions, settings, week, force=True)
    assert smtp_server.recipients() == ["reader0@example.org"]


def test_unbuilt_week_and_header_injection_are_refused(
    sessions: sessionmaker[Session], settings: Settings, smtp_server: SmtpServer
) -> None:
    with pytest.raises(NotFound, match=r"no issue for 2020-W01; run 'newsletter issue build --week 2020-W01' first"):
        sender.send(sessions, settings, "2020-W01")
    week = build_issue(sessions, settings)
    add_subscribers(sessions, 2)
    with sessions.begin() as s:
        s.scalar(select(Issue).where(Issue.week == week)).subject = "Hi\r\nBcc: victim@example.net"
    with pytest.raises(InvalidInput, match="Subject .* contains a line break"):
        sender.send(sessions, settings, week)
    assert smtp_server.messages == []


def test_limit_sends_only_n_and_a_rerun_continues(
    sessions: sessionmaker[Session], settings: Settings, smtp_server: SmtpServer
) -> None:
    week = build_issue(sessions, settings)
    emails = add_subscribers(sessions, 7)
    first = sender.send(sessions, settings, week, limit=3)
    assert first.sent == 3 and first.remaining == 4 and issue_status(sessions, week) == "sending"
    sender.send(sessions, settings, week)
    assert Counter(smtp_server.recipients()) == Counter(emails)


def test_rate_limit_paces_the_sending(
    sessions: sessionmaker[Session], settings: Settings, smtp_server: SmtpServer
) -> None:
    week = build_issue(sessions, settings)
    add_subscribers(sessions, 6)
    report = sender.send(sessions, with_smtp(settings, rate_per_second=10), week)
    assert report.sent == 6 and report.elapsed >= 0.5


def test_non_ascii_address_goes_out_with_smtputf8_and_fails_cleanly_without_it(
    sessions: sessionmaker[Session], settings: Settings, smtp_server: SmtpServer
) -> None:
    week = build_issue(sessions, settings)
    emails = add_subscribers(sessions, 2)
    with sessions.begin() as s:
        subscribers.add(s, "jörg@bücher.example", name="Jörg")
    strict = RecordingHandler()
    port = free_port()
    controller = Controller(strict, hostname="127.0.0.1", port=port, enable_SMTPUTF8=False)
    controller.start()
    try:
        report = sender.send(sessions, settings, week, transport=smtp_at(port, timeout=5, concurrency=2))
    finally:
        controller.stop()
    assert sorted(r for m in strict.messages for r in m.rcpt_tos) == emails
    assert report.failed == 1 and report.bounced == 0 and issue_status(sessions, week) == "sent"
    row = deliveries(sessions, week)["jörg@bücher.example"]
    assert (row.status, row.last_reply) == ("failed", "not sent: server lacks SMTPUTF8")
    with sessions.begin() as s:  # not the subscriber's fault: still active, and a server that can takes it
        assert subscribers.get_by_email(s, "jörg@bücher.example").status == SubscriberStatus.ACTIVE
        s.merge(row).status = "pending"
        s.scalar(select(Issue).where(Issue.week == week)).status = "sending"
    sender.send(sessions, settings, week)
    assert smtp_server.recipients() == ["jörg@bücher.example"]
    received = message_from_bytes(smtp_server.messages[0].data, policy=policy.default)
    assert str(received["To"]) == "Jörg <jörg@bücher.example>"


def test_an_address_that_cannot_go_in_a_header_fails_alone(
    sessions: sessionmaker[Session], settings: Settings, smtp_server: SmtpServer
) -> None:
    week = build_issue(sessions, settings)
    emails = add_subscribers(sessions, 2)
    with sessions.begin() as s:  # written around the API, as an old import might have
        s.add(
            Subscriber(
                email="evil@example.org\r\nBcc: all@example.net",
                email_key="evil",
                name="",
                status=SubscriberStatus.ACTIVE,
                attributes={},
            )
        )
    report = sender.send(sessions, settings, week)
    assert sorted(smtp_server.recipients()) == emails and report.failed == 1
    row = deliveries(sessions, week)["evil@example.org\r\nBcc: all@example.net"]
    assert row.status == "failed" and "contains a line break" in row.last_reply


class QueueThenStallHandler(RecordingHandler):
    """A relay that queues each message, then takes `stall` seconds to say so."""

    stall = 0.0

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        with self.lock:
            self.messages.append(Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        await asyncio.sleep(self.stall)
        return "250 2.0.0 OK queued"


def test_no_reply_to_the_end_of_a_message_leaves_it_ambiguous_never_resent(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    """The server queued the message but answers after the client gave up: resending it
    would mail the reader twice, so it stays ambiguous until --resend-ambiguous."""
    week = build_issue(sessions, settings)
    emails = add_subscribers(sessions, 3)
    handler = QueueThenStallHandler()
    handler.stall = 1.0
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        slow = smtp_at(port, timeout=5, concurrency=1, data_timeout=0.2)
        with pytest.raises(
            TransportUnavailable,
            match=rf"no reply from SMTP server 127.0.0.1:{port} "
            r"within 0.2 s after the whole message; stopped sending",
        ):
            sender.send(sessions, with_smtp(settings, concurrency=1), week, transport=slow)
        rows = deliveries(sessions, week)
        assert sorted(d.status for d in rows.values()) == ["pending", "pending", "sending"]
        handler.stall = 0
        report = sender.send(sessions, settings, week, transport=smtp_at(port, timeout=5, concurrency=2))
        assert report.sent == 2 and report.ambiguous == 1
        recipients = [r for m in handler.messages for r in m.rcpt_tos]
        assert sorted(recipients) == emails  # everyone once, nobody twice
        assert issue_status(sessions, week) == "sending"  # one delivery is still unresolved
        report = sender.send(
            sessions, settings, week, resend_ambiguous=True, transport=smtp_at(port, timeout=5, concurrency=2)
        )
        assert report.sent == 1 and issue_status(sessions, week) == "sent"  # only on explicit request
    finally:
        controller.stop()


class RefusingHandler(RecordingHandler):
    """A server that refuses our sender (MAIL FROM) or our whole connection (EHLO)."""

    def __init__(self, *, mail: str = "", ehlo: str = "") -> None:
        super().__init__()
        self.mail, self.ehlo = mail, ehlo

    async def handle_MAIL(self, server, session, envelope, address, mail_options):  # type: ignore[no-untyped-def]
        if self.mail:
            return self.mail
        envelope.mail_from = address
        return "250 OK"

    async def handle_EHLO(self, server, session, envelope, hostname, responses):  # type: ignore[no-untyped-def]
        session.host_name = hostname
        return [self.ehlo] if self.ehlo else responses


@pytest.mark.parametrize(
    "refusal",
    [
        {"mail": "550 5.7.1 sender not authorised"},
        {"mail": "530 5.7.0 Authentication required"},
        {"ehlo": "554 5.7.1 client host blocked"},
    ],
)
def test_a_server_refusing_us_bounces_nobody_and_stops(
    sessions: sessionmaker[Session], settings: Settings, refusal: dict[str, str]
) -> None:
    """One wrong setting or a blocklisted IP must not mark the whole list bounced."""
    week = build_issue(sessions, settings)
    add_subscribers(sessions, 4)
    port = free_port()
    controller = Controller(RefusingHandler(**refusal), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        with pytest.raises(TransportUnavailable, match="stopped sending"):
            sender.send(
                sessions, with_smtp(settings, concurrency=2), week, transport=smtp_at(port, timeout=5, concurrency=2)
            )
    finally:
        controller.stop()
    rows = deliveries(sessions, week)
    assert {d.status for d in rows.values()} == {"pending"}
    with sessions.begin() as s:
        assert {sub.status for sub in s.scalars(select(Subscriber))} == {SubscriberStatus.ACTIVE}
    assert issue_status(sessions, week) == "sending"


def test_smtp_auth_login_and_a_refused_login(
    sessions: sessionmaker[Session], settings: Settings, smtp_server: SmtpServer
) -> None:
    from aiosmtpd.smtp import AuthResult, LoginPassword

    def check(server: object, session: object, envelope: object, mechanism: str, data: object) -> AuthResult:
        ok = isinstance(data, LoginPassword) and data.login in ("mailer", b"mailer") and data.password == b"s3cret"
        return AuthResult(success=ok, handled=False)

    week = build_issue(sessions, settings)
    emails = add_subscribers(sessions, 2)
    handler = RecordingHandler()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, auth_require_tls=False, authenticator=check)
    controller.start()
    try:
        with pytest.raises(
            TransportUnavailable,
            match=r"login refused \(535 .*\); check \[smtp\] username and "
            r"password; stopped sending",
        ):
            sender.send(
                sessions,
                settings,
                week,
                transport=smtp_at(
                    port, username="mailer", password=Password("wrong"), auth_without_tls=True, timeout=5, concurrency=2
                ),
            )
        assert handler.messages == []
        sender.send(
            sessions,
            settings,
            week,
            transport=smtp_at(
                port, username="mailer", password=Password("s3cret"), auth_without_tls=True, timeout=5, concurrency=2
            ),
        )
    finally:
        controller.stop()
    assert sorted(r for m in handler.messages for r in m.rcpt_tos) == emails


def test_unsubscribes_from_another_connection_succeed_while_a_send_commits(
    sessions: sessionmaker[Session], settings: Settings, smtp_server: SmtpServer, db_url: str
) -> None:
    """The web app writes while the sender commits its ledger every few milliseconds:
    neither may fail with 'database is locked' (SQLite) and every unsubscribe counts."""
    week = build_issue(sessions, settings)
    emails = add_subscribers(sessions, 240)
    leaving = emails[120:180]
    web_engine = make_engine(db_url)
    web_sessions = session_factory(web_engine)
    errors: list[str] = []

    def web() -> None:
        for email in leaving:
            try:
                with web_sessions.begin() as s:
                    subscribers.unsubscribe(s, subscribers.get_by_email(s, email), source="one-click")
            except Exception as exc:  # noqa: BLE001 - any failure is what this test looks for
                errors.append(repr(exc))
            time.sleep(0.002)

    thread = threading.Thread(target=web)
    thread.start()
    try:
        sender.send(sessions, settings, week)
    finally:
        thread.join(timeout=60)
        web_engine.dispose()
    assert errors == []
    rows = deliveries(sessions, week)
    got = Counter(smtp_server.recipients())
    assert max(got.values()) == 1 and set(got) | set(leaving) == set(emails)
    # Left before the send planned them (no row), or before their message went out
    # (skipped), or just after (sent): never a failure, never both.
    assert all(e not in rows or rows[e].status in ("sent", "skipped") for e in leaving)
    assert all((e in rows and rows[e].status == "sent") == (e in got) for e in leaving)


def test_a_3000_character_name_is_folded_and_capped_and_the_reader_gets_the_issue(
    sessions: sessionmaker[Session], settings: Settings, smtp_server: SmtpServer
) -> None:
    """aiosmtpd, like real servers, answers "500 Line too long" past 1,000 octets: the To
    line must be folded, and names are capped when they come in."""
    week = build_issue(sessions, settings)
    with sessions.begin() as s:  # written around the API, as an old import might have (SQLite does not check widths)
        length = 3000 if s.get_bind().dialect.name == "sqlite" else 200
        s.add(
            Subscriber(
                email="long@example.org",
                email_key="long@example.org",
                name="N" * length,
                status=SubscriberStatus.ACTIVE,
                attributes={},
            )
        )
        capped = subscribers.add(s, "capped@example.org", name="Ada " * 750)
        assert capped.name == ("Ada " * 50).strip()  # 200 characters at most, on a word
    report = sender.send(sessions, settings, week)
    assert (report.sent, report.failed, report.bounced) == (2, 0, 0)
    by_rcpt = {m.rcpt_tos[0]: m for m in smtp_server.messages}
    assert (
        str(make_header(decode_header(by_rcpt["long@example.org"].message["To"])))
        == f"{'N' * length} <long@example.org>"
    )


def test_times_the_ledger_writes_compare_like_any_other(
    sessions: sessionmaker[Session], settings: Settings, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Marks and results skip SQLAlchemy (ledger.HotPath) but bind times as the column type
    does: a time on a whole second is stored so that a query for it finds it."""
    whole = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    week = build_issue(sessions, settings)
    add_subscribers(sessions, 2)
    monkeypatch.setattr(ledger, "utcnow", lambda: whole)

    assert sender.send(sessions, settings, week).sent == 2

    with sessions.begin() as s:
        found = select(func.count()).where(Delivery.sent_at == whole, Delivery.claimed_at == whole)
        assert s.scalar(found) == 2
