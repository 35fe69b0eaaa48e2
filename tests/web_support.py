"""Helpers shared by the web app's HTTP and browser tests."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import threading
import time as clock
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, time
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import httpx
import uvicorn
from conftest import free_port, stop_process
from sqlalchemy.orm import Session, sessionmaker
from starlette.applications import Starlette
from starlette.testclient import TestClient

from newsletter import builder, subscribers
from newsletter.config import Settings
from newsletter.models import (
    Article,
    Issue,
    IssueStatus,
    Subscriber,
    SubscriberStatus,
    utcnow,
)

T = TypeVar("T")


async def no_hold() -> None:
    """For `create_app(hold=…)`: the work of a subscribe post starts right after the answer."""


def add_subscriber(
    sessions: sessionmaker[Session],
    email: str,
    *,
    status: SubscriberStatus = SubscriberStatus.ACTIVE,
    categories: tuple[str, ...] = (),
) -> int:
    with sessions.begin() as s:
        return subscribers.add(s, email, name="Ada", categories=categories, status=status, source="test").id


def subscriber(sessions: sessionmaker[Session], sid: int) -> Subscriber:
    with sessions.begin() as s:
        sub = s.get(Subscriber, sid)
        assert sub is not None
        return sub


def make_issue(
    sessions: sessionmaker[Session],
    settings: Settings,
    week: str,
    *,
    title: str,
    sent: bool,
    subject: str | None = None,
) -> int:
    """Publish one article in `week`, build the issue, and mark it sent if asked."""
    year, number = int(week[:4]), int(week[-2:])
    published = datetime.combine(date.fromisocalendar(year, number, 3), time(10), tzinfo=UTC)
    with sessions.begin() as s:
        s.add(
            Article(
                guid=f"https://example.com/{week}",
                url=f"https://example.com/{week}",
                title=title,
                category="news",
                summary="<p>Summary</p>",
                published_at=published,
            )
        )
        s.flush()
        issue = builder.build(s, settings, week, subject=subject)
        if sent:
            issue.status, issue.sent_at = IssueStatus.SENT, utcnow()
        return issue.id


def issue_status(sessions: sessionmaker[Session], issue_id: int) -> IssueStatus:
    with sessions.begin() as s:
        issue = s.get(Issue, issue_id)
        assert issue is not None
        return issue.status


def path_of(settings: Settings, url: str) -> str:
    """The path of one of our absolute URLs (TestClient and browsers use their own base)."""
    base = settings.newsletter.base_url.rstrip("/")
    assert url.startswith(base), url
    return url[len(base) :]


def link_in(message: Message, pattern: str) -> str:
    """The first URL in the plain-text part of a mail that matches `pattern`."""
    for part in message.walk():
        if part.get_content_type() == "text/plain":
            body = part.get_payload(decode=True).decode(part.get_content_charset() or "utf-8")
            match = re.search(pattern, body)
            if match:
                return match.group(0)
    raise AssertionError(f"no link matching {pattern!r} in the mail")


@contextmanager
def running_server(config_path: Path, port: int, *extra: str) -> Iterator[tuple[str, Path]]:
    """`newsletter serve` as a child process until /healthz answers: (base URL, its log file).

    Fails with the log if it exits or stays silent; terminated (then killed) in finally."""
    log = config_path.parent / f"serve-{port}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    base = f"http://127.0.0.1:{port}"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "newsletter",
                "--config",
                str(config_path),
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                *extra,
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = clock.monotonic() + 180  # a bound, not a wait: the loop ends as soon as it answers
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"newsletter serve exited with {proc.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if clock.monotonic() > deadline:
                raise AssertionError(f"newsletter serve did not answer /healthz within 180 s:\n{log.read_text()}")
            clock.sleep(0.1)
        yield base, log
    finally:
        stop_process(proc)


@contextmanager
def publisher_site(html: str) -> Iterator[str]:
    """Another origin (the publisher's own site) serving one page; stopped in finally."""

    class Page(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            body = html.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), Page)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


@contextmanager
def uvicorn_in_thread(app: Starlette) -> Iterator[int]:
    """The app under a real uvicorn on a free port (keep-alive connections, raw sockets, the
    app's lifespan); stopped in finally, which runs the app's shutdown."""
    # An idle keep-alive connection stays open for 120 s (uvicorn's default 5 s could pass
    # between two requests of a test on a loaded machine).
    config = uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning", timeout_keep_alive=120)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = clock.monotonic() + 120  # a bound, not a wait: the loop ends once it serves
        while not server.started:
            assert thread.is_alive() and clock.monotonic() < deadline, "uvicorn did not start"
            clock.sleep(0.02)
        yield server.config.port
    finally:
        server.should_exit = True
        thread.join(120)
        assert not thread.is_alive(), "uvicorn did not stop"


class SettledClient(TestClient):
    """A TestClient (used in `with`) that, after each request, waits for the work the request
    left to the app (a subscribe post's, after its hold): a test sees the confirmation mail
    when the answer is back."""

    def __init__(self, app: Starlette, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.held = app.state.newsletter.held

    def request(self, *args: Any, **kwargs: Any) -> httpx.Response:  # type: ignore[override]
        response = super().request(*args, **kwargs)
        assert self.portal is not None, "use SettledClient in a with block: the app's tasks run in its portal"
        self.portal.call(self.held.join)
        return response


class HoldGate:
    """A subscribe hold (`create_app(hold=…)`) that lasts until the test opens it, so a test
    catches the work while it is held instead of guessing a delay. The hold runs in the
    server's event loop; the test waits for and opens it from its own thread."""

    def __init__(self) -> None:
        self.entered = 0
        self._cond = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None

    async def __call__(self) -> None:
        with self._cond:
            if self._event is None:
                self._loop, self._event = asyncio.get_running_loop(), asyncio.Event()
            self.entered += 1
            self._cond.notify_all()
        await self._event.wait()

    def wait_entered(self, n: int = 1, timeout: float = 120.0) -> None:
        """Until `n` pieces of work are held (a bound, not a wait: it returns once they are)."""
        with self._cond:
            assert self._cond.wait_for(lambda: self.entered >= n, timeout), f"{self.entered} of {n} holds entered"

    def open(self) -> None:
        assert self._loop is not None and self._event is not None
        self._loop.call_soon_threadsafe(self._event.set)

    def in_server_loop(self, coro: Coroutine[Any, Any, T], timeout: float = 120.0) -> T:
        """Run `coro` in the server's loop (where the held work runs) and return its result."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)
