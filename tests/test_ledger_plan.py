"""Planning a send in one INSERT … SELECT: the ledger rows are the ones render.sections_for
gives each subscriber in Python, on SQLite and PostgreSQL; `send --dry-run` counts the same."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

from sending_support import build_issue
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from newsletter import builder, ledger, render, sender, subscribers
from newsletter.config import Settings
from newsletter.models import Category, Delivery, DeliveryStatus, EventKind, Subscriber, SubscriberStatus, utcnow


def test_plan_gives_each_subscriber_the_sections_of_their_categories(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    week = build_issue(sessions, settings)  # sections news, products, events
    with sessions.begin() as s:
        s.add(Category(slug="sport", name="Sport", position=9))  # configured, nothing this week
        s.flush()
        content = builder.load_content(s, settings, week)
        choices = {
            "all@example.org": [],
            "events@example.org": ["events"],
            "two@example.org": ["events", "news"],  # issue order wins: news first
            "sport@example.org": ["sport"],  # no section this week: skipped, never mailed
            "mixed@example.org": ["sport", "products"],
        }
        for email, slugs in choices.items():
            subscribers.add(s, email, categories=slugs)
        subscribers.add(s, "wait@example.org", status=SubscriberStatus.PENDING)
        gone = subscribers.add(s, "gone@example.org")
        subscribers.unsubscribe(s, gone, source="test")
        early = subscribers.add(s, "early@example.org", categories=["news"])
        s.add(  # planned by an earlier run, already sent: left alone
            Delivery(
                issue_id=content.issue_id,
                subscriber_id=early.id,
                variant="news",
                status=DeliveryStatus.SENT,
                created_at=utcnow(),
            )
        )
        s.flush()
        assert ledger.plan(s, content) == 5
        assert ledger.plan(s, content) == 0  # a rerun plans nobody twice
    with sessions.begin() as s:
        rows = {
            email: (variant, str(status), reply)
            for email, variant, status, reply in s.execute(
                select(Subscriber.email, Delivery.variant, Delivery.status, Delivery.last_reply)
                .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
                .where(Delivery.issue_id == content.issue_id)
            )
        }
        assert rows == {
            "all@example.org": ("news,products,events", "pending", ""),
            "events@example.org": ("events", "pending", ""),
            "two@example.org": ("news,events", "pending", ""),
            "sport@example.org": ("", "skipped", ledger.NO_SECTIONS),
            "mixed@example.org": ("products", "pending", ""),
            "early@example.org": ("news", "sent", ""),
        }
        for email, slugs in choices.items():  # the same rule as the Python one the renderer uses
            assert rows[email][0] == ledger.variant_key(render.sections_for(content, slugs))


def test_an_issue_with_more_sections_than_one_number_has_bits_plans_every_section(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    """The plan gives each section a bit of a 64-bit number, a second number past 62: a
    magazine with 70 categories gets the same variants as render.sections_for gives."""
    week = build_issue(sessions, settings)
    with sessions.begin() as s:
        s.add_all(Category(slug=f"c{i}", name=f"C{i}", position=10 + i) for i in range(70))
        s.flush()
        content = builder.load_content(s, settings, week)
        many = replace(content, sections=tuple(replace(content.sections[0], slug=f"c{i}") for i in range(70)))
        choices = {
            "low@example.org": ["c3"],
            "high@example.org": ["c65"],
            "edges@example.org": ["c0", "c61", "c62", "c69"],
            "all@example.org": [],
            "none@example.org": ["news"],  # a category with no section in this issue: skipped
        }
        for email, slugs in choices.items():
            subscribers.add(s, email, categories=slugs)
        assert ledger.plan(s, many) == 5
        rows = dict(
            s.execute(
                select(Subscriber.email, Delivery.variant).join(Subscriber, Subscriber.id == Delivery.subscriber_id)
            ).all()
        )
    assert rows["edges@example.org"] == "c0,c61,c62,c69"
    assert rows["high@example.org"] == "c65"
    assert rows["none@example.org"] == ""
    for email, slugs in choices.items():
        assert rows[email] == ledger.variant_key(render.sections_for(many, slugs)), email


def test_dry_run_counts_open_rows_and_unplanned_subscribers_alike(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    week = build_issue(sessions, settings)
    with sessions.begin() as s:
        for i in range(4):
            subscribers.add(s, f"r{i}@example.org")
        subscribers.add(s, "ev@example.org", categories=["events"])
        ledger.plan(s, builder.load_content(s, settings, week))
        subscribers.add(s, "late@example.org")  # after planning: not in the ledger yet
        bounced = subscribers.require(s, "r1@example.org")  # planned, then bounced: not counted
        subscribers.change_status(s, bounced, SubscriberStatus.BOUNCED, kind=EventKind.BOUNCE, source="test")
    with sessions.begin() as s:
        plans = sender.dry_run(s, settings, week)
    assert plans == [
        sender.VariantPlan(("events",), 1, ("ev@example.org",)),
        sender.VariantPlan(("news", "products", "events"), 4, ("r0@example.org", "r2@example.org", "r3@example.org")),
    ]


def test_two_senders_planning_one_issue_take_turns(sessions: sessionmaker[Session], settings: Settings) -> None:
    """Senders on two hosts start together: the second waits for the first's plan, then adds nobody."""
    week = build_issue(sessions, settings)
    with sessions.begin() as s:
        for i in range(50):
            subscribers.add(s, f"r{i}@example.org")
        content = builder.load_content(s, settings, week)
    first = sessions()
    first.begin()
    assert ledger.plan(first, content) == 50  # holds its plan uncommitted: the second must wait for it
    result: list[int] = []
    second = threading.Thread(target=lambda: result.append(_plan_in_own_transaction(sessions, content)))
    second.start()
    try:
        if sessions.kw["bind"].dialect.name == "postgresql":
            _wait_for_a_waiting_advisory_lock(sessions)
        assert second.is_alive() and not result  # on SQLite the write lock holds it back the same way
    finally:
        first.commit()
        first.close()
        second.join(timeout=60)
    assert result == [0]
    with sessions.begin() as s:
        assert s.scalar(select(func.count()).select_from(Delivery)) == 50


def _plan_in_own_transaction(sessions: sessionmaker[Session], content: builder.IssueContent) -> int:
    with sessions.begin() as s:
        return ledger.plan(s, content)


def _wait_for_a_waiting_advisory_lock(sessions: sessionmaker[Session]) -> None:
    """Until PostgreSQL shows the second planner queued on the plan lock (bounded: 60 s)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with sessions.begin() as s:
            if s.scalar(text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")):
                return
        time.sleep(0.05)  # polling another connection's state: there is nothing to wait on
    raise AssertionError("the second planner never queued on the plan lock")
