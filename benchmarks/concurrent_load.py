"""One-click unsubscribes under load: real processes sharing one database (SQLite or PostgreSQL).

`newsletter serve` (uvicorn) answers RFC 8058 one-click POSTs from --clients concurrent clients
(with a /healthz GET every tenth request) while three other processes run on the same database:
`newsletter send` mailing every subscriber to an aiosmtpd sink, `newsletter articles fetch`
waiting on a feed that answers only after --feed-delay seconds, and `newsletter subscribers
export` streaming the whole list. The POSTs start once all three are under way (the fetch's
request has reached the feed server, the sink has a first message, the export's first bytes
are out), and the sink holds one message until the POSTs are done, so the send is still running
throughout. Prints failed requests and latency percentiles, then times `subscribers list`.

tests/test_concurrency.py runs the same scenario with small numbers and a feed held until the
POSTs are done.

Usage: python benchmarks/concurrent_load.py [--subscribers 100000] [--posts 2000] [--clients 20]
           [--feed-delay 10] [--pg postgresql+psycopg://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from aiosmtpd.controller import Controller
from bench_support import databases, free_port, insert_subscribers, start, stop, wait_for_server
from sqlalchemy import func, select

from newsletter import builder, config, tokens
from newsletter.db import make_engine, session_factory, upgrade
from newsletter.models import Article, Subscriber, SubscriberStatus, utcnow

CONFIG = """
[newsletter]
from_address = "Load Test <news@example.com>"
base_url = "http://127.0.0.1:{port}"
postal_address = "1 Test Street"
secret_key = "load-test-key-Yk3n8Qw2Lp5Zr7Tx1Vb4Nm6Hj9Gd0Fs2AcUe3"

[articles]
allow_hosts = ["127.0.0.1"]
fetch_timeout = 900.0  # the slow feed answers only when the scenario lets it

[database]
url = "{url}"

[smtp]
host = "127.0.0.1"
port = {smtp_port}
concurrency = 4

[[categories]]
slug = "news"
name = "News"

[[feeds]]
name = "Slow feed"
url = "http://127.0.0.1:{feed_port}/feed.xml"
category = "news"
"""

FEED = """<?xml version="1.0"?><rss version="2.0"><channel><title>Slow</title><link>https://example.com/</link>
<item><title>Late news</title><link>https://example.com/late</link><pubDate>{date}</pubDate></item>
</channel></rss>"""


class Sink:
    """aiosmtpd handler: counts recipients; holds message number `hold_at` until `release`
    (in a worker thread, so the other connections go on)."""

    def __init__(self, hold_at: int) -> None:
        self.hold_at = hold_at
        self.received: Counter[str] = Counter()
        self.first = threading.Event()
        self.release = threading.Event()
        self.count = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's name
        self.count += 1
        self.first.set()
        if self.count == self.hold_at:
            await asyncio.get_running_loop().run_in_executor(None, self.release.wait, 600)
        self.received.update(r.lower() for r in envelope.rcpt_tos)
        return "250 2.0.0 OK"


class SlowFeed:
    """Serves one RSS feed, answering once `release` is set; `arrived` says the request came in."""

    def __init__(self) -> None:
        self.arrived, self.release = threading.Event(), threading.Event()
        body = FEED.format(date=datetime.now(UTC).strftime("%a, %d %b %Y %H:%M:%S +0000")).encode()
        feed = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                feed.arrived.set()
                feed.release.wait(600)
                self.send_response(200)
                self.send_header("Content-Type", "application/rss+xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)  # seconds, one per request that answered 200
    failures: list[str] = field(default_factory=list)
    unsubscribed: int = 0  # targeted subscribers now unsubscribed
    outputs: dict[str, tuple[int, str]] = field(default_factory=dict)  # process -> (exit code, output)
    export_lines: int = 0
    received: Counter[str] = field(default_factory=Counter)
    posts_elapsed: float = 0.0
    sent_meanwhile: int = 0  # messages the sink accepted while the POSTs ran

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * p))] if ordered else float("nan")


def prepare(url: str, folder: Path, subscribers: int, port: int, smtp_port: int, feed_port: int) -> Path:
    """Config, schema, `subscribers` active subscribers (ids 1..n) and this week's built issue."""
    cfg = folder / "config.toml"
    cfg.write_text(CONFIG.format(port=port, url=url, smtp_port=smtp_port, feed_port=feed_port))
    settings = config.load(cfg, environ={})
    engine = make_engine(settings.database_url)
    upgrade(engine, settings)
    with engine.begin() as conn:
        insert_subscribers(conn, subscribers, source="load")
    with session_factory(engine).begin() as session:
        session.add(
            Article(
                guid="https://example.com/load",
                url="https://example.com/load",
                title="Load",
                category="news",
                summary="<p>Load test</p>",
                published_at=utcnow(),
            )
        )
        session.flush()
        builder.build(session, settings, builder.current_week(settings))
    engine.dispose()
    return cfg


def _wait(event: threading.Event, what: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    while not event.wait(0.2):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} never started (exit {proc.returncode}):\n{log.read_text()}")


