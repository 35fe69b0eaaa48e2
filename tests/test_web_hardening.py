"""Issue 13 item 7, the web part: every answer carries the security headers, a 405 says
what is allowed, and an unexpected error is logged once without the token in its path."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import free_port
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker
from starlette.testclient import TestClient
from web_support import add_subscriber, running_server

from newsletter import tokens
from newsletter.config import Settings
from newsletter.web import create_app

BASE = "http://127.0.0.1:8000"
SECURITY_HEADERS = {"referrer-policy": "no-referrer", "x-content-type-options": "nosniff", "cache-control": "no-store"}


@pytest.fixture
def client(settings: Settings, sessions: sessionmaker[Session]) -> Iterator[TestClient]:
    with TestClient(create_app(settings, sessions), base_url=BASE, follow_redirects=False) as c:
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
