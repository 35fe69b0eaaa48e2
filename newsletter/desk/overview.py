"""The desk's home page: the list at a glance, its growth and churn, the last issues."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import Response

from newsletter import subscribers, trends
from newsletter.config import Settings
from newsletter.desk import charts
from newsletter.desk.base import DeskState, Signed, editor_only


def _overview(session: Session, settings: Settings, counts: trends.SentCounts, memo: Growth) -> dict[str, Any]:
    growth = memo.get(session, settings)
    issues = trends.last_issues(session, counts)
    return {
        "counts": subscribers.counts_by_status(session),
        "growth_chart": charts.up_down(
            "Subscribers joined (up) and left (down) per week", [(g.week[-3:], g.joined, g.left) for g in growth]
        ),
        "sent_chart": charts.bars("Delivered per issue", [(i.week[-3:], i.sent) for i in issues]),
        "clicks_chart": charts.bars("Clicks per issue", [(i.week[-3:], i.clicks) for i in issues], color="up"),
        "issues": issues,
    }


class Growth:
    """`trends.growth` kept for a minute: it reads the whole subscriber table (100,000 rows:
    ~0.3 s on SQLite), and a chart of weeks does not need to move by the second."""

    def __init__(self, ttl: float = 60.0, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl, self.clock = ttl, clock
        self._value: tuple[float, list[trends.WeekChange]] | None = None

    def get(self, session: Session, settings: Settings) -> list[trends.WeekChange]:
        if self._value is None or self._value[0] <= self.clock():
            self._value = (self.clock() + self.ttl, trends.growth(session, settings))
        return self._value[1]


class Overview:
    def __init__(self, state: DeskState) -> None:
        self.state = state
        self.growth = Growth()

    @editor_only
    async def home(self, request: Request, signed: Signed) -> Response:
        data = await self.state.db(_overview, self.state.settings, self.state.sent_counts, self.growth)
        return self.state.page(request, "admin/home.html", signed=signed, title="Desk", **data)