def run(
    url: str,
    folder: Path,
    *,
    subscribers: int,
    posts: int,
    clients: int,
    feed_delay: float | None,
    send_limit: int | None = None,
) -> Result:
    """The scenario; `feed_delay` None: the feed answers once the POSTs are done; `send_limit`:
    the send stops after that many messages (`send --limit`), so a long list need not be mailed."""
    port, smtp_port = free_port(), free_port()
    feed = SlowFeed()
    cfg = prepare(url, folder, subscribers, port, smtp_port, feed.port)
    settings = config.load(cfg, environ={})
    sink = Sink(hold_at=2)  # its connection waits until the POSTs are done; the others send on
    controller = Controller(sink, hostname="127.0.0.1", port=smtp_port)
    controller.start()
    threading.Thread(target=feed.httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{port}"
    result = Result()
    procs: dict[str, subprocess.Popen[bytes]] = {}
    logs = {name: folder / f"{name}.log" for name in ("serve", "fetch", "send", "export")}
    try:
        procs["serve"] = start(cfg, logs["serve"], "serve", "--port", str(port))
        wait_for_server(base, procs["serve"], logs["serve"])
        procs["fetch"] = start(cfg, logs["fetch"], "articles", "fetch")
        _wait(feed.arrived, "articles fetch", procs["fetch"], logs["fetch"])
        if feed_delay is not None:
            threading.Timer(feed_delay, feed.release.set).start()
        limit = ["--limit", str(send_limit)] if send_limit else []
        procs["send"] = start(cfg, logs["send"], "send", "--force", *limit)
        _wait(sink.first, "send", procs["send"], logs["send"])
        procs["export"] = start(cfg, logs["export"], "subscribers", "export", stdout=subprocess.PIPE)
        export_out = procs["export"].stdout
        assert export_out is not None
        head = export_out.read(4096)  # the export is streaming (and its pipe soon full) while the POSTs run
        result.export_lines = head.count(b"\n")

        step = max(1, subscribers // posts)
        targets = [1 + i * step for i in range(min(posts, subscribers))]
        before = sink.count
        result.posts_elapsed = _post_all(base, settings, targets, clients, result)
        result.sent_meanwhile = sink.count - before

        feed.release.set()
        sink.release.set()
        result.export_lines += sum(chunk.count(b"\n") for chunk in iter(lambda: export_out.read(1 << 16), b""))
        for name in ("fetch", "send", "export"):
            code = procs[name].wait(timeout=1800)
            result.outputs[name] = (code, logs[name].read_text())
        engine = make_engine(settings.database_url)
        with session_factory(engine).reading() as s:
            result.unsubscribed = (
                s.scalar(
                    select(func.count())
                    .select_from(Subscriber)
                    .where(Subscriber.id.in_(targets), Subscriber.status == SubscriberStatus.UNSUBSCRIBED)
                )
                or 0
            )
        engine.dispose()
        result.received = sink.received
    finally:
        feed.release.set()
        sink.release.set()
        for proc in procs.values():
            stop(proc)
        controller.stop()
        feed.httpd.shutdown()
        feed.httpd.server_close()
    return result


def _post_all(base: str, settings: config.Settings, targets: list[int], clients: int, result: Result) -> float:
    """POST one-click unsubscribes for `targets` from `clients` threads, each with its own connection."""
    local = threading.local()
    lock = threading.Lock()
    prefix = settings.newsletter.base_url.rstrip("/")

    def one(n: int, sid: int) -> None:
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = httpx.Client(base_url=base, timeout=120)
        path = tokens.unsubscribe_url(settings, sid, None)[len(prefix) :]
        try:
            t0 = time.perf_counter()
            response = client.post(path, data={"List-Unsubscribe": "One-Click"})
            elapsed = time.perf_counter() - t0
            health = client.get("/healthz").status_code if n % 10 == 0 else 200
        except httpx.HTTPError as exc:
            with lock:
                result.failures.append(f"subscriber {sid}: {type(exc).__name__}: {exc}")
            return
        with lock:
            if response.status_code != 200 or health != 200:
                result.failures.append(f"subscriber {sid}: POST {response.status_code}, /healthz {health}")
            else:
                result.latencies.append(elapsed)

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(len(targets)), targets))
    return time.perf_counter() - started


def report(label: str, result: Result, posts: int, clients: int) -> None:
    ms = {p: result.percentile(p) * 1000 for p in (0.5, 0.95, 0.99)}
    print(
        f"{label}: {posts} one-click POSTs from {clients} clients in {result.posts_elapsed:.1f} s: "
        f"{len(result.failures)} failed, {result.unsubscribed} unsubscribed; "
        f"p50 {ms[0.5]:.0f} ms, p95 {ms[0.95]:.0f} ms, p99 {ms[0.99]:.0f} ms, "
        f"max {max(result.latencies, default=0) * 1000:.0f} ms"
    )
    for line in result.failures[:5]:
        print(f"  {line}")
    dupes = sum(1 for n in result.received.values() if n > 1)
    print(
        f"  send: {result.sent_meanwhile} messages while the POSTs ran, {sum(result.received.values())} in all, "
        f"{dupes} addresses twice; "
        f"export: {result.export_lines - 1} rows; exit codes "
        + ", ".join(f"{name} {code}" for name, (code, _) in result.outputs.items())
    )


def time_list(cfg: Path) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "newsletter", "--config", str(cfg), "subscribers", "list"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=True,
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--subscribers", type=int, default=100_000)
    parser.add_argument("--posts", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--feed-delay", type=float, default=10.0)
    parser.add_argument("--send-limit", type=int, default=5_000, help="messages the send mails (0: everyone)")
    parser.add_argument("--pg", default="")
    args = parser.parse_args()
    for label, url, folder in databases(args.pg):
        result = run(
            url,
            folder,
            subscribers=args.subscribers,
            posts=args.posts,
            clients=args.clients,
            feed_delay=args.feed_delay,
            send_limit=args.send_limit,
        )
        report(f"{label}, {args.subscribers} subscribers", result, args.posts, args.clients)
        print(f"  subscribers list of {args.subscribers}: {time_list(folder / 'config.toml'):.2f} s")


if __name__ == "__main__":
    main()
