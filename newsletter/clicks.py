"""Click tracking that respects readers: counts per article, never who clicked.

An article link in the mail becomes `<base_url>/c/<token>`; the token is signed for
(article, issue) and carries no subscriber, so every reader of a variant gets the same
link and it is rendered once. The redirect only ever goes to the URL of an article of
that issue. Link scanners are told apart from readers without knowing who anyone is:
a HEAD request, or one client fetching a second article of the same issue within
`[tracking] scanner_burst_seconds`, counts as a scanner (and takes back the click that
client made just before). Opens are not tracked.

Only with `[tracking] per_subscriber = true` does a link name its reader: the render puts
a slot after each token, which the sender fills per message with `/<reader token>`
(subscriber, issue), and a reader's click is then also kept as a `SubscriberClick`.
"""

from __future__ import annotations

import dataclasses
import enum
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from newsletter import tokens
from newsletter.builder import ArticleView, IssueContent
from newsletter.config import Settings
from newsletter.errors import InvalidToken, NotFound
from newsletter.models import Article, ClickCount, Issue, IssueArticle, IssueStatus, Subscriber, SubscriberClick


def tracked_url(settings: Settings, issue_id: int, article_id: int) -> str:
    token = tokens.make(settings.newsletter.secret_key, tokens.CLICK, article_id, issue_id)
    return f"{settings.newsletter.base_url.rstrip('/')}/c/{token}"


class ReaderPaths:
    """What follows a tracked link's token in one subscriber's message: `/<reader token>`
    with [tracking] per_subscriber, else nothing (and for test copies, subscriber 0). The
    sender makes one a message, so the tokens come from a `tokens.Minter`."""

    def __init__(self, settings: Settings) -> None:
        per_subscriber = settings.tracking.per_subscriber
        self._mint = tokens.Minter(settings.newsletter.secret_key, tokens.READER) if per_subscriber else None

    def __call__(self, subscriber_id: int, issue_id: int) -> str:
        if self._mint is None or not subscriber_id:
            return ""
        return "/" + self._mint(subscriber_id, issue_id)


def tracked(settings: Settings, content: IssueContent, *, reader: str = "") -> IssueContent:
    """The content with every article link through the click redirect (when [tracking] clicks),
    each followed by `reader` (the render's slot for `ReaderPaths`) with per_subscriber."""
    if not settings.tracking.clicks:
        return content
    after = reader if settings.tracking.per_subscriber else ""

    def link(a: ArticleView) -> ArticleView:
        return dataclasses.replace(a, url=tracked_url(settings, content.issue_id, a.id) + after)

    return dataclasses.replace(
        content,
        lead=link(content.lead) if content.lead else None,
        sections=tuple(dataclasses.replace(s, articles=tuple(map(link, s.articles))) for s in content.sections),
    )


def target(session: Session, issue_id: int, article_id: int) -> tuple[str, bool]:
    """(the article's URL, whether clicks count: the issue went out) for a link of that issue;
    NotFound for an article that is not in it."""
    row = session.execute(
        select(Article.url, Issue.status)
        .join(IssueArticle, IssueArticle.article_id == Article.id)
        .join(Issue, Issue.id == IssueArticle.issue_id)
        .where(IssueArticle.issue_id == issue_id, IssueArticle.article_id == article_id)
    ).first()
    if row is None:
        raise NotFound("no such article in that issue")
    return row[0], row[1] != IssueStatus.DRAFT


def record(session: Session, issue_id: int, article_id: int, *, clicks: int = 0, scanner: int = 0) -> None:
    """Add to an article's counts (negative `clicks` takes back a click found to be a scanner's)."""
    changed = session.execute(
        update(ClickCount)
        .where(ClickCount.issue_id == issue_id, ClickCount.article_id == article_id)
        .values(clicks=ClickCount.clicks + clicks, scanner=ClickCount.scanner + scanner)
    ).rowcount  # type: ignore[attr-defined]  # CursorResult of an UPDATE
    if not changed:
        with session.begin_nested():
            session.add(ClickCount(issue_id=issue_id, article_id=article_id, clicks=clicks, scanner=scanner))


class Verdict(enum.Enum):
    READER = "reader"
    REPEAT = "repeat"  # the same client and link again within the window: counted once
    SCANNER = "scanner"


@dataclass(frozen=True)
class Seen:
    at: float
    article_id: int
    reader: int | None  # the subscriber the link named (per_subscriber), else None
    counted: bool


