"""Helpers shared by the web app's HTTP and browser tests."""

from __future__ import annotations

import re
from datetime import date, datetime, time, timezone
from email.message import Message

from sqlalchemy.orm import Session, sessionmaker

from newsletter import builder, subscribers
from newsletter.config import Settings
from newsletter.models import Article, Issue, IssueStatus, Subscriber, SubscriberStatus, utcnow


def add_subscriber(sessions: sessionmaker[Session], email: str, *,
                   status: SubscriberStatus = SubscriberStatus.ACTIVE, categories: tuple[str, ...] = ()) -> int:
    with sessions.begin() as s:
        return subscribers.add(s, email, name="Ada", categories=categories, status=status, source="test").id


def subscriber(sessions: sessionmaker[Session], sid: int) -> Subscriber:
    with sessions.begin() as s:
        sub = s.get(Subscriber, sid)
        assert sub is not None
        return sub


def make_issue(sessions: sessionmaker[Session], settings: Settings, week: str, *, title: str,
               sent: bool, subject: str | None = None) -> int:
    """Publish one article in `week`, build the issue, and mark it sent if asked."""
    year, number = int(week[:4]), int(week[-2:])
    published = datetime.combine(date.fromisocalendar(year, number, 3), time(10), tzinfo=timezone.utc)
    with sessions.begin() as s:
        s.add(Article(guid=f"https://example.com/{week}", url=f"https://example.com/{week}", title=title,
                      category="news", summary="<p>Summary</p>", published_at=published))
        s.flush()
        issue = builder.build(s, settings, week, subject=subject)
        if sent:
            issue.status, issue.sent_at = IssueStatus.SENT, utcnow()
        return issue.id


def issue_status(sessions: sessionmaker[Session], issue_id: int) -> IssueStatus:
    with sessions.begin() as s:
        issue = s.get(Issue, issue_id)
        assert issue is not None
        return issue.status


def path_of(settings: Settings, url: str) -> str:
    """The path of one of our absolute URLs (TestClient and browsers use their own base)."""
    base = settings.newsletter.base_url.rstrip("/")
    assert url.startswith(base), url
    return url[len(base):]


def link_in(message: Message, pattern: str) -> str:
    """The first URL in the plain-text part of a mail that matches `pattern`."""
    for part in message.walk():
        if part.get_content_type() == "text/plain":
            body = part.get_payload(decode=True).decode(part.get_content_charset() or "utf-8")
            match = re.search(pattern, body)
            if match:
                return match.group(0)
    raise AssertionError(f"no link matching {pattern!r} in the mail")
