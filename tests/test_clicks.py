"""Click tracking: article links in the mail go through /c/<token>, which redirects only
to an article of that issue, counts per article (never who), and tells scanners apart."""

from __future__ import annotations

import dataclasses
import json
import re
import secrets
from collections.abc import Iterator

import pytest
from conftest import SmtpServer
from content_support import add_article, utc
from desk_support import add_editor, csrf, sign_in
from sending_support import add_subscribers, body, build_issue
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from starlette.testclient import TestClient
from web_support import link_in, path_of

from newsletter import builder, clicks, render, sender, subscribers, tokens
from newsletter.config import Settings
from newsletter.models import ClickCount, IssueStatus, SubscriberClick
from newsletter.web import create_app

BASE = "http://127.0.0.1:8000"
WEEK = "2026-W48"


@pytest.fixture
def issue(settings: Settings, sessions: sessionmaker[Session]) -> dict[str, int]:
    """A sent issue with two articles, and one article of another week (ids by title)."""
    with sessions.begin() as s:
        one = add_article(s, "Steel prices", "news", utc(2026, 11, 26, 10))
        two = add_article(s, "New press", "products", utc(2026, 11, 25, 10))
        other = add_article(s, "Last week", "news", utc(2026, 11, 18, 10))
        built = builder.build(s, settings, WEEK)
        built.status = IssueStatus.SENT
        return {"issue": built.id, "one": one.id, "two": two.id, "other": other.id}


@pytest.fixture
def client(settings: Settings, sessions: sessionmaker[Session]) -> Iterator[TestClient]:
    with TestClient(create_app(settings, sessions), base_url=BASE, follow_redirects=False) as c:
        yield c


def link(settings: Settings, issue_id: int, article_id: int) -> str:
    return clicks.tracked_url(settings, issue_id, article_id)[len(BASE) :]


def counts(sessions: sessionmaker[Session]) -> dict[int, tuple[int, int]]:
    with sessions.begin() as s:
        return {c.article_id: (c.clicks, c.scanner) for c in s.scalars(select(ClickCount))}


def test_the_mail_links_articles_through_the_redirect(
    settings: Settings, sessions: sessionmaker[Session], issue: dict[str, int]
) -> None:
    with sessions.begin() as s:
        content = builder.load_content(s, settings, WEEK)
    variant = render.render_variant(settings, content, render.sections_for(content, ()))
    for name in ("one", "two"):
        assert f'href="{clicks.tracked_url(settings, issue["issue"], issue[name])}"' in variant.html
        assert clicks.tracked_url(settings, issue["issue"], issue[name]) in variant.text
    assert 'href="https://example.com/steel-prices"' not in variant.html
    direct = dataclasses.replace(settings, tracking=dataclasses.replace(settings.tracking, clicks=False))
    plain = render.render_variant(direct, content, render.sections_for(content, ()))
    assert 'href="https://example.com/steel-prices"' in plain.html and "/c/" not in plain.html


def test_a_click_redirects_to_the_article_and_is_counted(
    client: TestClient, settings: Settings, sessions: sessionmaker[Session], issue: dict[str, int]
) -> None:
    r = client.get(link(settings, issue["issue"], issue["one"]))
    assert r.status_code == 302 and r.headers["location"] == "https://example.com/steel-prices"
    assert r.headers["referrer-policy"] == "no-referrer" and r.headers["cache-control"] == "no-store"
    assert counts(sessions) == {issue["one"]: (1, 0)}
    client.get(link(settings, issue["issue"], issue["one"]))  # the same reader again at once: one click
    assert counts(sessions) == {issue["one"]: (1, 0)}


def test_forged_and_foreign_tokens_go_nowhere(
    client: TestClient, settings: Settings, sessions: sessionmaker[Session], issue: dict[str, int]
) -> None:
    good = link(settings, issue["issue"], issue["one"])
    secret = settings.newsletter.secret_key
    forged = [
        good[:-2] + ("AA" if not good.endswith("AA") else "BB"),
        "/c/not-a-token",
        "/c/" + "A" * 60,
        "/c/" + tokens.make(secrets.token_urlsafe(32), tokens.CLICK, issue["one"], issue["issue"]),
        "/c/" + tokens.make(secret, tokens.UNSUBSCRIBE, issue["one"], issue["issue"]),
    ]
    for path in forged:
        r = client.get(path)
        assert r.status_code == 400 and "location" not in r.headers, path
    foreign = [
        link(settings, issue["issue"], issue["other"]),
        link(settings, issue["issue"] + 1, issue["one"]),
        "/c/" + tokens.make(secret, tokens.CLICK, issue["one"], None),
    ]
    for path in foreign:
        r = client.get(path)
        assert r.status_code == 404 and "location" not in r.headers, path
    assert counts(sessions) == {}


