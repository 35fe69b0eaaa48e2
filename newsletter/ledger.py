"""The delivery ledger: one row per (issue, subscriber), the only record of who got what.

A row's life: `pending` (planned) → reserved by a sender (`claimed_by`, still pending:
nothing is on the wire, a crash loses nothing) → `sending` (committed before its SMTP
transaction is completed) → `sent` / `failed` / `skipped`, or back to `pending` with
`next_attempt_at` after a 4xx or a dropped connection. A row left in `sending` by a
sender that is gone is *ambiguous*: the server may or may not have taken it, so it is
never resent unless asked (`send --resend-ambiguous`).

These functions take a session and do not commit; the sending engine commits them
in small batches itself (the named exception to "the caller owns the session"),
because the ledger must be durable before each message is handed over.
"""

from __future__ import annotations

import functools
import json
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    CursorResult,
    Insert,
    Select,
    String,
    and_,
    bindparam,
    case,
    func,
    literal,
    or_,
    select,
    text,
    true,
    type_coerce,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from newsletter import locks, subscribers
from newsletter.builder import IssueContent
from newsletter.db import ANALYZE_AFTER
from newsletter.models import (
    SUPPRESSED,
    Category,
    Delivery,
    DeliveryStatus,
    EventKind,
    Subscriber,
    SubscriberCategory,
    SubscriberStatus,
    UTCDateTime,
    stored_time,
    utcnow,
)

SENDER_LEASE = locks.SENDER
NO_SECTIONS = "not sent: none of the subscriber's categories is in this issue"
REFUSED_US = "deferred, the server refuses us: "  # a pending row's reply that blames the sender
RESERVED_POLL = timedelta(seconds=1)  # how often a sender looks whether another's reservations came free
_MASK_BITS = 62  # unplanned() gives each section a bit of a 64-bit integer, a new integer every 62


@dataclass(frozen=True)
class Job:
    """A reserved delivery, with what is needed to build its message."""

    delivery_id: int
    subscriber_id: int
    email: str
    name: str
    variant: str  # comma-joined section slugs
    attempts: int


@dataclass(frozen=True)
class Outcome:
    """The result of one SMTP transaction, to be written to the ledger."""

    delivery_id: int
    subscriber_id: int
    status: DeliveryStatus  # SENT, FAILED, PENDING (retry at next_attempt_at) or SENDING (ambiguous)
    reply: str
    next_attempt_at: datetime | None = None
    bounce: bool = False  # a 5xx for the recipient: mark the subscriber bounced


def variant_key(sections: Sequence[str]) -> str:
    return ",".join(sections)


def variant_sections(key: str) -> tuple[str, ...]:
    return tuple(s for s in key.split(",") if s)


def _insert(session: Session) -> Insert:
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    return dialect.insert(Delivery).on_conflict_do_nothing(index_elements=["issue_id", "subscriber_id"])


