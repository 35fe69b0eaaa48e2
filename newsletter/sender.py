"""The sending engine: every planned subscriber gets the issue exactly once, fast.

Shape (listmonk's manager, with a ledger that survives kill -9):
- one task reserves batches of ledger rows (`ledger.claim_batch`) into a queue;
- `concurrency` workers each take a job, ask the ledger writer to mark it `sending`,
  run MAIL, RCPT and DATA meanwhile, and hand the message over only once that mark is
  committed; so after a crash at most `concurrency` rows are ambiguous;
- one ledger writer commits marks and results together (group commit: one
  transaction per round for all connections, not one per message).

Variants are rendered once (`render.render_variant`) and turned into byte templates
(`message.MessageFactory.prepare`); per subscriber only the slots are filled.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from typing import Any, cast

from sqlalchemy import CursorResult, func, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from newsletter import builder, ledger, locks, render, replies
from newsletter.builder import IssueContent
from newsletter.config import Settings, check_ready_to_send
from newsletter.db import Sessions
from newsletter.errors import (
    AmbiguousDelivery,
    Conflict,
    DeliveryError,
    InvalidInput,
    PermanentDeliveryError,
    RefusedByServer,
    TransientDeliveryError,
    TransportUnavailable,
)
from newsletter.feedback import Breaker, Pace
from newsletter.ledger import Job, Outcome
from newsletter.ledger_writer import LedgerWriter
from newsletter.message import MessageFactory, Template, return_path
from newsletter.models import Delivery, DeliveryStatus, Issue, IssueStatus, utcnow
from newsletter.replies import Blame, Stage
from newsletter.transport import Transport, open_transport, send_one

SQLITE_LEASE = ledger.SENDER_LEASE + ":sqlite"


@dataclass(frozen=True)
class Tuning:
    """The engine's own knobs, below what [smtp] configures (tests and benchmarks change them)."""

    batch_size: int = 100
    max_wait: float = 300.0  # a retry due later than this waits for the next run


@dataclass
class SendReport:
    week: str
    planned: int = 0
    sent: int = 0
    failed: int = 0
    bounced: int = 0
    skipped: int = 0
    retrying: int = 0
    remaining: int = 0  # pending or sending rows after this run
    ambiguous: int = 0  # rows in `sending` left by an interrupted sender
    elapsed: float = 0.0
    issue_status: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.sent / self.elapsed if self.elapsed else 0.0


Progress = Callable[[SendReport, int], None]  # (report so far, total to send) after each ledger round


class Skipped(Exception):
    """The subscriber left (or the row was taken) before the message was handed over."""


