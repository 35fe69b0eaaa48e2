"""What every desk page shares: its state, the sign-in guard with the CSRF check,
page rendering with the desk's security headers, and database calls off the event loop."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.templating import Jinja2Templates

from newsletter import editors, render, trends
from newsletter.config import Settings
from newsletter.db import Sessions
from newsletter.desk import auth
from newsletter.editors import EditorView

T = TypeVar("T")

# The desk loads its own script and styles only; the issue preview is framed from the desk itself.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; frame-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "X-Robots-Tag": "noindex",
}


@dataclass
class Signed:
    """The signed-in editor of a request and their CSRF token."""

    editor: EditorView
    session: auth.DeskSession
    csrf: str


class DeskState:
    def __init__(self, settings: Settings, sessions: Sessions) -> None:
        self.settings = settings
        self.sessions = sessions
        self.templates = Jinja2Templates(env=render.environment(settings))
        desk = settings.desk
        self.sent_counts = trends.SentCounts()
        self.signer = auth.Signer(settings.newsletter.secret_key, desk.session_hours * 3600)
        self.throttle = auth.LoginThrottle(
            free=desk.login_failures_before_delay,
            delay=desk.login_delay_seconds,
            limit=desk.login_failures_limit,
            window=desk.login_window_minutes * 60,
        )

    async def db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run `fn(session, …)` in one transaction in a worker thread."""

        def work() -> T:
            with self.sessions.begin() as session:
                return fn(session, *args, **kwargs)

        return await run_in_threadpool(work)

    def page(
        self,
        request: Request,
        name: str,
        *,
        signed: Signed | None,
        status_code: int = 200,
        headers: dict[str, str] | None = None,
        **context: Any,
    ) -> Response:
        context.update(newsletter=self.settings.newsletter, signed=signed, title=context.get("title", ""))
        return self.templates.TemplateResponse(
            request,
            name,
            context,
            status_code=status_code,
            headers={**HEADERS, "Content-Security-Policy": CSP, **(headers or {})},
        )

    def secure(self, request: Request) -> bool:
        """Cookies are Secure when the desk is reached (or published) over https."""
        return request.url.scheme == "https" or self.settings.newsletter.base_url.startswith("https:")

    async def signed_in(self, request: Request) -> Signed | None:
        session = self.signer.read_session(request.cookies.get(auth.SESSION_COOKIE))
        if session is None:
            return None
        editor = await self.db(editors.get, session.editor_id)
        if editor is None or not auth.same(editor.session_key, session.session_key):
            return None  # removed, signed out elsewhere, or a new password since
        return Signed(editor, session, self.signer.csrf_token(session))


Handler = Callable[[Any, Request, Signed], Awaitable[Response]]


def editor_only(handler: Handler) -> Callable[[Any, Request], Awaitable[Response]]:
    """The page needs a signed-in editor (else: to the sign-in form, then back here);
    a POST also needs the form's CSRF token."""

    @functools.wraps(handler)
    async def guarded(self: Any, request: Request) -> Response:
        state: DeskState = self.state
        signed = await state.signed_in(request)
        if signed is None:
            back = request.url.path + (f"?{request.url.query}" if request.url.query and request.method == "GET" else "")
            return RedirectResponse(f"/admin/login?next={quote(back, safe='/')}", status_code=303, headers=HEADERS)
        if request.method == "POST":
            form = await request.form()
            if not auth.same(str(form.get("csrf_token", "")), signed.csrf):
                return state.page(
                    request,
                    "admin/message.html",
                    signed=signed,
                    status_code=403,
                    title="Nothing was changed",
                    text="This form is out of date or did not come from the desk; reload the page and try again.",
                )
        return await handler(self, request, signed)

    return guarded
