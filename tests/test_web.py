"""The subscriber web app over HTTP (Starlette TestClient) on SQLite and PostgreSQL:
every route, every kind of bad token, CSRF, no open redirect, escaping."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import SmtpServer
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from starlette.testclient import TestClient
from typer.testing import CliRunner
from web_support import add_subscriber, link_in, make_issue, path_of, subscriber

from newsletter import selfservice, subscribers, tokens
from newsletter.cli import app
from newsletter.config import Settings
from newsletter.db import make_engine, session_factory
from newsletter.models import (
    Event,
    EventKind,
    Issue,
    IssueStatus,
    Subscriber,
    SubscriberStatus,
)
from newsletter.web import create_app

BASE = "http://127.0.0.1:8000"
OTHER_SECRET = "another-secret-key-entirely-Qw3rTy9uIoP4aSdF6gHjK8lZxCvBnM1"


@pytest.fixture
def client(settings: Settings, sessions: sessionmaker[Session]) -> Iterator[TestClient]:
    with TestClient(create_app(settings, sessions), base_url=BASE, follow_redirects=False) as c:
        yield c


def secret(settings: Settings) -> str:
    return settings.newsletter.secret_key


def events(sessions: sessionmaker[Session], sid: int, kind: EventKind) -> list[tuple[str, int | None]]:
    with sessions.begin() as s:
        return [
            (e.source, e.issue_id)
            for e in s.scalars(select(Event).where(Event.subscriber_id == sid, Event.kind == kind).order_by(Event.id))
        ]


def test_healthz(client: TestClient) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok", "database": "ok"}


# -- unsubscribe -----------------------------------------------------------------------


def test_get_unsubscribe_shows_one_button_and_changes_nothing(
    client: TestClient, settings: Settings, sessions: sessionmaker[Session]
) -> None:
    sid = add_subscriber(sessions, "ada@example.com")
    r = client.get(path_of(settings, tokens.unsubscribe_url(settings, sid, None)))
    assert r.status_code == 200
    assert r.text.count("<button") == 1 and 'method="post"' in r.text and "ada@example.com" in r.text
    assert '<meta name="robots" content="noindex">' in r.text
    assert (
        r.headers["referrer-policy"] == "no-referrer"
        and "frame-ancestors 'none'" in r.headers["content-security-policy"]
    )
    assert subscriber(sessions, sid).status == SubscriberStatus.ACTIVE


def test_head_requests_of_scanners_change_nothing(
    client: TestClient, settings: Settings, sessions: sessionmaker[Session]
) -> None:
    """Starlette answers HEAD on GET routes: a prefetching scanner must not unsubscribe or confirm."""
    active = add_subscriber(sessions, "ada@example.com")
    pending = add_subscriber(sessions, "bob@example.com", status=SubscriberStatus.PENDING)
    for url in (
        tokens.unsubscribe_url(settings, active, None),
        tokens.preferences_url(settings, active),
        tokens.confirm_url(settings, pending),
    ):
        assert client.head(path_of(settings, url)).status_code == 200
    assert subscriber(sessions, active).status == SubscriberStatus.ACTIVE
    assert subscriber(sessions, pending).status == SubscriberStatus.PENDING


def test_one_click_post_unsubscribes_at_once_and_credits_the_issue(
    client: TestClient, settings: Settings, sessions: sessionmaker[Session]
) -> None:
    sid = add_subscriber(sessions, "ada@example.com")
    issue_id = make_issue(sessions, settings, "2026-W40", title="Steel prices", sent=True)
    path = path_of(settings, tokens.unsubscribe_url(settings, sid, issue_id))
    r = client.post(path, data={"List-Unsubscribe": "One-Click"})
    assert r.status_code == 200 and "location" not in r.headers
    assert "You are unsubscribed" in r.text
    assert subscriber(sessions, sid).status == SubscriberStatus.UNSUBSCRIBED
    # Mail providers may repeat the POST: still 200, still one event.
    assert client.post(path, data={"List-Unsubscribe": "One-Click"}).status_code == 200
    assert events(sessions, sid, EventKind.UNSUBSCRIBE) == [("one-click", issue_id)]


def test_unsubscribes_are_counted_per_issue_and_source(
    client: TestClient, settings: Settings, sessions: sessionmaker[Session]
) -> None:
    first = make_issue(sessions, settings, "2026-W40", title="One", sent=True)
    second = make_issue(sessions, settings, "2026-W41", title="Two", sent=True)
    clicks = [
        (first, {"List-Unsubscribe": "One-Click"}),
        (first, {"List-Unsubscribe": "One-Click"}),
        (first, {"action": "unsubscribe"}),
        (second, {"action": "unsubscribe"}),
        (None, {}),
    ]
    for i, (issue_id, body) in enumerate(clicks):
        sid = add_subscriber(sessions, f"r{i}@example.com")
        assert client.post(path_of(settings, tokens.unsubscribe_url(settings, sid, issue_id)), data=body).is_success
    with sessions.begin() as s:
        assert selfservice.unsubscribes_per_issue(s) == {
            first: {"one-click": 2, "page": 1},
            second: {"page": 1},
            None: {"page": 1},
        }
        assert selfservice.unsubscribes_per_issue(s, second) == {second: {"page": 1}}


def test_one_click_accepts_multipart_body(
    client: TestClient, settings: Settings, sessions: sessionmaker[Session]
) -> None:
    sid = add_subscriber(sessions, "ada@example.com")
    r = client.post(
        path_of(settings, tokens.unsubscribe_url(settings, sid, None)), files={"List-Unsubscribe": (None, "One-Click")}
    )
    assert r.status_code == 200
    assert events(sessions, sid, EventKind.UNSUBSCRIBE) == [("one-click", None)]


def test_page_button_unsubscribes_with_source_page(
    client: TestClient, settings: Settings, sessions: sessionmaker[Session]
) -> None:
    sid = add_subscriber(sessions, "ada@example.com")
    r = client.post(path_of(settings, tokens.unsubscribe_url(settings, sid, None)), data={"action": "unsubscribe"})
    assert r.status_code == 200
    assert events(sessions, sid, EventKind.UNSUBSCRIBE) == [("page", None)]
    again = client.get(path_of(settings, tokens.unsubscribe_url(settings, sid, None)))
    assert "You are unsubscribed" in again.text and "<button" not in again.text


def test_unsubscribe_of_a_deleted_subscriber_is_404(
    client: TestClient, settings: Settings, sessions: sessionmaker[Session]
) -> None:
    r = client.get(path_of(settings, tokens.unsubscribe_url(settings, 999_999, None)))
    assert r.status_code == 404 and "Not found" in r.text


def _bad_tokens(settings: Settings, sid: int) -> dict[str, tuple[str, str]]:
    """(route, token) pairs that must all be refused."""
    good = tokens.make(secret(settings), tokens.UNSUBSCRIBE, sid)
    payload, _, sig = good.rpartition(".")
    other_sig = tokens.make(secret(settings), tokens.UNSUBSCRIBE, sid + 1).rpartition(".")[2]
    return {
        "tampered signature": ("unsubscribe", f"{payload}.{sig[:-2]}{'AA' if sig[-2:] != 'AA' else 'BB'}"),
        "swapped payload": ("unsubscribe", f"{payload}.{other_sig}"),
        "truncated": ("unsubscribe", good[:-5]),
        "garbage": ("unsubscribe", "not-a-token"),
        "preferences token on unsubscribe": ("unsubscribe", tokens.make(secret(settings), tokens.PREFERENCES, sid)),
        "unsubscribe token on confirm": ("confirm", good),
        "unsubscribe token on preferences": ("preferences", good),
        "other secret": ("unsubscribe", tokens.make(OTHER_SECRET, tokens.UNSUBSCRIBE, sid)),
    }


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_bad_tokens_get_a_friendly_400_and_change_nothing(
    client: TestClient, settings: Settings, sessions: sessionmaker[Session], method: str
) -> None:
    sid = add_subscriber(sessions, "ada@example.com", status=SubscriberStatus.PENDING)
    for name, (route, token) in _bad_tokens(settings, sid).items():
        r = client.request(method, f"/{route}/{token}", data={"List-Unsubscribe": "One-Click"})
        assert r.status_code == 400, name
        assert "This link does not work" in r.text and "Nothing was changed" in r.text, name
        assert "Traceback" not in r.text
    assert subscriber(sessions, sid).status == SubscriberStatus.PENDING
    with sessions.begin() as s:
        assert s.scalar(select(Event).where(Event.kind != EventKind.SUBSCRIBE)) is None


def test_expired_confirmation_link_is_refused(
    client: TestClient, settings: Settings, sessions: sessionmaker[Session]
) -> None:
    sid = add_subscriber(sessions, "ada@example.com", status=SubscriberStatus.PENDING)
    eight_days_ago = time.time() - 8 * 86400
    token = tokens.make(secret(settings), tokens.CONFIRM, sid, clock=lambda: eight_days_ago)
    for method in ("GET", "POST"):
        r = client.request(method, f"/confirm/{token}")
        assert r.status_code == 400 and "expired" in r.text
    assert subscriber(sessions, sid).status == SubscriberStatus.PENDING


# -- preferences -----------------------------------------------------------------------


def _prefs(client: TestClient, settings: Settings, sid: int) -> tuple[str, str]:
    """(path, csrf token) of a freshly loaded preferences page."""
    path = path_of(settings, tokens.preferences_url(settings, sid))
    r = client.get(path)
    assert r.status_code == 200
    csrf = r.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    return path, csrf


def test_preferences_show_current_choice(
    client: TestClient, settings: Settings, sessions: sessionmaker[Session]
) -> None:
    sid = add_subscriber(sessions, "ada@example.com", categories=("events",))
    r = client.get(path_of(settings, tokens.preferences_url(settings, sid)))
    assert 'value="events" checked' in r.text and 'value="news">' in r.text and 'value="Ada"' in r.text


def test_preferences_save_topics_and_name(
    client: TestClient, settings: Settings, sessions: sessionmaker[Session]
) -> None:
    sid = add_subscriber(sessions, "ada@example.com")
    path, csrf = _prefs(client, settings, sid)
    r = client.post(
        path, data={"csrf": csrf, "action": "save", "name": "  Ada  Lovelace ", "category": ["news", "events"]}
    )
    assert r.status_code == 200 and "Your preferences are saved" in r.text
    assert 'value="products">' in r.text and 'value="news" checked' in r.text
    with sessions.begin() as s:
        sub = s.get(Subscriber, sid)
        assert sub is not None and sub.name == "Ada Lovelace"
        assert subscribers.category_slugs(s, sub) == ["news", "events"]
    # Ticking every topic stores "all", so topics added later reach the subscriber too.
    client.post(path, data={"csrf": csrf, "action": "save", "name": "Ada", "category": ["news", "products", "events"]})
    with sessions.begin() as s:
        assert subscribers.category_slugs(s, s.get(Subscriber, sid)) == []
    assert [src for src, _ in events(sessions, sid, EventKind.PREFERENCES)] == ["page", "page"]


def test_preferences_need_at_least_one_known_topic(
    client: TestClient, settings: Settings, sessions: sessionmaker[Session]
) -> None:
    sid = add_subscriber(sessions, "ada@example.com", categories=("news",))
    path, csrf = _prefs(client, settings, sid)
    r = client.post(path, data={"csrf": csrf, "action": "save", "name": "Bob"})
    assert r.status_code == 400 and "choose at least one topic" in r.text
    r = client.post(path, data={"csrf": csrf, "action": "save", "name": "Bob", "category": ["news", "sport"]})
    assert r.status_code == 400 and "there is no topic &#39;sport&#39;" in r.text
    assert subscriber(sessions, sid).name == "Ada"


@pytest.mark.parametrize("csrf_kind", ["missing", "forged", "other subscriber", "expired"])
def test_preferences_post_without_valid_csrf_is_refused(
    client: TestClient, settings: Settings, sessions: sessionmaker[Session], csrf_kind: str
) -> None:
    sid = add_subscriber(sessions, "ada@example.com")
    other = add_subscriber(sessions, "bob@example.com")
    path, good = _prefs(client, settings, sid)
    if csrf_kind == "missing":
        csrf = ""
    elif csrf_kind == "forged":
        csrf = good[:-3] + ("xyz" if not good.endswith("xyz") else "abc")
    elif csrf_kind == "other subscriber":
        csrf = _prefs(client, settings, other)[1]
    else:
        two_days_ago = time.time() - 2 * 86400
        csrf = tokens.make(secret(settings), tokens.CSRF, sid, clock=lambda: two_days_ago)
    for action in ("save", "unsubscribe"):
        r = client.post(path, data={"csrf": csrf, "action": action, "name": "Mallory", "category": ["news"]})
        assert r.status_code == 400 and "reload the page" in r.text
    sub = subscriber(sessions, sid)
    assert (sub.name, sub.status) == ("Ada", SubscriberStatus.ACTIVE)


def test_preferences_unsubscribe_all_and_come_back_by_confirming(
    client: TestClient, settings: Settings, sessions: sessionmaker[Session], smtp_server: SmtpServer
) -> None:
    sid = add_subscriber(sessions, "ada@example.com")
    path, csrf = _prefs(client, settings, sid)
    r = client.post(path, data={"csrf": csrf, "action": "unsubscribe"})
    assert r.status_code == 200 and "unsubscribed from everything" in r.text and "Subscribe again" in r.text
    assert subscriber(sessions, sid).status == SubscriberStatus.UNSUBSCRIBED
    # A forwarded link must not re-subscribe anyone: coming back is confirmed from the mailbox.
    time.sleep(1.05)  # link times are whole seconds; one from the unsubscribe's second counts as older
    r = client.post(path, data={"csrf": csrf, "action": "resubscribe"})
    assert r.status_code == 200 and "open the link in it" in r.text
    assert subscriber(sessions, sid).status == SubscriberStatus.UNSUBSCRIBED
    [mail] = smtp_server.messages
    assert client.post(path_of(settings, link_in(mail.message, r"http://\S+/confirm/\S+"))).status_code == 200
    assert subscriber(sessions, sid).status == SubscriberStatus.ACTIVE
    assert events(sessions, sid, EventKind.UNSUBSCRIBE) == [("page", None)]
    assert events(sessions, sid, EventKind.CONFIRM) == [("web", None)]


def test_bounced_subscriber_cannot_resubscribe_from_preferences(
    client: TestClient, settings: Settings, sessions: sessionmaker[Session], smtp_server: SmtpServer
) -> None:
    sid = add_subscriber(sessions, "ada@example.com", status=SubscriberStatus.BOUNCED)
    path = path_of(settings, tokens.preferences_url(settings, sid))
    r = client.get(path)
    assert "no longer send issues" in r.text and "<button" not in r.text
    client.post(path, data={"csrf": tokens.make(secret(settings), tokens.CSRF, sid), "action": "resubscribe"})
    assert subscriber(sessions, sid).status == SubscriberStatus.BOUNCED and smtp_server.messages == []


# -- archive, issue pages, preview -----------------------------------------------------


def test_archive_lists_only_sent_issues_with_escaped_subjects(
    client: TestClient, settings: Settings, sessions: sessionmaker[Session]
) -> None:
    make_issue(sessions, settings, "2026-W40", title="Sent one", sent=True, subject="<b>Bold</b> & co")
    make_issue(sessions, settings, "2026-W41", title="Draft one", sent=False, subject="Secret draft")
    r = client.get("/archive")
    assert r.status_code == 200
    assert "&lt;b&gt;Bold&lt;/b&gt; &amp; co" in r.text and "<b>Bold</b>" not in r.text
    assert 'href="/issues/2026-W40"' in r.text and "Secret draft" not in r.text
    assert "noindex" not in r.text  # public pages may be indexed; personal ones (token URLs) may not


def test_issue_page_shows_sent_issue_with_escaped_titles(
    client: TestClient, settings: Settings, sessions: sessionmaker[Session]
) -> None:
    make_issue(sessions, settings, "2026-W40", title="<script>alert(1)</script>Steel", sent=True)
    r = client.get("/issues/2026-W40")
    assert r.status_code == 200
    assert "&lt;script&gt;alert(1)&lt;/script&gt;Steel" in r.text and "<script>alert(1)" not in r.text
    assert "/unsubscribe/" not in r.text and "/preferences/" not in r.text


def test_issue_page_works_while_the_issue_is_being_sent(
    client: TestClient, settings: Settings, sessions: sessionmaker[Session]
) -> None:
    # The view-in-browser link of the first mails is opened before the last ones are sent.
    issue_id = make_issue(sessions, settings, "2026-W40", title="Steel", sent=False)
    with sessions.begin() as s:
        issue = s.get(Issue, issue_id)
        assert issue is not None
        issue.status = IssueStatus.SENDING
    r = client.get("/issues/2026-W40")
    assert r.status_code == 200 and "Steel" in r.text and "not been sent" not in r.text
    assert "2026-W40" not in client.get("/archive").text  # listed once sent


@pytest.mark.parametrize("week", ["2026-W41", "2026-W30", "nonsense", "2026-W99"])
def test_issue_page_of_draft_missing_or_bad_week_is_404(
    client: TestClient, settings: Settings, sessions: sessionmaker[Session], week: str
) -> None:
    make_issue(sessions, settings, "2026-W41", title="Draft one", sent=False)
    r = client.get(f"/issues/{week}")
    assert r.status_code == 404 and "Not found" in r.text


def test_editor_preview_needs_the_issues_signed_key(
    client: TestClient, settings: Settings, sessions: sessionmaker[Session]
) -> None:
    draft = make_issue(sessions, settings, "2026-W41", title="Draft story", sent=False)
    other = make_issue(sessions, settings, "2026-W42", title="Other story", sent=False)
    url = path_of(settings, tokens.preview_url(settings, draft, "2026-W41"))
    r = client.get(url)
    assert r.status_code == 200 and "Draft story" in r.text and r.headers["x-robots-tag"] == "noindex"
    assert "not been sent yet" in r.text
    assert client.get("/preview/2026-W41").status_code == 400
    assert client.get(url[:-4]).status_code == 400
    wrong = path_of(settings, tokens.preview_url(settings, other, "2026-W42")).replace("2026-W42", "2026-W41")
    assert client.get(wrong).status_code == 400
    unsub = tokens.make(secret(settings), tokens.UNSUBSCRIBE, 0, draft)
    assert client.get(f"/preview/2026-W41?key={unsub}").status_code == 400


# -- generic ---------------------------------------------------------------------------


def test_unknown_page_and_wrong_method_are_friendly(client: TestClient) -> None:
    r = client.get("/no/such/page")
    assert r.status_code == 404 and "Not found" in r.text
    r = client.post("/archive")
    assert r.status_code == 405 and "<html" in r.text


def test_no_response_redirects_anywhere(
    client: TestClient, settings: Settings, sessions: sessionmaker[Session]
) -> None:
    sid = add_subscriber(sessions, "ada@example.com")
    evil = {"next": "https://evil.example/", "redirect": "//evil.example", "return_to": "https://evil.example"}
    requests = [
        ("GET", "/subscribe"),
        ("POST", "/subscribe"),
        ("GET", "/archive"),
        ("GET", "/"),
        ("GET", path_of(settings, tokens.unsubscribe_url(settings, sid, None))),
        ("POST", path_of(settings, tokens.unsubscribe_url(settings, sid, None))),
        ("GET", path_of(settings, tokens.preferences_url(settings, sid))),
        ("GET", path_of(settings, tokens.confirm_url(settings, sid))),
        ("GET", "//evil.example/"),
        ("GET", "/%2F%2Fevil.example"),
        ("GET", "/archive/"),
        ("GET", path_of(settings, tokens.unsubscribe_url(settings, sid, None)) + "/"),
    ]
    for method, path in requests:
        r = client.request(
            method,
            path,
            params=evil,
            data={"email": "x@example.com", **evil} if method == "POST" else None,
            headers={"Referer": "https://evil.example/"},
        )
        assert not 300 <= r.status_code < 400, (method, path)
        assert "location" not in r.headers and "evil.example" not in r.text, (method, path)


def test_with_dataclass_settings_the_app_uses_the_configured_name(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    renamed = dataclasses.replace(settings, newsletter=dataclasses.replace(settings.newsletter, name="Steel & <Iron>"))
    with TestClient(create_app(renamed, sessions), base_url=BASE) as c:
        r = c.get("/subscribe")
    assert "Steel &amp; &lt;Iron&gt;" in r.text


def test_cli_weblink_prints_a_working_preview_link(
    client: TestClient, settings: Settings, config_path: Path, sessions: sessionmaker[Session]
) -> None:
    make_issue(sessions, settings, "2026-W41", title="Draft story", sent=False)
    result = CliRunner().invoke(app, ["--config", str(config_path), "issue", "weblink", "--week", "2026-W41"])
    assert result.exit_code == 0, result.output
    archive_line, preview_line = result.stdout.splitlines()
    assert archive_line == f"archive: {BASE}/issues/2026-W41  (public once sent)"
    assert preview_line.startswith(f"preview: {BASE}/preview/2026-W41?key=")
    r = client.get(preview_line.removeprefix("preview: "))
    assert r.status_code == 200 and "Draft story" in r.text
    missing = CliRunner().invoke(app, ["--config", str(config_path), "issue", "weblink", "--week", "2026-W30"])
    assert missing.exit_code == 1 and missing.stderr.startswith("Error: no issue for 2026-W30")


def test_healthz_is_503_when_the_database_is_unreachable(settings: Settings, tmp_path: Path) -> None:
    broken = session_factory(make_engine(f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.db'}"))
    with TestClient(create_app(settings, broken), base_url=BASE) as c:
        r = c.get("/healthz")
    assert r.status_code == 503 and r.json() == {"status": "error", "database": "unreachable"}