class SendRun:
    """One run of the sending loop for one issue."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        content: IssueContent,
        transport: Transport,
        tuning: Tuning,
        worker: str,
        lease: str,
        report: SendReport,
        progress: Progress | None,
        limit: int | None,
        total: int,
    ) -> None:
        self.settings, self.content, self.smtp = settings, content, settings.smtp
        self.transport, self.tuning, self.worker = transport, tuning, worker
        self.report, self.progress, self.limit, self.total = report, progress, limit, total
        self.factory = MessageFactory(settings, content.issue_id)
        self.templates: dict[str, Template] = {}
        self.pace = Pace(self.smtp.rate_per_second)
        self.breaker = Breaker()
        self.queue: asyncio.Queue[Job | None] = asyncio.Queue(maxsize=tuning.batch_size)
        self.writer = LedgerWriter(
            engine,
            content.issue_id,
            worker,
            lease,
            self._committed,
            max(1, self.smtp.concurrency // 2),
            settings.delivery.sender_lease_seconds,
        )
        self.in_flight = 0
        self.unavailable = 0  # consecutive connection failures, over all workers
        self.fatal: TransportUnavailable | RefusedByServer | None = None
        self.slowed = False
        self.refused_us = 0  # recipients deferred by replies that blame us

    def _committed(self, outcomes: list[Outcome]) -> None:
        r = self.report
        for o in outcomes:
            if o.status == DeliveryStatus.SENT:
                r.sent += 1
            elif o.status == DeliveryStatus.FAILED:
                r.failed += 1
                r.bounced += o.bounce
            elif o.status == DeliveryStatus.SENDING:
                r.ambiguous += 1
            else:
                r.retrying += 1
        if self.progress is not None and outcomes:
            self.progress(r, self.total)

    def template(self, key: str) -> Template:
        if key not in self.templates:  # the one expensive step, once per variant
            variant = render.render_variant(self.settings, self.content, ledger.variant_sections(key))
            self.templates[key] = self.factory.prepare(variant)
        return self.templates[key]

    def _failed(self, job: Job, reply: str, *, bounce: bool = False) -> Outcome:
        return Outcome(job.delivery_id, job.subscriber_id, DeliveryStatus.FAILED, reply, bounce=bounce)

    def _retry(self, job: Job, reply: str, delay: float | None = None, *, may_fail: bool = True) -> Outcome:
        attempts = job.attempts + 1
        if attempts >= self.smtp.max_attempts and may_fail:
            return self._failed(job, f"{reply} (gave up after {attempts} attempts)")
        when = (
            ledger.retry_at(attempts, self.smtp.retry_delay) if delay is None else utcnow() + timedelta(seconds=delay)
        )
        return Outcome(job.delivery_id, job.subscriber_id, DeliveryStatus.PENDING, reply, next_attempt_at=when)

    def _slow_down(self, reply: str) -> None:
        rate = self.pace.slow_down()
        if rate is not None and not self.slowed:  # one note per run, not one per reply
            self.slowed = True
            ceiling = f"{self.pace.ceiling:g} messages/s" if self.pace.ceiling else "full speed"
            self.report.notes.append(
                f"the server asked to slow down ({reply}): {rate:.1f} messages/s, "
                f"climbing back to {ceiling} while replies are clean"
            )

    def _judged(self, job: Job, exc: DeliveryError) -> Outcome:
        """The row's fate for a reply about this recipient, as `replies.judge` reads it; also
        feeds the pace and the breaker. Only a permanent reply naming the address bounces."""
        reply = exc.reply or str(exc)
        if exc.code is None:  # refused here before the server was asked (address, SMTPUTF8)
            return self._failed(job, reply)
        verdict = replies.judge(exc.code, "", reply, stage=Stage(exc.stage))
        trip = self.breaker.record(verdict, job.email, reply)
        if trip is not None and self.fatal is None:
            self.fatal = RefusedByServer(trip, code=exc.code, reply=reply, stage=exc.stage)
        blame = verdict.blame
        if verdict.hard:
            return self._failed(job, reply, bounce=True)
        if blame is Blame.THROTTLE:
            self._slow_down(reply)
        elif not verdict.permanent and self.pace.failed_for(job.email):
            self._slow_down(f"{reply}, and as much for most recent recipients")
        if blame is Blame.SENDER:  # about us, not the reader: never used up, never hammered in this run
            self.refused_us += 1
            return self._retry(job, ledger.REFUSED_US + reply, delay=self.tuning.max_wait + 1, may_fail=False)
        if blame is Blame.THROTTLE:
            return self._retry(job, reply, may_fail=False)
        if verdict.permanent and blame is not Blame.MESSAGE:
            return self._failed(job, reply)
        return self._retry(job, reply)

    async def deliver(self, job: Job) -> None:
        """One message: mark, MAIL/RCPT/DATA while the mark commits, the body once it is durable."""
        await self.pace.wait()
        template = self.template(job.variant)  # an error here concerns every message: it stops the run
        try:
            data = self.factory.build(template, job.subscriber_id, job.email, job.name)
        except InvalidInput as exc:  # this subscriber's address cannot go in a header
            if await self.writer.mark(job):
                self.writer.settle(self._failed(job, f"not sent: {exc}"))
            return
        allowed = self.writer.mark(job)

        async def before_data() -> None:
            if not await allowed:
                raise Skipped

        try:
            reply = await self.transport.send(
                return_path(self.settings, job.subscriber_id, self.content.issue_id),
                job.email,
                data,
                before_data=before_data,
            )
        except Skipped:
            self.report.skipped += 1
            return
        except (PermanentDeliveryError, TransientDeliveryError) as exc:
            self.writer.settle(self._judged(job, exc))
        except AmbiguousDelivery as exc:
            # Left in `sending`: listed as ambiguous, resent only on --resend-ambiguous.
            self.writer.settle(Outcome(job.delivery_id, job.subscriber_id, DeliveryStatus.SENDING, exc.reply))
            self.fatal = exc  # a server silent for data_timeout is broken: stop, do not pile up more
            return
        except TransportUnavailable as exc:
            if exc.code == 421 or exc.stage == Stage.CONNECT:
                self._slow_down(exc.reply or str(exc))  # the server closes or refuses connections: too many
            # A server that is down must not use up attempts: only while it accepts other
            # messages can one that keeps breaking the connection be given up.
            self.writer.settle(self._retry(job, f"not delivered: {exc}", delay=0, may_fail=self.report.sent > 0))
            self.unavailable += 1
            # A 5xx here (login, EHLO, STARTTLS, MAIL FROM) refuses us, not a recipient: stop at once.
            if (exc.code or 0) >= 500 or self.unavailable >= self.smtp.concurrency + 2:
                self.fatal = exc
            else:
                await asyncio.sleep(min(0.05 * 2 ** min(self.unavailable, 6), 2.0))
            return
        else:
            self.breaker.record(None, job.email, reply)
            self.pace.clean()
            self.writer.settle(Outcome(job.delivery_id, job.subscriber_id, DeliveryStatus.SENT, reply))
        self.unavailable = 0

    async def work(self) -> None:
        while (job := await self.queue.get()) is not None:
            if self.fatal is not None:
                continue
            self.in_flight += 1
            try:
                await self.deliver(job)
            finally:
                self.in_flight -= 1

    async def reserve(self) -> None:
        """Feed the queue until nothing claimable is left (or due within max_wait)."""
        left = self.limit
        after = 0  # the last id of the previous full batch (see ledger.claim_batch)
        while self.fatal is None and (left is None or left > 0):
            size = self.tuning.batch_size if left is None else min(left, self.tuning.batch_size)
            jobs = await self.writer.call(
                partial(ledger.claim_batch, issue_id=self.content.issue_id, worker=self.worker, limit=size, after=after)
            )
            if len(jobs) == size:
                after = jobs[-1].delivery_id
            elif after:  # short: the end is reached; look once more from the start
                after = 0
                if not jobs:
                    continue
            for job in jobs:
                await self.queue.put(job)
            if left is not None:
                left -= len(jobs)
            if jobs:
                continue
            if self.in_flight or not self.queue.empty() or self.writer.outcomes:
                await asyncio.sleep(0.05)  # in-flight messages may turn into retries
                continue
            due = await self.writer.call(partial(ledger.next_due, issue_id=self.content.issue_id, worker=self.worker))
            if due is None:
                return
            wait = (due - utcnow()).total_seconds()
            if wait > self.tuning.max_wait:
                self.report.notes.append(
                    f"retries are due from {due:%Y-%m-%d %H:%M} UTC; run send again then (cron's `newsletter run` does)"
                )
                return
            await asyncio.sleep(min(max(wait, 0.01), 1.0))

    async def keep_lease(self) -> None:
        """Renew the lease even while no row settles (every connection waiting on a slow
        server): on another host, a lapsed lease hands this sender's reservations over."""
        while True:
            await asyncio.sleep(self.writer.lease_ttl / 6)
            await self.writer.call(lambda session: None)

    async def run(self) -> None:
        writer = asyncio.create_task(self.writer.run())
        workers = [asyncio.create_task(self.work()) for _ in range(self.smtp.concurrency)]
        lease = asyncio.create_task(self.keep_lease())
        try:
            await self.reserve()
            for _ in workers:
                await self.queue.put(None)
            await asyncio.gather(*workers)
        finally:
            for task in [*workers, lease]:
                task.cancel()
            await asyncio.gather(*workers, lease, return_exceptions=True)
            await self.writer.close()
            await writer
            await self.transport.close()
            self.writer.close_with(lambda s: ledger.release(s, self.content.issue_id, self.worker))
        if isinstance(self.fatal, RefusedByServer):
            raise self.fatal
        if self.refused_us:
            self.report.notes.append(
                f"{self.refused_us} recipients were refused with replies that blame us, not them "
                f"(see `newsletter deliveries export`); nobody was bounced, they are tried again "
                f"at the next `newsletter send` or `run`"
            )
        if self.fatal is not None:
            raise TransportUnavailable(
                f"{self.fatal}; stopped sending. The issue stays resumable: fix the server "
                f"or [smtp] settings and run `newsletter send` again",
                code=self.fatal.code,
                reply=self.fatal.reply,
            )


