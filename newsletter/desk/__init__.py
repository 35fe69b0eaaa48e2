"""The editor's desk under /admin/: sign in, curate the week, send, read the results.

`Desk` gives the web app its routes and a lifespan; each page family is one module here,
all sharing `base.DeskState` (settings, sessions, templates, the sign-in throttle).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.resources import files

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from newsletter import render
from newsletter.config import Settings
from newsletter.db import Sessions
from newsletter.desk.base import HEADERS, DeskState
from newsletter.desk.issues import Issues
from newsletter.desk.overview import Overview
from newsletter.desk.people import People
from newsletter.desk.results import Results
from newsletter.desk.sending import Sending
from newsletter.desk.signin import SignIn
from newsletter.desk.tracking import Tracking

log = logging.getLogger(__name__)
TEMPLATES = [
    f"admin/{p.name}" for p in files("newsletter.templates").joinpath("admin").iterdir() if p.name.endswith(".html")
]
SCRIPT = files("newsletter.desk").joinpath("desk.js").read_text(encoding="utf-8")


async def script(request: Request) -> Response:
    return Response(SCRIPT, media_type="text/javascript", headers={**HEADERS, "Cache-Control": "no-cache"})


class Desk:
    def __init__(self, settings: Settings, sessions: Sessions) -> None:
        self.state = DeskState(settings, sessions)
        self.sending = Sending(self.state)
        self.warmed = threading.Event()

    def warm(self) -> None:
        """What the first desk pages after a start would otherwise pay for: every sent issue's
        delivery counts (seconds with 5,000,000 ledger rows), the compiled templates and the
        first CSS inlining of a preview."""
        try:
            with self.state.sessions.reading() as session:
                self.state.sent_counts.warm(session)
            for name in TEMPLATES:
                self.state.templates.get_template(name)
            render.warm(self.state.settings)
        except Exception as exc:  # a page counts for itself then; the server serves on
            log.warning("desk: warming up failed (%s); the first pages will be slower", exc.__class__.__name__)
        finally:
            self.warmed.set()

    @asynccontextmanager
    async def lifespan(self, app: object) -> AsyncIterator[None]:
        """Warm up beside the server: subscriber pages answer at once, and a desk page asked
        meanwhile waits for the same count rather than starting another one. At the end,
        the logs of the sends it started are deleted."""
        thread = threading.Thread(target=self.warm, name="desk-warm-up", daemon=True)
        thread.start()
        yield
        thread.join()
        self.sending.workers.close()

    def routes(self) -> list[BaseRoute]:
        """The desk's routes, to be listed in the web app."""
        return _routes(self.state, self.sending)


def _routes(state: DeskState, sending: Sending) -> list[BaseRoute]:
    signin, overview, issues = SignIn(state), Overview(state), Issues(state)
    people, tracking = People(state), Tracking(state)
    week = "/issues/{week}"
    return [
        Route("/c/{token}", tracking.click, methods=["GET"]),
        Route("/c/{token}/{reader}", tracking.click, methods=["GET"]),
        Route("/admin", lambda request: RedirectResponse("/admin/", status_code=308), methods=["GET"]),
        Mount(
            "/admin",
            routes=[
                Route("/", overview.home, methods=["GET"]),
                Route("/login", signin.login, methods=["GET", "POST"]),
                Route("/logout", signin.logout, methods=["POST"]),
                Route("/desk.js", script, methods=["GET"]),
                Route("/issues", issues.index, methods=["GET"]),
                Route("/issues/build", issues.build, methods=["POST"]),
                Route(week, issues.show, methods=["GET"]),
                Route(week + "/articles", issues.article, methods=["POST"]),
                Route(week + "/text", issues.text, methods=["POST"]),
                Route(week + "/intro-preview", issues.intro_preview, methods=["POST"]),
                Route(week + "/preview", issues.preview, methods=["GET"]),
                Route(week + "/test", sending.test, methods=["POST"]),
                Route(week + "/send", sending.now, methods=["POST"]),
                Route(week + "/schedule", sending.schedule, methods=["POST"]),
                Route(week + "/progress", sending.progress, methods=["GET"]),
                Route(week + "/stats", Results(state).issue, methods=["GET"]),
                Route("/subscribers", people.index, methods=["GET"]),
                Route("/subscribers/{id:int}", people.show, methods=["GET"]),
                Route("/subscribers/{id:int}/export", people.export, methods=["GET"]),
                Route("/subscribers/{id:int}/erase", people.erase, methods=["POST"]),
            ],
        ),
    ]
