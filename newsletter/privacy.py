"""One person's data (GDPR): everything held about them, and erasure.

Erasure deletes the subscriber row and, through the foreign keys, their topics, their
deliveries, their events and their recorded clicks; only a one-way hash of the address is kept (`erased`), so
an import cannot add them back. Issue counts that came from their deliveries drop.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from newsletter import clicks, subscribers
from newsletter.errors import NotFound
from newsletter.models import Delivery, Erased, Event, Issue, Subscriber, utcnow


def _get(session: Session, subscriber_id: int) -> Subscriber:
    sub = session.get(Subscriber, subscriber_id)
    if sub is None:
        raise NotFound(f"no subscriber {subscriber_id}")
    return sub


def _when(value: Any) -> str | None:
    return value.isoformat(timespec="seconds") if value else None


def export_person(session: Session, subscriber_id: int) -> dict[str, Any]:
    """Everything held about one subscriber, as plain JSON-ready values."""
    sub = _get(session, subscriber_id)
    events = session.scalars(select(Event).where(Event.subscriber_id == sub.id).order_by(Event.id))
    deliveries = session.execute(
        select(Issue.week, Delivery)
        .join(Issue, Issue.id == Delivery.issue_id)
        .where(Delivery.subscriber_id == sub.id)
        .order_by(Issue.week)
    )
    return {
        "email": sub.email,
        "name": sub.name,
        "status": str(sub.status),
        "categories": subscribers.category_slugs(session, sub),
        "consent_source": sub.consent_source,
        "consent_at": _when(sub.consent_at),
        "created_at": _when(sub.created_at),
        "status_changed_at": _when(sub.status_changed_at),
        "attributes": sub.attributes or {},
        "soft_bounces": sub.soft_bounces,
        "events": [
            {"kind": str(e.kind), "source": e.source, "detail": e.detail, "at": _when(e.created_at)} for e in events
        ],
        "deliveries": [
            {
                "issue": week,
                "status": str(d.status),
                "attempts": d.attempts,
                "sent_at": _when(d.sent_at),
                "last_reply": d.last_reply,
            }
            for week, d in deliveries
        ],
        # Kept only with [tracking] per_subscriber; otherwise clicks are counts that name no one.
        "clicks": [
            {"issue": c.week, "article": c.title, "url": c.url, "at": _when(c.at)}
            for c in clicks.person_clicks(session, sub.id)
        ],
    }


def erase(session: Session, subscriber_id: int) -> str:
    """Delete the subscriber and everything linked to them; keep the address's hash. Returns the address."""
    sub = _get(session, subscriber_id)
    digest = subscribers.erased_hash(sub.email_key)
    if session.get(Erased, digest) is None:
        session.add(Erased(email_hash=digest, erased_at=utcnow()))
    session.delete(sub)
    session.flush()
    return sub.email
