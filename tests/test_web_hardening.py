"""Issue 13 item 7, the web part: every answer carries the security headers, a 405 says
what is allowed, and an unexpected error is logged once without the token in its path."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from aiosmtpd.controller import Controller
from conftest import RecordingHandler, SmtpServer, free_port
from sqlalchemy import event, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker
from starlette.testclient import TestClient
from web_support import add_subscriber, no_hold, running_server

from newsletter import tokens
from newsletter.config import Settings
from newsletter.models import Subscriber
from newsletter.web import create_app, hold_seconds

BASE = "http://127.0.0.1:8000"
SECURITY_HEADERS = {"referrer-policy": "no-referrer", "x-content-type-options": "nosniff", "cache-control": "no-store"}


@pytest.fixture
def client(settings: Settings, sessions: sessionmaker[Session]) -> Iterator[TestClient]:
    with TestClient(create_app(settings, sessions, hold=no_hold), base_url=BASE, follow_redirects=False) as c:
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
        with caplog.at_level("WARNING", logger="newsletter.web"), TestClient(app, base_url=BASE) as c:
            assert c.post("/subscribe", data={"email": "jörg@bücher.example"}).status_code == 200
            assert c.post("/subscribe", data={"email": "ascii@example.com"}).status_code == 200
    finally:
        controller.stop()
    assert [m.rcpt_tos for m in strict.messages] == [["ascii@example.com"]]
    assert "the server does not offer SMTPUTF8, needed for a non-ASCII address" in caplog.text


# -- the work after a subscribe post ------------------------------------------------------


async def asgi_request(
    app: Any, method: str, path: str, body: bytes = b"", answered: asyncio.Event | None = None
) -> int:
    """One request straight through ASGI; `answered` is set when the answer's last byte is out
    (the app call itself returns only after any work the request left behind)."""
    headers = [(b"host", b"127.0.0.1:8000"), (b"content-type", b"application/x-www-form-urlencoded")]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
    done = answered or asyncio.Event()
    pending = [{"type": "http.request", "body": body, "more_body": False}]
    status = {}

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop()
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status["code"] = message["status"]
        elif message["type"] == "http.response.body" and not message.get("more_body"):
            done.set()

    await app(scope, receive, send)
    return status["code"]


def test_the_work_for_a_new_address_waits_until_after_the_next_request(
    settings: Settings, sessions: sessionmaker[Session], engine: Engine, smtp_server: SmtpServer
) -> None:
    """The timing attack: the insert and the mail a new address causes used to run right after
    the answer, slowing the poster's next request. They wait for the hold (random in `serve`,
    a gate here), so the next request is answered before any of it has run."""
    add_subscriber(sessions, "listed@example.com")
    inserts: list[str] = []

    def record(conn: object, cursor: object, statement: str, *args: object) -> None:
        if statement.lstrip().upper().startswith("INSERT"):
            inserts.append(statement)

    async def run() -> None:
        gate = asyncio.Event()

        async def hold() -> None:
            await gate.wait()

        app = create_app(settings, sessions, hold=hold)
        answered = asyncio.Event()
        body = urlencode({"email": "fresh@example.com"}).encode()
        first = asyncio.create_task(asgi_request(app, "POST", "/subscribe", body, answered))
        await answered.wait()
        assert await asgi_request(app, "GET", "/archive") == 200  # the next request
        assert await asgi_request(app, "GET", "/healthz") == 200
        assert inserts == [] and smtp_server.messages == []  # nothing of the work has run yet
        gate.set()
        assert await asyncio.wait_for(first, 30) == 200

    event.listen(engine, "before_cursor_execute", record)
    try:
        asyncio.run(run())
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert any("subscribers" in sql for sql in inserts)
    assert smtp_server.recipients() == ["fresh@example.com"]


def test_the_default_hold_is_random_and_short() -> None:
    waits = [hold_seconds() for _ in range(200)]
    assert all(0.5 <= w < 3.0 for w in waits)
    assert len(set(waits)) > 100  # drawn per post, not one fixed delay
