"""The subscriber-facing web app: one-click unsubscribe, preferences, double opt-in
subscribe, the archive of sent issues, and an editor's preview.

Every personal page is reached through a signed token (`tokens.py`); a forged,
truncated, expired or wrong-purpose token is a friendly 400 page that changes
nothing. A GET never changes state (mail scanners prefetch links): unsubscribe and
confirm show a page with one button that POSTs. The one exception to "show a page
first" is RFC 8058: a POST with `List-Unsubscribe=One-Click` unsubscribes at once.
Handlers parse the request and call `selfservice.py` in a worker thread (the
database is synchronous); the routes are listed at the bottom. `SecureResponses`
wraps them all: every answer carries the security headers, and an unexpected error
is one 500 page and one log line, with any token in its path hidden.
"""

from __future__ import annotations

import dataclasses
import email.policy
import functools
import logging
import re
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import inspect, text
from sqlalchemy.orm import Session
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from newsletter import builder, desk, message, render, selfservice, subscribers, tokens, transport
from newsletter.config import EXAMPLE_SECRET, MIN_KEY_BITS, Settings, check_secret_key, key_bits
from newsletter.db import Sessions
from newsletter.errors import ConfigError, Conflict, DeliveryError, InvalidInput, InvalidToken, NotFound
from newsletter.holds import HeldWork, Hold, random_hold
from newsletter.inbound import webhooks
from newsletter.models import IssueStatus, SubscriberStatus
from newsletter.ratelimit import RateLimiter

log = logging.getLogger("newsletter.web")
T = TypeVar("T")
# Subscribe posts whose work waits its hold at one time; past that the form answers 503
# (at most 3 s of holds: 1,000 means over 300 posts a second, far beyond any real list).
MAX_HELD_SUBSCRIBES = 1000

