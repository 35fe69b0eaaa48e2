"""Select the week's articles into an Issue: sections in configured order, newest first.

A week is an ISO week key ('2026-W48') read in the configured time zone, so an
article published at 00:30 on Monday in Berlin belongs to the new week even though
it is still Sunday in UTC. The issue stores its picks (issue_articles) so a preview,
the sender and the web archive all show the same selection; `load_content` turns
them into plain frozen values the renderer can use without a session.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from markdown_it import MarkdownIt
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from newsletter import articles as articles_mod
from newsletter import locks
from newsletter.config import WEEKDAYS, Settings
from newsletter.errors import Conflict, InvalidInput, NotFound
from newsletter.models import Article, Delivery, DeliveryStatus, Issue, IssueArticle, IssueChoice, IssueStatus, utcnow

WEEK_RE = re.compile(r"^(\d{4})-W(\d{2})$")


@dataclass(frozen=True)
class ArticleView:
    id: int
    title: str
    url: str
    author: str
    summary: str  # sanitised HTML
    image_url: str
    published_at: datetime | None  # None: unknown, shown without a date
    category: str


@dataclass(frozen=True)
class Section:
    slug: str
    name: str
    articles: tuple[ArticleView, ...]


@dataclass(frozen=True)
class IssueContent:
    issue_id: int
    week: str
    status: IssueStatus
    subject: str
    intro_html: str
    lead: ArticleView | None
    sections: tuple[Section, ...]  # configured order, empty ones left out


def current_week(settings: Settings, now: datetime | None = None) -> str:
    """The ISO week key ('YYYY-Www') of `now` (default: the present) in settings.tz."""
    local = (now or utcnow()).astimezone(settings.tz)
    year, week, _ = local.isocalendar()
    return f"{year}-W{week:02d}"


def _monday(week: str) -> date:
    match = WEEK_RE.match(week.strip())
    try:
        if not match:
            raise ValueError
        return date.fromisocalendar(int(match[1]), int(match[2]), 1)
    except ValueError:
        raise InvalidInput(f"week {week!r} is not an ISO week like '2026-W48'") from None


def _local(day: date, at: time, settings: Settings) -> datetime:
    return datetime.combine(day, at, tzinfo=settings.tz).astimezone(UTC)


def week_bounds(settings: Settings, week: str) -> tuple[datetime, datetime]:
    """UTC [start, end) of the ISO week `week` in settings.tz; InvalidInput on a bad key."""
    monday = _monday(week)
    return _local(monday, time(0), settings), _local(monday + timedelta(days=7), time(0), settings)


def scheduled_at(settings: Settings, week: str) -> datetime:
    """The configured send day and time of that week, in settings.tz, as UTC."""
    day = _monday(week) + timedelta(days=WEEKDAYS.index(settings.newsletter.send_day.lower()))
    hh, _, mm = settings.newsletter.send_time.partition(":")
    return _local(day, time(int(hh), int(mm)), settings)


def week_articles(session: Session, settings: Settings, week: str) -> list[Article]:
    """Articles published in that week, newest first. An article whose date is unknown
    (none given, or unreadable) counts as published when it was first seen: it lands in
    the week it arrived, never lost and never in a past issue."""
    start, end = week_bounds(settings, week)
    dated = func.coalesce(Article.published_at, Article.created_at)
    query = select(Article).where(dated >= start, dated < end).order_by(dated.desc(), Article.id.desc())
    return list(session.scalars(query))


def default_subject(settings: Settings, week: str) -> str:
    """The `[newsletter] subject` template filled in for that week."""
    send_day = scheduled_at(settings, week).astimezone(settings.tz).date()
    monday = _monday(week)
    year, number, _ = monday.isocalendar()
    subject = settings.newsletter.subject.format(
        name=settings.newsletter.name, week=week, week_number=number, year=year, date=f"{send_day.day} {send_day:%B %Y}"
    )
    return " ".join(subject.split())


def _find_lead(candidates: list[Article], lead_url: str, week: str) -> Article:
    wanted = articles_mod.canonical_url(lead_url)
    for article in candidates:
        if lead_url in (article.url, article.guid) or articles_mod.canonical_url(article.url) == wanted:
            return article
    raise InvalidInput(
        f"--lead {lead_url!r} is not an article published in {week}; see 'newsletter articles list --week {week}'"
    )


def build(
    session: Session,
    settings: Settings,
    week: str | None = None,
    *,
    intro: str | None = None,
    subject: str | None = None,
    lead_url: str | None = None,
    force: bool = False,
) -> Issue:
    """Create or refresh the draft issue of `week` (default: the current week).

    Intro, subject and lead given as None keep what an earlier build set; `force`
    resets them to the defaults (no intro, the subject template, no lead) and drops the
    editors' choices (curation.py) and a send time chosen on the desk.
    A sending issue that reached nobody becomes a draft again (see `reopen`). Raises
    Conflict for a sent issue or a sending one that may have reached readers, and
    InvalidInput for a bad week key, an unknown lead or a week without articles."""
    week = week.strip() if week else current_week(settings)
    start, end = week_bounds(settings, week)
    issue = session.scalar(select(Issue).where(Issue.week == week))
    if issue is not None and issue.status != IssueStatus.DRAFT:
        reopen(session, issue)
    candidates = week_articles(session, settings, week)
    if not candidates:
        first, last = start.astimezone(settings.tz).date(), (end - timedelta(seconds=1)).astimezone(settings.tz).date()
        raise InvalidInput(
            f"no articles were published in {week} ({first} to {last}); "
            f"run 'newsletter articles fetch' or 'newsletter articles import FILE' first"
        )
    if issue is None:
        issue = Issue(week=week, status=IssueStatus.DRAFT, subject="", intro="")
        session.add(issue)
    elif force:
        issue.subject, issue.intro, issue.lead_article_id, issue.scheduled_by = "", "", None, ""
        session.execute(delete(IssueChoice).where(IssueChoice.issue_id == issue.id))
    if intro is not None:
        issue.intro = intro.strip()
    if subject is not None:
        issue.subject = " ".join(subject.split())  # one header line: no CR/LF
    issue.subject = issue.subject or default_subject(settings, week)
    if lead_url:
        issue.lead_article_id = _find_lead(candidates, lead_url, week).id
    elif issue.lead_article_id not in {a.id for a in candidates}:
        issue.lead_article_id = None  # the old lead was re-dated out of this week
    if not issue.scheduled_by:  # a time an editor chose on the desk stays
        issue.scheduled_at = scheduled_at(settings, week)
    issue.built_at = utcnow()
    session.flush()
    session.execute(delete(IssueArticle).where(IssueArticle.issue_id == issue.id))
    choices = {c.article_id: c for c in session.scalars(select(IssueChoice).where(IssueChoice.issue_id == issue.id))}
    for position, (slug, article) in enumerate(_pick(settings, candidates, issue.lead_article_id, choices)):
        session.add(IssueArticle(issue_id=issue.id, article_id=article.id, category=slug, position=position))
    session.flush()
    return issue


def reopen(session: Session, issue: Issue) -> None:
    """Turn a sending issue that delivered nothing (server down, login refused, the send
    stopped by the breaker) back into a draft, its planned deliveries dropped, so it can be
    edited and rebuilt. Raises Conflict for a sent issue, one that may have reached a
    reader (sent or ambiguous rows), or while a `newsletter send` runs."""
    if issue.status == IssueStatus.SENT:
        raise Conflict(f"issue {issue.week} was sent; a sent issue is never rebuilt")
    reached = (
        session.scalar(
            select(func.count()).where(
                Delivery.issue_id == issue.id, Delivery.status.in_([DeliveryStatus.SENT, DeliveryStatus.SENDING])
            )
        )
        or 0
    )
    if reached:
        raise Conflict(
            f"issue {issue.week} is sending and {reached} readers may already have it, so it cannot "
            f"change; finish it with 'newsletter send --week {issue.week}', or stop it with "
            f"'newsletter issue cancel --week {issue.week}'"
        )
    if locks.live_holders(session, locks.SENDER):
        raise Conflict(f"a 'newsletter send' is running; let it finish or stop it, then edit issue {issue.week}")
    session.execute(delete(Delivery).where(Delivery.issue_id == issue.id))
    issue.status, issue.send_started_at = IssueStatus.DRAFT, None


def _pick(
    settings: Settings, candidates: list[Article], lead_id: int | None, choices: dict[int, IssueChoice]
) -> list[tuple[str, Article]]:
    """(section slug, article) in section order, newest first, at most `limit` per section,
    with the editors' choices applied.

    The lead comes first under its own section and counts against no limit; an
    article whose category is no longer configured goes to the default section. An
    article an editor left out frees its place for the next one; one an editor placed
    (another section, or a position) is always in, at that position of its section, and
    takes a place of the section's limit."""
    default = articles_mod.default_category(settings)
    limits = {c.slug: c.limit for c in settings.categories}
    auto: dict[str, list[Article]] = {slug: [] for slug in limits}
    placed: dict[str, list[tuple[int, Article]]] = {slug: [] for slug in limits}
    picks: list[tuple[str, Article]] = []
    for article in candidates:
        choice = choices.get(article.id)
        slug = article.category if article.category in limits else default
        if choice is not None and choice.section in limits:
            slug = choice.section
        if article.id == lead_id:
            picks.append((slug, article))
        elif choice is not None and choice.excluded:
            continue
        elif choice is not None and (choice.section is not None or choice.position is not None):
            at = len(candidates) if choice.position is None else choice.position  # None: at the end
            placed[slug].append((at, article))
        else:
            auto[slug].append(article)
    for slug, items in placed.items():
        section = auto[slug][: max(0, limits[slug] - len(items))]
        for position, article in sorted(items, key=lambda item: item[0]):
            section.insert(min(position, len(section)), article)
        picks += [(slug, a) for a in section]
    return picks


