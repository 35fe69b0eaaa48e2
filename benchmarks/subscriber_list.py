"""`newsletter subscribers list` of a long list: wall and CPU time of the real command, SQLite and PostgreSQL.

Fills a database with --subscribers active subscribers (two in five with one or two of five
categories), then runs, as child processes with output to a pipe that is read and thrown away:
  - `newsletter --version`: the floor (Python start-up and the CLI module, no database),
  - `newsletter subscribers list`: the command itself, --runs times (best and median),
  - the baseline: the same list read the way a user of the ORM would write it (one Subscriber
    object each, its categories through the relationship: a query per subscriber), in this
    process, on the first --naive subscribers and scaled up.
Also prints the command's peak RSS (flat memory: rows are streamed in batches).

Usage: python benchmarks/subscriber_list.py [--subscribers 100000] [--runs 5] [--naive 5000]
           [--pg postgresql+psycopg://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench_support import databases
from sqlalchemy import Engine, insert, select
from sqlalchemy.orm import Session

from newsletter import config
from newsletter.db import make_engine, upgrade
from newsletter.models import Category, Subscriber, SubscriberCategory, SubscriberStatus, utcnow

CONFIG = """
[newsletter]
from_address = "List Test <news@example.com>"
base_url = "https://news.example.com"
postal_address = "1 Test Street"
secret_key = "list-test-key-Yk3n8Qw2Lp5Zr7Tx1Vb4Nm6Hj9Gd0Fs2AcUe3"

[database]
url = "{url}"
"""
SLUGS = ["news", "case-studies", "products", "events", "comment"]


def prepare(url: str, folder: Path, subscribers: int) -> tuple[Path, Engine]:
    """Config, schema, five categories and `subscribers` active subscribers."""
    cfg = folder / "config.toml"
    cfg.write_text(
        CONFIG.format(url=url) + "".join(f'\n[[categories]]\nslug = "{s}"\nname = "{s.title()}"\n' for s in SLUGS)
    )
    engine = make_engine(config.load(cfg, environ={}).database_url)
    upgrade(engine, config.load(cfg, environ={}))
    now = utcnow()
    with engine.begin() as conn:
        ids = dict(conn.execute(select(Category.slug, Category.id)).all())
        for start in range(1, subscribers + 1, 10_000):
            batch = range(start, min(start + 10_000, subscribers + 1))
            conn.execute(
                insert(Subscriber),
                [
                    {
                        "id": i,
                        "email": f"reader{i}@example.com",
                        "email_key": f"reader{i}@example.com",
                        "name": f"Reader {i}",
                        "status": SubscriberStatus.ACTIVE,
                        "consent_source": "bench",
                        "consent_at": now,
                        "status_changed_at": now,
                        "created_at": now,
                        "attributes": {"company": f"Company {i % 977}"},
                        "soft_bounces": 0,
                    }
                    for i in batch
                ],
            )
            links = [
                {"subscriber_id": i, "category_id": ids[SLUGS[(i + k) % 5]]}
                for i in batch
                if i % 5 < 2
                for k in range(1 + i % 2)
            ]
            conn.execute(insert(SubscriberCategory), links)
    return cfg, engine


def run_list(cfg: Path, *args: str) -> tuple[float, float, int]:
    """(wall s, CPU s, peak RSS KiB) of one `newsletter … ` child, output read from a pipe."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "newsletter", "--config", str(cfg), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    out = proc.stdout
    assert out is not None
    lines = sum(chunk.count(b"\n") for chunk in iter(lambda: out.read(1 << 16), b""))
    if proc.wait() != 0:
        raise SystemExit(f"newsletter {' '.join(args)} failed")
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if args[:2] == ("subscribers", "list"):
        assert lines >= 1, "no output"
    return wall, cpu, after.ru_maxrss


def naive(engine: Engine, n: int) -> float:
    """Seconds per subscriber for the ORM way: a Subscriber object each, categories lazily loaded."""
    started = time.perf_counter()
    with Session(engine) as s:
        for sub in s.scalars(select(Subscriber).order_by(Subscriber.id).limit(n)):
            slugs = s.scalars(
                select(Category.slug)
                .join(SubscriberCategory, SubscriberCategory.category_id == Category.id)
                .where(SubscriberCategory.subscriber_id == sub.id)
            ).all()
            "\t".join([sub.email, sub.name, str(sub.status), ",".join(slugs) or "all"])
    return (time.perf_counter() - started) / n


def measure(label: str, url: str, folder: Path, args: argparse.Namespace) -> None:
    cfg, engine = prepare(url, folder, args.subscribers)
    try:
        floor = min(run_list(cfg, "--version")[:2] for _ in range(3))
        runs = [run_list(cfg, "subscribers", "list") for _ in range(args.runs)]
        walls, cpus = [r[0] for r in runs], [r[1] for r in runs]
        per = naive(engine, min(args.naive, args.subscribers))
    finally:
        engine.dispose()
    rss = max(r[2] for r in runs) // 1024
    print(
        f"{label}, {args.subscribers:,} subscribers: subscribers list best {min(walls):.2f} s wall "
        f"(median {statistics.median(walls):.2f} s), {min(cpus):.2f} s CPU; peak RSS {rss} MiB"
    )
    print(
        f"  floor `newsletter --version`: {floor[0]:.2f} s wall, {floor[1]:.2f} s CPU;"
        f" naive ORM listing (query per subscriber): {per * args.subscribers:.1f} s for {args.subscribers:,}"
        f" (measured on {min(args.naive, args.subscribers):,})"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--subscribers", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--naive", type=int, default=5_000, help="subscribers the naive baseline reads")
    parser.add_argument("--pg", default="")
    args = parser.parse_args()
    for label, url, folder in databases(args.pg):
        measure(label, url, folder, args)


if __name__ == "__main__":
    main()
