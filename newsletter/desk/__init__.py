"""The editor's desk under /admin/: sign in, curate the week, send, read the results.

`routes()` is all the web app needs; each page family is one module here, all sharing
`base.DeskState` (settings, sessions, templates, the sign-in throttle).
"""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker
from starlette.responses import RedirectResponse
from starlette.routing import BaseRoute, Mount, Route

from newsletter.config import Settings
from newsletter.desk.base import DeskState
from newsletter.desk.overview import Overview
from newsletter.desk.signin import SignIn


def routes(settings: Settings, sessions: sessionmaker[Session]) -> list[BaseRoute]:
    """The desk's routes, to be listed in the web app."""
    state = DeskState(settings, sessions)
    signin, overview = SignIn(state), Overview(state)
    return [
        Route("/admin", lambda request: RedirectResponse("/admin/", status_code=308), methods=["GET"]),
        Mount(
            "/admin",
            routes=[
                Route("/", overview.home, methods=["GET"]),
                Route("/login", signin.login, methods=["GET", "POST"]),
                Route("/logout", signin.logout, methods=["POST"]),
            ],
        ),
    ]