def article_view(article: Article, section: str) -> ArticleView:
    """An article as the renderer sees it: URLs made safe, summary sanitised."""
    return ArticleView(
        id=article.id,
        title=article.title,
        url=articles_mod.safe_url(article.url),
        author=article.author,
        summary=articles_mod.sanitize(article.summary),
        image_url=articles_mod.safe_url(article.image_url),
        published_at=article.published_at,
        category=section,
    )


_markdown = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": True})


def intro_html(markdown: str) -> str:
    """The editor's Markdown intro as HTML; raw HTML in it is shown as text, never run."""
    return articles_mod.sanitize(_markdown.render(markdown)) if markdown.strip() else ""


def get_issue(session: Session, settings: Settings, week: str | None) -> Issue:
    """The built issue of `week` (default: the current week); NotFound if it was never built."""
    week = week or current_week(settings)
    _monday(week)
    issue = session.scalar(select(Issue).where(Issue.week == week))
    if issue is None:
        raise NotFound(f"no issue for {week}; run 'newsletter issue build --week {week}' first")
    return issue


def load_content(session: Session, settings: Settings, week: str) -> IssueContent:
    """The built issue of `week` as frozen values; NotFound if it was never built."""
    issue = get_issue(session, settings, week)
    rows = session.execute(
        select(IssueArticle.category, Article)
        .join(Article, Article.id == IssueArticle.article_id)
        .where(IssueArticle.issue_id == issue.id)
        .order_by(IssueArticle.position)
    ).all()
    names = {c.slug: c.name for c in settings.categories}
    grouped: dict[str, list[ArticleView]] = {slug: [] for slug in names}
    lead = None
    for slug, article in rows:
        if article.id == issue.lead_article_id:
            lead = article_view(article, slug)
        else:
            grouped.setdefault(slug, []).append(article_view(article, slug))
    sections = tuple(
        Section(slug, names.get(slug, slug.replace("-", " ").capitalize()), tuple(items))
        for slug, items in grouped.items()
        if items
    )
    return IssueContent(
        issue_id=issue.id,
        week=issue.week,
        status=issue.status,
        subject=issue.subject,
        intro_html=intro_html(issue.intro),
        lead=lead,
        sections=sections,
    )


def list_issues(session: Session) -> list[Issue]:
    """Every issue, newest week first."""
    return list(session.scalars(select(Issue).order_by(Issue.week.desc())))
