"""What readers did, on the desk and in `newsletter stats`: an issue's results with clicks
per section and top articles, the list's growth and churn, the last issues as SVG charts."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from content_support import add_article, utc
from desk_support import add_editor, sign_in
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker
from starlette.applications import Starlette
from starlette.testclient import TestClient
from typer.testing import CliRunner
from web_support import add_subscriber

from newsletter import builder, clicks, desk, subscribers, trends
from newsletter.cli import app
from newsletter.config import Settings
from newsletter.db import make_engine, session_factory
from newsletter.models import Delivery, DeliveryStatus, IssueStatus, Subscriber, SubscriberStatus, utcnow
from newsletter.web import create_app

BASE = "http://127.0.0.1:8000"
WEEK = "2026-W48"


@pytest.fixture
def sent(settings: Settings, sessions: sessionmaker[Session]) -> dict[str, int]:
    """A sent issue: 3 delivered, 1 failed; clicks 4 on a news story, 1 on a product."""
    ids = [add_subscriber(sessions, f"r{n}@example.com") for n in range(4)]
    with sessions.begin() as s:
        news = add_article(s, "Steel <prices>", "news", utc(2026, 11, 26, 10))
        product = add_article(s, "New press", "products", utc(2026, 11, 25, 10))
        issue = builder.build(s, settings, WEEK)
        issue.status, issue.sent_at = IssueStatus.SENT, utcnow()
        for n, sid in enumerate(ids):
            s.add(
                Delivery(
                    issue_id=issue.id,
                    subscriber_id=sid,
                    status=DeliveryStatus.FAILED if n == 3 else DeliveryStatus.SENT,
                )
            )
        clicks.record(s, issue.id, news.id, clicks=4, scanner=2)
        clicks.record(s, issue.id, product.id, clicks=1)
        return {"issue": issue.id, "news": news.id}


@pytest.fixture
def client(settings: Settings, sessions: sessionmaker[Session]) -> Iterator[TestClient]:
    add_editor(sessions)
    with TestClient(create_app(settings, sessions), base_url=BASE, follow_redirects=False) as c:
        assert sign_in(c).status_code == 303
        yield c


def test_results_page(client: TestClient, sent: dict[str, int]) -> None:
    r = client.get(f"/admin/issues/{WEEK}/stats")
    assert r.status_code == 200
    for stat, value in (("delivered", "3"), ("clicks", "5"), ("bounced", "0"), ("complaints", "0")):
        assert f'id="{stat}">{value}<' in r.text, stat
    assert "2 fetches by link scanners" in r.text and "never per person" in r.text  # [tracking] per_subscriber off
    assert r.text.index("Steel &lt;prices&gt;") < r.text.index("New press")  # escaped, most clicked first
    assert '<svg class="chart"' in r.text and 'aria-label="Clicks per section"' in r.text
    assert ">News</text>" in r.text and ">Products</text>" in r.text
    assert "script" not in r.text.split("<svg", 1)[1]


def test_home_shows_growth_churn_and_last_issues(
    client: TestClient, sent: dict[str, int], sessions: sessionmaker[Session]
) -> None:
    with sessions.begin() as s:
        gone = subscribers.require(s, "r0@example.com")
        subscribers.unsubscribe(s, gone, source="admin")
    r = client.get("/admin/")
    assert r.status_code == 200
    assert 'id="count-active">3<' in r.text and 'id="count-unsubscribed">1<' in r.text
    assert r.text.count('<svg class="chart"') == 3
    this_week = builder.current_week(client.app.state.newsletter.settings)[-3:]  # type: ignore[attr-defined]  # our AppState
    assert f">{this_week}</text>" in r.text and ">+4</text>" in r.text and ">-1</text>" in r.text
    assert f'href="/admin/issues/{WEEK}/stats"' in r.text


def test_growth_buckets_by_week(settings: Settings, sessions: sessionmaker[Session]) -> None:
    now = utcnow()
    for n, (age, status) in enumerate(
        [
            (0, SubscriberStatus.ACTIVE),
            (0, SubscriberStatus.BOUNCED),
            (8, SubscriberStatus.ACTIVE),
            (100, SubscriberStatus.ACTIVE),
        ]
    ):
        sid = add_subscriber(sessions, f"g{n}@example.com", status=status)
        with sessions.begin() as s:
            s.get(Subscriber, sid).created_at = now - timedelta(days=age)  # type: ignore[union-attr]  # just added
    with sessions.begin() as s:
        weeks = trends.growth(s, settings)
    assert len(weeks) == 12 and weeks[-1].week == builder.current_week(settings)
    assert (weeks[-1].joined, weeks[-1].left) == (2, 1)
    assert sum(w.joined for w in weeks) == 3  # the one from 100 days ago is older than 12 weeks


def test_stats_command_shows_clicks(config_path: Path, sent: dict[str, int]) -> None:
    r = CliRunner().invoke(app, ["--config", str(config_path), "stats", "--week", WEEK])
    assert r.exit_code == 0, r.output
    table = dict(line.split("\t") for line in r.output.splitlines())  # piped: label TAB value
    assert (table["clicks"], table["link scanner fetches (not counted)"]) == ("5", "2")
    assert (table["clicks in News"], table["clicks in Products"]) == ("4", "1")
    assert table["top 1: Steel <prices> (News)"] == "4" and table["top 2: New press (Products)"] == "1"


def test_the_server_counts_sent_issues_when_it_starts(
    settings: Settings, sessions: sessionmaker[Session], sent: dict[str, int]
) -> None:
    """The first /admin/issues after a start finds the sent issues already counted (with
    100,000 subscribers that count took 2.4 s of the first page): proven by a change made
    after the warm-up, which the page does not show until the counts expire."""
    add_editor(sessions)
    the_desk = desk.Desk(settings, sessions)
    app = Starlette(routes=the_desk.routes(), lifespan=the_desk.lifespan)
    with TestClient(app, base_url=BASE, follow_redirects=False) as c:
        assert the_desk.warmed.wait(120)
        with sessions.begin() as s:
            s.execute(update(Delivery).values(status=DeliveryStatus.SENT))
        assert sign_in(c).status_code == 303
        row = c.get("/admin/issues").text.split(f">{WEEK}<", 1)[1].split("</tr>", 1)[0]
        assert re.findall(r'class="num">(\d+)<', row)[1:3] == ["3", "1"]  # sent, failed: as counted at start


def test_a_failed_warm_up_leaves_the_pages_to_count(
    settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    empty = session_factory(make_engine(f"sqlite:///{tmp_path / 'no-schema.db'}"))
    the_desk = desk.Desk(settings, empty)
    app = Starlette(routes=the_desk.routes(), lifespan=the_desk.lifespan)
    with TestClient(app, base_url=BASE) as c:
        assert the_desk.warmed.wait(120)
        assert c.get("/admin/login").status_code == 200
    assert "desk: warming up failed (OperationalError); the first pages will be slower" in caplog.text
