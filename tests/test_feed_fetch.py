"""Fetching feeds safely: only public addresses (after every redirect, by resolved address),
one total deadline, a size cap for local files too, and no transaction open while downloading."""

from __future__ import annotations

import re
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import CORPORA, needs_corpus
from feed_support import FeedServer, running_feed_server
from sqlalchemy import func, select

from newsletter import articles, subscribers
from newsletter import config as config_mod
from newsletter.db import Sessions, make_engine, session_factory
from newsletter.download import Refused, public_addresses
from newsletter.models import Article

FEED_FILE = CORPORA / "feeds" / "miniflux-v2__small_atom.xml"  # 20 entries
pytestmark = needs_corpus("feeds", "miniflux-v2__small_atom.xml")
FEED = FEED_FILE.read_bytes() if FEED_FILE.exists() else b""


@pytest.fixture
def feed_server() -> Iterator[FeedServer]:
    with running_feed_server() as server:
        yield server


def with_feeds(
    config_path: Path, feeds: dict[str, str], *, articles_section: str = "", environ: dict[str, str] | None = None
) -> config_mod.Settings:
    text = "".join(f'\n[[feeds]]\nname = "{name}"\nurl = "{url}"\n' for name, url in feeds.items())
    section = f"[articles]\n{articles_section}\n\n[database]"
    config_path.write_text(config_path.read_text().replace("[database]", section) + text)
    return config_mod.load(config_path, environ=environ or {})


def article_count(sessions: Sessions) -> int:
    with sessions.reading() as s:
        return s.scalar(select(func.count()).select_from(Article)) or 0


def test_a_redirect_to_an_internal_address_is_refused(
    sessions: Sessions, config_path: Path, feed_server: FeedServer
) -> None:
    """127.0.0.1 is allowed (the environment says so); `localhost` is not, and resolves to
    loopback: the internal page is never requested, whether named directly or by a redirect."""
    internal = f"http://localhost:{feed_server.port}/internal.xml"
    feed_server.files["/internal.xml"] = FEED
    feed_server.redirects["/feed.xml"] = internal
    settings = with_feeds(
        config_path,
        {"Redirecting": f"{feed_server.url}/feed.xml", "Internal": internal},
        environ={"NEWSLETTER_ARTICLES_ALLOW_HOSTS": "127.0.0.1, feeds.example"},
    )
    assert settings.articles.allow_hosts == ("127.0.0.1", "feeds.example")
    reports = articles.fetch_all(sessions, settings)
    assert [r.added for r in reports] == [[], []]
    loopback = (
        r"localhost \((127\.0\.0\.1|::1)\) is a loopback address; feeds may only reach public addresses "
        r"\(add the host to \[articles\] allow_hosts only if you trust it\); the other feeds still import"
    )
    assert re.fullmatch(
        rf"feed 'Redirecting': refused to fetch {re.escape(internal)} \(redirected from "
        rf"{re.escape(feed_server.url)}/feed.xml\): {loopback}",
        reports[0].warnings[0],
    )
    assert re.fullmatch(rf"feed 'Internal': refused to fetch {re.escape(internal)}: {loopback}", reports[1].warnings[0])
    assert feed_server.requested == {"/feed.xml": 1}
    assert article_count(sessions) == 0


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.9",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "::1",
        "fe80::1",
        "fc00::5",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "224.0.0.1",
    ],
)
def test_non_public_addresses_are_refused(address: str) -> None:
    with pytest.raises(Refused, match=r"is a [a-z-]+ address; feeds may only reach public addresses"):
        public_addresses(address, 80)


def test_public_addresses_pass() -> None:
    assert public_addresses("93.184.216.34", 443) == ["93.184.216.34"]
    assert public_addresses("2606:2800:220:1:248:1893:25c8:1946", 443) == ["2606:2800:220:1:248:1893:25c8:1946"]


def test_a_dripping_feed_stops_at_the_total_fetch_timeout(
    sessions: Sessions, config_path: Path, feed_server: FeedServer
) -> None:
    """Each byte comes well within the per-read timeout; the whole answer would take a minute."""
    feed_server.drip["/slow.xml"] = b" " * 600 + FEED[:10]
    feed_server.files["/fast.xml"] = FEED
    settings = with_feeds(
        config_path,
        {"Slow": f"{feed_server.url}/slow.xml", "Fast": f"{feed_server.url}/fast.xml"},
        articles_section='fetch_timeout = 1.5\nallow_hosts = ["127.0.0.1"]',
    )
    started = time.monotonic()
    reports = articles.fetch_all(sessions, settings)
    assert time.monotonic() - started < 15  # the drip alone lasts 60 s
    assert reports[0].warnings == [
        f"feed 'Slow': {feed_server.url}/slow.xml did not answer in full within 1.5 s "
        f"([articles] fetch_timeout); the other feeds still import"
    ]
    assert len(reports[1].added) == 20


def test_a_local_feed_over_the_size_cap_is_refused_without_reading_it(
    sessions: Sessions, config_path: Path, tmp_path: Path
) -> None:
    huge = tmp_path / "huge.xml"
    with huge.open("wb") as fp:
        fp.truncate(200 * 1024 * 1024)  # sparse: costs no disk
    (tmp_path / "small.xml").write_bytes(FEED)
    settings = with_feeds(config_path, {"Huge": "huge.xml", "Small": "small.xml"})
    tracemalloc.start()
    try:
        reports = articles.fetch_all(sessions, settings)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert reports[0].warnings == [
        f"feed 'Huge': {huge} is larger than 20 MB (the limit for a feed); "
        f"fix [[feeds]] url; the other feeds still import"
    ]
    assert len(reports[1].added) == 20
    assert peak < 60 * 1024 * 1024, f"peak {peak / 2**20:.0f} MB"


def test_no_transaction_is_open_while_a_feed_downloads(
    sessions: Sessions, config_path: Path, db_url: str, feed_server: FeedServer
) -> None:
    """Another connection writes while the feed server holds its answer (SQLite: the write
    lock is free); then the feed answers and is stored."""
    feed_server.held["/held.xml"] = FEED
    settings = with_feeds(
        config_path, {"Held": f"{feed_server.url}/held.xml"}, articles_section='allow_hosts = ["127.0.0.1"]'
    )
    reports: list[articles.ImportReport] = []
    fetch = threading.Thread(target=lambda: reports.extend(articles.fetch_all(sessions, settings)))
    fetch.start()
    other = make_engine(db_url)
    done = threading.Event()

    def write() -> None:
        with session_factory(other).begin() as s:
            subscribers.add(s, "during-fetch@example.com", source="test")
        done.set()

    try:
        assert feed_server.arrived.wait(30), "the fetch never reached the feed server"
        writer = threading.Thread(target=write)
        writer.start()
        writer.join(timeout=20)  # blocked behind a transaction it would wait 30 s, then fail
        assert done.is_set(), "a write had to wait for the feed download"
    finally:
        feed_server.release.set()
        fetch.join(timeout=60)
        other.dispose()
    assert len(reports) == 1 and len(reports[0].added) == 20
    with sessions.reading() as s:
        assert subscribers.get_by_email(s, "during-fetch@example.com") is not None
