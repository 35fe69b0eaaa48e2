"""Subscriber web app latency: `newsletter serve` as a real process on SQLite (or PostgreSQL).

Prints the median and 95th percentile time, and requests per second, over sequential
requests from one client for: the unsubscribe page (GET), the RFC 8058 one-click POST
(each to a different subscriber, so each really unsubscribes), and the preferences page.

Usage: python benchmarks/web_requests.py [--n 300] [--pg postgresql+psycopg://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
from sqlalchemy import create_engine, insert, make_url

from newsletter import config, tokens
from newsletter.db import make_engine, upgrade
from newsletter.models import Subscriber, SubscriberStatus, utcnow

CONFIG = """
[newsletter]
base_url = "http://127.0.0.1:{port}"
secret_key = "benchmark-secret-key-c2VjcmV0LWtleS1mb3ItYmVuY2htYXJrcy1vbmx5"
[database]
url = "{url}"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(
            insert(Subscriber),
            [
                {
                    "email": f"s{i}@example.com",
                    "email_key": f"s{i}@example.com",
                    "name": "",
                    "status": SubscriberStatus.ACTIVE,
                    "consent_source": "bench",
                    "consent_at": now,
                    "status_changed_at": now,
                    "created_at": now,
                    "attributes": {},
                    "soft_bounces": 0,
                }
                for i in range(1, n + 1)
            ],
        )
    engine.dispose()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    with (folder / "serve.log").open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "newsletter", "--config", str(cfg), "serve", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        with httpx.Client(timeout=10) as client:
            for _ in range(300):
                try:
                    if client.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            unsub = [tokens.unsubscribe_url(settings, i, None) for i in range(1, n + 1)]
            prefs = [tokens.preferences_url(settings, i) for i in range(1, n + 1)]
            one_click = {"List-Unsubscribe": "One-Click"}
            print(f"  GET  unsubscribe page:   {timed(n, lambda i: client.get(unsub[i]))}")
            print(f"  POST one-click:          {timed(n, lambda i: client.post(unsub[i], data=one_click))}")
            print(f"  GET  preferences page:   {timed(n, lambda i: client.get(prefs[i]))}")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--pg", default="")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print(f"SQLite, {args.n} sequential requests each:")
        run(f"sqlite:///{tmp}/bench.db", args.n, Path(tmp))
    if args.pg:
        schema = "bench_" + uuid.uuid4().hex[:8]
        admin = create_engine(args.pg, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        try:
            url = make_url(args.pg).update_query_dict({"options": f"-csearch_path={schema}"})
            with tempfile.TemporaryDirectory() as tmp:
                print(f"PostgreSQL, {args.n} sequential requests each:")
                run(url.render_as_string(hide_password=False), args.n, Path(tmp))
        finally:
            with admin.connect() as conn:
                conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
            admin.dispose()


if __name__ == "__main__":
    main()