# --- entry points ----------------------------------------------------------------------


def check_age(settings: Settings, issue: Issue, max_age_hours: float, force: bool) -> None:
    """A restored backup must not mail last week's news: refuse stale issues unless forced."""
    when = issue.scheduled_at or issue.built_at
    if force or when is None:
        return
    age = (utcnow() - when).total_seconds() / 3600
    if age > max_age_hours:
        raise Conflict(
            f"issue {issue.week} was scheduled for {when.astimezone(settings.tz):%Y-%m-%d %H:%M}, "
            f"{age:.0f} hours ago (more than [delivery] max_age_hours = {max_age_hours:g}); "
            f"pass --force to send it anyway"
        )


def _acquire_sender(sessions: Sessions, worker: str, ttl: float) -> str:
    """Register this sender. SQLite: one sender at a time (a second one is told so);
    PostgreSQL: any number, sharing the work through SKIP LOCKED claims."""
    with sessions.begin() as session:
        if session.get_bind().dialect.name != "sqlite":
            name = f"{ledger.SENDER_LEASE}:{worker}"
            locks.acquire(session, name, worker, ttl)
            return name
        holder = locks.acquire(session, SQLITE_LEASE, worker, ttl)
    if holder is not None:
        pid = locks.pid_of(holder)
        who = f"process {pid}" if pid else holder
        raise Conflict(
            f"another `newsletter send` ({who}) is sending from this SQLite database; wait for it to "
            f"finish (several senders at once need PostgreSQL)"
        )
    return SQLITE_LEASE


