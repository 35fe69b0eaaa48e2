"""`newsletter run`, the cron entry: fetch feeds, read the bounce mailbox when one is
configured, build this week's issue, send it once the configured day and time have passed.
Safe every five minutes: a lease in the `locks` table keeps overlapping runs apart, and the
ledger never mails anyone twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from newsletter import articles, builder, locks, sender
from newsletter.config import Settings
from newsletter.db import Sessions
from newsletter.errors import ConfigError, Conflict, InvalidInput
from newsletter.inbound import imap
from newsletter.inbound.policy import Policy
from newsletter.models import Issue, IssueStatus, utcnow
from newsletter.sender import Progress, SendReport, Tuning
from newsletter.transport import Transport

RUN_LEASE = "run"
RUN_TTL = 3600.0  # a crashed run on another host blocks at most this long (same host: not at all)


@dataclass
class RunReport:
    week: str
    lines: list[str] = field(default_factory=list)
    send: SendReport | None = None


def _build(session: Session, settings: Settings, week: str, report: RunReport) -> Issue | None:
    """The week's issue: (re)built while it is a draft, left alone once sending began."""
    issue = session.scalar(select(Issue).where(Issue.week == week))
    if issue is not None and issue.status != IssueStatus.DRAFT:
        return issue
    try:
        issue = builder.build(session, settings, week)
    except InvalidInput as exc:
        report.lines.append(f"not built: {exc}")
        return None
    report.lines.append(
        f"issue {week} built, due {issue.scheduled_at.astimezone(settings.tz):%a %Y-%m-%d %H:%M}"
        if issue.scheduled_at
        else f"issue {week} built"
    )
    return issue


def _read_bounces(sessions: Sessions, settings: Settings, report: RunReport) -> None:
    """Read the bounce mailbox before sending, so the addresses it proves dead are not mailed again.
    A mailbox that cannot be read is reported and the run goes on: sending does not depend on it."""
    try:
        tally = imap.fetch_imap(sessions, Policy.from_settings(settings), settings)
    except ConfigError as exc:
        report.lines.append(f"bounces not read: {exc}")
    else:
        report.lines.append(f"bounces: {tally.summary}")


def _resume_earlier(
    sessions: Sessions,
    settings: Settings,
    week: str,
    report: RunReport,
    *,
    transport: Transport | None,
    tuning: Tuning | None,
    progress: Progress | None,
) -> None:
    """Finish an issue whose send (or its retries) ran past the end of its own week."""
    with sessions.reading() as session:
        unfinished = list(
            session.scalars(
                select(Issue.week).where(Issue.status == IssueStatus.SENDING, Issue.week != week).order_by(Issue.week)
            )
        )
    for earlier in unfinished:
        try:
            done = sender.send(sessions, settings, earlier, transport=transport, tuning=tuning, progress=progress)
        except Conflict as exc:  # e.g. older than [delivery] max_age_hours: the editor decides
            report.lines.append(f"issue {earlier} not resumed: {exc}")
        else:
            report.lines.append(
                f"issue {earlier} resumed: sent {done.sent}, failed {done.failed}, issue is {done.issue_status}"
            )


def run(
    sessions: Sessions,
    settings: Settings,
    *,
    now: datetime | None = None,
    fetch: bool = True,
    transport: Transport | None = None,
    tuning: Tuning | None = None,
    progress: Progress | None = None,
) -> RunReport:
    """One cron tick; does nothing (says so) while another run holds the lease."""
    now = now or utcnow()
    week = builder.current_week(settings, now)
    report = RunReport(week)
    holder = locks.new_holder()
    with sessions.begin() as session:
        other = locks.acquire(session, RUN_LEASE, holder, RUN_TTL)
    if other is not None:
        report.lines.append(f"another `newsletter run` ({other}) is in progress; this one does nothing")
        return report
    try:
        if fetch and settings.feeds:
            report.lines += [r.summary_line for r in articles.fetch_all(sessions, settings)]
        if settings.bounces.imap_host:
            _read_bounces(sessions, settings, report)
        _resume_earlier(sessions, settings, week, report, transport=transport, tuning=tuning, progress=progress)
        with sessions.begin() as session:
            issue = _build(session, settings, week, report)
            due = issue.scheduled_at if issue is not None else None
            status = issue.status if issue is not None else None
        if issue is None:
            return report
        if status == IssueStatus.SENT:
            report.lines.append(f"issue {week} was already sent")
        elif due is not None and now < due:
            report.lines.append(f"not sending yet: due {due.astimezone(settings.tz):%a %Y-%m-%d %H:%M}")
        else:
            report.send = sender.send(sessions, settings, week, transport=transport, tuning=tuning, progress=progress)
        return report
    finally:
        with sessions.begin() as session:
            locks.release(session, RUN_LEASE, holder)
