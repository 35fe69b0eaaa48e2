"""Signing in to the desk, tested as carefully as the unsubscribe links: every page
needs a session, cookies are hardened, forged/expired/stale sessions are refused,
CSRF on every state change, no open redirect, wrong passwords slowed then refused."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator

import pytest
from desk_support import EDITOR, PASSWORD, add_editor, csrf, hidden, sign_in
from itsdangerous import URLSafeTimedSerializer
from sqlalchemy.orm import Session, sessionmaker
from starlette.testclient import TestClient
from typer.testing import CliRunner

from newsletter import editors
from newsletter.cli import app
from newsletter.config import Settings
from newsletter.desk import auth
from newsletter.web import create_app

BASE = "http://127.0.0.1:8000"
PAGES = ["/admin/"]


def make_client(settings: Settings, sessions: sessionmaker[Session], **desk: float) -> TestClient:
    if desk:
        settings = dataclasses.replace(settings, desk=dataclasses.replace(settings.desk, **desk))  # type: ignore[arg-type]  # keys are DeskSettings fields
    return TestClient(create_app(settings, sessions), base_url=BASE, follow_redirects=False)


@pytest.fixture
def client(settings: Settings, sessions: sessionmaker[Session]) -> Iterator[TestClient]:
    with make_client(settings, sessions) as c:
        yield c


def test_every_desk_page_without_a_session_goes_to_the_sign_in_form(client: TestClient) -> None:
    for path in PAGES:
        r = client.get(path, params={"x": "1"})
        assert r.status_code == 303 and r.headers["location"] == f"/admin/login?next={path}%3Fx%3D1", path
    r = client.get("/admin")
    assert r.status_code == 308 and r.headers["location"] == "/admin/"
    r = client.post("/admin/logout", data={"csrf_token": "x"})
    assert r.status_code == 303 and r.headers["location"].startswith("/admin/login")
    form = client.get("/admin/login")
    assert form.status_code == 200 and 'name="email"' in form.text and 'name="password"' in form.text
    assert "frame-ancestors 'none'" in form.headers["content-security-policy"]
    assert form.headers["cache-control"] == "no-store"


def test_sign_in_gives_a_hardened_session_cookie(client: TestClient, sessions: sessionmaker[Session]) -> None:
    add_editor(sessions)
    r = sign_in(client)
    assert r.status_code == 303 and r.headers["location"] == "/admin/"
    cookie = next(c for c in r.headers.get_list("set-cookie") if c.startswith(auth.SESSION_COOKIE + "="))
    attrs = {a.strip().split("=")[0].lower() for a in cookie.split(";")[1:]}
    assert {"httponly", "samesite", "path", "max-age"} <= attrs and "secure" not in attrs
    assert "samesite=strict" in cookie.lower() and "path=/admin" in cookie.lower()
    home = client.get("/admin/")
    assert home.status_code == 200 and EDITOR in home.text
    with sessions.begin() as s:
        assert editors.list_editors(s)[0].last_login_at is not None


def test_cookies_are_secure_when_the_site_is_https(settings: Settings, sessions: sessionmaker[Session]) -> None:
    add_editor(sessions)
    https = dataclasses.replace(
        settings, newsletter=dataclasses.replace(settings.newsletter, base_url="https://news.example.com")
    )
    with TestClient(create_app(https, sessions), base_url=BASE, follow_redirects=False) as c:
        form = c.get("/admin/login")
        assert "secure" in form.headers["set-cookie"].lower()
        r = c.post(
            "/admin/login",
            data={
                "email": EDITOR,
                "password": PASSWORD,
                "next": "/admin/",
                "csrf_token": hidden(form.text, "csrf_token"),
            },
            cookies={auth.LOGIN_COOKIE: form.cookies[auth.LOGIN_COOKIE]},
        )
        assert r.status_code == 303 and "secure" in r.headers["set-cookie"].lower()


def test_wrong_password_and_unknown_address_get_the_same_answer(
    client: TestClient, sessions: sessionmaker[Session]
) -> None:
    add_editor(sessions)
    wrong = sign_in(client, password="not the password")
    unknown = sign_in(client, email="nobody@example.com")
    invalid = sign_in(client, email="not-an-address")
    for r in (wrong, unknown, invalid):
        assert r.status_code == 401 and "Wrong address or password." in r.text
        assert auth.SESSION_COOKIE not in r.cookies
    assert client.get("/admin/").status_code == 303


def test_unknown_address_costs_one_password_hash_check(
    sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Timing: an unknown address is checked against a dummy hash, as a wrong password is."""
    add_editor(sessions)
    hasher = editors._hasher()
    calls: list[str] = []
    original = type(hasher).verify
    monkeypatch.setattr(type(hasher), "verify", lambda self, h, p: calls.append(h) or original(self, h, p))
    with sessions.begin() as s:
        assert editors.authenticate(s, "nobody@example.com", PASSWORD) is None
        assert editors.authenticate(s, EDITOR, "wrong password") is None
        assert editors.authenticate(s, EDITOR, PASSWORD) is not None
    assert len(calls) == 3 and all(h.startswith("$argon2id$") for h in calls)


