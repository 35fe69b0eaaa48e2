"""Double opt-in over HTTP, with the confirmation mail caught by a real SMTP server:
no enumeration, rate limits per address and per client, confirm only on POST."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator

import pytest
from conftest import SmtpServer
from sqlalchemy import event, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker
from starlette.testclient import TestClient
from web_support import HoldGate, SettledClient, add_subscriber, link_in, make_issue, no_hold, path_of, subscriber

from newsletter import message, selfservice, sender, subscribers, tokens
from newsletter.config import Settings
from newsletter.models import Event, EventKind, Subscriber, SubscriberStatus
from newsletter.ratelimit import RateLimiter
from newsletter.web import create_app

BASE = "http://127.0.0.1:8000"


def app_client(settings: Settings, sessions: sessionmaker[Session], **web: int) -> SettledClient:
    if web:
        settings = dataclasses.replace(settings, web=dataclasses.replace(settings.web, **web))
    # No hold before the work, waited for after each request: tests see the mail when the
    # answer returns (the hold has its own tests in test_web_hardening.py).
    return SettledClient(create_app(settings, sessions, hold=no_hold), base_url=BASE, follow_redirects=False)


@pytest.fixture
def client(settings: Settings, sessions: sessionmaker[Session], smtp_server: object) -> Iterator[TestClient]:
    with app_client(settings, sessions) as c:
        yield c


def status_of(sessions: sessionmaker[Session], email: str) -> SubscriberStatus | None:
    with sessions.begin() as s:
        sub = subscribers.get_by_email(s, email)
        return sub.status if sub else None


def test_subscribe_form_and_embeddable_variant(client: TestClient) -> None:
    page = client.get("/subscribe")
    assert page.status_code == 200 and 'name="email"' in page.text and "<header>" in page.text
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    embed = client.get("/subscribe?embed=1")
    assert 'action="/subscribe?embed=1"' in embed.text and "<header>" not in embed.text
    assert "frame-ancestors *" in embed.headers["content-security-policy"]


def test_subscribe_creates_pending_subscriber_and_mails_a_link(
    client: TestClient, settings: Settings, sessions: sessionmaker[Session], smtp_server: object
) -> None:
    r = client.post("/subscribe", data={"email": "New.Reader@Example.com", "name": "Nina", "category": ["news"]})
    assert r.status_code == 200 and "Check your inbox" in r.text
    assert status_of(sessions, "new.reader@example.com") == SubscriberStatus.PENDING
    [mail] = smtp_server.messages  # type: ignore[attr-defined]
    with sessions.begin() as s:
        sid = subscribers.require(s, "new.reader@example.com").id
    # The same envelope sender as the issues, so a bounced confirmation is handled like theirs.
    assert mail.rcpt_tos == ["New.Reader@example.com"] and mail.mail_from == message.return_path(settings, sid, None)
    assert "confirm" in mail.message["Subject"].lower()
    url = link_in(mail.message, r"http://127\.0\.0\.1:8000/confirm/\S+")
    # A GET (a mail scanner prefetching) confirms nothing.
    page = client.get(path_of(settings, url))
    assert page.status_code == 200 and "Confirm my subscription" in page.text
    assert status_of(sessions, "new.reader@example.com") == SubscriberStatus.PENDING
    done = client.post(path_of(settings, url))
    assert done.status_code == 200 and "You are subscribed" in done.text and "/preferences/" in done.text
    assert status_of(sessions, "new.reader@example.com") == SubscriberStatus.ACTIVE
    with sessions.begin() as s:
        sub = subscribers.get_by_email(s, "new.reader@example.com")
        assert sub is not None and sub.name == "Nina" and sub.consent_source == "web"
        assert subscribers.category_slugs(s, sub) == ["news"]
    # Clicking again is harmless.
    assert "already receives" in client.get(path_of(settings, url)).text


def test_answer_is_the_same_for_listed_and_unlisted_addresses(
    client: TestClient, sessions: sessionmaker[Session], smtp_server: object
) -> None:
    add_subscriber(sessions, "active@example.com")
    add_subscriber(sessions, "gone@example.com", status=SubscriberStatus.BOUNCED)
    answers = {
        email: client.post("/subscribe", data={"email": email, "name": "X"})
        for email in ("fresh@example.com", "active@example.com", "gone@example.com")
    }
    bodies = {(r.status_code, r.text) for r in answers.values()}
    assert len(bodies) == 1
    # Only the new address gets a mail; the listed ones are left exactly as they were.
    assert smtp_server.recipients() == ["fresh@example.com"]  # type: ignore[attr-defined]
    assert status_of(sessions, "active@example.com") == SubscriberStatus.ACTIVE
    assert status_of(sessions, "gone@example.com") == SubscriberStatus.BOUNCED
    with sessions.begin() as s:
        sub = subscribers.get_by_email(s, "active@example.com")
        assert sub is not None and sub.name == "Ada"


def test_the_answer_comes_before_any_lookup_of_the_address(
    settings: Settings, sessions: sessionmaker[Session], engine: Engine, smtp_server: SmtpServer
) -> None:
    """Timing: a new address costs an insert and a commit, a listed one a read. The answer is
    sent (and the request is over) before either, after the very same SQL for every address;
    the work follows once its hold is over (a gate here)."""
    add_subscriber(sessions, "active@example.com")
    add_subscriber(sessions, "gone@example.com", status=SubscriberStatus.BOUNCED)
    statements: list[str] = []

    def record(conn: object, cursor: object, statement: str, *args: object) -> None:
        if not statement.startswith("PRAGMA query_only"):  # a pooled connection's mode, whoever asks
            statements.append(statement)

    gate = HoldGate()
    app = create_app(settings, sessions, hold=gate)
    watched = {}
    event.listen(engine, "before_cursor_execute", record)
    try:
        with TestClient(app, base_url=BASE) as c:
            assert app.state.desk.warmed.wait(120)  # the desk's start-up counts are not the subscribe's SQL
            for email in ("fresh@example.com", "active@example.com", "gone@example.com"):
                statements.clear()
                code = c.post("/subscribe", data={"email": email, "name": "X"}).status_code
                watched[email] = (code, list(statements), status_of(sessions, email))
            gate.wait_entered(3)
            gate.open()
            gate.in_server_loop(app.state.newsletter.held.join())
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert {code for code, _, _ in watched.values()} == {200}
    assert len({tuple(sql) for _, sql, _ in watched.values()}) == 1
    sql = " ".join(watched["fresh@example.com"][1]).lower()
    assert "subscribers" not in sql and "insert" not in sql
    assert watched["fresh@example.com"][2] is None  # not stored yet when the answer went out …
    assert status_of(sessions, "fresh@example.com") == SubscriberStatus.PENDING  # … but after the hold
    assert smtp_server.recipients() == ["fresh@example.com"]


def test_invalid_address_shows_the_form_again(
    client: TestClient, sessions: sessionmaker[Session], smtp_server: object
) -> None:
    r = client.post("/subscribe", data={"email": "bob@", "name": "<b>Bob</b>"})
    assert r.status_code == 400 and "is not an email address" in r.text
    assert 'value="&lt;b&gt;Bob&lt;/b&gt;"' in r.text
    add_subscriber(sessions, "listed@example.com")
    for email in ("new@example.com", "listed@example.com"):  # the same answer for both
        r = client.post("/subscribe", data={"email": email, "category": ["sport"]})
        assert r.status_code == 400 and "there is no topic &#39;sport&#39;" in r.text
    assert smtp_server.messages == []  # type: ignore[attr-defined]


def test_honeypot_field_pretends_success_and_stores_nothing(
    client: TestClient, sessions: sessionmaker[Session], smtp_server: object
) -> None:
    r = client.post("/subscribe", data={"email": "bot@example.com", "website": "http://spam.example"})
    assert r.status_code == 200 and "Check your inbox" in r.text
    assert status_of(sessions, "bot@example.com") is None and smtp_server.messages == []  # type: ignore[attr-defined]


def test_confirmation_mails_per_address_are_limited(
    settings: Settings, sessions: sessionmaker[Session], smtp_server: object
) -> None:
    with app_client(settings, sessions, subscribe_per_address_per_hour=2) as c:
        answers = {c.post("/subscribe", data={"email": "flood@example.com"}).text for _ in range(5)}
        c.post("/subscribe", data={"email": "other@example.com"})
    assert len(answers) == 1  # the form never tells
    assert smtp_server.recipients() == ["flood@example.com"] * 2 + ["other@example.com"]  # type: ignore[attr-defined]


def test_requests_per_client_are_limited(
    settings: Settings, sessions: sessionmaker[Session], smtp_server: object
) -> None:
    with app_client(settings, sessions, subscribe_per_client_per_hour=3) as c:
        codes = [c.post("/subscribe", data={"email": f"r{i}@example.com"}).status_code for i in range(5)]
        blocked = c.post("/subscribe", data={"email": "late@example.com"})
    assert codes == [200, 200, 200, 429, 429]
    assert "Too many requests" in blocked.text and int(blocked.headers["retry-after"]) > 3000
    assert len(smtp_server.messages) == 3  # type: ignore[attr-defined]
    assert status_of(sessions, "late@example.com") is None


def test_unsubscribed_reader_can_subscribe_again_only_with_a_new_link(
    client: TestClient, settings: Settings, sessions: sessionmaker[Session], smtp_server: object
) -> None:
    client.post("/subscribe", data={"email": "back@example.com"})
    old_link = link_in(smtp_server.messages[0].message, r"http://\S+/confirm/\S+")  # type: ignore[attr-defined]
    client.post(path_of(settings, old_link))
    with sessions.begin() as s:
        sub = subscribers.get_by_email(s, "back@example.com")
        assert sub is not None
        subscribers.unsubscribe(s, sub, source="page")
        sid = sub.id
    # An old confirmation mail cannot undo the later unsubscribe.
    r = client.post(path_of(settings, old_link))
    assert r.status_code == 400 and "subscribe again" in r.text
    assert subscriber(sessions, sid).status == SubscriberStatus.UNSUBSCRIBED
    # Asking again through the form mails a new link, which works. (Link times are whole
    # seconds and a link from the unsubscribe's own second counts as older.)
    time.sleep(1.05)
    client.post("/subscribe", data={"email": "back@example.com"})
    new_link = link_in(smtp_server.messages[1].message, r"http://\S+/confirm/\S+")  # type: ignore[attr-defined]
    assert client.post(path_of(settings, new_link)).status_code == 200
    assert subscriber(sessions, sid).status == SubscriberStatus.ACTIVE
    with sessions.begin() as s:
        kinds = s.scalars(select(Event.kind).where(Event.subscriber_id == sid).order_by(Event.id)).all()
    assert kinds == [EventKind.SUBSCRIBE, EventKind.CONFIRM, EventKind.UNSUBSCRIBE, EventKind.CONFIRM]


def test_mail_server_down_still_answers_the_same(settings: Settings, sessions: sessionmaker[Session]) -> None:
    # The config points at port 2525 where nothing listens: the failure is logged, not shown.
    with app_client(settings, sessions) as c:
        r = c.post("/subscribe", data={"email": "x@example.com"})
    assert r.status_code == 200 and "Check your inbox" in r.text
    assert status_of(sessions, "x@example.com") == SubscriberStatus.PENDING


def test_confirm_token_of_a_bounced_address_activates_nothing(
    client: TestClient, settings: Settings, sessions: sessionmaker[Session]
) -> None:
    sid = add_subscriber(sessions, "gone@example.com", status=SubscriberStatus.BOUNCED)
    r = client.post(path_of(settings, tokens.confirm_url(settings, sid)))
    assert r.status_code == 400
    assert subscriber(sessions, sid).status == SubscriberStatus.BOUNCED


def test_two_requests_racing_for_one_new_address(
    sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second of two simultaneous requests hits the unique key and is answered as for a listed address."""
    add_subscriber(sessions, "race@example.com", status=SubscriberStatus.PENDING)
    real = subscribers.get_by_email
    calls: list[str] = []

    def lookups_before_the_insert_miss(session: Session, email: str) -> object:
        # request_subscription's and add()'s checks both run before the other request commits.
        calls.append(email)
        return None if len(calls) <= 2 else real(session, email)

    monkeypatch.setattr(subscribers, "get_by_email", lookups_before_the_insert_miss)
    with sessions.begin() as s:
        sid = selfservice.request_subscription(s, "race@example.com")
    assert sid is not None and status_of(sessions, "race@example.com") == SubscriberStatus.PENDING
    with sessions.begin() as s:
        assert s.scalar(select(func.count()).select_from(Subscriber)) == 1


