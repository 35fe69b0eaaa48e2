"""The reader-facing click redirect `/c/<token>[/<reader>]`: count, then go to the article.

Only ever to the URL of an article of the token's issue (never an open redirect): a
forged token (or reader part) is a 400 page, a token naming an article outside its
issue a 404. The reader part is there only with `[tracking] per_subscriber` (clicks.py)."""

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
        reader = clicks.reader_of(self.state.settings, issue_id, request.path_params.get("reader"))
        url, counts = await self.state.db(clicks.target, issue_id, article_id)
        url = articles.safe_url(url)
        if not url:
            raise NotFound("no such link")
        if counts:
            await self._count(request, issue_id, article_id, reader)
        return RedirectResponse(url, status_code=302, headers=HEADERS)

    async def _count(self, request: Request, issue_id: int, article_id: int, reader: int | None) -> None:
        if request.method == "HEAD":  # a prefetch: no reader reads with HEAD
            await self.state.db(clicks.record, issue_id, article_id, scanner=1)
            return
        client = request.client.host if request.client else "unknown"
        verdict, revoked = self.scanners.judge(client, issue_id, article_id, reader)

        def write(session: Session) -> None:
            if verdict is clicks.Verdict.READER:
                clicks.record(session, issue_id, article_id, clicks=1)
                if reader is not None:
                    clicks.record_person(session, reader, issue_id, article_id)
            elif verdict is clicks.Verdict.SCANNER:
                clicks.record(session, issue_id, article_id, scanner=1)
                for earlier, earlier_reader in revoked:
                    clicks.record(session, issue_id, earlier, clicks=-1, scanner=1)
                    if earlier_reader is not None:
                        clicks.forget_person(session, earlier_reader, issue_id, earlier)

        if verdict is not clicks.Verdict.REPEAT:
            await self.state.db(write)
