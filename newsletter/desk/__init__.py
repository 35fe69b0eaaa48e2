"""The editor's desk under /admin/: sign in, curate the week, send, read the results.

`routes()` is all the web app needs; each page family is one module here, all sharing
`base.DeskState` (settings, sessions, templates, the sign-in throttle).
"""

from __future__ import annotations

from importlib.resources import files

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route

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

SCRIPT = files("newsletter.desk").joinpath("desk.js").read_text(encoding="utf-8")


async def script(request: Request) -> Response:
    return Response(SCRIPT, media_type="text/javascript", headers={**HEADERS, "Cache-Control": "no-cache"})


def routes(settings: Settings, sessions: Sessions) -> list[BaseRoute]:
    """The desk's routes, to be listed in the web app."""
    state = DeskState(settings, sessions)
    signin, overview, issues, sending = SignIn(state), Overview(state), Issues(state), Sending(state)
    people = People(state)
    week = "/issues/{week}"
    return [
        Route("/c/{token}", Tracking(state).click, methods=["GET"]),
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