def test_rate_limiter_window_and_retry_after() -> None:
    now = [1000.0]
    limiter = RateLimiter(2, 3600, clock=lambda: now[0])
    assert [limiter.hit("a"), limiter.hit("a"), limiter.hit("a"), limiter.hit("b")] == [True, True, False, True]
    assert limiter.retry_after("a") == 3601 and limiter.retry_after("b") == 0
    now[0] += 3600
    assert limiter.hit("a") and limiter.retry_after("a") == 0
    # Old keys are forgotten once there are many, so memory stays bounded.
    for i in range(RateLimiter.PRUNE_AT + 1):
        limiter.hit(f"k{i}")
    now[0] += 3601
    limiter.hit("new")
    assert len(limiter._hits) == 1


def test_pending_subscriber_is_never_sent_an_issue(
    client: TestClient, settings: Settings, sessions: sessionmaker[Session], smtp_server: SmtpServer
) -> None:
    add_subscriber(sessions, "active@example.com")
    client.post("/subscribe", data={"email": "pending@example.com"})
    assert smtp_server.recipients() == ["pending@example.com"]  # the confirmation only
    make_issue(sessions, settings, "2026-W40", title="Story", sent=False)
    sender.send(sessions, settings, "2026-W40", force=True)
    assert smtp_server.recipients() == ["pending@example.com", "active@example.com"]
