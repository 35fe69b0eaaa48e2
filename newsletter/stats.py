"""Who got an issue, who did not, and why: counts from the ledger and the events table,
and the per-recipient export, so that question never needs the mail server's logs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO

from sqlalchemy import Select, String, distinct, func, select, type_coerce, union
from sqlalchemy.orm import Session

from newsletter import builder, exports, ledger, selfservice
from newsletter.config import Settings
from newsletter.models import Bounce, BounceKind, Delivery, DeliveryStatus, Event, EventKind, Issue, Subscriber

EXPORT_COLUMNS = [
    "email",
    "name",
    "status",
    "attempts",
    "last_reply",
    "sent_at",
    "claimed_at",
    "next_attempt_at",
    "sections",
]
AMBIGUOUS_SHOWN = 20


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
        return (
            f"complaint rate {self.complaint_rate:.2%} is above {COMPLAINT_WARNING_RATE:.1%}: "
            f"mailbox providers start filtering the list at 0.3%"
        )


def issue_bounces(session: Session, issue_id: int, *, delivered: int | None = None) -> IssueBounces:
    """Bounce and complaint counts of one issue, each subscriber counted once per kind; a send-time
    5xx that named the address (the ledger's bounce event, source smtp) counts as hard too.
    `delivered`: the ledger's count of sent rows when the caller has it (no second count)."""

    def reported(*kinds: BounceKind) -> Select[int]:
        return select(Bounce.subscriber_id).where(Bounce.issue_id == issue_id, Bounce.kind.in_(kinds))

    def count(query: Select[int], *more: Select[int] | Select[int | None]) -> int:
        # DISTINCT / UNION: a subscriber named by several reports (or sources) counts once.
        combined = union(query, *more) if more else query.distinct()
        return session.scalar(select(func.count()).select_from(combined.subquery())) or 0

    at_send = select(Event.subscriber_id).where(
        Event.issue_id == issue_id, Event.kind == EventKind.BOUNCE, Event.source == "smtp"
    )
    if delivered is None:
        delivered = (
            session.scalar(
                select(func.count())
                .select_from(Delivery)
                .where(Delivery.issue_id == issue_id, Delivery.status == DeliveryStatus.SENT)
            )
            or 0
        )
    return IssueBounces(
        delivered=delivered,
        hard=count(reported(BounceKind.HARD), at_send),
        soft=count(reported(BounceKind.SOFT)),
        complaints=count(reported(BounceKind.COMPLAINT)),
    )


@dataclass
class IssueStats:
    week: str
    status: str
    subject: str
    deliveries: dict[str, int]  # per DeliveryStatus value
    ambiguous: int
    in_flight: int  # `sending` rows of a sender that is still running
    ambiguous_emails: list[str]
    unsubscribed_since: int  # unsubscribes (any source) since the send started
    events: dict[str, int] = field(default_factory=dict)  # per EventKind, credited to this issue
    # hard (reports and SMTP 5xx) / soft bounces, complaints: subscribers, each counted once
    bounces: IssueBounces = field(default_factory=lambda: IssueBounces(0, 0, 0, 0))
    # unsubscribes through this issue's own links, per source (one-click, page, mailto)
    unsubscribes: dict[str, int] = field(default_factory=dict)

    @property
    def rows(self) -> list[tuple[str, object]]:
        """(label, value) lines in the order `newsletter stats` prints them."""
        d = self.deliveries
        return [
            ("issue", f"{self.week} ({self.status})"),
            ("subject", self.subject),
            ("recipients", sum(d.values()) - d.get(DeliveryStatus.SKIPPED, 0)),
            ("sent", d.get(DeliveryStatus.SENT, 0)),
            ("failed", d.get(DeliveryStatus.FAILED, 0)),
            ("bounced", self.bounces.hard),
            ("soft bounces", self.bounces.soft),
            ("pending", d.get(DeliveryStatus.PENDING, 0)),
            ("sending now", self.in_flight),
            ("ambiguous", self.ambiguous),
            ("skipped", d.get(DeliveryStatus.SKIPPED, 0)),
            ("unsubscribed via this issue", _with_sources(self.unsubscribes)),
            ("unsubscribed since sending", self.unsubscribed_since),
            ("complaints", self.bounces.complaints),
            ("complaint rate", f"{self.bounces.complaint_rate:.2%}"),
        ]


def _with_sources(counts: dict[str, int]) -> str:
    """'3 (one-click 2, mailto 1)', or '0'."""
    total = sum(counts.values())
    return f"{total} ({', '.join(f'{k} {n}' for k, n in sorted(counts.items()))})" if total else "0"


def event_counts(session: Session, issue: Issue) -> dict[str, int]:
    """Subscribers with an event credited to the issue, per kind (unsubscribes from its
    links, bounces and complaints about its messages), each subscriber counted once:
    the one place later reports add their kinds."""
    rows = session.execute(
        select(Event.kind, func.count(distinct(Event.subscriber_id)))
        .where(Event.issue_id == issue.id)
        .group_by(Event.kind)
    )
    return {str(kind): n for kind, n in rows}


def issue_stats(
    session: Session,
    settings: Settings,
    week: str | None = None,
    *,
    counted: Callable[[Session, Issue], dict[str, int]] | None = None,
) -> IssueStats:
    """Counts for one issue (default: this week's). `counted` gives the ledger's rows per
    status when the caller keeps them (the desk, for sent issues: 100,000 rows each)."""
    issue = builder.get_issue(session, settings, week)
    by_status = (
        counted(session, issue)
        if counted
        else {
            str(s): n
            for s, n in session.execute(
                select(Delivery.status, func.count()).where(Delivery.issue_id == issue.id).group_by(Delivery.status)
            )
        }
    )
    ambiguous = ledger.ambiguous_filter(session, issue.id)
    emails = list(
        session.scalars(
            select(Subscriber.email)
            .join(Delivery, Delivery.subscriber_id == Subscriber.id)
            .where(ambiguous)
            .order_by(Subscriber.email)
            .limit(AMBIGUOUS_SHOWN)
        )
    )
    n_ambiguous = session.scalar(select(func.count()).select_from(Delivery).where(ambiguous)) or 0
    since = 0
    if issue.send_started_at is not None:
        since = (
            session.scalar(
                select(func.count())
                .select_from(Event)
                .where(Event.kind == EventKind.UNSUBSCRIBE, Event.created_at >= issue.send_started_at)
            )
            or 0
        )
    return IssueStats(
        issue.week,
        str(issue.status),
        issue.subject,
        by_status,
        n_ambiguous,
        by_status.get(DeliveryStatus.SENDING, 0) - n_ambiguous,
        emails,
        since,
        event_counts(session, issue),
        issue_bounces(session, issue.id, delivered=by_status.get(DeliveryStatus.SENT, 0)),
        selfservice.unsubscribes_per_issue(session, issue.id).get(issue.id, {}),
    )


def export_deliveries(session: Session, settings: Settings, week: str | None, fp: IO[str]) -> int:
    """Write every recipient of the issue as CSV (status, attempts, last reply, times); returns the row count.

    Streamed, the cells made by the database (`exports`): a million rows took 15 CPU
    seconds as plain rows through Python's CSV writer, ~30 s as ORM objects."""
    issue = builder.get_issue(session, settings, week)
    dialect = session.get_bind().dialect.name
    query = (
        select(
            exports.cell(Subscriber.email),
            exports.cell(Subscriber.name),
            type_coerce(Delivery.status, String),  # a status is a plain word
            Delivery.attempts,
            exports.cell(Delivery.last_reply),
            *(exports.utc_time(dialect, t, fraction=False) for t in _EXPORT_TIMES),
            exports.cell(func.replace(Delivery.variant, ",", " ")),
        )
        .join(Delivery, Delivery.subscriber_id == Subscriber.id)
        .where(Delivery.issue_id == issue.id)
        .order_by(Delivery.id)
    )
    return exports.write(session, EXPORT_COLUMNS, query, fp)


_EXPORT_TIMES = (Delivery.sent_at, Delivery.claimed_at, Delivery.next_attempt_at)
