"""Helpers shared by the web app's HTTP and browser tests."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time as clock
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, time
from email.message import Message
from pathlib import Path

import httpx
from conftest import stop_process
from sqlalchemy.orm import Session, sessionmaker

from newsletter import builder, subscribers
from newsletter.config import Settings
from newsletter.models import (
    Article,
    Issue,
    IssueStatus,
    Subscriber,
    SubscriberStatus,
    utcnow,
)


async def no_hold() -> None:
    """For `create_app(hold=…)`: the work of a subscribe post starts right after the answer."""


def add_subscriber(
    sessions: sessionmaker[Session],
    email: str,
    *,
    status: SubscriberStatus = SubscriberStatus.ACTIVE,
    categories: tuple[str, ...] = (),
) -> int:
    with sessions.begin() as s:
        return subscribers.add(s, email, name="Ada", categories=categories, status=status, source="test").id


def subscriber(sessions: sessionmaker[Session], sid: int) -> Subscriber:
    with sessions.begin() as s:
        sub = s.get(Subscriber, sid)
        assert sub is not None
        return sub


def make_issue(
    sessions: sessionmaker[Session],
    settings: Settings,
    week: str,
    *,
    title: str,
    sent: bool,
    subject: str | None = None,
) -> int:
    """Publish one article in `week`, build the issue, and mark it sent if asked."""
    year, number = int(week[:4]), int(week[-2:])
    published = datetime.combine(date.fromisocalendar(year, number, 3), time(10), tzinfo=UTC)
    with sessions.begin() as s:
        s.add(
            Article(
                guid=f"https://example.com/{week}",
                url=f"https://example.com/{week}",
                title=title,
                category="news",
                summary="<p>Summary</p>",
                published_at=published,
            )
        )
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
    return url[len(base) :]


def link_in(message: Message, pattern: str) -> str:
    """The first URL in the plain-text part of a mail that matches `pattern`."""
    for part in message.walk():
        if part.get_content_type() == "text/plain":
            body = part.get_payload(decode=True).decode(part.get_content_charset() or "utf-8")
            match = re.search(pattern, body)
            if match:
                return match.group(0)
    raise AssertionError(f"no link matching {pattern!r} in the mail")


@contextmanager
def running_server(config_path: Path, port: int, *extra: str) -> Iterator[tuple[str, Path]]:
    """`newsletter serve` as a child process until /healthz answers: (base URL, its log file).

    Fails with the log if it exits or stays silent; terminated (then killed) in finally."""
    log = config_path.parent / f"serve-{port}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    base = f"http://127.0.0.1:{port}"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "newsletter",
                "--config",
                str(config_path),
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                *extra,
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = clock.monotonic() + 180  # a bound, not a wait: the loop ends as soon as it answers
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"newsletter serve exited with {proc.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if clock.monotonic() > deadline:
                raise AssertionError(f"newsletter serve did not answer /healthz within 180 s:\n{log.read_text()}")
            clock.sleep(0.1)
        yield base, log
    finally:
        stop_process(proc)