def _session_cookie(client: TestClient) -> str:
    return client.cookies[auth.SESSION_COOKIE]


@pytest.mark.parametrize("forge", ["tampered", "other-secret", "garbage", "wrong-shape", "expired"])
def test_forged_or_expired_session_cookies_are_no_session(
    client: TestClient, settings: Settings, sessions: sessionmaker[Session], forge: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    eid = add_editor(sessions)
    assert sign_in(client).status_code == 303
    good = _session_cookie(client)
    with sessions.begin() as s:
        key = editors.get(s, eid).session_key  # type: ignore[union-attr]  # the editor was just added
    secret = settings.newsletter.secret_key
    if forge == "tampered":
        cookie = good[:-3] + ("AAA" if not good.endswith("AAA") else "BBB")
    elif forge == "other-secret":
        cookie = auth.Signer("another-secret-0123456789", 3600).session_cookie(eid, key)
    elif forge == "garbage":
        cookie = "../../etc/passwd"
    elif forge == "wrong-shape":
        cookie = URLSafeTimedSerializer(
            secret, salt="newsletter.desk-session", signer_kwargs={"digest_method": __import__("hashlib").sha256}
        ).dumps({"e": eid})
    else:
        real = time.time
        monkeypatch.setattr(time, "time", lambda: real() - 13 * 3600)  # signed 13 h ago; sessions last 12
        cookie = auth.Signer(secret, 12 * 3600).session_cookie(eid, key)
        monkeypatch.setattr(time, "time", real)
    client.cookies.clear()
    client.cookies.set(auth.SESSION_COOKIE, cookie, path="/admin")
    r = client.get("/admin/")
    assert r.status_code == 303 and r.headers["location"].startswith("/admin/login")


def test_sign_out_new_password_and_removal_end_sessions(client: TestClient, sessions: sessionmaker[Session]) -> None:
    add_editor(sessions)
    sign_in(client)
    old = _session_cookie(client)
    r = client.post("/admin/logout", data={"csrf_token": csrf(client)})
    assert r.status_code == 303 and r.headers["location"] == "/admin/login"
    client.cookies.set(auth.SESSION_COOKIE, old, path="/admin")  # a copy of the cookie is worth nothing now
    assert client.get("/admin/").status_code == 303

    client.cookies.clear()
    sign_in(client)
    assert client.get("/admin/").status_code == 200
    add_editor(sessions, password="a brand new password")
    assert client.get("/admin/").status_code == 303
    assert sign_in(client).status_code == 401
    assert sign_in(client, password="a brand new password").status_code == 303
    with sessions.begin() as s:
        editors.remove(s, EDITOR)
    assert client.get("/admin/").status_code == 303


def test_state_changes_need_the_csrf_token(client: TestClient, sessions: sessionmaker[Session]) -> None:
    add_editor(sessions)
    sign_in(client)
    for data in ({}, {"csrf_token": ""}, {"csrf_token": "0" * 64}, {"csrf_token": csrf(client) + "0"}):
        r = client.post("/admin/logout", data=data)
        assert r.status_code == 403 and "Nothing was changed" in r.text
    assert client.get("/admin/").status_code == 200  # still signed in: the forged sign-out did nothing


def test_the_sign_in_form_needs_its_csrf_token_and_cookie(client: TestClient, sessions: sessionmaker[Session]) -> None:
    add_editor(sessions)
    form = client.get("/admin/login")
    token = hidden(form.text, "csrf_token")
    data = {"email": EDITOR, "password": PASSWORD, "next": "/admin/"}
    assert client.post("/admin/login", data={**data, "csrf_token": "x" * 64}).status_code == 403
    assert client.post("/admin/login", data=data).status_code == 403
    client.cookies.delete(auth.LOGIN_COOKIE, path="/admin")
    r = client.post("/admin/login", data={**data, "csrf_token": token})  # a token without its cookie
    assert r.status_code == 403 and auth.SESSION_COOKIE not in r.cookies
    assert client.get("/admin/").status_code == 303


@pytest.mark.parametrize(
    ("wanted", "landing"),
    [
        ("/admin/issues?week=2026-W48", "/admin/issues?week=2026-W48"),
        ("https://evil.example/admin/", "/admin/"),
        ("//evil.example/admin/", "/admin/"),
        ("/\\evil.example", "/admin/"),
        ("\\\\evil.example/admin/", "/admin/"),
        ("javascript:alert(1)", "/admin/"),
        ("/admin@evil.example", "/admin/"),
        ("/admin/../../evil", "/admin/"),
        ("/admin/\r\nSet-Cookie: x=1", "/admin/"),
        ("/admin/login", "/admin/"),
        ("", "/admin/"),
    ],
)
def test_next_never_leaves_the_desk(
    client: TestClient, sessions: sessionmaker[Session], wanted: str, landing: str
) -> None:
    add_editor(sessions)
    form = client.get("/admin/login", params={"next": wanted})
    assert hidden(form.text, "next") == landing.replace("&", "&amp;")
    # Even a hand-made form post with the bad value lands inside the desk.
    r = client.post(
        "/admin/login",
        data={"email": EDITOR, "password": PASSWORD, "next": wanted, "csrf_token": hidden(form.text, "csrf_token")},
    )
    assert r.status_code == 303 and r.headers["location"] == landing


def test_wrong_passwords_are_slowed_then_refused_per_address(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    add_editor(sessions)
    add_editor(sessions, "other@example.com")
    desk = dataclasses.replace(
        settings.desk, login_failures_before_delay=2, login_delay_seconds=0.3, login_failures_limit=4
    )
    web = create_app(dataclasses.replace(settings, desk=desk), sessions)
    with (
        TestClient(web, base_url=BASE, follow_redirects=False, client=("10.0.0.1", 1000)) as c,
        TestClient(web, base_url=BASE, follow_redirects=False, client=("10.0.0.2", 1000)) as other,
    ):
        for _ in range(2):
            assert sign_in(c, password="guess").status_code == 401
        started = time.monotonic()
        assert sign_in(c, password="guess").status_code == 401
        assert time.monotonic() - started >= 0.3  # the third attempt waited
        assert sign_in(c, password="guess").status_code == 401
        r = sign_in(c)  # the right password, but too late
        assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
        assert auth.SESSION_COOKIE not in r.cookies
        # From another client the address is still locked; another address is not.
        assert sign_in(other).status_code == 429
        assert sign_in(other, "other@example.com").status_code == 303


def test_one_client_guessing_many_addresses_is_refused(settings: Settings, sessions: sessionmaker[Session]) -> None:
    add_editor(sessions)
    with make_client(
        settings, sessions, login_failures_before_delay=10, login_delay_seconds=0.0, login_failures_limit=3
    ) as c:
        for n in range(3):
            assert sign_in(c, email=f"guess{n}@example.com").status_code == 401
        assert sign_in(c).status_code == 429


def test_throttle_counts_per_key_within_its_window() -> None:
    now = [1000.0]
    throttle = auth.LoginThrottle(free=1, delay=2.0, limit=2, window=60, clock=lambda: now[0])
    assert throttle.delay("a", "c") == 0.0 and throttle.retry_after("a", "c") == 0
    throttle.failed("a", "c")
    assert throttle.delay("a", "c") == 2.0 and throttle.delay("b", "d") == 0.0
    throttle.failed("a", "c")
    assert throttle.retry_after("a", "x") == 61 and throttle.retry_after("b", "c") == 61
    assert throttle.retry_after("b", "d") == 0
    now[0] += 61
    assert throttle.retry_after("a", "c") == 0 and throttle.delay("a", "c") == 0.0


# -- the CLI ---------------------------------------------------------------------------


def test_admin_add_list_remove(config_path: object, engine: object, sessions: sessionmaker[Session]) -> None:
    runner = CliRunner()
    r = runner.invoke(
        app, ["--config", str(config_path), "admin", "add", "Editor@Example.com"], input="a long enough password\n"
    )
    assert r.exit_code == 0, r.output
    assert r.output.strip() == "Editor@example.com may sign in at /admin/login"
    with sessions.begin() as s:
        assert editors.authenticate(s, "editor@example.com", "a long enough password") is not None
    r = runner.invoke(app, ["--config", str(config_path), "admin", "list"])
    assert r.exit_code == 0 and r.output.startswith("Editor@example.com\t2")  # the sign-in above
    r = runner.invoke(app, ["--config", str(config_path), "admin", "add", "x@example.com"], input="short\n")
    assert r.exit_code == 1
    assert r.output.strip() == "Error: the password must have at least 10 characters; choose a longer one"
    r = runner.invoke(app, ["--config", str(config_path), "admin", "remove", "EDITOR@example.com"])
    assert r.exit_code == 0
    r = runner.invoke(app, ["--config", str(config_path), "admin", "remove", "editor@example.com"])
    assert r.exit_code == 1
    assert r.output.strip() == "Error: editor@example.com is not an editor; see 'newsletter admin list'"
    with sessions.begin() as s:
        assert editors.list_editors(s) == []
