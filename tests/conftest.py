"""Shared fixtures: a fresh database per test on SQLite and PostgreSQL, a real SMTP
server (aiosmtpd) on a free port with per-recipient faults, and a config file.

PostgreSQL: every test gets its own schema in the database named by
NEWSLETTER_TEST_DATABASE_URL. Without that variable the PostgreSQL half is skipped
locally, but never in CI (CI=true): there a missing or unreachable server fails.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as AiosmtpdServer
from aiosmtpd.smtp import Envelope, Session
from sqlalchemy import Engine, create_engine, make_url
from sqlalchemy.orm import Session as DbSession
from sqlalchemy.orm import sessionmaker

from newsletter import config as config_mod
from newsletter.db import make_engine, session_factory, upgrade

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # bench_support: one free_port

from bench_support import free_port  # noqa: E402

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
CORPORA = Path(os.environ.get("NEWSLETTER_CORPORA", SHARED / "corpora"))
PG_URL = os.environ.get("NEWSLETTER_TEST_DATABASE_URL", "")
IN_CI = bool(os.environ.get("CI"))
CHROMIUM = shutil.which("chromium")

# What a fresh clone may lack. Outside CI such a test skips with one line saying what is
# missing; in CI it runs, so a missing corpus or browser fails instead of passing unseen.
NO_CHROMIUM = "Debian's chromium is not installed (apt-get install chromium); CI runs this"
needs_chromium = pytest.mark.skipif(CHROMIUM is None and not IN_CI, reason=NO_CHROMIUM)
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def needs_corpus(*parts: str) -> pytest.MarkDecorator:
    """Skip outside CI when the shared corpus file `parts` (under ../shared/corpora) is absent."""
    path = CORPORA.joinpath(*parts)
    return pytest.mark.skipif(not path.exists() and not IN_CI, reason=f"{path} is absent; CI runs this")


@contextmanager
def chromium_browser() -> Iterator[Browser]:
    """Debian's chromium under playwright, closed on exit (for tests marked `needs_chromium`)."""
    if CHROMIUM is None:  # only in CI: elsewhere needs_chromium skipped the test
        pytest.fail(NO_CHROMIUM)  # one line, not playwright's "run playwright install" box
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


OpenPage = Callable[[int, int], AbstractContextManager["Page"]]


@pytest.fixture
def chromium_page() -> OpenPage:
    """Opens a page of the given viewport (width, height) in chromium when the test asks. The
    browser does not start at setup: playwright's sync API runs an event loop in the test's
    thread, so a test starts it only after its own asyncio work."""

    @contextmanager
    def open_page(width: int, height: int) -> Iterator[Page]:
        with chromium_browser() as browser:
            yield browser.new_page(viewport={"width": width, "height": height})

    return open_page


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """No NEWSLETTER_* setting from the developer's shell leaks into a test."""
    for name in list(os.environ):
        if name.startswith("NEWSLETTER_") and name != "NEWSLETTER_TEST_DATABASE_URL":
            monkeypatch.delenv(name)


def _pg_schema_url() -> Iterator[str]:
    if not PG_URL:
        if os.environ.get("CI"):
            pytest.fail("NEWSLETTER_TEST_DATABASE_URL is not set in CI: PostgreSQL tests must run")
        pytest.skip("set NEWSLETTER_TEST_DATABASE_URL to run the PostgreSQL half")
    schema = "t_" + uuid.uuid4().hex[:12]
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    except Exception as exc:  # noqa: BLE001 - any failure here means "PostgreSQL unreachable"
        pytest.fail(f"PostgreSQL at {PG_URL} is unreachable: {exc}")
    url = make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database URL of each kind, private to this test."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.db'}"
    else:
        yield from _pg_schema_url()


@pytest.fixture
def engine(db_url: str, settings: config_mod.Settings) -> Iterator[Engine]:
    """A migrated database (Alembic head) with the test config's categories."""
    eng = make_engine(db_url)
    upgrade(eng, settings)
    yield eng
    eng.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[DbSession]:
    return session_factory(engine)


@pytest.fixture
def session(sessions: sessionmaker[DbSession]) -> Iterator[DbSession]:
    with sessions.begin() as s:
        yield s


CONFIG_TEMPLATE = """
[newsletter]
name = "Test Weekly"
from_address = "Test Weekly <news@example.com>"
reply_to = "editor@example.com"
base_url = "http://127.0.0.1:{web_port}"
postal_address = "1 Test Street, Testville"
timezone = "Europe/Berlin"
secret_key = "test-Z2SBMvm9eezoBQE5j6e-u4Dh9PA5k1c0MwALNU23wK4"

[database]
url = "{db_url}"

[smtp]
host = "127.0.0.1"
port = {smtp_port}
timeout = 10
concurrency = 4
max_attempts = 3
retry_delay = 0.05

[delivery]
transport = "smtp"
outbox_dir = "outbox"

[[categories]]
slug = "news"
name = "News"
limit = 6

[[categories]]
slug = "products"
name = "Products"
limit = 6

[[categories]]
slug = "events"
name = "Events"
limit = 6
"""


@pytest.fixture
def port() -> int:
    """A free port for the `newsletter serve` a test starts (the config's base_url points there)."""
    return free_port()


