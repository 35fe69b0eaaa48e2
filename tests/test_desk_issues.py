"""Curating and sending from the desk over HTTP, on SQLite and PostgreSQL, with mail
really sent to aiosmtpd: the same choices as the CLI, a preview as one subscriber gets
it, a test copy, a schedule that the cron run honours, and "send now" through the CLI."""

from __future__ import annotations

import dataclasses
import re
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from conftest import SmtpServer
from content_support import add_article, utc
from desk_support import EDITOR, add_editor, csrf, sign_in
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from starlette.testclient import TestClient
from web_support import add_subscriber

from newsletter import builder, scheduler
from newsletter.config import Settings
from newsletter.models import Delivery, DeliveryStatus, Issue, IssueStatus, utcnow
from newsletter.web import create_app

BASE = "http://127.0.0.1:8000"
WEEK = "2026-W48"


def url(title: str) -> str:
    return "https://example.com/" + "-".join(title.lower().split())


@pytest.fixture
def client(settings: Settings, sessions: sessionmaker[Session]) -> Iterator[TestClient]:
    add_editor(sessions)
    with sessions.begin() as s:
        for n in range(1, 4):
            add_article(s, f"Story {n}", "news", utc(2026, 11, 27, 12 - n))
        add_article(s, "Widget launch", "products", utc(2026, 11, 26, 10))
        builder.build(s, settings, WEEK)
    with TestClient(create_app(settings, sessions), base_url=BASE, follow_redirects=False) as c:
        assert sign_in(c).status_code == 303
        yield c


def shown(sessions: sessionmaker[Session], settings: Settings) -> dict[str, list[str]]:
    with sessions.begin() as s:
        content = builder.load_content(s, settings, WEEK)
    out = {sec.slug: [a.title for a in sec.articles] for sec in content.sections}
    out["lead"] = [content.lead.title] if content.lead else []
    return out


def test_issue_pages_need_a_session(settings: Settings, sessions: sessionmaker[Session]) -> None:
    with TestClient(create_app(settings, sessions), base_url=BASE, follow_redirects=False) as anonymous:
        for path in (
            "/admin/issues",
            f"/admin/issues/{WEEK}",
            f"/admin/issues/{WEEK}/preview",
            f"/admin/issues/{WEEK}/progress",
        ):
            r = anonymous.get(path)
            assert r.status_code == 303 and r.headers["location"].startswith("/admin/login?next=/admin/issues")
        r = anonymous.post(f"/admin/issues/{WEEK}/send", data={"csrf_token": "x"})
        assert r.status_code == 303


def test_list_and_draft_pages(client: TestClient) -> None:
    r = client.get("/admin/issues")
    assert r.status_code == 200 and f'href="/admin/issues/{WEEK}"' in r.text and "draft" in r.text
    r = client.get(f"/admin/issues/{WEEK}")
    assert r.status_code == 200
    assert r.text.index("Story 1") < r.text.index("Story 2") < r.text.index("Widget launch")
    assert 'src="/admin/desk.js"' in r.text and "script-src 'self'" in r.headers["content-security-policy"]


def test_curate_from_the_desk(client: TestClient, settings: Settings, sessions: sessionmaker[Session]) -> None:
    token = csrf(client, f"/admin/issues/{WEEK}")

    def act(action: str, title: str, **extra: str) -> None:
        r = client.post(
            f"/admin/issues/{WEEK}/articles", data={"csrf_token": token, "action": action, "url": url(title), **extra}
        )
        assert r.status_code == 303 and r.headers["location"] == f"/admin/issues/{WEEK}?notice={action}", r.text

    act("exclude", "Story 2")
    act("lead", "Story 3")
    act("up", "Widget launch")  # already first: stays
    act("move", "Story 1", section="products")
    assert shown(sessions, settings) == {"lead": ["Story 3"], "products": ["Widget launch", "Story 1"]}
    page = client.get(f"/admin/issues/{WEEK}").text
    assert "Left out" in page and "Story 2" in page
    act("restore", "Story 2")
    r = client.post(
        f"/admin/issues/{WEEK}/text",
        data={"csrf_token": token, "subject": "This week: widgets", "intro": "Hello *you*"},
    )
    assert r.status_code == 303
    with sessions.begin() as s:
        issue = builder.get_issue(s, settings, WEEK)
        assert issue.subject == "This week: widgets" and issue.intro == "Hello *you*"
    # A rebuild after new articles were fetched keeps all of it.
    with sessions.begin() as s:
        add_article(s, "Story 0", "news", utc(2026, 11, 27, 18))
    r = client.post("/admin/issues/build", data={"csrf_token": token, "week": WEEK})
    assert r.status_code == 303
    assert shown(sessions, settings) == {
        "lead": ["Story 3"],
        "news": ["Story 0", "Story 2"],
        "products": ["Widget launch", "Story 1"],
    }


def test_choices_without_csrf_change_nothing(
    client: TestClient, settings: Settings, sessions: sessionmaker[Session]
) -> None:
    before = shown(sessions, settings)
    for data in (
        {"action": "exclude", "url": url("Story 1")},
        {"action": "exclude", "url": url("Story 1"), "csrf_token": "forged"},
    ):
        assert client.post(f"/admin/issues/{WEEK}/articles", data=data).status_code == 403
    assert client.post(f"/admin/issues/{WEEK}/text", data={"subject": "x", "intro": "y"}).status_code == 403
    assert shown(sessions, settings) == before


