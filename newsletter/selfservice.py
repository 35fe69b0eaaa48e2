"""What a subscriber does through the links in an email or on the site: subscribe with
double opt-in, confirm, unsubscribe, change preferences.

The web app and the mailto importer call these with a verified token's data; every
state change goes through `subscribers.py`, so it is recorded as an event with its
source (one-click, page, mailto, web). Functions take the caller's session and never
commit. Nothing here reveals to a caller whether an address was already listed.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from newsletter import message, subscribers, tokens
from newsletter.config import Settings
from newsletter.errors import InvalidInput, NotFound
from newsletter.models import (
    SUPPRESSED,
    Category,
    Event,
    EventKind,
    Issue,
    Subscriber,
    SubscriberStatus,
    utcnow,
)

SOURCE_WEB = "web"  # consent source of a double opt-in subscription
# Byte-order marks read in the wrong character set (UTF-16 LE, UTF-16 BE, UTF-8 as Latin-1):
# what a form field holds when a browser or a paste mangled the text.
BOM_TEXT = ("ÿþ", "þÿ", "ï»¿")


@dataclass(frozen=True)
class SubscriberView:
    """What the pages show of a subscriber: plain values, safe to use after the session ends."""

    id: int
    email: str
    name: str
    status: SubscriberStatus
    categories: tuple[tuple[str, str, bool], ...]  # (slug, name, chosen) in issue order

    @property
    def suppressed(self) -> bool:
        return self.status in SUPPRESSED


def _get(session: Session, subscriber_id: int) -> Subscriber:
    sub = session.get(Subscriber, subscriber_id)
    if sub is None:
        raise NotFound("this subscription no longer exists")
    return sub


def categories(session: Session) -> list[tuple[str, str]]:
    """(slug, name) of every category in issue order."""
    return [
        (slug, name) for slug, name in session.execute(select(Category.slug, Category.name).order_by(Category.position))
    ]


def check_topics(topics: Sequence[tuple[str, str]], slugs: Sequence[str]) -> list[str]:
    """Every slug of `topics` (from `categories`); InvalidInput (worded for a reader) if `slugs` names another."""
    known = [slug for slug, _ in topics]
    unknown = sorted(set(slugs) - set(known))
    if unknown:
        raise InvalidInput(f"there is no topic {unknown[0]!r}")
    return known


def form_address(raw: str) -> str:
    """The address typed into the subscribe form, normalised; InvalidInput (worded for a
    reader) if it is not one, or if it looks garbled.

    Beyond `subscribers.normalize_email` (which already refuses invisible and control
    characters), a non-ASCII character must be a letter, digit or combining mark (as in
    jörg@bücher.example or 名前@example.jp), and the address must not be garbled text: no
    byte-order mark read as text ('ÿþ', 'þÿ', 'ï»¿'), no UTF-8 read as Latin-1 or
    Windows-1252 ('JÃ¶rg' for 'Jörg'). We would mail a confirmation to nobody."""
    address = subscribers.normalize_email(raw)
    if address.isascii():
        return address
    odd = next((c for c in address if not c.isascii() and unicodedata.category(c)[0] not in "LMN"), None)
    if odd is not None:
        name = unicodedata.name(odd, f"U+{ord(odd):04X}")
        raise InvalidInput(f"{address!r} is not an email address: it contains {name}; check the spelling")
    if _garbled(address):
        raise InvalidInput(f"{address!r} looks garbled (text in the wrong character set); please type it again")
    return address


def _garbled(text: str) -> bool:
    if any(bom in text for bom in BOM_TEXT):
        return True
    for charset in ("latin-1", "cp1252"):
        try:
            if text.encode(charset).decode("utf-8") != text:
                return True
        except UnicodeError:  # not representable in that charset, or not UTF-8 underneath: not this mix-up
            continue
    return False


def _known_topics(session: Session, slugs: Sequence[str]) -> list[str]:
    return check_topics(categories(session), slugs)


def view(session: Session, subscriber_id: int) -> SubscriberView:
    """The subscriber behind a verified token; NotFound if the row was deleted."""
    sub = _get(session, subscriber_id)
    chosen = set(subscribers.category_slugs(session, sub))
    return SubscriberView(
        sub.id,
        sub.email,
        sub.name,
        sub.status,
        tuple((slug, name, not chosen or slug in chosen) for slug, name in categories(session)),
    )


def existing_issue(session: Session, issue_id: int | None) -> int | None:
    """A token's issue id if that issue still exists (an event may only name a real one)."""
    if issue_id is None or session.get(Issue, issue_id) is None:
        return None
    return issue_id


def unsubscribe(session: Session, data: tokens.TokenData, *, source: str) -> SubscriberView:
    """Unsubscribe the token's subscriber, crediting the token's issue if it still exists."""
    sub = _get(session, data.subscriber_id)
    subscribers.unsubscribe(session, sub, source=source, issue_id=existing_issue(session, data.issue_id))
    return view(session, sub.id)


