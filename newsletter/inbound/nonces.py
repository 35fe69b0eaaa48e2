"""One-time keys of signed webhook requests (Mailgun's token), remembered until they expire."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from newsletter.models import WebhookNonce, utcnow


def use_once(session: Session, key: str, *, ttl_seconds: int) -> bool:
    """Remember `key` for `ttl_seconds`; False if it is already remembered (a replay).

    Two racing requests with one key cannot both pass: the primary key decides at insert, and
    on PostgreSQL the second insert waits for the first transaction. Expired keys are dropped."""
    now = utcnow()
    session.execute(delete(WebhookNonce).where(WebhookNonce.expires_at < now))
    key = key[:500]
    if session.scalar(select(WebhookNonce.key).where(WebhookNonce.key == key)) is not None:
        return False
    try:
        with session.begin_nested():
            session.add(WebhookNonce(key=key, expires_at=now + timedelta(seconds=ttl_seconds)))
    except IntegrityError:
        return False
    return True