def test_bad_choices_are_a_clear_page(client: TestClient) -> None:
    token = csrf(client)
    r = client.post(
        f"/admin/issues/{WEEK}/articles",
        data={"csrf_token": token, "action": "exclude", "url": "https://evil.example/"},
    )
    assert r.status_code == 400 and "is not an article published in 2026-W48" in r.text
    r = client.post(f"/admin/issues/{WEEK}/articles", data={"csrf_token": token, "action": "drop", "url": "x"})
    assert r.status_code == 400
    assert client.get("/admin/issues/2026-W99").status_code in (400, 404)


def test_live_intro_preview_is_sanitised(client: TestClient) -> None:
    r = client.post(
        f"/admin/issues/{WEEK}/intro-preview",
        data={"csrf_token": csrf(client), "intro": "**Hi** <script>alert(1)</script>"},
    )
    assert r.status_code == 200 and "<strong>Hi</strong>" in r.text and "<script>" not in r.text


def test_preview_as_one_subscriber(client: TestClient, sessions: sessionmaker[Session]) -> None:
    add_subscriber(sessions, "prod@example.com", categories=("products",))
    whole = client.get(f"/admin/issues/{WEEK}/preview")
    assert whole.status_code == 200 and "Story 1" in whole.text and "Widget launch" in whole.text
    csp = whole.headers["content-security-policy"]
    assert "frame-ancestors 'self'" in csp and "sandbox" in csp
    theirs = client.get(f"/admin/issues/{WEEK}/preview", params={"subscriber": "prod@example.com"})
    assert "Widget launch" in theirs.text and "Story 1" not in theirs.text
    assert "/unsubscribe/" in theirs.text  # their own links
    page = client.get(f"/admin/issues/{WEEK}", params={"subscriber": "prod@example.com"}).text
    assert 'width="640"' in page and 'width="375"' in page and "subscriber=prod%40example.com" in page
    assert client.get(f"/admin/issues/{WEEK}/preview", params={"subscriber": "nobody@example.com"}).status_code == 404


def test_send_me_a_test(client: TestClient, smtp_server: SmtpServer, sessions: sessionmaker[Session]) -> None:
    r = client.post(f"/admin/issues/{WEEK}/test", data={"csrf_token": csrf(client)})
    assert r.status_code == 303 and r.headers["location"].endswith("notice=test")
    [mail] = smtp_server.messages
    assert mail.rcpt_tos == [EDITOR]
    with sessions.begin() as s:
        assert s.scalars(select(Delivery)).first() is None  # outside the ledger


def test_schedule_is_what_the_cron_run_honours(
    client: TestClient, settings: Settings, sessions: sessionmaker[Session], smtp_server: SmtpServer
) -> None:
    add_subscriber(sessions, "ada@example.com")
    r = client.post(f"/admin/issues/{WEEK}/schedule", data={"csrf_token": csrf(client), "when": "2026-11-25T08:30"})
    assert r.status_code == 303
    when = datetime(2026, 11, 25, 8, 30, tzinfo=settings.tz)
    with sessions.begin() as s:
        issue = builder.get_issue(s, settings, WEEK)
        assert issue.scheduled_at == when and issue.scheduled_by == EDITOR
    before = scheduler.run(sessions, settings, now=when.replace(hour=8, minute=0), fetch=False)
    assert before.send is None and any("not sending yet" in line for line in before.lines)
    # The test's week lies in the past when CI runs it: no [delivery] max_age_hours refusal.
    lenient = dataclasses.replace(settings, delivery=dataclasses.replace(settings.delivery, max_age_hours=1e9))
    after = scheduler.run(sessions, lenient, now=when, fetch=False)
    assert after.send is not None and after.send.sent == 1
    assert smtp_server.recipients() == ["ada@example.com"]


def test_send_now_runs_the_cli_engine_and_shows_progress(
    client: TestClient,
    settings: Settings,
    sessions: sessionmaker[Session],
    smtp_server: SmtpServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))  # where the send's log goes
    for n in range(5):
        add_subscriber(sessions, f"reader{n}@example.com")
    r = client.post(
        f"/admin/issues/{WEEK}/schedule",
        data={"csrf_token": csrf(client), "when": utcnow().astimezone(settings.tz).strftime("%Y-%m-%dT%H:%M")},
    )
    assert r.status_code == 303  # due now (the week is long past when CI runs this)
    r = client.post(f"/admin/issues/{WEEK}/send", data={"csrf_token": csrf(client)})
    assert r.status_code == 303 and r.headers["location"] == f"/admin/issues/{WEEK}/progress"
    deadline = time.monotonic() + 60
    while True:
        page = client.get(f"/admin/issues/{WEEK}/progress")
        if "has finished" in page.text or time.monotonic() > deadline:
            break
        assert page.headers.get("refresh") == "2"  # the page reloads itself while sending
        time.sleep(0.2)
    assert "has finished." in page.text, page.text
    assert re.search(r'id="sent">5<', page.text)
    last = re.search(r'<p class="muted">([^<]+)</p>', page.text)
    assert last and "5" in last.group(1), page.text  # the command's last line
    assert list(temp.iterdir()) == []  # … read, and its log deleted
    assert last.group(0) in client.get(f"/admin/issues/{WEEK}/progress").text  # the line is kept
    assert sorted(smtp_server.recipients()) == [f"reader{n}@example.com" for n in range(5)]
    with sessions.begin() as s:
        assert s.scalar(select(Issue)).status == IssueStatus.SENT  # type: ignore[union-attr]  # one issue
        assert {d.status for d in s.scalars(select(Delivery))} == {DeliveryStatus.SENT}