def save_preferences(session: Session, subscriber_id: int, *, name: str, slugs: Sequence[str]) -> SubscriberView:
    """Store a new name and category choice; choosing every category stores "all", so
    categories added later reach the subscriber too. Raises InvalidInput if none is chosen."""
    sub = _get(session, subscriber_id)
    known = _known_topics(session, slugs)
    if not slugs:
        raise InvalidInput("choose at least one topic, or unsubscribe from everything below")
    subscribers.set_categories(session, sub, [] if set(known) <= set(slugs) else slugs)
    sub.name = subscribers.clean_name(name)
    session.add(
        Event(
            kind=EventKind.PREFERENCES,
            subscriber_id=sub.id,
            source="page",
            detail=f"categories: {','.join(sorted(slugs))}",
            created_at=utcnow(),
        )
    )
    return view(session, sub.id)


def request_subscription(session: Session, email: str, *, name: str = "", slugs: Sequence[str] = ()) -> int | None:
    """Handle a subscribe form: returns the subscriber id to mail a confirmation link to,
    or None when no mail should go out (already active, bounced or complained).

    A new address becomes a pending subscriber. An existing one is never changed here, so
    a stranger typing someone's address can neither alter nor detect their subscription.
    The web app calls this after its answer is sent, since a new address costs a write and
    a listed one only a read. Raises InvalidInput for a malformed address or unknown category."""
    normalized = subscribers.normalize_email(email)
    _known_topics(session, slugs)  # checked for every address alike, so the answer tells nothing about it
    sub = subscribers.get_by_email(session, normalized)
    if sub is None:
        try:
            with session.begin_nested():
                sub = subscribers.add(
                    session,
                    normalized,
                    name=" ".join(name.split())[:200],
                    categories=slugs,
                    status=SubscriberStatus.PENDING,
                    source=SOURCE_WEB,
                )
            return sub.id
        except IntegrityError:
            # A concurrent request listed the same address first: answer as for a listed one.
            sub = subscribers.get_by_email(session, normalized)
            if sub is None:
                raise
    if sub.status in (SubscriberStatus.PENDING, SubscriberStatus.UNSUBSCRIBED):
        return sub.id
    return None


def confirm(session: Session, data: tokens.TokenData) -> SubscriberView:
    """Activate the subscriber of a verified confirmation token.

    A pending subscriber becomes active. Someone who unsubscribed and then asked again
    through the form is re-activated too, but only by a link issued after the
    unsubscribe: an old confirmation mail cannot undo a later unsubscribe."""
    sub = _get(session, data.subscriber_id)
    if sub.status == SubscriberStatus.PENDING:
        subscribers.confirm(session, sub, source=SOURCE_WEB)
    elif sub.status == SubscriberStatus.UNSUBSCRIBED and _issued_after(data.issued_at, sub.status_changed_at):
        subscribers.change_status(
            session,
            sub,
            SubscriberStatus.ACTIVE,
            kind=EventKind.CONFIRM,
            source=SOURCE_WEB,
            detail="re-subscribed by double opt-in",
            force=True,
        )
    return view(session, sub.id)


def _issued_after(issued_at: datetime | None, changed_at: datetime) -> bool:
    # Token times are whole seconds (rounded down), so a link issued in the same second as
    # the unsubscribe counts as older: when unsure, do not re-activate.
    return issued_at is not None and issued_at >= changed_at


def confirmation_message(settings: Settings, subscriber_id: int, email: str) -> EmailMessage:
    """The double opt-in mail: plain text with one link, which expires."""
    nl = settings.newsletter
    url = tokens.confirm_url(settings, subscriber_id)
    days = tokens.CONFIRM_MAX_AGE // 86400
    msg = EmailMessage()
    msg["Subject"] = f"Please confirm your subscription to {nl.name}"
    msg["From"] = nl.from_address
    msg["To"] = email
    if nl.reply_to:
        msg["Reply-To"] = nl.reply_to
    msg["Date"] = format_datetime(utcnow())
    msg["Message-ID"] = make_msgid(domain=message.domain_of(settings))
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(
        f"Someone, hopefully you, asked to receive {nl.name} at {email}.\n\n"
        f"To confirm, open this link and press the button:\n{url}\n\n"
        f"The link works for {days} days. If you did not ask for this, ignore this mail:\n"
        f"you will not be subscribed.\n\n{nl.postal_address}\n"
    )
    return msg


def unsubscribes_per_issue(session: Session, issue_id: int | None = None) -> dict[int | None, dict[str, int]]:
    """Unsubscribe events per issue id (None: not from an issue's link) and per source
    (one-click, page, mailto, admin …), for `newsletter stats`; `issue_id` limits it to one issue."""
    query = (
        select(Event.issue_id, Event.source, func.count())
        .where(Event.kind == EventKind.UNSUBSCRIBE)
        .group_by(Event.issue_id, Event.source)
    )
    if issue_id is not None:
        query = query.where(Event.issue_id == issue_id)
    counts: dict[int | None, dict[str, int]] = {}
    for issue, source, n in session.execute(query):
        counts.setdefault(issue, {})[source] = n
    return counts