class ScannerFilter:
    """Recent clicks per (client, issue), in the serving process's memory only."""

    PRUNE_AT = 10_000

    def __init__(self, window: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.window, self.clock = window, clock
        self._recent: dict[tuple[str, int], list[Seen]] = {}

    def judge(
        self, client: str, issue_id: int, article_id: int, reader: int | None = None
    ) -> tuple[Verdict, list[tuple[int, int | None]]]:
        """The verdict on this click and the (article, reader) clicks from this client that
        were counted but turned out to be a scanner's (to take back)."""
        now = self.clock()
        if len(self._recent) > self.PRUNE_AT:
            self._recent = {k: v for k, v in self._recent.items() if v and v[-1].at > now - self.window}
        recent = [e for e in self._recent.get((client, issue_id), []) if e.at > now - self.window]
        if any(e.article_id != article_id for e in recent):
            revoked = [(e.article_id, e.reader) for e in recent if e.counted]
            uncounted = [dataclasses.replace(e, counted=False) for e in recent]
            self._recent[(client, issue_id)] = [*uncounted, Seen(now, article_id, reader, False)]
            return Verdict.SCANNER, revoked
        self._recent[(client, issue_id)] = [*recent, Seen(now, article_id, reader, not recent)]
        return (Verdict.REPEAT if recent else Verdict.READER), []


@dataclass(frozen=True)
class ClickStats:
    clicks: int
    scanner: int
    by_section: list[tuple[str, int]]  # (section name, clicks), in the issue's section order
    top: list[tuple[str, str, str, int]]  # (title, url, section name, clicks), most clicked first


def click_stats(session: Session, settings: Settings, issue_id: int, *, top: int = 10) -> ClickStats:
    """Clicks of one issue per section and its most clicked articles."""
    names = {c.slug: c.name for c in settings.categories}
    rows = session.execute(
        select(Article.title, Article.url, IssueArticle.category, ClickCount.clicks, ClickCount.scanner)
        .join(
            IssueArticle,
            (IssueArticle.article_id == ClickCount.article_id) & (IssueArticle.issue_id == ClickCount.issue_id),
        )
        .join(Article, Article.id == ClickCount.article_id)
        .where(ClickCount.issue_id == issue_id)
    ).all()
    order = [c.slug for c in settings.categories]
    per_section: dict[str, int] = {}
    for _title, _url, slug, n, _scanner in rows:
        per_section[slug] = per_section.get(slug, 0) + n
    sections = sorted(per_section, key=lambda s: order.index(s) if s in order else len(order))
    ranked = sorted(rows, key=lambda r: (-r[3], r[0]))[:top]
    return ClickStats(
        clicks=sum(r[3] for r in rows),
        scanner=sum(r[4] for r in rows),
        by_section=[(names.get(s, s), per_section[s]) for s in sections],
        top=[(r[0], r[1], names.get(r[2], r[2]), r[3]) for r in ranked if r[3] > 0],
    )


def reader_of(settings: Settings, issue_id: int, reader: str | None) -> int | None:
    """The subscriber a link's reader part names, when per-person clicks are kept (else None:
    mail sent with per_subscriber on still counts, only in aggregate, once it is turned off).
    InvalidToken for a forged part or one of another issue's message."""
    if reader is None:
        return None
    data = tokens.read(settings.newsletter.secret_key, tokens.READER, reader)
    if data.issue_id != issue_id:
        raise InvalidToken("this link is not valid")
    return data.subscriber_id if settings.tracking.per_subscriber else None


def record_person(session: Session, subscriber_id: int, issue_id: int, article_id: int) -> None:
    """Keep one reader's click (nothing if the subscriber was erased since the mail went out)."""
    if session.get(Subscriber, subscriber_id) is not None:
        session.add(SubscriberClick(subscriber_id=subscriber_id, issue_id=issue_id, article_id=article_id))


def forget_person(session: Session, subscriber_id: int, issue_id: int, article_id: int) -> None:
    """Take back that reader's latest click on the article: it was a link scanner's."""
    latest = session.scalar(
        select(func.max(SubscriberClick.id)).where(
            SubscriberClick.subscriber_id == subscriber_id,
            SubscriberClick.issue_id == issue_id,
            SubscriberClick.article_id == article_id,
        )
    )
    if latest is not None:
        session.execute(delete(SubscriberClick).where(SubscriberClick.id == latest))


@dataclass(frozen=True)
class PersonClick:
    week: str
    title: str
    url: str
    at: datetime


def person_clicks(session: Session, subscriber_id: int) -> list[PersonClick]:
    """One subscriber's recorded clicks, newest first."""
    rows = session.execute(
        select(Issue.week, Article.title, Article.url, SubscriberClick.clicked_at)
        .join(Issue, Issue.id == SubscriberClick.issue_id)
        .join(Article, Article.id == SubscriberClick.article_id)
        .where(SubscriberClick.subscriber_id == subscriber_id)
        .order_by(SubscriberClick.id.desc())
    )
    return [PersonClick(*row) for row in rows]


def clicks_per_issue(session: Session, issue_ids: list[int]) -> dict[int, int]:
    """Total clicks per issue, for the desk's charts."""
    rows = session.execute(
        select(ClickCount.issue_id, func.sum(ClickCount.clicks))
        .where(ClickCount.issue_id.in_(issue_ids))
        .group_by(ClickCount.issue_id)
    )
    return {issue_id: int(n or 0) for issue_id, n in rows}
