"""Apply classified bounces and complaints to the subscriber list.

Hard bounce -> bounced at once. Soft bounce -> counted; soft bounces in
`soft_bounce_limit` of the last `soft_bounce_issues` issues mailed to a subscriber ->
bounced. Complaint -> complained (an ARF "opt-out" report -> unsubscribed).
Every report becomes one Event (kind bounce/complaint/unsubscribe) whose `detail` starts
with the finding's kind and status ("hard 5.1.1: …") and keeps the server's words, and
whose `external_id` (report id + subscriber) makes a second delivery of the same report
a no-op. Bad input is counted in the `Tally` and skipped; nothing here raises on it.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from newsletter import subscribers, tokens
from newsletter.bounces import Finding, Kind, Report, classify
from newsletter.config import Settings
from newsletter.errors import Conflict, InvalidInput, InvalidToken
from newsletter.models import SUPPRESSED, Delivery, DeliveryStatus, Event, EventKind, Subscriber, SubscriberStatus

log = logging.getLogger(__name__)
OPT_OUT_TYPES = ("opt-out", "unsubscribe")
# A delivery in one of these states means the address was handed to a mail server.
MAILED = (DeliveryStatus.SENT, DeliveryStatus.SENDING, DeliveryStatus.FAILED)


@dataclass(frozen=True)
class Policy:
    secret: str
    verp_local: str
    soft_limit: int
    soft_issues: int
    max_bytes: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        b = settings.bounces
        return cls(settings.newsletter.secret_key, b.return_path_local, b.soft_bounce_limit,
                   b.soft_bounce_issues, b.max_message_bytes)


@dataclass
class Tally:
    """What one run did: applied findings by kind, skipped input by reason, one line per problem."""

    messages: int = 0
    applied: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    suppressed: int = 0
    problems: list[str] = field(default_factory=list)

    def skip(self, reason: str, where: str, detail: str = "") -> None:
        self.skipped[reason] += 1
        line = f"{where}: {reason}{' (' + detail + ')' if detail else ''}; skipped"
        self.problems.append(line)
        log.info(line)

    @property
    def summary(self) -> str:
        applied = ", ".join(f"{k} {v}" for k, v in sorted(self.applied.items())) or "nothing"
        skipped = ", ".join(f"{k} {v}" for k, v in sorted(self.skipped.items())) or "none"
        return (f"{self.messages} messages: applied {applied}; {self.suppressed} subscribers suppressed; "
                f"skipped {skipped}")


def process_message(session: Session, policy: Policy, raw: bytes, *, source: str, where: str,
                    tally: Tally) -> None:
    """Classify one returned message and apply what it reports. Never raises on bad input."""
    tally.messages += 1
    if len(raw) > policy.max_bytes:
        tally.skip("oversized message", where, f"{len(raw)} bytes > max_message_bytes {policy.max_bytes}")
        return
    try:
        report = classify(raw, verp_local=policy.verp_local)
    except Exception as exc:  # noqa: BLE001 - one unreadable message must not stop the run
        log.warning("%s: cannot parse", where, exc_info=exc)
        tally.skip("malformed message", where, f"{type(exc).__name__}: {exc}"[:200])
        return
    if not report.findings:
        tally.skip("not a bounce or complaint", where)
        return
    report_id = report.message_id or "sha256:" + hashlib.sha256(raw).hexdigest()
    apply_report(session, policy, report, report_id=report_id, source=source, where=where, tally=tally)


def apply_report(session: Session, policy: Policy, report: Report, *, report_id: str, source: str,
                 where: str, tally: Tally) -> None:
    """Apply each finding of one report (mail or webhook) to the subscriber it names."""
    by_token = _token_target(policy, report.token, where, tally)
    for finding in report.findings:
        target = by_token if by_token and (len(report.findings) == 1 or not finding.recipient) else None
        sub, issue_id = _resolve(session, finding, target)
        label = finding.recipient or f"token {report.token[:20]}"
        if sub is None:
            tally.skip("address not on the list" if finding.recipient else "no recipient in report", where, label)
            continue
        if issue_id is None:
            tally.skip("address never mailed", where, label)
            continue
        external_id = _external_id(report_id, sub.id)
        if session.scalar(select(Event.id).where(Event.external_id == external_id)) is not None:
            tally.skip("duplicate report", where, label)
            continue
        _apply(session, policy, sub, issue_id, finding, external_id=external_id, source=source, tally=tally)


def _token_target(policy: Policy, token: str, where: str, tally: Tally) -> tokens.TokenData | None:
    if not token:
        return None
    try:
        return tokens.read(policy.secret, tokens.BOUNCE, token)
    except InvalidToken:
        # A mangled or foreign token: still count it, then fall back to the address in the report.
        tally.skipped["unknown token"] += 1
        tally.problems.append(f"{where}: unknown token {token[:20]!r}; using the address in the report")
        return None


def _resolve(session: Session, finding: Finding,
             target: tokens.TokenData | None) -> tuple[Subscriber | None, int | None]:
    """The subscriber and issue a finding is about: the VERP token first, else the address."""
    if target is not None:
        sub = session.get(Subscriber, target.subscriber_id)
        if sub is not None and target.issue_id is not None:
            return sub, target.issue_id
    else:
        sub = subscribers.get_by_email(session, finding.recipient) if finding.recipient else None
    if sub is None:
        return None, None
    issue_id = session.scalar(select(Delivery.issue_id).where(Delivery.subscriber_id == sub.id,
                                                              Delivery.status.in_(MAILED))
                              .order_by(Delivery.issue_id.desc()).limit(1))
    return sub, issue_id


def _external_id(report_id: str, subscriber_id: int) -> str:
    key = f"bounce:{report_id.strip()}|{subscriber_id}"
    return key if len(key) <= 500 else "bounce:sha256:" + hashlib.sha256(key.encode()).hexdigest()


def _apply(session: Session, policy: Policy, sub: Subscriber, issue_id: int, finding: Finding, *,
           external_id: str, source: str, tally: Tally) -> None:
    opt_out = finding.kind == Kind.COMPLAINT and finding.feedback_type.lower() in OPT_OUT_TYPES
    kind = (EventKind.UNSUBSCRIBE if opt_out else EventKind.COMPLAINT if finding.kind == Kind.COMPLAINT
            else EventKind.BOUNCE)
    label = "opt-out" if opt_out else finding.kind.value
    detail = f"{label} {finding.status or finding.feedback_type}: {finding.diagnostic}".strip()
    session.add(Event(kind=kind, subscriber_id=sub.id, issue_id=issue_id, source=source, detail=detail,
                      external_id=external_id))
    tally.applied[label] += 1
    if opt_out:
        changed = subscribers.unsubscribe(session, sub, source=source, issue_id=issue_id)
    elif finding.kind == Kind.COMPLAINT:
        changed = sub.status != SubscriberStatus.COMPLAINED and subscribers.change_status(
            session, sub, SubscriberStatus.COMPLAINED, kind=EventKind.COMPLAINT, source=source,
            issue_id=issue_id, detail="spam complaint: never mailed again")
    elif finding.kind == Kind.HARD:
        changed = sub.status not in SUPPRESSED and subscribers.change_status(
            session, sub, SubscriberStatus.BOUNCED, kind=EventKind.BOUNCE, source=source, issue_id=issue_id,
            detail=f"hard bounce {finding.status}".strip())
    else:
        changed = _soft(session, policy, sub, source=source, issue_id=issue_id)
    tally.suppressed += bool(changed)


def _soft(session: Session, policy: Policy, sub: Subscriber, *, source: str, issue_id: int) -> bool:
    """Count the issues among the last `soft_issues` mailed to `sub` that soft-bounced."""
    session.flush()
    recent = list(session.scalars(select(Delivery.issue_id).where(Delivery.subscriber_id == sub.id,
                                                                  Delivery.status.in_(MAILED))
                                  .order_by(Delivery.issue_id.desc()).limit(policy.soft_issues)))
    bounced_issues = set(session.scalars(
        select(Event.issue_id).where(Event.subscriber_id == sub.id, Event.kind == EventKind.BOUNCE,
                                     Event.external_id.is_not(None), Event.detail.startswith("soft"),
                                     Event.issue_id.in_(recent or [issue_id]))))
    sub.soft_bounces = len(bounced_issues)
    if sub.soft_bounces < policy.soft_limit or sub.status in SUPPRESSED:
        return False
    return subscribers.change_status(
        session, sub, SubscriberStatus.BOUNCED, kind=EventKind.BOUNCE, source=source, issue_id=issue_id,
        detail=f"soft bounces in {sub.soft_bounces} of the last {policy.soft_issues} issues")


def reactivate(session: Session, email: str, *, reason: str) -> SubscriberStatus:
    """An editor's explicit re-activation of a suppressed subscriber; returns the old status.

    Raises NotFound for an unknown address, InvalidInput without a reason, Conflict if active."""
    if not reason.strip():
        raise InvalidInput("--reason is empty; say why this address may be mailed again")
    sub = subscribers.require(session, email)
    previous = sub.status
    if previous not in SUPPRESSED:
        raise Conflict(f"{sub.email} is {previous}, not suppressed; nothing to re-activate")
    subscribers.change_status(session, sub, SubscriberStatus.ACTIVE, kind=EventKind.REACTIVATE, source="admin",
                              detail=reason.strip(), force=True)
    return previous


# Gmail and Yahoo ask bulk senders to stay under 0.3% spam complaints; warn well before.
COMPLAINT_WARNING_RATE = 0.001


@dataclass(frozen=True)
class IssueBounces:
    """Per issue: subscribers who bounced hard (report or SMTP 5xx), soft, or complained."""

    delivered: int
    hard: int
    soft: int
    complaints: int

    @property
    def complaint_rate(self) -> float:
        return self.complaints / self.delivered if self.delivered else 0.0

    @property
    def warning(self) -> str:
        if self.complaint_rate <= COMPLAINT_WARNING_RATE:
            return ""
        return (f"complaint rate {self.complaint_rate:.2%} is above {COMPLAINT_WARNING_RATE:.1%}: "
                f"mailbox providers start filtering the list at 0.3%")


def issue_bounces(session: Session, issue_id: int) -> IssueBounces:
    """Bounce and complaint counts of one issue, each subscriber counted once per kind."""
    def distinct(*where: Any) -> int:
        return session.scalar(select(func.count(func.distinct(Event.subscriber_id)))
                              .where(Event.issue_id == issue_id, *where)) or 0

    report = Event.external_id.is_not(None)
    delivered = session.scalar(select(func.count()).select_from(Delivery).where(
        Delivery.issue_id == issue_id, Delivery.status == DeliveryStatus.SENT)) or 0
    return IssueBounces(
        delivered=delivered,
        hard=distinct(Event.kind == EventKind.BOUNCE,
                      or_(report & Event.detail.startswith("hard"), Event.source == "smtp")),
        soft=distinct(Event.kind == EventKind.BOUNCE, report, Event.detail.startswith("soft")),
        complaints=distinct(Event.kind == EventKind.COMPLAINT, report),
    )
