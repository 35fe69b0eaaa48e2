"""An editor's choices about a draft issue: leave an article out or bring it back, move
it within or between sections, choose the lead, edit subject and intro, fix the send time.

Each choice is stored (issue_choices, the issue row) and the draft is rebuilt at once
by `builder.build`, which applies the choices again every time: a rebuild after new
articles were fetched keeps them. The desk and the `issue` CLI commands both call here.
A sent or sending issue is never changed (Conflict).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from newsletter import articles as articles_mod
from newsletter import builder
from newsletter.builder import ArticleView, IssueContent
from newsletter.config import Settings
from newsletter.errors import Conflict, InvalidInput
from newsletter.models import Article, Issue, IssueChoice, IssueStatus


@dataclass(frozen=True)
class Draft:
    """What the desk shows of an issue: the built content plus what is not in it."""

    content: IssueContent
    intro: str  # the Markdown source
    scheduled_at: datetime | None
    scheduled_by: str
    left_out: tuple[ArticleView, ...]  # excluded by an editor
    not_picked: tuple[ArticleView, ...]  # over their section's limit


def _draft_issue(session: Session, settings: Settings, week: str) -> Issue:
    issue = builder.get_issue(session, settings, week)
    if issue.status != IssueStatus.DRAFT:
        raise Conflict(f"issue {issue.week} is {issue.status}; a sent or sending issue is never changed")
    return issue


def _article(session: Session, settings: Settings, issue: Issue, url: str) -> Article:
    wanted = articles_mod.canonical_url(url.strip())
    for article in builder.week_articles(session, settings, issue.week):
        if url.strip() in (article.url, article.guid) or articles_mod.canonical_url(article.url) == wanted:
            return article
    raise InvalidInput(
        f"{url!r} is not an article published in {issue.week}; see 'newsletter articles list --week {issue.week}'"
    )


def _choice(session: Session, issue: Issue, article: Article) -> IssueChoice:
    choice = session.get(IssueChoice, (issue.id, article.id))
    if choice is None:
        choice = IssueChoice(issue_id=issue.id, article_id=article.id, excluded=False)
        session.add(choice)
    return choice


def _rebuild(session: Session, settings: Settings, issue: Issue) -> Issue:
    session.flush()
    return builder.build(session, settings, issue.week)


def exclude(session: Session, settings: Settings, week: str, url: str) -> Issue:
    """Leave an article out of the issue (its place goes to the next one of its section)."""
    issue = _draft_issue(session, settings, week)
    article = _article(session, settings, issue, url)
    _choice(session, issue, article).excluded = True
    if issue.lead_article_id == article.id:
        issue.lead_article_id = None
    return _rebuild(session, settings, issue)


def restore(session: Session, settings: Settings, week: str, url: str) -> Issue:
    """Bring a left-out article back."""
    issue = _draft_issue(session, settings, week)
    article = _article(session, settings, issue, url)
    choice = _choice(session, issue, article)
    choice.excluded = False
    if choice.section is None and choice.position is None:
        session.delete(choice)
    return _rebuild(session, settings, issue)


def _section_order(session: Session, settings: Settings, issue: Issue, slug: str) -> list[int]:
    content = builder.load_content(session, settings, issue.week)
    return [a.id for s in content.sections if s.slug == slug for a in s.articles]


def move(
    session: Session,
    settings: Settings,
    week: str,
    url: str,
    *,
    section: str | None = None,
    position: int | None = None,
) -> Issue:
    """Put an article into `section` (default: where it is) at `position` (1 = first;
    default: last). The section's order is kept from then on, also across rebuilds."""
    issue = _draft_issue(session, settings, week)
    article = _article(session, settings, issue, url)
    slugs = [c.slug for c in settings.categories]
    current = session.scalar(
        select(IssueChoice.section).where(IssueChoice.issue_id == issue.id, IssueChoice.article_id == article.id)
    )
    target = (
        section
        or current
        or (article.category if article.category in slugs else articles_mod.default_category(settings))
    )
    if target not in slugs:
        raise InvalidInput(f"--section {target!r} is not a configured category; use one of {', '.join(slugs)}")
    if position is not None and position < 1:
        raise InvalidInput(f"--position {position} must be 1 or more (1 = first in the section)")
    order = [aid for aid in _section_order(session, settings, issue, target) if aid != article.id]
    order.insert(len(order) if position is None else min(position - 1, len(order)), article.id)
    for index, aid in enumerate(order):
        choice = session.get(IssueChoice, (issue.id, aid)) or IssueChoice(issue_id=issue.id, article_id=aid)
        choice.excluded, choice.section, choice.position = False, target, index
        session.add(choice)
    if issue.lead_article_id == article.id:
        issue.lead_article_id = None  # placed in a section: no longer on top
    return _rebuild(session, settings, issue)


def step(session: Session, settings: Settings, week: str, url: str, delta: int) -> Issue:
    """Move an article up (-1) or down (+1) within its section."""
    issue = _draft_issue(session, settings, week)
    article = _article(session, settings, issue, url)
    content = builder.load_content(session, settings, issue.week)
    for sec in content.sections:
        ids = [a.id for a in sec.articles]
        if article.id in ids:
            return move(
                session, settings, week, url, section=sec.slug, position=max(1, ids.index(article.id) + 1 + delta)
            )
    raise InvalidInput(f"{url!r} is not in a section of {issue.week}; restore it first")


def set_lead(session: Session, settings: Settings, week: str, url: str | None) -> Issue:
    """Feature an article on top of the issue (None: no lead)."""
    issue = _draft_issue(session, settings, week)
    if url is None:
        issue.lead_article_id = None
        return _rebuild(session, settings, issue)
    article = _article(session, settings, issue, url)
    choice = session.get(IssueChoice, (issue.id, article.id))
    if choice is not None:
        session.delete(choice)  # the lead is on top: no section place, not left out
    issue.lead_article_id = article.id
    return _rebuild(session, settings, issue)


def edit(session: Session, settings: Settings, week: str, *, subject: str, intro: str) -> Issue:
    """Set subject (empty: the configured template) and the Markdown intro."""
    issue = _draft_issue(session, settings, week)
    return builder.build(session, settings, issue.week, subject=subject, intro=intro)


def schedule(session: Session, settings: Settings, week: str, when: datetime | None, *, editor: str) -> Issue:
    """Send at `when` (a `newsletter run` after that time sends it); None: the configured send day."""
    issue = _draft_issue(session, settings, week)
    if when is not None and when.tzinfo is None:
        raise ValueError("naive datetime given to schedule")
    issue.scheduled_by = editor if when is not None else ""
    issue.scheduled_at = when or builder.scheduled_at(settings, issue.week)
    return issue


def draft(session: Session, settings: Settings, week: str) -> Draft:
    """The issue as the desk shows it; NotFound if it was never built."""
    issue = builder.get_issue(session, settings, week)
    content = builder.load_content(session, settings, issue.week)
    shown = {a.id for s in content.sections for a in s.articles} | ({content.lead.id} if content.lead else set())
    excluded = set(
        session.scalars(
            select(IssueChoice.article_id).where(IssueChoice.issue_id == issue.id, IssueChoice.excluded.is_(True))
        )
    )
    left_out: list[ArticleView] = []
    not_picked: list[ArticleView] = []
    if issue.status == IssueStatus.DRAFT:
        for article in builder.week_articles(session, settings, issue.week):
            if article.id not in shown:
                view = builder.article_view(article, article.category)
                (left_out if article.id in excluded else not_picked).append(view)
    return Draft(content, issue.intro, issue.scheduled_at, issue.scheduled_by, tuple(left_out), tuple(not_picked))