def unplanned(content: IssueContent) -> Select[int, str, bool]:
    """Each active subscriber without a ledger row for the issue: (id, variant key, skip). The
    key is the sections it gets, comma-joined in issue order (no choice at all: every
    section), as render.sections_for says in Python; `skip` is true when none matches.

    Computed in SQL, so planning is one INSERT … SELECT (from Python in chunks of 1,000,
    a million subscribers took minutes). A subscriber's categories become one number, a
    bit per section (a sum: each category once, each section one category; a further
    number for each further 62 sections), the key is read off its bits, and `skip` is
    every number being 0, so the key is built once a row.
    (A million on PostgreSQL: this SELECT 0.9 s; a max() per section over a join to
    categories, the key compared for `skip`, took 1.6 s, and the INSERT built the key thrice.)"""
    slugs = [section.slug for section in content.sections]
    groups = [slugs[i : i + _MASK_BITS] for i in range(0, len(slugs), _MASK_BITS)] or [[]]
    masks = []
    for k, group in enumerate(groups):
        bits = [
            (
                SubscriberCategory.category_id == select(Category.id).where(Category.slug == slug).scalar_subquery(),
                1 << j,
            )
            for j, slug in enumerate(group)
        ]
        mask = func.sum(case(*bits, else_=0) if bits else 0).cast(BigInteger)  # PG: sum(bigint) is numeric
        masks.append(mask.label(f"mask{k}"))
    chosen = (
        select(SubscriberCategory.subscriber_id, *masks).group_by(SubscriberCategory.subscriber_id).subquery("chosen")
    )
    every = chosen.c.mask0.is_(None)  # no choice: every section
    parts = [
        case(
            (or_(every, chosen.c[f"mask{i // _MASK_BITS}"].op("&")(1 << (i % _MASK_BITS)) != 0), literal(f"{slug},")),
            else_=literal(""),
        )
        for i, slug in enumerate(slugs)
    ]
    variant = func.rtrim(functools.reduce(operator.add, parts), ",") if parts else literal("")
    planned = select(Delivery.id).where(Delivery.issue_id == content.issue_id, Delivery.subscriber_id == Subscriber.id)
    return (
        select(
            Subscriber.id,
            type_coerce(variant, String).label("variant"),
            (and_(~every, *(chosen.c[m.name] == 0 for m in masks)) if parts else true()).label("skip"),
        )
        .outerjoin(chosen, chosen.c.subscriber_id == Subscriber.id)
        .where(Subscriber.status == SubscriberStatus.ACTIVE, ~planned.exists())
    )


