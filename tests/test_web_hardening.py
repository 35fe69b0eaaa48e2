"""Issue 13 item 7, the web part: every answer carries the security headers, a 405 says
what is allowed, and an unexpected error is logged once without the token in its path."""

from __future__ import annotations

import dataclasses
import http.client
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
from aiosmtpd.controller import Controller
from conftest import RecordingHandler, SmtpServer, free_port
from sqlalchemy import event, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker
from starlette.testclient import TestClient
from web_support import HoldGate, SettledClient, add_subscriber, no_hold, running_server, uvicorn_in_thread

from newsletter import tokens, web
from newsletter.config import Settings
from newsletter.holds import hold_seconds
from newsletter.models import Subscriber
from newsletter.web import create_app

BASE = "http://127.0.0.1:8000"
SECURITY_HEADERS = {"referrer-policy": "no-referrer", "x-content-type-options": "nosniff", "cache-control": "no-store"}


@pytest.fixture
def client(settings: Settings, sessions: sessionmaker[Session]) -> Iterator[TestClient]:
    with SettledClient(create_app(settings, sessions, hold=no_hold), base_url=BASE, follow_redirects=False) as c:
        yield c


def assert_secured(response: httpx.Response) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value, (response.request.url, name)
    assert "frame-ancestors" in response.headers["content-security-policy"]
    assert "default-src 'none'" in response.headers["content-security-policy"]


def test_every_answer_carries_the_security_headers(client: TestClient) -> None:
    health = client.get("/healthz")
    assert health.status_code == 200
    webhook = client.post("/webhooks/bounces/nosuchprovider", content=b"{}")
    assert webhook.status_code == 404 and webhook.headers["content-type"] == "application/json"
    for response in (health, webhook, client.get("/no/such/page"), client.post("/archive"), client.get("/subscribe")):
        assert_secured(response)
    # A page keeps its own, stricter policy (forms may post only to us).
    assert "form-action 'self'" in client.get("/subscribe").headers["content-security-policy"]


def test_wrong_method_answers_405_with_allow(client: TestClient, settings: Settings) -> None:
    for method, path, allowed in (
        ("POST", "/archive", {"GET", "HEAD"}),
        ("DELETE", "/subscribe", {"GET", "HEAD", "POST"}),
        ("GET", "/webhooks/bounces/mailgun", {"POST"}),
    ):
        r = client.request(method, path)
        assert r.status_code == 405, path
        assert {m.strip() for m in r.headers["allow"].split(",")} == allowed, path
        assert_secured(r)


def test_an_error_is_logged_once_without_the_token(
    config_path: Path, settings: Settings, engine: Engine, sessions: sessionmaker[Session]
) -> None:
    sid = add_subscriber(sessions, "ada@example.com")
    token = tokens.make(settings.newsletter.secret_key, tokens.UNSUBSCRIBE, sid, None)
    with running_server(config_path, free_port()) as (base, log):
        # The table the unsubscribe page reads is gone: the page fails on our side.
        with engine.begin() as conn:
            cascade = "" if engine.dialect.name == "sqlite" else " CASCADE"
            conn.exec_driver_sql(f"DROP TABLE subscriber_categories{cascade}")
        r = httpx.get(f"{base}/unsubscribe/{token}", timeout=10)
        assert r.status_code == 500 and "Something went wrong" in r.text
        assert_secured(r)
    text = log.read_text()  # the server has stopped: everything it logged is in the file
    assert token not in text
    assert text.count("error serving GET /unsubscribe/…") == 1
    assert "Exception in ASGI application" not in text  # uvicorn's second copy of the same error


# -- what the subscribe form accepts ----------------------------------------------------


@pytest.mark.parametrize(
    "typed",
    [
        "ÿþ@example.com",  # a UTF-16 byte-order mark read as Latin-1
        "ï»¿reader@example.com",  # a UTF-8 byte-order mark read as Latin-1
        "JÃ¶rg@example.com",  # UTF-8 read as Latin-1: 'Jörg'
        "reader\ufffd@example.com",  # the replacement character: something was lost already
        "😀@example.com",  # a symbol, not a letter
        "a\u200bb@example.com",  # invisible
    ],
)
def test_the_form_refuses_garbled_and_unprintable_addresses(
    typed: str, client: TestClient, sessions: sessionmaker[Session], smtp_server: SmtpServer
) -> None:
    r = client.post("/subscribe", data={"email": typed})
    assert r.status_code == 400 and "Check your inbox" not in r.text
    assert "is not an email address" in r.text or "looks garbled" in r.text
    with sessions.begin() as s:
        assert s.scalar(select(func.count()).select_from(Subscriber)) == 0
    assert smtp_server.messages == []


def test_the_form_takes_international_addresses_and_mails_them_with_smtputf8(
    client: TestClient, sessions: sessionmaker[Session], smtp_server: SmtpServer
) -> None:
    for typed in ("jörg@bücher.example", "þór@example.is", "名前@example.jp"):
        r = client.post("/subscribe", data={"email": typed})
        assert r.status_code == 200 and "Check your inbox" in r.text, typed
    assert sorted(smtp_server.recipients()) == sorted(["jörg@bücher.example", "þór@example.is", "名前@example.jp"])
    for mail in smtp_server.messages:
        # The address stands in To as it is (RFC 6532), not as RFC 2047 words inside it.
        to = next(line for line in mail.data.split(b"\r\n") if line.startswith(b"To:"))
        assert to.decode("utf-8") == f"To: {mail.rcpt_tos[0]}"
        assert "=?" not in to.decode("utf-8")


