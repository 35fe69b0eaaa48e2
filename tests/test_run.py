"""`newsletter run`, the cron entry: build, wait for the send time, send once, never overlap."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from pathlib import Path

from conftest import SmtpServer
from sending_support import add_articles, add_subscribers, body, cli, issue_status
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from newsletter import builder, locks, scheduler
from newsletter.config import Settings
from newsletter.models import Issue, Lock, utcnow

RSS = """<?xml version="1.0"?>
<rss version="2.0"><channel><title>Trade site</title><link>https://example.com/</link>
<item><title>Fresh from the feed</title><link>https://example.com/fresh</link>
<guid>https://example.com/fresh</guid><pubDate>{date}</pubDate><description>New today.</description></item>
</channel></rss>
"""


def test_run_builds_then_sends_once_the_send_time_has_passed(
    sessions: sessionmaker[Session], settings: Settings, smtp_server: SmtpServer
) -> None:
    add_articles(sessions)
    emails = add_subscribers(sessions, 3)
    week = builder.current_week(settings)
    due = builder.scheduled_at(settings, week)

    early = scheduler.run(sessions, settings, now=due - timedelta(hours=1), fetch=False)
    assert early.send is None and smtp_server.messages == []
    assert early.lines[-1].startswith("not sending yet: due ")
    assert issue_status(sessions, week) == "draft"

    on_time = scheduler.run(sessions, settings, now=due + timedelta(minutes=1), fetch=False)
    assert on_time.send is not None and on_time.send.sent == 3
    assert sorted(smtp_server.recipients()) == emails and issue_status(sessions, week) == "sent"

    later = scheduler.run(sessions, settings, now=due + timedelta(minutes=6), fetch=False)
    assert later.lines == [f"issue {week} was already sent"] and len(smtp_server.messages) == 3


def test_overlapping_runs_never_double_send(
    sessions: sessionmaker[Session], settings: Settings, smtp_server: SmtpServer
) -> None:
    add_articles(sessions)
    add_subscribers(sessions, 2)
    due = builder.scheduled_at(settings, builder.current_week(settings))
    other = locks.new_holder()  # another run of this very process: alive
    with sessions.begin() as s:
        assert locks.acquire(s, scheduler.RUN_LEASE, other, scheduler.RUN_TTL) is None
    busy = scheduler.run(sessions, settings, now=due + timedelta(minutes=1), fetch=False)
    assert busy.lines == [f"another `newsletter run` ({other}) is in progress; this one does nothing"]
    assert smtp_server.messages == []
    with sessions.begin() as s:
        locks.release(s, scheduler.RUN_LEASE, other)
    done = scheduler.run(sessions, settings, now=due + timedelta(minutes=2), fetch=False)
    assert done.send is not None and done.send.sent == 2


def test_a_crashed_run_does_not_block_the_next(
    sessions: sessionmaker[Session], settings: Settings, smtp_server: SmtpServer
) -> None:
    add_articles(sessions)
    add_subscribers(sessions, 1)
    due = builder.scheduled_at(settings, builder.current_week(settings))
    with sessions.begin() as s:  # a lease left by a process that no longer exists on this host
        assert locks.acquire(s, scheduler.RUN_LEASE, f"{locks.HOST}:999999999:dead", 3600) is None
    report = scheduler.run(sessions, settings, now=due + timedelta(minutes=1), fetch=False)
    assert report.send is not None and report.send.sent == 1


def test_run_without_articles_says_so(
    sessions: sessionmaker[Session], settings: Settings, smtp_server: SmtpServer
) -> None:
    report = scheduler.run(sessions, settings, fetch=False)
    assert report.send is None and report.lines[0].startswith("not built: no articles were published in ")
    with sessions.begin() as s:
        assert s.scalar(select(Issue)) is None


def test_cli_run_fetches_the_feed_and_sends(
    config_path: Path, sessions: sessionmaker[Session], settings: Settings, smtp_server: SmtpServer, tmp_path: Path
) -> None:
    (tmp_path / "feed.xml").write_text(RSS.format(date=utcnow().strftime("%a, %d %b %Y %H:%M:%S +0000")))
    text = config_path.read_text().replace('send_day = "friday"', "")
    day = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
    today = utcnow().astimezone(settings.tz)
    config_path.write_text(
        text.replace("[newsletter]\n", f'[newsletter]\nsend_day = "{day[today.weekday()]}"\nsend_time = "00:00"\n', 1)
        + '\n[[feeds]]\nname = "Trade site"\nurl = "feed.xml"\ncategory = "news"\n'
    )
    emails = add_subscribers(sessions, 2)
    result = cli(config_path, "run")
    assert result.returncode == 0, result.stderr
    assert "Trade site: 1 added" in result.stdout
    assert Counter(smtp_server.recipients()) == Counter(emails)
    assert "Fresh from the feed" in body(smtp_server.messages[0].message, "plain")
    again = cli(config_path, "run")
    assert again.returncode == 0 and "was already sent" in again.stdout and len(smtp_server.messages) == 2


def test_a_long_run_on_this_host_keeps_its_lease_past_expiry(sessions: sessionmaker[Session]) -> None:
    """A send that outlasts the run lease (an hour) must not let the next cron tick in."""
    mine = locks.new_holder()  # this very process: alive
    with sessions.begin() as s:
        assert locks.acquire(s, "test-lease", mine, 0.0) is None  # expires at once
    with sessions.begin() as s:
        assert locks.acquire(s, "test-lease", "otherhost:1:abc", 60) == mine
    dead = f"{locks.HOST}:999999999:dead"  # no such process here
    with sessions.begin() as s:
        s.execute(update(Lock).where(Lock.name == "test-lease").values(holder=dead))
    with sessions.begin() as s:
        assert locks.acquire(s, "test-lease", "otherhost:1:abc", 60) is None


def test_run_finishes_last_weeks_issue_after_the_week_turned(
    sessions: sessionmaker[Session], settings: Settings, smtp_server: SmtpServer
) -> None:
    """Retries of a late send must not be stranded when the ISO week rolls over."""
    from newsletter import sender

    add_articles(sessions)
    emails = add_subscribers(sessions, 3)
    week = builder.current_week(settings)
    due = builder.scheduled_at(settings, week)
    builder_run = scheduler.run(sessions, settings, now=due - timedelta(hours=1), fetch=False)
    assert builder_run.send is None
    sender.send(sessions, settings, week, limit=1)
    assert issue_status(sessions, week) == "sending" and len(smtp_server.messages) == 1
    next_week = scheduler.run(sessions, settings, now=due + timedelta(days=3), fetch=False)
    assert next_week.week != week
    assert f"issue {week} resumed: sent 2, failed 0, issue is sent" in next_week.lines
    assert sorted(smtp_server.recipients()) == emails
