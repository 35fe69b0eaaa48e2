"""The list and the issues over time, for the desk's charts: growth and churn per week,
and the results of the last issues. Each is one query, shaped to stay fast with
100,000 subscribers and 50 sent issues (see README, desk benchmark)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import and_, case, func, select
from sqlalchemy.orm import Session

from newsletter import builder, clicks
from newsletter.config import Settings
from newsletter.models import SUPPRESSED, Delivery, DeliveryStatus, Issue, IssueStatus, Subscriber, utcnow


@dataclass(frozen=True)
class WeekChange:
    week: str
    joined: int  # subscribers created that week
    left: int  # subscribers who unsubscribed, bounced or complained that week (and are still gone)


@dataclass(frozen=True)
class IssueResult:
    week: str
    status: str
    sent: int
    failed: int
    clicks: int


def growth(session: Session, settings: Settings, weeks: int = 12) -> list[WeekChange]:
    """Joined and left per ISO week (in settings.tz), oldest first, the current week last."""
    now = utcnow()
    keys = [builder.current_week(settings, now - timedelta(weeks=back)) for back in range(weeks - 1, -1, -1)]
    bounds = [builder.week_bounds(settings, key) for key in keys]
    gone = Subscriber.status.in_(SUPPRESSED)
    columns = []
    for start, end in bounds:
        joined = and_(Subscriber.created_at >= start, Subscriber.created_at < end)
        left = and_(gone, Subscriber.status_changed_at >= start, Subscriber.status_changed_at < end)
        columns += [func.sum(case((joined, 1), else_=0)), func.sum(case((left, 1), else_=0))]
    first = bounds[0][0]
    row = session.execute(
        select(*columns).where((Subscriber.created_at >= first) | (Subscriber.status_changed_at >= first))
    ).one()
    return [WeekChange(key, int(row[2 * i] or 0), int(row[2 * i + 1] or 0)) for i, key in enumerate(keys)]


def delivery_counts(session: Session, issue_ids: list[int]) -> dict[int, dict[str, int]]:
    """Deliveries per status of each issue (the ledger's index on (issue_id, status) answers it)."""
    per: dict[int, dict[str, int]] = {i: {} for i in issue_ids}
    for issue_id, status, n in session.execute(
        select(Delivery.issue_id, Delivery.status, func.count())
        .where(Delivery.issue_id.in_(issue_ids))
        .group_by(Delivery.issue_id, Delivery.status)
    ):
        per[issue_id][str(status)] = n
    return per


class SentCounts:
    """`delivery_counts`, kept in the server process for sent issues: with 100,000
    subscribers each sent issue has 100,000 ledger rows, and 50 of them take seconds to
    count, while their counts hardly change (a later resend shows within `ttl`). The desk
    counts them once when the server starts (`warm`); a page asking meanwhile waits for
    that count instead of starting a second one."""

    def __init__(self, ttl: float = 300.0, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl, self.clock = ttl, clock
        self._cache: dict[int, tuple[float, dict[str, int]]] = {}
        self._counting = threading.Lock()

    def warm(self, session: Session) -> None:
        """Count every sent issue's deliveries now, before an editor asks."""
        self.get(session, list(session.scalars(select(Issue).where(Issue.status == IssueStatus.SENT))))

    def get(self, session: Session, issues: list[Issue]) -> dict[int, dict[str, int]]:
        with self._counting:
            return self._get(session, issues)

    def _get(self, session: Session, issues: list[Issue]) -> dict[int, dict[str, int]]:
        now = self.clock()
        found = {i.id: self._cache[i.id][1] for i in issues if i.id in self._cache and self._cache[i.id][0] > now}
        missing = [i for i in issues if i.id not in found]
        if missing:
            counted = delivery_counts(session, [i.id for i in missing])
            for issue in missing:
                if issue.status == IssueStatus.SENT:
                    self._cache[issue.id] = (now + self.ttl, counted[issue.id])
            found.update(counted)
        return found


def last_issues(session: Session, counts: SentCounts, count: int = 12) -> list[IssueResult]:
    """The results of the last `count` issues that went out, oldest first."""
    issues = list(
        session.scalars(select(Issue).where(Issue.status != IssueStatus.DRAFT).order_by(Issue.week.desc()).limit(count))
    )
    per = counts.get(session, issues)
    total_clicks = clicks.clicks_per_issue(session, [i.id for i in issues])
    return [
        IssueResult(
            i.week,
            str(i.status),
            per[i.id].get(DeliveryStatus.SENT, 0),
            per[i.id].get(DeliveryStatus.FAILED, 0),
            total_clicks.get(i.id, 0),
        )
        for i in reversed(issues)
    ]
