"""Does the /subscribe answer's timing tell whether an address is listed?

Posts the form straight to the ASGI app, in a random order of new addresses and one listed
address, and takes the time until the answer (the work done after it, in a task of the
app's, is not part of what the client waits for). Prints the median per
(this request, previous request) kind, so a difference caused by the request's own address
and one left behind by the previous request's background work can be told apart.

Usage: python benchmarks/subscribe_timing.py [--n 1200] [--pg postgresql+psycopg://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import random
import statistics
import time
import uuid
from pathlib import Path

import httpx
from bench_support import databases
from sqlalchemy import make_url
from starlette.applications import Starlette

from newsletter import config, subscribers
from newsletter.db import make_engine, session_factory, upgrade
from newsletter.web import create_app

CONFIG = """
[newsletter]
base_url = "http://127.0.0.1:8000"
secret_key = "benchmark-secret-key-c2VjcmV0LWtleS1mb3ItYmVuY2htYXJrcy1vbmx5"
[database]
url = "{url}"
[delivery]
transport = "outbox"
"""


async def measure(app: Starlette, n: int) -> dict[tuple[str, str], list[float]]:
    """Post `n` addresses, new or listed at random; after each answer, wait for its work to end."""
    rnd = random.Random(1)
    times: dict[tuple[str, str], list[float]] = {}
    previous = "listed"
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as client:
        for _ in range(n):
            kind = rnd.choice(["new", "listed"])
            email = "listed@example.com" if kind == "listed" else f"new-{uuid.uuid4().hex[:12]}@example.com"
            start = time.perf_counter()
            answer = await client.post("/subscribe", data={"email": email})
            times.setdefault((kind, previous), []).append(time.perf_counter() - start)
            assert answer.status_code == 200, answer.text[:200]
            await app.state.newsletter.held.join()  # the work runs in the app's tasks, after the answer
            previous = kind
    return times


async def no_hold() -> None:
    """The work of each post right after its answer (`serve` holds it 0.5-3 s)."""


def run(url: str, n: int, folder: Path) -> None:
    (folder / "config.toml").write_text(CONFIG.format(url=url))
    settings = config.load(folder / "config.toml", environ={})
    unlimited = dataclasses.replace(
        settings.web, subscribe_per_client_per_hour=10**9, subscribe_per_address_per_hour=10**9
    )
    settings = dataclasses.replace(settings, web=unlimited)
    engine = make_engine(url)
    upgrade(engine, settings)
    sessions = session_factory(engine)
    with sessions.begin() as s:
        subscribers.add(s, "listed@example.com", source="cli")
    try:
        # No hold: the work starts right after the answer, and the next post follows it.
        times = asyncio.run(measure(create_app(settings, sessions, hold=no_hold), n))
    finally:
        engine.dispose()
    print(f"{make_url(url).get_backend_name()}, time to the answer (median):")
    for (kind, previous), values in sorted(times.items()):
        print(
            f"  {kind:6} address after a {previous:6} one: {statistics.median(values) * 1000:5.2f} ms (n={len(values)})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1200)
    parser.add_argument("--pg", default="", help="a PostgreSQL URL; a scratch schema is created and dropped")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    for _label, url, folder in databases(args.pg):
        run(url, args.n, folder)


if __name__ == "__main__":
    main()