def test_a_server_without_smtputf8_gets_no_garbled_confirmation(
    settings: Settings, sessions: sessionmaker[Session], caplog: pytest.LogCaptureFixture
) -> None:
    strict = RecordingHandler()
    port = free_port()
    controller = Controller(strict, hostname="127.0.0.1", port=port, enable_SMTPUTF8=False)
    controller.start()
    try:
        smtp = dataclasses.replace(settings.smtp, port=port)
        app = create_app(dataclasses.replace(settings, smtp=smtp), sessions, hold=no_hold)
        with caplog.at_level("WARNING", logger="newsletter.web"), SettledClient(app, base_url=BASE) as c:
            assert c.post("/subscribe", data={"email": "jörg@bücher.example"}).status_code == 200
            assert c.post("/subscribe", data={"email": "ascii@example.com"}).status_code == 200
    finally:
        controller.stop()
    assert [m.rcpt_tos for m in strict.messages] == [["ascii@example.com"]]
    assert "the server does not offer SMTPUTF8, needed for a non-ASCII address" in caplog.text


# -- the work after a subscribe post ------------------------------------------------------


def post_form(conn: http.client.HTTPConnection, path: str, fields: dict[str, str]) -> int:
    """POST a form on `conn` (kept alive) and read the whole answer; its status."""
    conn.request("POST", path, urlencode(fields), {"Content-Type": "application/x-www-form-urlencoded"})
    response = conn.getresponse()
    response.read()
    return response.status


def test_the_next_request_on_the_same_connection_is_answered_while_the_work_is_held(
    settings: Settings, sessions: sessionmaker[Session], engine: Engine, smtp_server: SmtpServer
) -> None:
    """The timing attack of issue 13: post an address, then at once ask for another page on the
    same keep-alive connection. The work a new address causes (an insert, a mail) waits for the
    hold (random in `serve`, a gate here) in a task of the app's, so the next answer comes while
    none of it has run; as a BackgroundTask it held the connection until the work was done."""
    add_subscriber(sessions, "listed@example.com")
    inserts: list[str] = []

    def record(conn: object, cursor: object, statement: str, *args: object) -> None:
        if statement.lstrip().upper().startswith("INSERT"):
            inserts.append(statement)

    gate = HoldGate()
    app = create_app(settings, sessions, hold=gate)
    event.listen(engine, "before_cursor_execute", record)
    try:
        with uvicorn_in_thread(app) as port:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            assert post_form(conn, "/subscribe", {"email": "fresh@example.com"}) == 200
            gate.wait_entered(1)
            sock = conn.sock
            conn.request("GET", "/healthz")  # the next request, on the same connection
            health = conn.getresponse()
            assert health.status == 200 and health.read() and conn.sock is sock
            assert post_form(conn, "/subscribe", {"email": "listed@example.com"}) == 200
            gate.wait_entered(2)
            assert inserts == [] and smtp_server.messages == []  # nothing of the work has run yet
            gate.open()
            gate.in_server_loop(app.state.newsletter.held.join())
            assert any("subscribers" in sql for sql in inserts)
            assert smtp_server.recipients() == ["fresh@example.com"]
            conn.close()
    finally:
        event.remove(engine, "before_cursor_execute", record)


def test_shutdown_does_the_held_work_at_once(
    settings: Settings, sessions: sessionmaker[Session], smtp_server: SmtpServer
) -> None:
    """Stopping `serve` while posts are held cuts their holds short: every address is stored
    and mailed before the server has stopped, none is lost."""
    gate = HoldGate()  # never opened: only the shutdown ends these holds
    with uvicorn_in_thread(create_app(settings, sessions, hold=gate)) as port:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        for n in range(3):
            assert post_form(conn, "/subscribe", {"email": f"late{n}@example.com"}) == 200
        gate.wait_entered(3)
        conn.close()
        assert smtp_server.messages == []
    assert sorted(smtp_server.recipients()) == [f"late{n}@example.com" for n in range(3)]
    with sessions.begin() as s:
        assert s.scalar(select(func.count()).select_from(Subscriber)) == 3


def test_held_posts_are_bounded(
    settings: Settings, sessions: sessionmaker[Session], smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the limit of posts held at once the form answers 503 and stores nothing (a flood
    cannot grow the server's memory); the answer is the same for any address."""
    monkeypatch.setattr(web, "MAX_HELD_SUBSCRIBES", 2)
    gate = HoldGate()
    add_subscriber(sessions, "listed@example.com")
    with TestClient(create_app(settings, sessions, hold=gate), base_url=BASE) as c:
        assert [c.post("/subscribe", data={"email": f"r{n}@example.com"}).status_code for n in range(2)] == [200, 200]
        busy = [c.post("/subscribe", data={"email": email}) for email in ("r2@example.com", "listed@example.com")]
        assert {(r.status_code, r.headers["retry-after"], r.text) for r in busy} == {
            (503, "60", busy[0].text)
        } and "try again in a minute" in busy[0].text
        gate.open()
    assert sorted(smtp_server.recipients()) == ["r0@example.com", "r1@example.com"]
    with sessions.begin() as s:
        assert s.scalar(select(func.count()).select_from(Subscriber)) == 3  # r0, r1 and the listed one


def test_the_default_hold_is_random_and_short() -> None:
    waits = [hold_seconds() for _ in range(200)]
    assert all(0.5 <= w < 3.0 for w in waits)
    assert len(set(waits)) > 100  # drawn per post, not one fixed delay