@pytest.fixture
def config_path(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    """A config.toml in tmp_path pointing at this test's database (and SMTP server, if any);
    its base_url is on the test's `port` when it asks for one, else on port 8000."""
    db = request.getfixturevalue("db_url") if "db_url" in request.fixturenames else f"sqlite:///{tmp_path / 'test.db'}"
    smtp_port = request.getfixturevalue("smtp_server").port if "smtp_server" in request.fixturenames else 2525
    web_port = request.getfixturevalue("port") if "port" in request.fixturenames else 8000
    path = tmp_path / "config.toml"
    path.write_text(CONFIG_TEMPLATE.format(db_url=db, smtp_port=smtp_port, web_port=web_port), encoding="utf-8")
    return path


@pytest.fixture
def settings(config_path: Path) -> config_mod.Settings:
    return config_mod.load(config_path, environ={})


# --- a real SMTP server ---------------------------------------------------------------


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes

    @property
    def message(self) -> Message:
        return message_from_bytes(self.data)


class Gate:
    """Holds the server's answer to DATA, once `free` messages have been accepted, until the
    test opens it.

    A test that must catch a sender with messages on the wire (kill -9, a second sender)
    waits for `wait_held(n)` instead of guessing a delay, so it holds on a slow machine.
    `open(drop=True)` answers the held messages 421 without recording them (the server
    lost them); the fixture opens that way at teardown so no handler is left waiting."""

    def __init__(self, free: int = 0) -> None:
        self.free = free
        self.held = 0
        self._opened = False
        self._drop = False
        self._cond = threading.Condition()

    async def passes(self) -> bool:
        """At DATA: False if the message must be answered 421 and not recorded."""
        with self._cond:
            if self._opened:
                return not self._drop
            if self.free > 0:
                self.free -= 1
                return True
            self.held += 1
            self._cond.notify_all()
        while True:  # polls a flag the test sets; the server's loop stays free meanwhile
            with self._cond:
                if self._opened:
                    self.held -= 1
                    return not self._drop
            await asyncio.sleep(0.005)

    def wait_held(self, n: int = 1, timeout: float = 60.0) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: self.held >= n, timeout):
                raise AssertionError(f"{self.held} of {n} messages reached the gate in {timeout:.0f} s")

    def open(self, *, drop: bool = False) -> None:
        with self._cond:
            self._opened, self._drop = True, drop
            self._cond.notify_all()


@dataclass
class Faults:
    """Per-recipient faults: reply codes at RCPT or after DATA, or a dropped connection."""

    rcpt: dict[str, str] = field(default_factory=dict)  # addr -> reply line, e.g. "550 5.1.1 no such user"
    rcpt_once: dict[str, list[str]] = field(default_factory=dict)  # addr -> RCPT replies in turn, then accept
    rcpt_all: str = ""  # a reply to every RCPT (a blocklisted client)
    data: dict[str, list[str]] = field(default_factory=dict)  # addr -> replies to give in turn, then accept
    drop_on_data: set[str] = field(default_factory=set)  # addr -> close the connection mid-DATA (once)
    gate: Gate | None = None  # holds DATA answers until the test opens it


class RecordingHandler:
    def __init__(self) -> None:
        self.messages: list[Received] = []
        self.refused: list[str] = []  # each recipient refused at RCPT, once per refusal
        self.faults = Faults()
        self.lock = threading.Lock()

    async def handle_RCPT(
        self, server: AiosmtpdServer, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        reply = self.faults.rcpt_all or self.faults.rcpt.get(address.lower())
        queue = self.faults.rcpt_once.get(address.lower())
        if queue and not reply:
            reply = queue.pop(0)
        if reply:
            self.refused.append(address)
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: AiosmtpdServer, session: Session, envelope: Envelope) -> str:
        if self.faults.gate is not None and not await self.faults.gate.passes():
            return "421 4.3.0 closing (test gate dropped the message)"
        for rcpt in envelope.rcpt_tos:
            key = rcpt.lower()
            if key in self.faults.drop_on_data:
                self.faults.drop_on_data.discard(key)
                server.transport.close()
                return "421 closing"
            queue = self.faults.data.get(key)
            if queue:
                return queue.pop(0)
        with self.lock:
            self.messages.append(Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 2.0.0 OK queued"


@dataclass
class SmtpServer:
    host: str
    port: int
    handler: RecordingHandler

    @property
    def messages(self) -> list[Received]:
        return self.handler.messages

    @property
    def faults(self) -> Faults:
        return self.handler.faults

    def recipients(self) -> list[str]:
        return [r for m in self.messages for r in m.rcpt_tos]


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    """aiosmtpd on 127.0.0.1 and a free port, recording every accepted message."""
    handler = RecordingHandler()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, data_size_limit=10_000_000)
    controller.start()
    try:
        yield SmtpServer("127.0.0.1", port, handler)
    finally:
        if handler.faults.gate is not None:
            handler.faults.gate.open(drop=True)
        controller.stop()


PYTHON = sys.executable


def stop_process(proc: subprocess.Popen) -> None:  # type: ignore[type-arg]
    """Stop a server a test started: SIGTERM, then SIGKILL if it has not gone in 10 s."""
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
