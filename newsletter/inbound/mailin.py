"""Unsubscribe requests mailed to the `List-Unsubscribe` mailto address (RFC 2369),
read from a Maildir or an mbox file.

Each message is matched by the signed unsubscribe token in its recipient address
(`unsubscribe+<token>@…`) or its subject (`unsubscribe-<token>`), which also names
the issue it came from; failing that, by the sender's address. Auto-replies are never
taken as a request. Every message is handled in its own transaction and remembered by
its Message-ID (the event's external_id), so a rerun over the same mailbox does
nothing twice. The files are read, never changed.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import getaddresses
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from newsletter import selfservice, subscribers, tokens
from newsletter.config import Settings
from newsletter.errors import InvalidToken
from newsletter.inbound.mailfiles import read_path
from newsletter.models import SUPPRESSED, Event, EventKind, Subscriber

SOURCE = "mailto"
RECIPIENT_HEADERS = ("Delivered-To", "X-Original-To", "Envelope-To", "To", "Cc")
# A token is base64url payload '.' base64url signature; a prefix such as "unsubscribe-"
# may be glued to it, so each '-'/'+' split of a candidate is tried as well.
TOKEN_RE = re.compile(r"[A-Za-z0-9_+-]+\.[A-Za-z0-9_-]{20,}")


@dataclass
class MailinReport:
    unsubscribed: int = 0
    already: int = 0  # matched someone already unsubscribed/suppressed
    duplicates: int = 0  # handled by an earlier run
    unmatched: list[str] = field(default_factory=list)  # "where: why" per message left alone

    @property
    def summary(self) -> str:
        return (
            f"unsubscribed {self.unsubscribed}, already unsubscribed {self.already}, "
            f"seen before {self.duplicates}, not matched {len(self.unmatched)}"
        )


def _candidates(text: str) -> Iterator[str]:
    for match in TOKEN_RE.finditer(text):
        word = match.group(0)
        yield word
        dot = word.index(".")
        for i, ch in enumerate(word[:dot]):
            if ch in "-+":
                yield word[i + 1 :]


def token_in(settings: Settings, msg: EmailMessage) -> tokens.TokenData | None:
    """The first valid unsubscribe token in the recipient headers, then the subject."""
    texts = [str(v) for name in RECIPIENT_HEADERS for v in msg.get_all(name, [])]
    texts.append(str(msg.get("Subject", "")))
    for text in texts:
        for candidate in _candidates(text):
            try:
                return tokens.read(settings.newsletter.secret_key, tokens.UNSUBSCRIBE, candidate)
            except InvalidToken:
                continue
    return None


def _is_auto_reply(msg: EmailMessage) -> bool:
    auto = str(msg.get("Auto-Submitted", "no")).strip().lower()
    return auto != "no" or "X-Autoreply" in msg or str(msg.get("Precedence", "")).lower() in ("auto_reply", "bulk")


def _dedupe_key(msg: EmailMessage, raw: bytes) -> str:
    message_id = str(msg.get("Message-ID", "")).strip()
    return f"{SOURCE}:{message_id[:480]}" if message_id else f"{SOURCE}:sha256:{hashlib.sha256(raw).hexdigest()}"


def _match(session: Session, settings: Settings, msg: EmailMessage) -> tuple[Subscriber, int | None] | str:
    """(subscriber, issue id) the message asks to unsubscribe, or why it matches nobody."""
    data = token_in(settings, msg)
    if data is not None:
        sub = session.get(Subscriber, data.subscriber_id)
        if sub is None:
            return "its token names a subscriber who no longer exists"
        return sub, selfservice.existing_issue(session, data.issue_id)
    if _is_auto_reply(msg):
        return "an automatic reply, not a request"
    senders = [addr for _, addr in getaddresses([str(v) for v in msg.get_all("From", [])]) if addr]
    sub = subscribers.get_by_email(session, senders[0]) if senders else None
    if sub is None:
        return f"no token, and the sender {senders[0] if senders else '(none)'} is not on the list"
    return sub, None


def process_message(session: Session, settings: Settings, raw: bytes) -> tuple[str, str]:
    """Unsubscribe whoever one message asks for, recording the event under its Message-ID.

    Returns (outcome, detail): outcome is one of MailinReport's counters' names."""
    msg = message_from_bytes(raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    key = _dedupe_key(msg, raw)
    if session.scalar(select(Event.id).where(Event.external_id == key)) is not None:
        return "duplicates", ""
    found = _match(session, settings, msg)
    if isinstance(found, str):
        return "unmatched", found
    sub, issue_id = found
    if sub.status in SUPPRESSED:
        return "already", sub.email
    subscribers.unsubscribe(session, sub, source=SOURCE, issue_id=issue_id)
    session.flush()
    event = session.scalars(
        select(Event)
        .where(Event.subscriber_id == sub.id, Event.kind == EventKind.UNSUBSCRIBE)
        .order_by(Event.id.desc())
        .limit(1)
    ).one()
    event.external_id = key
    return "unsubscribed", sub.email


def import_unsubscribes(sessions: sessionmaker[Session], settings: Settings, path: Path) -> MailinReport:
    """Process every message of a Maildir or mbox file, each in its own transaction."""
    report = MailinReport()
    for where, raw in read_path(path):
        try:
            with sessions.begin() as session:
                outcome, detail = process_message(session, settings, raw)
        except IntegrityError:
            # Another run recorded the same Message-ID between our check and our commit.
            outcome, detail = "duplicates", ""
        if outcome == "unmatched":
            report.unmatched.append(f"{where}: {detail}")
        else:
            setattr(report, outcome, getattr(report, outcome) + 1)
    return report
