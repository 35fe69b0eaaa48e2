"""Subscriber web app latency: `newsletter serve` as a real process on SQLite (or PostgreSQL).

Prints the median and 95th percentile time, and requests per second, over sequential
requests from one client for: the unsubscribe page (GET), the RFC 8058 one-click POST
(each to a different subscriber, so each really unsubscribes), and the preferences page.

Usage: python benchmarks/web_requests.py [--n 300] [--pg postgresql+psycopg://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from bench_support import databases, free_port, insert_subscribers, serving

from newsletter import config, tokens
from newsletter.db import make_engine, upgrade

CONFIG = """
[newsletter]
base_url = "http://127.0.0.1:{port}"
secret_key = "benchmark-secret-key-c2VjcmV0LWtleS1mb3ItYmVuY2htYXJrcy1vbmx5"
[database]
url = "{url}"
"""


def timed(n: int, request: Callable[[int], httpx.Response]) -> str:
    times = []
    start = time.perf_counter()
    for i in range(n):
        t0 = time.perf_counter()
        r = request(i)
        times.append(time.perf_counter() - t0)
        assert r.status_code == 200, r.text[:200]
    total = time.perf_counter() - start
    times.sort()
    return (
        f"median {statistics.median(times) * 1000:6.1f} ms, p95 {times[int(len(times) * 0.95)] * 1000:6.1f} ms, "
        f"{n / total:6.0f} req/s"
    )


def run(url: str, n: int, folder: Path) -> None:
    port = free_port()
    cfg = folder / "config.toml"
    cfg.write_text(CONFIG.format(port=port, url=url))
    settings = config.load(cfg, environ={})
    engine = make_engine(settings.database_url)
    upgrade(engine, settings)
    with engine.begin() as conn:
        insert_subscribers(conn, n, source="bench")
    engine.dispose()
    with serving(cfg, port, folder / "serve.log"), httpx.Client(timeout=10) as client:
        unsub = [tokens.unsubscribe_url(settings, i, None) for i in range(1, n + 1)]
        prefs = [tokens.preferences_url(settings, i) for i in range(1, n + 1)]
        one_click = {"List-Unsubscribe": "One-Click"}
        print(f"  GET  unsubscribe page:   {timed(n, lambda i: client.get(unsub[i]))}")
        print(f"  POST one-click:          {timed(n, lambda i: client.post(unsub[i], data=one_click))}")
        print(f"  GET  preferences page:   {timed(n, lambda i: client.get(prefs[i]))}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--pg", default="")
    args = parser.parse_args()
    for label, url, folder in databases(args.pg):
        print(f"{label}, {args.n} sequential requests each:")
        run(url, args.n, folder)


if __name__ == "__main__":
    main()