def plan(session: Session, content: IssueContent) -> int:
    """Add a `pending` row for each active subscriber not yet planned (a `skipped` one if
    no section matches their categories), in one statement; returns the number of rows added.

    On PostgreSQL, senders on several hosts planning the same issue at once take turns (a
    transaction-scoped advisory lock): the second then finds everyone planned and adds nobody
    at once, instead of racing the first row by row on the unique key (minutes at 100,000,
    measured). SQLite's write lock already makes them take turns."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            text("SELECT pg_advisory_xact_lock(hashtext('newsletter.plan'), :issue)"), {"issue": content.issue_id}
        )
    todo = unplanned(content).subquery("todo")
    skip = todo.c.skip
    rows = select(
        literal(content.issue_id),
        todo.c.id,
        todo.c.variant,
        case((skip, literal(DeliveryStatus.SKIPPED.value)), else_=literal(DeliveryStatus.PENDING.value)),
        case((skip, literal(NO_SECTIONS)), else_=literal("")),
        literal(0),
        literal(""),
        literal(utcnow(), UTCDateTime()),
    ).where(true())  # SQLite reads `… FROM (subquery) ON CONFLICT` as a join without it
    columns = ["issue_id", "subscriber_id", "variant", "status", "last_reply", "attempts", "claimed_by", "created_at"]
    # preserve_rowcount: SQLAlchemy keeps an INSERT's row count only when asked (psycopg).
    insert = _insert(session).from_select(columns, rows).execution_options(preserve_rowcount=True)
    added = session.connection().execute(insert).rowcount
    if added > ANALYZE_AFTER and session.get_bind().dialect.name == "postgresql":
        # Until autovacuum gets to it, PostgreSQL plans with the row count from before: with
        # "10 rows" for a million, `send --dry-run` chose a nested-loop anti-join and took
        # two minutes for 20,000 subscribers (measured). Counted now, it hashes.
        session.execute(text("ANALYZE deliveries"))
    return added


def recipients_per_variant(
    session: Session, content: IssueContent, examples: int = 3
) -> list[tuple[str, int, list[str]]]:
    """(variant key, recipients, the first few addresses) for everyone `send` would mail now:
    pending rows plus subscribers not yet planned. One query, counted by the database, so
    a million subscribers cost seconds and no memory here."""
    open_rows = (
        select(Delivery.subscriber_id.label("id"), Delivery.variant)
        .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
        .where(
            Delivery.issue_id == content.issue_id,
            Delivery.status == DeliveryStatus.PENDING,
            Subscriber.status == SubscriberStatus.ACTIVE,
        )
    )
    new = unplanned(content).subquery("new")
    todo = union_all(open_rows, select(new.c.id, new.c.variant)).subquery("todo")
    ranked = (
        select(
            todo.c.variant,
            Subscriber.email,
            func.count().over(partition_by=todo.c.variant).label("n"),
            func.row_number().over(partition_by=todo.c.variant, order_by=todo.c.id).label("rank"),
        )
        .join(Subscriber, Subscriber.id == todo.c.id)
        .where(todo.c.variant != "")
        .subquery("ranked")
    )
    found: dict[str, tuple[int, list[str]]] = {}
    for variant, n, email in session.execute(
        select(ranked.c.variant, ranked.c.n, ranked.c.email)
        .where(ranked.c.rank <= examples)
        .order_by(ranked.c.variant, ranked.c.rank)
    ):
        found.setdefault(variant, (n, []))[1].append(email)
    return [(variant, n, emails) for variant, (n, emails) in found.items()]


# Built once (with `_RESERVE` below): a claim's own SQL work is a fraction of what
# building and coercing the statement cost each time (measured: 3.7 ms a claim of 100
# rows on SQLite, 2.7 ms with the UPDATE prebuilt). A row is claimable when pending, due,
# and not reserved by a live sender (this one included): `live` is never empty, and ''
# (no reservation) is never a holder.
_CLAIMABLE = (
    select(Delivery.id, Delivery.subscriber_id, Subscriber.email, Subscriber.name, Delivery.variant, Delivery.attempts)
    .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
    .where(
        Delivery.issue_id == bindparam("issue"),
        Delivery.status == DeliveryStatus.PENDING,
        Delivery.claimed_by.not_in(bindparam("live", expanding=True)),
        or_(Delivery.next_attempt_at.is_(None), Delivery.next_attempt_at <= bindparam("now")),
        Delivery.id > bindparam("after"),
    )
    .order_by(Delivery.id)
    .limit(bindparam("limit"))
)
_CLAIMABLE_SKIP_LOCKED = _CLAIMABLE.with_for_update(skip_locked=True, of=Delivery)
_RESERVE = (
    update(Delivery)
    .where(Delivery.id.in_(bindparam("ids", expanding=True)))
    .values(claimed_by=bindparam("worker"), claimed_at=bindparam("now"))
)


def claim_batch(session: Session, issue_id: int, worker: str, limit: int, after: int = 0) -> list[Job]:
    """Reserve up to `limit` due pending rows for `worker`, in id order from `after` on.

    `after` is where the sender's last full batch ended: the rows before it are settled
    or reserved, and reading past them made each claim cost more than the one before
    (PostgreSQL walked the primary key past every row sent: 0.1 s a claim after 20,000,
    2.2 s when it sorted all 180,000 pending rows instead). A sender starts again from 0
    once a claim comes back short, which picks up retries and rows a dead sender left.

    On PostgreSQL `FOR UPDATE SKIP LOCKED` lets several senders reserve at the same
    moment without waiting on, or taking, each other's rows; the reservation is then
    visible as `claimed_by` (a live sender's rows are skipped by the others). On SQLite
    one sender runs at a time (see sender.py), and the plain SELECT is enough."""
    now = utcnow()
    live = [*locks.live_holders(session, SENDER_LEASE), worker]
    connection = session.connection()
    query = _CLAIMABLE_SKIP_LOCKED if connection.dialect.name == "postgresql" else _CLAIMABLE
    params = {"issue": issue_id, "live": live, "now": now, "after": after, "limit": limit}
    jobs = [Job(*row) for row in connection.execute(query, params)]
    if jobs:
        connection.execute(_RESERVE, {"ids": [j.delivery_id for j in jobs], "worker": worker, "now": now})
    return jobs


class HotPath:
    """The two statements a send runs for every message, the `sending` mark and the
    result, as driver SQL on the connection's own DB-API cursor, in the caller's
    transaction (the session joined to the same connection sees them).

    Why not Core: through `Connection.execute` each statement spent more Python in
    SQLAlchemy (compiling the expanding IN, an execution context, events, result
    wrapping) than SQLite spent running it. Measured on SQLite, a ledger round of five
    marks and five results: 2.0 ms through the Session, 0.7 ms on the cursor (the same
    statements, under the same load). Values are bound as the columns' own types bind
    them (`UTCDateTime`'s processor), so rows read back through the ORM as before."""

    def __init__(self, connection: Connection) -> None:
        dialect = connection.dialect
        self.cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]  # None only once detached
        self.when = stored_time(dialect)
        if dialect.name == "postgresql":
            self.ids: Callable[[list[int]], Any] = list
            in_ids, self.param = "id = ANY(:ids)", r"%(\1)s"
        else:  # SQLite: one bound value for any number of ids (no statement per length)
            self.ids, in_ids, self.param = json.dumps, "id IN (SELECT value FROM json_each(:ids))", r":\1"
        self.mark_sql = self._sql(
            f"UPDATE deliveries SET status = '{DeliveryStatus.SENDING}', claimed_at = :now, attempts = attempts + 1 "
            f"WHERE {in_ids} AND status = '{DeliveryStatus.PENDING}' AND claimed_by = :worker "
            f"AND EXISTS (SELECT 1 FROM subscribers WHERE subscribers.id = deliveries.subscriber_id "
            f"AND subscribers.status = '{SubscriberStatus.ACTIVE}') RETURNING id"
        )
        self.settle_sql = self._sql(
            "UPDATE deliveries SET status = :status, last_reply = :reply, sent_at = :sent_at, "
            "next_attempt_at = :next, claimed_by = :claimed_by "
            f"WHERE id = :id AND status = '{DeliveryStatus.SENDING}' AND claimed_by = :worker"
        )

    def _sql(self, sql: str) -> str:
        """`sql` with its :name parameters in the driver's style."""
        return re.sub(r":(\w+)", self.param, sql)

    def mark_sending(self, session: Session, jobs: Sequence[Job], worker: str) -> set[int]:
        """Move reserved rows to `sending` just before their messages are handed over, in
        the same statement re-reading each subscriber's status: someone who left meanwhile
        gets `skipped`. Returns the delivery ids that may be sent."""
        if not jobs:
            return set()
        ids = [j.delivery_id for j in jobs]
        now = utcnow()
        self.cursor.execute(self.mark_sql, {"ids": self.ids(ids), "worker": worker, "now": self.when(now)})
        ok = {row[0] for row in self.cursor.fetchall()}
        if len(ok) < len(ids):  # rare: someone left (or the row was taken); say why in the ledger
            gone = session.execute(
                select(Delivery.id, Subscriber.status)
                .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
                .where(Delivery.id.in_([i for i in ids if i not in ok]), Subscriber.status != SubscriberStatus.ACTIVE)
            ).all()
            for delivery_id, status in gone:
                session.execute(
                    update(Delivery)
                    .where(Delivery.id == delivery_id, Delivery.status == DeliveryStatus.PENDING)
                    .values(
                        status=DeliveryStatus.SKIPPED, last_reply=f"not sent: subscriber is {status}", claimed_at=now
                    )
                )
        return ok

    def settle(self, session: Session, outcomes: Sequence[Outcome], worker: str, issue_id: int) -> None:
        """Record SMTP results (one executemany); only rows this worker holds in `sending` change."""
        if not outcomes:
            return
        now = self.when(utcnow())
        self.cursor.executemany(
            self.settle_sql,
            [
                {
                    "id": o.delivery_id,
                    "worker": worker,
                    "status": o.status.value,
                    "reply": o.reply[:2000],
                    "sent_at": now if o.status == DeliveryStatus.SENT else None,
                    "next": self.when(o.next_attempt_at),
                    "claimed_by": "" if o.status == DeliveryStatus.PENDING else worker,
                }
                for o in outcomes
            ],
        )
        for o in outcomes:
            if o.bounce:
                sub = session.get(Subscriber, o.subscriber_id)
                if sub is not None and sub.status not in SUPPRESSED:
                    subscribers.change_status(
                        session,
                        sub,
                        SubscriberStatus.BOUNCED,
                        kind=EventKind.BOUNCE,
                        source="smtp",
                        issue_id=issue_id,
                        detail=o.reply[:2000],
                    )


def release(session: Session, issue_id: int, worker: str) -> None:
    """Give back rows reserved but never started (a clean stop, or an abort)."""
    session.execute(
        update(Delivery)
        .where(Delivery.issue_id == issue_id, Delivery.status == DeliveryStatus.PENDING, Delivery.claimed_by == worker)
        .values(claimed_by="")
    )


def next_due(session: Session, issue_id: int, worker: str) -> datetime | None:
    """When `worker` should look for claimable rows again; None once no pending row is left
    but its own (those are in its queue, or were dropped with a run that failed).

    Rows another live sender reserved count as due in RESERVED_POLL: they come free when
    that sender gives them back, or when its lease lapses (its host died), and then this
    sender takes them, so the issue is finished while any sender is left."""
    now = utcnow()
    others = set(locks.live_holders(session, SENDER_LEASE)) - {worker}
    rows = session.execute(
        select(Delivery.claimed_by, func.min(Delivery.next_attempt_at))
        .where(Delivery.issue_id == issue_id, Delivery.status == DeliveryStatus.PENDING, Delivery.claimed_by != worker)
        .group_by(Delivery.claimed_by)
    ).all()
    due = [now + RESERVED_POLL if holder in others else (first or now) for holder, first in rows]
    return min(due, default=None)


def ambiguous_filter(session: Session, issue_id: int) -> ColumnElement[bool]:
    """Rows in `sending` whose sender is gone."""
    live = locks.live_holders(session, SENDER_LEASE)
    cond = and_(Delivery.issue_id == issue_id, Delivery.status == DeliveryStatus.SENDING)
    return and_(cond, Delivery.claimed_by.not_in(live)) if live else cond


def requeue_ambiguous(session: Session, issue_id: int) -> int:
    """`send --resend-ambiguous`: make the ambiguous rows pending again."""
    stmt = (
        update(Delivery)
        .where(ambiguous_filter(session, issue_id))
        .values(
            status=DeliveryStatus.PENDING,
            claimed_by="",
            next_attempt_at=None,
            last_reply="resent on request after an interrupted send",
        )
    )
    # Session.execute is typed as Result; for an UPDATE it is a CursorResult, which has rowcount.
    return cast(CursorResult[Any], session.execute(stmt)).rowcount or 0


def retry_refused_now(session: Session, issue_id: int) -> int:
    """Rows deferred because the server refused *us* (blocklist, policy) are due at the next
    run at once: the editor runs `send` again once delisted. Returns how many."""
    result = session.execute(
        update(Delivery)
        .where(
            Delivery.issue_id == issue_id,
            Delivery.status == DeliveryStatus.PENDING,
            Delivery.last_reply.startswith(REFUSED_US, autoescape=True),
        )
        .values(next_attempt_at=None)
    )
    return cast(CursorResult[Any], result).rowcount or 0


def open_count(session: Session, issue_id: int) -> int:
    """Rows still pending or sending: the issue is sent when this reaches 0."""
    return (
        session.scalar(
            select(func.count()).where(
                Delivery.issue_id == issue_id, Delivery.status.in_([DeliveryStatus.PENDING, DeliveryStatus.SENDING])
            )
        )
        or 0
    )


def retry_at(attempts: int, base: float, now: datetime | None = None) -> datetime:
    """Exponential backoff: base, 2×base, 4×base … after the 1st, 2nd, 3rd attempt."""
    return (now or utcnow()) + timedelta(seconds=base * 2 ** max(0, attempts - 1))
