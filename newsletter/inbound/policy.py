"""Apply classified bounces and complaints to the subscriber list.

Effects by what the reply blames (`replies.Blame`, decided by `replies.judge`):
  hard (a permanent failure naming the address)          -> bounced at once;
  soft, blaming the mailbox, the content, a greylist,
  a temporary or an unrecognised failure                   -> counted: soft bounces in
      `soft_bounce_limit` of the last `soft_bounce_issues` issues mailed -> bounced;
  soft, blaming us (sender, throttle, our message)         -> recorded, nobody counted;
  complaint -> complained; an opt-out report -> unsubscribed.
Each applied finding is one row in `bounces` (facts in columns, unique per report and
subscriber, so a second delivery of the same report is a no-op) plus an audit Event.

Who a report is about: with VERP on (`[bounces] return_path_domain`), returned mail must
carry a valid token of ours, and it changes only the subscriber the token names; anyone
can send mail to the bounce address, so a report without one changes nothing. Without
VERP, the address in the report is used (see README, "Security model"), and a hard
finding stays hard only when a field names the address (a DSN's Final-Recipient, an
X-Failed-Recipients header): an address read out of prose counts soft. Provider webhooks
are authenticated by their signatures instead. Bad input is counted in the `Tally` and
skipped; nothing here raises on it.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from dataclasses import dataclass, field, replace

from sqlalchemy import select
from sqlalchemy.orm import Session

from newsletter import subscribers, tokens
from newsletter.config import Settings
from newsletter.errors import InvalidToken
from newsletter.inbound.classify import Finding, Kind, Report, classify
from newsletter.models import (
    SUPPRESSED,
    Bounce,
    BounceKind,
    Delivery,
    DeliveryStatus,
    Event,
    EventKind,
    Subscriber,
    SubscriberStatus,
)
from newsletter.replies import Blame

log = logging.getLogger(__name__)
OPT_OUT_TYPES = ("opt-out", "unsubscribe")
# A delivery in one of these states means the address was handed to a mail server.
MAILED = (DeliveryStatus.SENT, DeliveryStatus.SENDING, DeliveryStatus.FAILED)
# Soft bounces that say something about the reader's address or mailbox; the others blame us.
# ADDRESS is here for "user unknown" that was not pinned on the address (or read out of prose):
# not enough to remove the reader at once, but it counts in the window like any soft bounce.
COUNTED = (Blame.ADDRESS, Blame.MAILBOX, Blame.CONTENT, Blame.GREYLIST, Blame.TEMPORARY, Blame.UNKNOWN)


@dataclass(frozen=True)
class Policy:
    secret: str
    verp_local: str
    soft_limit: int
    soft_issues: int
    max_bytes: int
    verp: bool = False  # returned mail must carry a valid VERP token to change anything

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        b = settings.bounces
        return cls(
            settings.newsletter.secret_key,
            b.return_path_local,
            b.soft_bounce_limit,
            b.soft_bounce_issues,
            b.max_message_bytes,
            verp=bool(b.return_path_domain),
        )


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
        return (
            f"{self.messages} messages: applied {applied}; {self.suppressed} subscribers suppressed; skipped {skipped}"
        )


def process_message(session: Session, policy: Policy, raw: bytes, *, source: str, where: str, tally: Tally) -> None:
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
    apply_report(session, policy, report, report_id=report_id, source=source, where=where, tally=tally, mailed=True)


def apply_report(
    session: Session,
    policy: Policy,
    report: Report,
    *,
    report_id: str,
    source: str,
    where: str,
    tally: Tally,
    mailed: bool = False,
) -> None:
    """Apply each finding of one report to the subscriber it names.

    `mailed`: the report came as mail to the bounce address, which anyone can send; with VERP
    on it then needs our token (a webhook is authenticated by its provider's signature)."""
    target = _token_target(policy, report.token, where, tally)
    if mailed and policy.verp and target is None:
        tally.skip("no valid VERP token", where, "with VERP on, a report without our token changes nothing")
        return
    for finding in report.findings:
        found = _resolve(session, finding, target, len(report.findings))
        label = finding.recipient or f"token {report.token[:20]}"
        if isinstance(found, str):
            tally.skip(found, where, label)
            continue
        sub, issue_id, named = found
        if finding.kind is Kind.HARD and (not named or (target is None and finding.from_text)):
            # The token names the reader, the report another address (a forward); or, without a
            # token, the address was read out of prose, where a quoted line can name someone else.
            # Neither is evidence that this reader's own address is gone: it only counts as soft.
            finding = replace(finding, kind=Kind.SOFT)
        key = _report_key(report_id, sub.id)
        if session.scalar(select(Bounce.id).where(Bounce.report_id == key)) is not None:
            tally.skip("duplicate report", where, label)
            continue
        _apply(session, policy, sub, issue_id, finding, report_key=key, source=source, tally=tally)


def _token_target(policy: Policy, token: str, where: str, tally: Tally) -> tokens.TokenData | None:
    if not token:
        return None
    try:
        return tokens.read(policy.secret, tokens.BOUNCE, token)
    except InvalidToken:
        tally.skipped["invalid token"] += 1
        tally.problems.append(f"{where}: invalid VERP token {token[:20]!r} (forged or mangled)")
        return None


def _resolve(
    session: Session, finding: Finding, target: tokens.TokenData | None, findings: int
) -> tuple[Subscriber, int, bool] | str:
    """(subscriber, issue id, whether the report names that subscriber's address), or why none.

    With a token, only the subscriber it names: a finding about another address applies to
    them only when it is the report's single finding (a forwarded copy bounced)."""
    if target is not None:
        sub = session.get(Subscriber, target.subscriber_id)
        if sub is None:
            return "token names a subscriber who no longer exists"
        named = not finding.recipient or subscribers.email_key(finding.recipient) == sub.email_key
        if not named and findings > 1:
            return "address is not the token's subscriber"
        issue_id = target.issue_id or _last_mailed(session, sub)
        return (sub, issue_id, named) if issue_id is not None else "address never mailed"
    if not finding.recipient:
        return "no recipient in report"
    found = subscribers.get_by_email(session, finding.recipient)
    if found is None:
        return "address not on the list"
    issue_id = _last_mailed(session, found)
    return (found, issue_id, True) if issue_id is not None else "address never mailed"


def _last_mailed(session: Session, sub: Subscriber) -> int | None:
    return session.scalar(
        select(Delivery.issue_id)
        .where(Delivery.subscriber_id == sub.id, Delivery.status.in_(MAILED))
        .order_by(Delivery.issue_id.desc())
        .limit(1)
    )


def _report_key(report_id: str, subscriber_id: int) -> str:
    key = f"{report_id.strip()}|{subscriber_id}"
    return key if len(key) <= 500 else "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def _bounce_kind(finding: Finding) -> BounceKind:
    if finding.kind is Kind.COMPLAINT:
        return BounceKind.OPT_OUT if finding.feedback_type.lower() in OPT_OUT_TYPES else BounceKind.COMPLAINT
    return BounceKind.HARD if finding.kind is Kind.HARD else BounceKind.SOFT


def _apply(
    session: Session,
    policy: Policy,
    sub: Subscriber,
    issue_id: int,
    finding: Finding,
    *,
    report_key: str,
    source: str,
    tally: Tally,
) -> None:
    kind = _bounce_kind(finding)
    session.add(
        Bounce(
            subscriber_id=sub.id,
            issue_id=issue_id,
            kind=kind,
            blame=finding.blame.value if finding.blame else "",
            status=finding.status[:20],
            diagnostic=finding.diagnostic or finding.feedback_type,
            source=source,
            report_id=report_key,
        )
    )
    event = {BounceKind.OPT_OUT: EventKind.UNSUBSCRIBE, BounceKind.COMPLAINT: EventKind.COMPLAINT}
    session.add(
        Event(
            kind=event.get(kind, EventKind.BOUNCE),
            subscriber_id=sub.id,
            issue_id=issue_id,
            source=source,
            detail=f"{kind.value} report {finding.status or finding.feedback_type}".strip(),
        )
    )
    tally.applied[kind.value] += 1
    if kind is BounceKind.OPT_OUT:
        changed = subscribers.unsubscribe(session, sub, source=source, issue_id=issue_id)
    elif kind is BounceKind.COMPLAINT:
        changed = sub.status != SubscriberStatus.COMPLAINED and subscribers.change_status(
            session,
            sub,
            SubscriberStatus.COMPLAINED,
            kind=EventKind.COMPLAINT,
            source=source,
            issue_id=issue_id,
            detail="spam complaint: never mailed again",
        )
    elif kind is BounceKind.HARD:
        changed = _bounced(session, sub, source=source, issue_id=issue_id, why=f"hard bounce {finding.status}".strip())
    else:
        changed = finding.blame in COUNTED and _soft(session, policy, sub, source=source, issue_id=issue_id)
    tally.suppressed += bool(changed)


def _soft(session: Session, policy: Policy, sub: Subscriber, *, source: str, issue_id: int) -> bool:
    """Count the issues among the last `soft_issues` mailed to `sub` that soft-bounced."""
    session.flush()
    recent = list(
        session.scalars(
            select(Delivery.issue_id)
            .where(Delivery.subscriber_id == sub.id, Delivery.status.in_(MAILED))
            .order_by(Delivery.issue_id.desc())
            .limit(policy.soft_issues)
        )
    )
    bounced_issues = set(
        session.scalars(
            select(Bounce.issue_id).where(
                Bounce.subscriber_id == sub.id,
                Bounce.kind == BounceKind.SOFT,
                Bounce.blame.in_([b.value for b in COUNTED]),
                Bounce.issue_id.in_(recent or [issue_id]),
            )
        )
    )
    sub.soft_bounces = len(bounced_issues)
    if sub.soft_bounces < policy.soft_limit:
        return False
    why = f"soft bounces in {sub.soft_bounces} of the last {policy.soft_issues} issues"
    return _bounced(session, sub, source=source, issue_id=issue_id, why=why)


def _bounced(session: Session, sub: Subscriber, *, source: str, issue_id: int, why: str) -> bool:
    """Mark `sub` bounced, unless already suppressed (a complaint or unsubscribe outranks it)."""
    return sub.status not in SUPPRESSED and subscribers.change_status(
        session, sub, SubscriberStatus.BOUNCED, kind=EventKind.BOUNCE, source=source, issue_id=issue_id, detail=why
    )
