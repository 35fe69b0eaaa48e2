"""The desk's home page: the list at a glance."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from newsletter import subscribers
from newsletter.desk.base import DeskState, Signed, editor_only


class Overview:
    def __init__(self, state: DeskState) -> None:
        self.state = state

    @editor_only
    async def home(self, request: Request, signed: Signed) -> Response:
        counts = await self.state.db(subscribers.counts_by_status)
        return self.state.page(request, "admin/home.html", signed=signed, title="Desk", counts=counts)
