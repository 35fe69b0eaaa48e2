"""Curating the week on the desk: the issues list, a draft by section with its choices
(curation.py), subject and intro with a live preview, and the issue as a subscriber gets it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from newsletter import builder, curation, render, trends
from newsletter.desk.base import HEADERS, DeskState, Signed, editor_only
from newsletter.errors import InvalidInput
from newsletter.models import Issue, IssueArticle, IssueStatus

# The issue preview shows the articles' images from wherever they are hosted, runs nothing
# and, sandboxed, cannot navigate the desk; only the desk may frame it.
PREVIEW_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src * data:; frame-ancestors 'self'; sandbox"


def issue_rows(session: Session, counts: trends.SentCounts) -> list[dict[str, Any]]:
    """Every issue, newest week first, with its article count and deliveries per status."""
    articles = dict(session.execute(select(IssueArticle.issue_id, func.count()).group_by(IssueArticle.issue_id)).all())
    issues = list(session.scalars(select(Issue).order_by(Issue.week.desc())))
    deliveries = counts.get(session, [i for i in issues if i.status != IssueStatus.DRAFT])
    return [{"issue": i, "articles": articles.get(i.id, 0), "deliveries": deliveries.get(i.id, {})} for i in issues]


def _build(session: Session, settings: Any, week: str) -> str:
    return builder.build(session, settings, week).week


class Issues:
    def __init__(self, state: DeskState) -> None:
        self.state = state

    @editor_only
    async def index(self, request: Request, signed: Signed) -> Response:
        rows = await self.state.db(issue_rows, self.state.sent_counts)
        week = builder.current_week(self.state.settings)
        return self.state.page(request, "admin/issues.html", signed=signed, title="Issues", rows=rows, week=week)

    @editor_only
    async def build(self, request: Request, signed: Signed) -> Response:
        """Build (or rebuild) a week's draft from the articles fetched so far, keeping the choices."""
        form = await request.form()
        week = str(form.get("week", "")).strip() or builder.current_week(self.state.settings)
        week = await self.state.db(_build, self.state.settings, week)
        return RedirectResponse(f"/admin/issues/{week}?notice=rebuilt", status_code=303, headers=HEADERS)

    @editor_only
    async def show(self, request: Request, signed: Signed) -> Response:
        week = request.path_params["week"]
        draft = await self.state.db(curation.draft, self.state.settings, week)
        tz = self.state.settings.tz
        notice = NOTICES.get(request.query_params.get("notice", ""), "")
        return self.state.page(
            request,
            "admin/issue.html",
            signed=signed,
            title=f"Issue {week}",
            draft=draft,
            content=draft.content,
            sections=[(c.slug, c.name) for c in self.state.settings.categories],
            tz_name=self.state.settings.newsletter.timezone,
            scheduled=draft.scheduled_at.astimezone(tz).strftime("%Y-%m-%dT%H:%M") if draft.scheduled_at else "",
            subscriber=request.query_params.get("subscriber", ""),
            notice=notice,
        )

    @editor_only
    async def article(self, request: Request, signed: Signed) -> Response:
        """One choice about one article: exclude, restore, up, down, lead, unlead, move."""
        week = request.path_params["week"]
        form = await request.form()
        action, url = str(form.get("action", "")), str(form.get("url", ""))
        settings = self.state.settings
        actions: dict[str, Callable[[Session], object]] = {
            "exclude": lambda s: curation.exclude(s, settings, week, url),
            "restore": lambda s: curation.restore(s, settings, week, url),
            "up": lambda s: curation.step(s, settings, week, url, -1),
            "down": lambda s: curation.step(s, settings, week, url, +1),
            "lead": lambda s: curation.set_lead(s, settings, week, url),
            "unlead": lambda s: curation.set_lead(s, settings, week, None),
            "move": lambda s: curation.move(s, settings, week, url, section=str(form.get("section", "")) or None),
        }
        if action not in actions:
            raise InvalidInput(f"unknown action {action!r}")
        await self.state.db(actions[action])
        return RedirectResponse(f"/admin/issues/{week}?notice={action}", status_code=303, headers=HEADERS)

    @editor_only
    async def text(self, request: Request, signed: Signed) -> Response:
        """Subject and Markdown intro."""
        week = request.path_params["week"]
        form = await request.form()
        await self.state.db(
            curation.edit,
            self.state.settings,
            week,
            subject=str(form.get("subject", "")),
            intro=str(form.get("intro", "")),
        )
        return RedirectResponse(f"/admin/issues/{week}?notice=text", status_code=303, headers=HEADERS)

    @editor_only
    async def intro_preview(self, request: Request, signed: Signed) -> Response:
        """The intro's Markdown as the issue will show it (the page's live preview asks for it)."""
        form = await request.form()
        html = builder.intro_html(str(form.get("intro", ""))[:100_000])
        return HTMLResponse(html, headers={**HEADERS, "Content-Security-Policy": "default-src 'none'"})

    @editor_only
    async def preview(self, request: Request, signed: Signed) -> Response:
        """The issue's email HTML, whole or as one subscriber receives it (framed by the draft page)."""
        week = request.path_params["week"]
        email = request.query_params.get("subscriber", "").strip() or None
        html, _text = await self.state.db(render.preview, self.state.settings, week, email=email)
        return HTMLResponse(html, headers={**HEADERS, "Content-Security-Policy": PREVIEW_CSP})


NOTICES = {
    "rebuilt": "Rebuilt from the articles fetched so far; your choices are kept.",
    "exclude": "Left out. The next article of its section took its place.",
    "restore": "Brought back.",
    "up": "Moved up.",
    "down": "Moved down.",
    "move": "Moved.",
    "lead": "That article now leads the issue.",
    "unlead": "The issue has no lead article now.",
    "text": "Subject and intro saved.",
    "test": "Test copy sent.",
    "scheduled": "Scheduled. `newsletter run` (cron) sends it once that time has passed.",
    "unscheduled": "Back to the configured send day.",
    "sending": "Sending started.",
}