# Our own pages load nothing from elsewhere, run no script and may not be framed
# (a framed unsubscribe button could be clickjacked). Personal URLs carry a token,
# so no page may leak its URL in a Referer header or sit in a shared cache.
PAGE_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; "
    "base-uri 'none'; frame-ancestors 'none'"
)
# The embeddable subscribe form may be framed by the publisher's own site.
EMBED_CSP = PAGE_CSP.replace("frame-ancestors 'none'", "frame-ancestors *")
# An issue's web version shows the articles' images from wherever they are hosted.
ISSUE_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src * data:; base-uri 'none'; frame-ancestors 'none'"
BASE_HEADERS = {"Referrer-Policy": "no-referrer", "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}
# Answers that are not pages (/healthz, webhooks) load and show nothing.
DATA_CSP = "default-src 'none'; base-uri 'none'; frame-ancestors 'none'"


@dataclass
class AppState:
    settings: Settings
    sessions: Sessions
    templates: Jinja2Templates
    per_address: RateLimiter
    per_client: RateLimiter
    held: HeldWork


def create_app(settings: Settings, session_factory: Sessions, *, hold: Hold = random_hold) -> Starlette:
    """The ASGI app for `newsletter serve` (and for tests, through Starlette's TestClient).
    `hold` is awaited before the work a subscribe post causes (tests pass a gate or no wait);
    that work runs in the app's own tasks, finished when the app shuts down (its lifespan)."""
    editors_desk = desk.Desk(settings, session_factory)
    app = Starlette(
        routes=[*ROUTES, *webhooks.routes(settings, session_factory), *editors_desk.routes()],
        middleware=[Middleware(SecureResponses)],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=_lifespan,
    )
    app.state.desk = editors_desk  # its `warmed` event tells a benchmark when the start-up counts are done
    app.router.redirect_slashes = False  # the app never redirects, not even to add or drop a '/'
    app.state.newsletter = AppState(
        settings=settings,
        sessions=session_factory,
        templates=Jinja2Templates(env=render.environment(settings)),
        per_address=RateLimiter(settings.web.subscribe_per_address_per_hour, 3600),
        per_client=RateLimiter(settings.web.subscribe_per_client_per_hour, 3600),
        held=HeldWork(hold, limit=MAX_HELD_SUBSCRIBES),
    )
    return app


@asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[None]:
    """The desk warms up beside the starting server; at shutdown, the subscribe posts still
    held are done at once (none is lost)."""
    async with app.state.desk.lifespan(app):
        yield
    await app.state.newsletter.held.close()


# -- helpers ---------------------------------------------------------------------------


def _state(request: Request) -> AppState:
    return request.app.state.newsletter


async def _db(request: Request, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run `fn(session, …)` in one writing transaction in a worker thread."""
    return await _transaction(_state(request).sessions.begin, fn, *args, **kwargs)


async def _read(request: Request, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run `fn(session, …)` in a read-only transaction, which never waits for a writer."""
    return await _transaction(_state(request).sessions.reading, fn, *args, **kwargs)


async def _transaction(
    transaction: Callable[[], AbstractContextManager[Session]], fn: Callable[..., T], *args: Any, **kwargs: Any
) -> T:
    def work() -> T:
        with transaction() as session:
            return fn(session, *args, **kwargs)

    return await run_in_threadpool(work)


def _page(
    request: Request,
    name: str,
    *,
    status_code: int = 200,
    csp: str = PAGE_CSP,
    headers: dict[str, str] | None = None,
    background: BackgroundTask | None = None,
    **context: Any,
) -> Response:
    st = _state(request)
    context.setdefault("title", "")
    context.update(newsletter=st.settings.newsletter, embed=context.get("embed", False))
    return st.templates.TemplateResponse(
        request,
        name,
        context,
        status_code=status_code,
        background=background,
        headers={**BASE_HEADERS, "Content-Security-Policy": csp, **(headers or {})},
    )


def _message(
    request: Request,
    title: str,
    text: str,
    *,
    status_code: int = 200,
    links: tuple[tuple[str, str], ...] = (),
    **kwargs: Any,
) -> Response:
    """A short page saying what happened; `links` are (label, URL) pairs we built ourselves."""
    return _page(request, "web/message.html", title=title, text=text, links=links, status_code=status_code, **kwargs)


def _done(request: Request, sub: selfservice.SubscriberView, title: str, text: str, label: str) -> Response:
    """What a reader's click did, with a link (`label`) to their preferences."""
    prefs = tokens.preferences_url(_state(request).settings, sub.id)
    return _message(request, title, text, links=((label, prefs),))


def _token(request: Request, purpose: str, token: str | None = None) -> tokens.TokenData:
    token = request.path_params["token"] if token is None else token
    return tokens.read(_state(request).settings.newsletter.secret_key, purpose, token)


def _check_csrf(request: Request, form: FormData, subscriber_id: int) -> None:
    """The preferences form carries a signed, expiring token bound to its subscriber."""
    try:
        data = _token(request, tokens.CSRF, str(form.get("csrf", "")))
    except InvalidToken:
        data = None
    if data is None or data.subscriber_id != subscriber_id:
        raise InvalidToken("this form is out of date or did not come from our page; reload the page and try again")


def _base(request: Request) -> str:
    return _state(request).settings.newsletter.base_url.rstrip("/")


# -- unsubscribe -----------------------------------------------------------------------


async def unsubscribe(request: Request) -> Response:
    """GET: a page with one button. POST: unsubscribe now (RFC 8058 one-click or the button)."""
    data = _token(request, tokens.UNSUBSCRIBE)
    if request.method != "POST":  # GET and HEAD (scanners) only show the page
        sub = await _read(request, selfservice.view, data.subscriber_id)
        return _page(request, "web/unsubscribe.html", title="Unsubscribe", sub=sub)
    form = await request.form()
    source = "one-click" if form.get("List-Unsubscribe") == "One-Click" else "page"
    sub = await _db(request, selfservice.unsubscribe, data, source=source)
    name = _state(request).settings.newsletter.name
    return _done(
        request,
        sub,
        "You are unsubscribed",
        f"{sub.email} will receive no more issues of {name}.",
        "Changed your mind? Manage your subscription",
    )


# -- preferences -----------------------------------------------------------------------


async def preferences(request: Request) -> Response:
    """Choose topics, change the name, unsubscribe from everything, or undo an unsubscribe."""
    data = _token(request, tokens.PREFERENCES)
    sid = data.subscriber_id
    notice, error, status_code = "", "", 200
    background = None
    if request.method == "POST":
        form = await request.form()
        _check_csrf(request, form, sid)
        action = form.get("action")
        if action == "unsubscribe":
            await _db(request, selfservice.unsubscribe, tokens.TokenData(sid, None), source="page")
            notice = "You are unsubscribed from everything."
        elif action == "resubscribe":
            # Links get forwarded: coming back takes a confirmation from the mailbox, like a new sign-up.
            sub = await _read(request, selfservice.view, sid)
            if sub.status == SubscriberStatus.UNSUBSCRIBED:
                background = BackgroundTask(_mail_confirmation, _state(request), sid, sub.email)
            notice = "We have sent you an email: open the link in it to subscribe again."
        else:
            try:
                await _db(
                    request,
                    selfservice.save_preferences,
                    sid,
                    name=str(form.get("name", "")),
                    slugs=[str(v) for v in form.getlist("category")],
                )
                notice = "Your preferences are saved."
            except InvalidInput as exc:
                error, status_code = str(exc), 400
    sub = await _read(request, selfservice.view, sid)
    csrf = tokens.make(_state(request).settings.newsletter.secret_key, tokens.CSRF, sid)
    return _page(
        request,
        "web/preferences.html",
        title="Your subscription",
        sub=sub,
        csrf=csrf,
        notice=notice,
        error=error,
        status_code=status_code,
        background=background,
    )


# -- subscribe with double opt-in ------------------------------------------------------


async def subscribe(request: Request) -> Response:
    """GET: the form (`?embed=1`: without page chrome, for an iframe). POST: ask for a
    confirmation mail. The answer is the same whether or not the address is listed, and so
    is the work done before it: the address is looked up (and a new one stored) only after
    the answer is sent and a random hold has passed, in `_subscribe_later`, in a task of the
    app's (`holds.py`), so neither the answer's timing nor that of the next request on the
    same connection can tell a listed address either."""
    embed = request.query_params.get("embed") == "1"
    csp = EMBED_CSP if embed else PAGE_CSP
    topics = await _read(request, selfservice.categories)
    if request.method != "POST":
        return _subscribe_form(request, topics, embed=embed)
    st = _state(request)
    client = request.client.host if request.client else "unknown"
    if not st.per_client.hit(client):
        return _message(
            request,
            "Too many requests",
            "Please try again in an hour.",
            status_code=429,
            headers={"Retry-After": str(st.per_client.retry_after(client))},
            embed=embed,
            csp=csp,
        )
    form = await request.form()
    values = {k: str(form.get(k, "")) for k in ("email", "name")}
    if not form.get("website"):  # a hidden field only bots fill in
        slugs = [str(v) for v in form.getlist("category")]
        try:
            address = selfservice.form_address(values["email"])
            selfservice.check_topics(topics, slugs)
        except InvalidInput as exc:
            return _subscribe_form(request, topics, embed=embed, error=str(exc), values=values)
        if not st.held.start(functools.partial(_subscribe_later, st, address, values["name"], slugs)):
            return _message(
                request,
                "Please try again soon",
                "We are busy right now. Please try again in a minute.",
                status_code=503,
                headers={"Retry-After": "60"},
                embed=embed,
                csp=csp,
            )
    return _message(
        request,
        "Check your inbox",
        "If this address can be subscribed, we have sent it a link to confirm. "
        "Nothing is sent to you until you confirm.",
        embed=embed,
        csp=csp,
    )


def _subscribe_form(
    request: Request,
    topics: list[tuple[str, str]],
    *,
    embed: bool,
    error: str = "",
    values: dict[str, str] | None = None,
) -> Response:
    """The form, empty (a public page) or shown again with what was typed and why it was refused (400)."""
    return _page(
        request,
        "web/subscribe.html",
        title="Subscribe",
        topics=topics,
        embed=embed,
        csp=EMBED_CSP if embed else PAGE_CSP,
        error=error,
        values=values or {},
        public=not error,
        status_code=400 if error else 200,
    )


async def _subscribe_later(st: AppState, address: str, name: str, slugs: list[str]) -> None:
    """After the answer and the hold (`holds.py`): list a new address as pending and mail it a confirmation link."""
    sid = await _transaction(st.sessions.begin, selfservice.request_subscription, address, name=name, slugs=slugs)
    if sid is not None:
        await _mail_confirmation(st, sid, address)


async def _mail_confirmation(st: AppState, subscriber_id: int, address: str) -> None:
    """Mail a confirmation link within the per-address limit (runs after the answer).

    Counted only when a mail would go out, so a stranger cannot use up someone's quota by
    submitting an already active address."""
    if st.per_address.hit(subscribers.email_key(address)):
        await send_confirmation(st.settings, subscriber_id, address)


async def send_confirmation(settings: Settings, subscriber_id: int, address: str) -> None:
    """Mail the double opt-in link; a failure is logged (the person may simply ask again)."""
    msg = selfservice.confirmation_message(settings, subscriber_id, address)
    # A non-ASCII address goes into To as it is (RFC 6532), never RFC 2047-encoded, which
    # would garble it; the transport then sends with SMTPUTF8 or refuses with one clear line.
    policy = email.policy.SMTP if address.isascii() else email.policy.SMTPUTF8
    try:
        # The issue's envelope sender, so a bounced confirmation reaches the bounce handling.
        await transport.send_one(
            settings, message.return_path(settings, subscriber_id, None), address, msg.as_bytes(policy=policy)
        )
    except DeliveryError as exc:
        log.warning("confirmation mail to subscriber %s not sent: %s", subscriber_id, exc)


async def confirm(request: Request) -> Response:
    """GET: a page with a confirm button (scanners prefetch links). POST: activate."""
    data = _token(request, tokens.CONFIRM)
    if request.method != "POST":  # GET and HEAD (scanners) only show the page
        sub = await _read(request, selfservice.view, data.subscriber_id)
        return _page(request, "web/confirm.html", title="Confirm your subscription", sub=sub)
    sub = await _db(request, selfservice.confirm, data)
    if sub.status != SubscriberStatus.ACTIVE:
        return _message(
            request,
            "This link can no longer be used",
            "Please subscribe again to get a new confirmation link.",
            links=(("Subscribe", f"{_base(request)}/subscribe"),),
            status_code=400,
        )
    name = _state(request).settings.newsletter.name
    text = f"Thank you. {sub.email} will receive {name}."
    return _done(request, sub, "You are subscribed", text, "Choose your topics")


# -- archive and preview ---------------------------------------------------------------


def _sent_issues(session: Session) -> list[tuple[str, str, str]]:
    return [
        (i.week, i.subject, i.sent_at.date().isoformat() if i.sent_at else "")
        for i in builder.list_issues(session)
        if i.status == IssueStatus.SENT
    ]


async def archive(request: Request) -> Response:
    """Every sent issue, newest first."""
    issues = await _read(request, _sent_issues)
    return _page(request, "web/archive.html", title="Archive", issues=issues, public=True)


async def _issue_response(request: Request, week: str, issue_id: int | None) -> Response:
    """The web version of `week`: public once its sending started (the mail's view-in-browser
    link must work while the rest of the list is still being sent); any issue for an
    editor whose preview token names it (`issue_id`)."""
    st = _state(request)
    try:
        content = await _read(request, builder.load_content, st.settings, week)
    except InvalidInput as exc:  # not a week key such as 2026-W48
        raise NotFound(week) from exc
    if issue_id is None:
        if content.status == IssueStatus.DRAFT:
            raise NotFound(week)
        # Readers see an issue being sent as sent: no "not sent yet" preview banner.
        content = dataclasses.replace(content, status=IssueStatus.SENT)
    elif issue_id != content.issue_id:
        raise InvalidToken("this preview link belongs to another issue")
    html = await run_in_threadpool(render.render_web, st.settings, content)
    headers = {**BASE_HEADERS, "Content-Security-Policy": ISSUE_CSP}
    if issue_id is not None:
        headers["X-Robots-Tag"] = "noindex"
    return HTMLResponse(html, headers=headers)


async def issue(request: Request) -> Response:
    return await _issue_response(request, request.path_params["week"], None)


async def preview(request: Request) -> Response:
    """An editor's view of any issue, draft or sent: `newsletter issue weblink` prints the signed URL."""
    data = _token(request, tokens.PREVIEW, request.query_params.get("key", ""))
    return await _issue_response(request, request.path_params["week"], data.issue_id)


async def healthz(request: Request) -> Response:
    """For monitoring: 200 when the database answers, else 503."""
    try:
        await _read(request, lambda s: s.execute(text("SELECT 1")))
    except Exception as exc:  # noqa: BLE001 - any failure means "not healthy"
        log.warning("health check failed: %s", exc)
        return JSONResponse({"status": "error", "database": "unreachable"}, status_code=503)
    return JSONResponse({"status": "ok", "database": "ok"})


async def home(request: Request) -> Response:
    return await subscribe(request)


# -- serving ---------------------------------------------------------------------------


def serve(settings: Settings, session_factory: Sessions, *, host: str, port: int, insecure_dev: bool = False) -> None:
    """Run the app with uvicorn until interrupted.

    Refuses the example (or an empty) secret key unless `insecure_dev`: with a known key
    anyone could forge unsubscribe and preferences links. Behind a reverse proxy on the
    same machine, uvicorn takes the client address from X-Forwarded-For (it trusts
    127.0.0.1; set FORWARDED_ALLOW_IPS otherwise), so the per-client limit sees real clients."""
    import uvicorn

    secret = settings.newsletter.secret_key
    if not insecure_dev:
        check_secret_key(secret)
    elif secret == EXAMPLE_SECRET or key_bits(secret) < MIN_KEY_BITS:
        tokens.permit_weak_key(secret)
        log.warning("--insecure-dev: serving with a weak or the example secret_key; anyone can forge subscriber links")
    with session_factory() as session:
        if not inspect(session.get_bind()).has_table("subscribers"):
            raise ConfigError("the database has no tables yet; run 'newsletter init' or 'newsletter db upgrade' first")
    logging.getLogger("uvicorn.access").addFilter(_hide_tokens)
    uvicorn.run(create_app(settings, session_factory), host=host, port=port, log_level="info")


TOKEN_IN_PATH = re.compile(r"^(/(?:unsubscribe|preferences|confirm)/)[^/?]+|([?&]key=)[^&]+")


def hide_tokens(path: str) -> str:
    """A request path (and query) fit for a log: the route stays, a token becomes '…'
    (a token is a key to someone's subscription)."""
    return TOKEN_IN_PATH.sub(lambda m: (m.group(1) or m.group(2)) + "…", path)


def _hide_tokens(record: logging.LogRecord) -> bool:
    """Access log lines keep the route but not the token."""
    if isinstance(record.args, tuple) and len(record.args) >= 3 and isinstance(record.args[2], str):
        record.args = (*record.args[:2], hide_tokens(record.args[2]), *record.args[3:])
    return True


# -- errors ----------------------------------------------------------------------------


def _error(request: Request, status_code: int, title: str, text: str) -> Response:
    return _page(request, "web/error.html", title=title, text=text, status_code=status_code)


async def _invalid_token(request: Request, exc: Exception) -> Response:
    return _error(
        request,
        400,
        "This link does not work",
        f"Sorry, {exc}. Nothing was changed. If you copied the link, check that it is complete.",
    )


async def _invalid_input(request: Request, exc: Exception) -> Response:
    return _error(request, 400, "That did not work", f"Sorry: {exc}. Nothing was changed.")


async def _not_found(request: Request, exc: Exception) -> Response:
    return _error(request, 404, "Not found", "There is nothing at this address.")


async def _conflict(request: Request, exc: Exception) -> Response:
    return _error(request, 409, "That did not work", f"Sorry: {exc}.")


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return await _not_found(request, exc)
    response = _error(request, exc.status_code, "That did not work", str(exc.detail))
    response.headers.update(exc.headers or {})  # e.g. the Allow header of a 405
    return response


class SecureResponses:
    """Middleware around every route: each answer (page, /healthz, webhook, error) gets
    BASE_HEADERS and a CSP unless it set its own; an unexpected error becomes the 500
    page and is logged here, once, with tokens hidden. It is not re-raised: Starlette's
    outer error middleware would hand it to the server, which logs it a second time."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_secured(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = MutableHeaders(scope=message)
                for name, value in {**BASE_HEADERS, "Content-Security-Policy": DATA_CSP}.items():
                    headers.setdefault(name, value)
            await send(message)

        try:
            await self.app(scope, receive, send_secured)
        except Exception as exc:
            request = Request(scope)
            path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            log.error("error serving %s %s", request.method, hide_tokens(path), exc_info=exc)
            if not started:  # else the answer is out (e.g. a background task failed after it)
                response = _error(
                    request, 500, "Something went wrong", "Sorry, please try again later. Nothing was changed."
                )
                await response(scope, receive, send_secured)


EXCEPTION_HANDLERS: dict[Any, Callable[[Request, Exception], Any]] = {
    InvalidToken: _invalid_token,
    InvalidInput: _invalid_input,
    NotFound: _not_found,
    Conflict: _conflict,
    HTTPException: _http_error,
}

ROUTES = [
    Route("/", home, methods=["GET"]),
    Route("/unsubscribe/{token}", unsubscribe, methods=["GET", "POST"]),
    Route("/preferences/{token}", preferences, methods=["GET", "POST"]),
    Route("/subscribe", subscribe, methods=["GET", "POST"]),
    Route("/confirm/{token}", confirm, methods=["GET", "POST"]),
    Route("/archive", archive, methods=["GET"]),
    Route("/issues/{week}", issue, methods=["GET"]),
    Route("/preview/{week}", preview, methods=["GET"]),
    Route("/healthz", healthz, methods=["GET"]),
]
