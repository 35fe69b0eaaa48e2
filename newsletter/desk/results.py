"""What readers did with one issue: delivered, bounced, complaints, unsubscribes, and
clicks per section and per article (counts only)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import Response

from newsletter import builder, clicks, stats, trends
from newsletter.config import Settings
from newsletter.desk import charts
from newsletter.desk.base import DeskState, Signed, editor_only


def _results(session: Session, settings: Settings, week: str, sent_counts: trends.SentCounts) -> dict[str, Any]:
    result = stats.issue_stats(session, settings, week, counted=lambda s, issue: sent_counts.get(s, [issue])[issue.id])
    issue_id = builder.get_issue(session, settings, week).id
    clicked = clicks.click_stats(session, settings, issue_id)
    return {
        "stats": result,
        "clicked": clicked,
        "sections_chart": charts.bars("Clicks per section", clicked.by_section, color="up"),
    }


class Results:
    def __init__(self, state: DeskState) -> None:
        self.state = state

    @editor_only
    async def issue(self, request: Request, signed: Signed) -> Response:
        week = request.path_params["week"]
        data = await self.state.db(_results, self.state.settings, week, self.state.sent_counts)
        return self.state.page(
            request,
            "admin/stats.html",
            signed=signed,
            title=f"Results {week}",
            week=week,
            per_subscriber=self.state.settings.tracking.per_subscriber,
            **data,
        )
