"""Click tracking that respects readers: counts per article, never who clicked.

An article link in the mail becomes `<base_url>/c/<token>`; the token is signed for
(article, issue) and carries no subscriber, so every reader of a variant gets the same
link and it is rendered once. The redirect only ever goes to the URL of an article of
that issue. Link scanners are told apart from readers without knowing who anyone is:
a HEAD request, or one client fetching a second article of the same issue within
`[tracking] scanner_burst_seconds`, counts as a scanner (and takes back the click that
client made just before). Opens are not tracked.
"""

from __future__ import annotations

import dataclasses
import enum
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from newsletter import tokens
from newsletter.builder import ArticleView, IssueContent
from newsletter.config import Settings
from newsletter.errors import NotFound
from newsletter.models import Article, ClickCount, Issue, IssueArticle, IssueStatus


def tracked_url(settings: Settings, issue_id: int, article_id: int) -> str:
    token = tokens.make(settings.newsletter.secret_key, tokens.CLICK, article_id, issue_id)
    return f"{settings.newsletter.base_url.rstrip('/')}/c/{token}"


def tracked(settings: Settings, content: IssueContent) -> IssueContent:
    """The content with every article link through the click redirect (when [tracking] clicks)."""
    if not settings.tracking.clicks:
        return content

    def link(a: ArticleView) -> ArticleView:
        return dataclasses.replace(a, url=tracked_url(settings, content.issue_id, a.id))

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


class ScannerFilter:
    """Recent clicks per (client, issue), in the serving process's memory only."""

    PRUNE_AT = 10_000

    def __init__(self, window: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.window, self.clock = window, clock
        self._recent: dict[tuple[str, int], list[tuple[float, int, bool]]] = {}

    def judge(self, client: str, issue_id: int, article_id: int) -> tuple[Verdict, list[int]]:
        """The verdict on this click and the articles whose counted click from this client
        turned out to be a scanner's (to take back)."""
        now = self.clock()
        if len(self._recent) > self.PRUNE_AT:
            self._recent = {k: v for k, v in self._recent.items() if v and v[-1][0] > now - self.window}
        recent = [e for e in self._recent.get((client, issue_id), []) if e[0] > now - self.window]
        if any(aid != article_id for _, aid, _ in recent):
            revoked = [aid for _, aid, counted in recent if counted]
            self._recent[(client, issue_id)] = [(t, aid, False) for t, aid, _ in recent] + [(now, article_id, False)]
            return Verdict.SCANNER, revoked
        self._recent[(client, issue_id)] = [*recent, (now, article_id, not recent)]
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


def clicks_per_issue(session: Session, issue_ids: list[int]) -> dict[int, int]:
    """Total clicks per issue, for the desk's charts."""
    rows = session.execute(
        select(ClickCount.issue_id, func.sum(ClickCount.clicks))
        .where(ClickCount.issue_id.in_(issue_ids))
        .group_by(ClickCount.issue_id)
    )
    return {issue_id: int(n or 0) for issue_id, n in rows}