def _finish(session: Session, issue_id: int, report: SendReport) -> None:
    issue = session.get(Issue, issue_id)
    assert issue is not None
    report.remaining = ledger.open_count(session, issue_id)
    report.ambiguous = session.scalar(select(func.count()).where(ledger.ambiguous_filter(session, issue_id))) or 0
    if report.remaining == 0 and issue.status != IssueStatus.SENT:
        issue.status, issue.sent_at = IssueStatus.SENT, utcnow()
    report.issue_status = str(issue.status)


def send(
    sessions: Sessions,
    settings: Settings,
    week: str | None = None,
    *,
    limit: int | None = None,
    force: bool = False,
    resend_ambiguous: bool = False,
    transport: Transport | None = None,
    tuning: Tuning | None = None,
    progress: Progress | None = None,
) -> SendReport:
    """Send the built issue of `week` (default: this week) to everyone planned for it.

    Safe to rerun at any time: it continues where an earlier run stopped. Raises
    NotFound (not built), Conflict (too old, or another SQLite sender), or
    TransportUnavailable (the server cannot be reached; nothing is lost)."""
    check_ready_to_send(settings)
    started = time.monotonic()
    with sessions.reading() as session:
        issue = builder.get_issue(session, settings, week)
        report = SendReport(issue.week)
        if issue.status == IssueStatus.SENT and not resend_ambiguous:
            report.issue_status = str(issue.status)
            report.notes.append(f"issue {issue.week} was already sent")
            return report
        check_age(settings, issue, settings.delivery.max_age_hours, force)
        content = builder.load_content(session, settings, issue.week)
    worker = locks.new_holder()
    lease = _acquire_sender(sessions, worker, settings.delivery.sender_lease_seconds)
    try:
        with sessions.begin() as session:
            current = session.get(Issue, content.issue_id)
            assert current is not None
            if resend_ambiguous:
                requeued = ledger.requeue_ambiguous(session, current.id)
                report.notes.append(f"{requeued} ambiguous deliveries queued again")
            ledger.retry_refused_now(session, current.id)
            report.planned = ledger.plan(session, content)
            if current.status != IssueStatus.SENDING:
                current.status, current.send_started_at = IssueStatus.SENDING, current.send_started_at or utcnow()
            total = ledger.open_count(session, current.id)
        engine = sessions.kw["bind"]  # the ledger writer holds one connection of its own
        run = SendRun(
            engine,
            settings,
            content,
            transport or open_transport(settings),
            tuning or Tuning(),
            worker,
            lease,
            report,
            progress,
            limit,
            min(total, limit) if limit is not None else total,
        )
        asyncio.run(run.run())
        with sessions.begin() as session:
            _finish(session, content.issue_id, report)
    finally:
        with sessions.begin() as session:
            locks.release(session, lease, worker)
        report.elapsed = time.monotonic() - started
    return report