def test_scanners_are_not_counted_as_readers(
    settings: Settings, sessions: sessionmaker[Session], issue: dict[str, int]
) -> None:
    web = create_app(settings, sessions)
    one, two = link(settings, issue["issue"], issue["one"]), link(settings, issue["issue"], issue["two"])
    with (
        TestClient(web, base_url=BASE, follow_redirects=False, client=("10.0.0.1", 1)) as scanner,
        TestClient(web, base_url=BASE, follow_redirects=False, client=("10.0.0.2", 1)) as reader,
    ):
        assert scanner.head(one).status_code == 302  # a prefetch with HEAD
        assert counts(sessions) == {issue["one"]: (0, 1)}
        scanner.get(one)  # looks like a reader, until ...
        assert counts(sessions) == {issue["one"]: (1, 1)}
        scanner.get(two)  # ... it opens the next article within seconds: both were the scanner
        assert counts(sessions) == {issue["one"]: (0, 2), issue["two"]: (0, 1)}
        reader.get(two)
        assert counts(sessions) == {issue["one"]: (0, 2), issue["two"]: (1, 1)}


def test_a_draft_issues_links_work_but_count_nothing(
    client: TestClient, settings: Settings, sessions: sessionmaker[Session], issue: dict[str, int]
) -> None:
    with sessions.begin() as s:
        builder.get_issue(s, settings, WEEK).status = IssueStatus.DRAFT  # e.g. a test copy
    r = client.get(link(settings, issue["issue"], issue["two"]))
    assert r.status_code == 302 and r.headers["location"] == "https://example.com/new-press"
    assert counts(sessions) == {}


def test_scanner_filter_window() -> None:
    now = [100.0]
    f = clicks.ScannerFilter(5.0, clock=lambda: now[0])
    assert f.judge("a", 1, 10) == (clicks.Verdict.READER, [])
    assert f.judge("a", 2, 20) == (clicks.Verdict.READER, [])  # another issue: unrelated
    now[0] += 6
    assert f.judge("a", 1, 11) == (clicks.Verdict.READER, [])  # after the window: a reader reading on
    now[0] += 1
    assert f.judge("a", 1, 12) == (clicks.Verdict.SCANNER, [(11, None)])
    assert f.judge("a", 1, 13) == (clicks.Verdict.SCANNER, [])
    assert f.judge("b", 1, 10, reader=7) == (clicks.Verdict.READER, [])
    assert f.judge("b", 1, 11, reader=7) == (clicks.Verdict.SCANNER, [(10, 7)])  # whose click to take back


def test_click_stats_per_section_and_top_articles(
    settings: Settings, sessions: sessionmaker[Session], issue: dict[str, int]
) -> None:
    with sessions.begin() as s:
        clicks.record(s, issue["issue"], issue["one"], clicks=3)
        clicks.record(s, issue["issue"], issue["two"], clicks=5, scanner=2)
        result = clicks.click_stats(s, settings, issue["issue"])
        assert clicks.clicks_per_issue(s, [issue["issue"]]) == {issue["issue"]: 8}
    assert (result.clicks, result.scanner) == (8, 2)
    assert result.by_section == [("News", 3), ("Products", 5)]
    assert [t[0] for t in result.top] == ["New press", "Steel prices"]


def per_subscriber(settings: Settings, on: bool = True) -> Settings:
    return dataclasses.replace(settings, tracking=dataclasses.replace(settings.tracking, per_subscriber=on))


def person_clicks(sessions: sessionmaker[Session]) -> list[tuple[int, int]]:
    with sessions.begin() as s:
        return [
            (c.subscriber_id, c.article_id) for c in s.scalars(select(SubscriberClick).order_by(SubscriberClick.id))
        ]


def test_by_default_a_mail_names_no_reader_and_no_person_is_recorded(
    settings: Settings, sessions: sessionmaker[Session], smtp_server: SmtpServer
) -> None:
    week = build_issue(sessions, settings)
    add_subscribers(sessions, 2)
    sender.send(sessions, settings, week)
    links = {link_in(m.message, r"http://\S+/c/\S+") for m in smtp_server.messages}
    assert len(links) == 1 and links.pop().count("/") == 4  # both got the same link: /c/<token>, no reader
    with TestClient(create_app(settings, sessions), base_url=BASE, follow_redirects=False) as c:
        assert (
            c.get(path_of(settings, link_in(smtp_server.messages[0].message, r"http://\S+/c/\S+"))).status_code == 302
        )
    assert person_clicks(sessions) == []


