"""The exports' cells are made by the database (PostgreSQL's COPY, SQLite's query): byte for
byte what Python's CSV writer makes of the same rows (the exports before), on both databases,
for cells that start a formula, hold quotes, commas, line breaks, other scripts or nothing."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from web_support import make_issue

from newsletter import exports, spreadsheets, stats, subscribers
from newsletter.config import Settings
from newsletter.models import (
    Category,
    Delivery,
    DeliveryStatus,
    Subscriber,
    SubscriberCategory,
    SubscriberStatus,
)

CELLS = [
    "=1+1",
    "+49 30 1234",
    "-5",
    "@SUM(A1)",
    "\tx",
    "\rx",
    "'=x",
    "''+y",
    "'quoted'",
    "O'Brien",
    'say "hi", then go',
    "two\nlines",
    "crlf\r\ninside",
    "Zoë ✉ 日本",
    "",
    "plain",
]
TIMES = [
    None,
    datetime(2026, 11, 28, 9, 30, tzinfo=UTC),  # no microseconds: isoformat() writes none
    datetime(2026, 11, 28, 9, 30, 5, 120000, tzinfo=UTC),
    datetime(1999, 1, 2, 23, 59, 59, 1, tzinfo=UTC),
]


@pytest.fixture(autouse=True)
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(exports, "BATCH", 3)  # several batches, and a short last one


def add_people(sessions: sessionmaker[Session], *, odd_slug: str = "-zz") -> list[int]:
    """A subscriber per tricky cell: in the name, consent source, an attribute and a server reply."""
    with sessions.begin() as s:
        # a slug that starts a formula (or not), its position tied with products': ordered by slug
        s.add(Category(slug=odd_slug, name="Zz", position=1))
        ids: dict[str, int] = dict(s.execute(select(Category.slug, Category.id)).all())
        people = []
        for i, cell in enumerate(CELLS):
            email = ["=x@example.com", "+x@example.com", "r@example.com"][i] if i < 3 else f"r{i}@example.com"
            attributes = [{}, {"note": cell}, {"note": cell, "=key": "Zoë", "50% off": "y"}, {"note": None}][i % 4]
            sub = Subscriber(
                email=email,
                email_key=email,
                name=cell,
                status=list(SubscriberStatus)[i % len(SubscriberStatus)],
                consent_source=CELLS[-1 - i],
                consent_at=TIMES[i % len(TIMES)],
                created_at=TIMES[1 + i % 3],
                status_changed_at=TIMES[1],
                attributes=attributes,
                soft_bounces=0,
            )
            s.add(sub)
            s.flush()
            chosen = [[], ["events", "news"], [odd_slug], ["products", odd_slug, "news"]][i % 4]
            s.add_all(SubscriberCategory(subscriber_id=sub.id, category_id=ids[slug]) for slug in chosen)
            people.append(sub.id)
        return people


def python_subscribers_csv(session: Session) -> str:
    """The subscribers export as Python wrote it: the ORM's values through spreadsheets.writer."""
    slugs: dict[int, list[str]] = {}
    for sid, slug in session.execute(
        select(SubscriberCategory.subscriber_id, Category.slug)
        .join(Category, Category.id == SubscriberCategory.category_id)
        .order_by(Category.position, Category.slug)
    ):
        slugs.setdefault(sid, []).append(slug)
    people = session.scalars(select(Subscriber).order_by(Subscriber.id)).all()
    extra = sorted({k for p in people for k in p.attributes or {}} - set(subscribers.EXPORT_COLUMNS))
    out = io.StringIO()
    writer = spreadsheets.writer(out)
    writer.writerow(subscribers.EXPORT_COLUMNS + extra)
    for p in people:
        times = [t.isoformat() if t else "" for t in (p.consent_at, p.created_at)]
        chosen = ",".join(slugs.get(p.id, [])) or "all"
        writer.writerow(
            [p.email, p.name, p.status, chosen, p.consent_source, *times]
            + [(p.attributes or {}).get(k, "") for k in extra]
        )
    return out.getvalue()


@pytest.mark.parametrize("odd_slug", ["-zz", "a-z"])  # the categories cell checked only when a slug needs it
def test_the_subscribers_export_is_what_the_python_writer_wrote(sessions: sessionmaker[Session], odd_slug: str) -> None:
    add_people(sessions, odd_slug=odd_slug)
    out = io.StringIO()
    with sessions.reading() as s:
        assert subscribers.export_csv(s, out) == len(CELLS)
        expected = python_subscribers_csv(s)
    assert out.getvalue() == expected
    assert "'=key" in expected.splitlines()[0]  # the cases are there
    assert ("'-zz" if odd_slug == "-zz" else '"news,a-z,products"') in expected
    assert '"\'\rx"' in expected and "\r\n" in expected


def test_the_deliveries_export_is_what_the_python_writer_wrote(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    people = add_people(sessions)
    issue_id = make_issue(sessions, settings, "2026-W40", title="Story", sent=True)
    with sessions.begin() as s:
        for i, sid in enumerate(people):
            s.add(
                Delivery(
                    issue_id=issue_id,
                    subscriber_id=sid,
                    status=list(DeliveryStatus)[i % len(DeliveryStatus)],
                    attempts=i,
                    last_reply=CELLS[-1 - i],
                    variant=["", "news", "news,products,events"][i % 3],
                    sent_at=TIMES[i % len(TIMES)],
                    claimed_at=TIMES[(i + 1) % len(TIMES)],
                    next_attempt_at=TIMES[(i + 2) % len(TIMES)],
                    created_at=TIMES[1],
                )
            )
    out = io.StringIO()
    with sessions.reading() as s:
        assert stats.export_deliveries(s, settings, "2026-W40", out) == len(people)
        expected = io.StringIO()
        writer = spreadsheets.writer(expected)
        writer.writerow(stats.EXPORT_COLUMNS)
        for email, name, d in s.execute(
            select(Subscriber.email, Subscriber.name, Delivery)
            .join(Delivery, Delivery.subscriber_id == Subscriber.id)
            .order_by(Delivery.id)
        ):
            times = (t.isoformat(timespec="seconds") if t else "" for t in (d.sent_at, d.claimed_at, d.next_attempt_at))
            writer.writerow([email, name, d.status, d.attempts, d.last_reply, *times, d.variant.replace(",", " ")])
    assert out.getvalue() == expected.getvalue()


def test_an_empty_export_is_its_header(sessions: sessionmaker[Session]) -> None:
    out = io.StringIO()
    with sessions.reading() as s:
        assert subscribers.export_csv(s, out, status=SubscriberStatus.ACTIVE) == 0
    assert out.getvalue() == ",".join(subscribers.EXPORT_COLUMNS) + "\r\n"