CANCELLED = "not sent: the editor cancelled the send"


def cancel(session: Session, settings: Settings, week: str | None) -> str:
    """Stop a sending issue for good; returns what happened, in one line.

    Nothing delivered yet: the issue is a draft again (its planned rows dropped), to be
    edited, rebuilt and sent later. Otherwise its pending rows become `skipped` (never
    sent), rows already sent or ambiguous stay as they are, and the issue is finished
    (`sent`). Raises NotFound, or Conflict for a draft, a sent issue, or while a send runs."""
    issue = builder.get_issue(session, settings, week)
    if issue.status == IssueStatus.DRAFT:
        raise Conflict(f"issue {issue.week} is a draft; there is no send to cancel")
    if issue.status == IssueStatus.SENT:
        raise Conflict(f"issue {issue.week} was already sent; there is nothing left to cancel")
    if locks.live_holders(session, ledger.SENDER_LEASE):
        raise Conflict(f"a 'newsletter send' is running; stop it (Ctrl-C) before cancelling issue {issue.week}")
    rows = session.execute(
        select(Delivery.status, func.count()).where(Delivery.issue_id == issue.id).group_by(Delivery.status)
    )
    counts: dict[DeliveryStatus, int] = dict(rows.all())
    if not counts.get(DeliveryStatus.SENT) and not counts.get(DeliveryStatus.SENDING):
        builder.reopen(session, issue)
        return f"issue {issue.week} is a draft again: nobody had received it; edit or rebuild it and send it when ready"
    skipped = session.execute(
        update(Delivery)
        .where(Delivery.issue_id == issue.id, Delivery.status == DeliveryStatus.PENDING)
        .values(status=DeliveryStatus.SKIPPED, last_reply=CANCELLED, claimed_by="")
    )
    issue.status, issue.sent_at = IssueStatus.SENT, utcnow()
    ambiguous = counts.get(DeliveryStatus.SENDING, 0)
    return (
        f"issue {issue.week} cancelled: {counts.get(DeliveryStatus.SENT, 0)} readers had it, "
        f"{cast(CursorResult[Any], skipped).rowcount or 0} pending deliveries will not be sent (recorded as "
        f"skipped), {ambiguous} ambiguous stay listed in 'newsletter stats'; the issue counts as finished"
    )


@dataclass(frozen=True)
class VariantPlan:
    sections: tuple[str, ...]
    recipients: int
    examples: tuple[str, ...]


def dry_run(session: Session, settings: Settings, week: str | None = None) -> list[VariantPlan]:
    """Who would get which variant if `send` ran now (rows still open plus subscribers not
    yet planned); changes nothing."""
    issue = builder.get_issue(session, settings, week)
    content = builder.load_content(session, settings, issue.week)
    return [
        VariantPlan(ledger.variant_sections(key), n, tuple(emails))
        for key, n, emails in sorted(ledger.recipients_per_variant(session, content))
    ]


def send_test(sessions: Sessions, settings: Settings, week: str | None, address: str) -> str:
    """One copy of the whole issue to `address`, outside the ledger (links are inert
    for a subscriber id 0); returns the server's reply. SMTP runs after the transaction."""
    check_ready_to_send(settings)
    with sessions.reading() as session:
        issue = builder.get_issue(session, settings, week)
        content = builder.load_content(session, settings, issue.week)
    factory = MessageFactory(settings, content.issue_id)
    template = factory.prepare(render.render_variant(settings, content, render.sections_for(content, ())))
    data = factory.build(template, 0, address, "")
    return asyncio.run(send_one(settings, return_path(settings, 0, None), address, data))