def test_per_subscriber_clicks_are_recorded_shown_exported_and_erased(
    settings: Settings, sessions: sessionmaker[Session], smtp_server: SmtpServer
) -> None:
    """[tracking] per_subscriber = true: each message's links name its reader; a click is kept
    for that person, on their desk page and in their export, and erasing them deletes it."""
    settings = per_subscriber(settings)
    week = build_issue(sessions, settings)
    ada, bob = add_subscribers(sessions, 2)
    sender.send(sessions, settings, week)
    mail = {m.rcpt_tos[0]: m.message for m in smtp_server.messages}
    ada_mail, bob_mail = mail[ada], mail[bob]
    ada_link = link_in(ada_mail, r"http://\S+/c/\S+")
    bob_link = link_in(bob_mail, r"http://\S+/c/\S+")
    assert ada_link != bob_link and ada_link.count("/") == 5  # /c/<token>/<reader>
    assert f'href="{ada_link}"' in body(ada_mail, "html")
    with sessions.begin() as s:
        ada_id = subscribers.require(s, ada).id
        bob_id = subscribers.require(s, bob).id
    add_editor(sessions)
    with TestClient(create_app(settings, sessions), base_url=BASE, follow_redirects=False) as c:
        r = c.get(path_of(settings, ada_link))
        assert r.status_code == 302 and r.headers["location"].startswith("https://example.com/")
        assert [sid for sid, _ in person_clicks(sessions)] == [ada_id]
        # A reader part from another message of another issue, or forged, is refused.
        token, reader = path_of(settings, ada_link).split("/")[2:4]
        other_issue = tokens.make(settings.newsletter.secret_key, tokens.READER, bob_id, 999)
        for path in (f"/c/{token}/{other_issue}", f"/c/{token}/{reader[:-2]}xx", f"/c/{token}/not-a-token"):
            assert c.get(path).status_code == 400, path
        assert sign_in(c).status_code == 303
        page = c.get(f"/admin/subscribers/{ada_id}").text
        assert 'id="clicks"' in page and week in page and "headline" in page
        assert "No click of theirs recorded." in c.get(f"/admin/subscribers/{bob_id}").text
        exported = json.loads(c.get(f"/admin/subscribers/{ada_id}/export").text)
        assert [(e["issue"], e["url"]) for e in exported["clicks"]] == [(week, r.headers["location"])]
        assert json.loads(c.get(f"/admin/subscribers/{bob_id}/export").text)["clicks"] == []
        erase = c.post(f"/admin/subscribers/{ada_id}/erase", data={"csrf_token": csrf(c), "confirm": ada})
        assert erase.status_code == 303
    assert person_clicks(sessions) == []
    assert sum(n for n, _ in counts(sessions).values()) == 1  # the count stays: it names no one


def test_turning_per_subscriber_off_keeps_counting_but_names_no_one(
    settings: Settings, sessions: sessionmaker[Session], smtp_server: SmtpServer
) -> None:
    week = build_issue(sessions, settings)
    [ada] = add_subscribers(sessions, 1)
    sender.send(sessions, per_subscriber(settings), week)
    ada_link = link_in(smtp_server.messages[0].message, r"http://\S+/c/\S+")
    with TestClient(create_app(per_subscriber(settings, False), sessions), base_url=BASE, follow_redirects=False) as c:
        assert c.get(path_of(settings, ada_link)).status_code == 302
    assert person_clicks(sessions) == [] and sum(n for n, _ in counts(sessions).values()) == 1


def test_a_scanner_burst_takes_back_the_persons_click_too(
    settings: Settings, sessions: sessionmaker[Session], smtp_server: SmtpServer
) -> None:
    settings = per_subscriber(settings)
    week = build_issue(sessions, settings)
    add_subscribers(sessions, 1)
    sender.send(sessions, settings, week)
    links = re.findall(r"http://\S+/c/[^\s)]+", body(smtp_server.messages[0].message, "plain"))
    assert len(set(links)) == 3
    with TestClient(create_app(settings, sessions), base_url=BASE, follow_redirects=False) as scanner:
        scanner.get(path_of(settings, links[0]))
        assert len(person_clicks(sessions)) == 1
        scanner.get(path_of(settings, links[1]))  # the next article within seconds: a scanner
    assert person_clicks(sessions) == []
