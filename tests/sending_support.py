"""Helpers for the sending tests: a built issue, subscribers, ledger queries, CLI runs."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from datetime import timedelta
from email.message import Message
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from newsletter import builder, subscribers
from newsletter.config import Settings
from newsletter.models import Article, Delivery, Issue, Subscriber, utcnow

ROOT = Path(__file__).resolve().parents[1]


def add_articles(sessions: sessionmaker[Session]) -> None:
    """One article per configured category, published now."""
    now = utcnow()
    with sessions.begin() as s:
        for i, slug in enumerate(("news", "products", "events")):
            s.add(
                Article(
                    guid=f"g{i}",
                    url=f"https://example.com/{slug}/{i}",
                    title=f"{slug.title()} headline {i}",
                    category=slug,
                    summary=f"<p>About {slug}.</p>",
                    published_at=now - timedelta(minutes=i),
                )
            )


def build_issue(sessions: sessionmaker[Session], settings: Settings) -> str:
    """One article per configured category this week, built into an issue due an hour ago; its week."""
    add_articles(sessions)
    now = utcnow()
    with sessions.begin() as s:
        issue = builder.build(s, settings)
        issue.scheduled_at = now - timedelta(hours=1)
        return issue.week


def add_subscribers(
    sessions: sessionmaker[Session], n: int, *, prefix: str = "reader", categories: tuple[str, ...] = ()
) -> list[str]:
    emails = [f"{prefix}{i}@example.org" for i in range(n)]
    with sessions.begin() as s:
        for i, email in enumerate(emails):
            subscribers.add(s, email, name=f"Reader {i}", categories=categories)
    return emails


def deliveries(sessions: sessionmaker[Session], week: str) -> dict[str, Delivery]:
    with sessions.begin() as s:
        rows = s.execute(
            select(Subscriber.email, Delivery)
            .join(Delivery, Delivery.subscriber_id == Subscriber.id)
            .join(Issue, Issue.id == Delivery.issue_id)
            .where(Issue.week == week)
        ).all()
        return {row.email: row.Delivery for row in rows}


def issue_status(sessions: sessionmaker[Session], week: str) -> str:
    with sessions.begin() as s:
        return str(s.scalar(select(Issue.status).where(Issue.week == week)))


def body(msg: Message, subtype: str) -> str:
    for part in msg.walk():
        if part.get_content_type() == f"text/{subtype}":
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            return payload.decode("utf-8")
    raise AssertionError(f"no text/{subtype} part")


def with_smtp(settings: Settings, **changes: object) -> Settings:
    """`settings` with some [smtp] values changed (the test config sends fast: retry_delay 0.05 s)."""
    return dataclasses.replace(settings, smtp=dataclasses.replace(settings.smtp, **changes))  # type: ignore[arg-type]  # changes are SmtpSettings fields by name


def cli(config: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`python -m newsletter --config CONFIG ARGS…` as a child process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    return subprocess.run(
        [sys.executable, "-m", "newsletter", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )


def start_cli(config: Path, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    return subprocess.Popen(
        [sys.executable, "-m", "newsletter", "--config", str(config), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
