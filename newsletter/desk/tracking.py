"""The reader-facing click redirect `/c/<token>`: count, then go to the article.

Only ever to the URL of an article of the token's issue (never an open redirect): a
forged token is a 400 page, a token naming an article outside its issue a 404."""

from __future__ import annotations

from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from newsletter import articles, clicks, tokens
from newsletter.desk.base import DeskState
from newsletter.errors import NotFound

HEADERS = {"Referrer-Policy": "no-referrer", "Cache-Control": "no-store", "X-Robots-Tag": "noindex"}


class Tracking:
    def __init__(self, state: DeskState) -> None:
        self.state = state
        self.scanners = clicks.ScannerFilter(state.settings.tracking.scanner_burst_seconds)

    async def click(self, request: Request) -> Response:
        data = tokens.read(self.state.settings.newsletter.secret_key, tokens.CLICK, request.path_params["token"])
        if data.issue_id is None:
            raise NotFound("no such link")
        issue_id, article_id = data.issue_id, data.subscriber_id
        url, counts = await self.state.db(clicks.target, issue_id, article_id)
        url = articles.safe_url(url)
        if not url:
            raise NotFound("no such link")
        if counts:
            await self._count(request, issue_id, article_id)
        return RedirectResponse(url, status_code=302, headers=HEADERS)

    async def _count(self, request: Request, issue_id: int, article_id: int) -> None:
        if request.method == "HEAD":  # a prefetch: no reader reads with HEAD
            await self.state.db(clicks.record, issue_id, article_id, scanner=1)
            return
        client = request.client.host if request.client else "unknown"
        verdict, revoked = self.scanners.judge(client, issue_id, article_id)

        def write(session: Session) -> None:
            if verdict is clicks.Verdict.READER:
                clicks.record(session, issue_id, article_id, clicks=1)
            elif verdict is clicks.Verdict.SCANNER:
                clicks.record(session, issue_id, article_id, scanner=1)
                for earlier in revoked:
                    clicks.record(session, issue_id, earlier, clicks=-1, scanner=1)

        if verdict is not clicks.Verdict.REPEAT:
            await self.state.db(write)
