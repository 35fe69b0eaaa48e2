"""Send one built issue to N subscribers into Postfix's smtp-sink and print messages/s of:
this engine (SQLite ledger, real rendering, end to end), the naive script a user would
otherwise write (an EmailMessage per subscriber, smtplib over one connection), and
Postfix's own C client `smtp-source -s 8` (the practical ceiling); plus peak RSS. The
engine runs twice: into smtp-sink as it is (it offers PIPELINING) and into one started
with -p (no PIPELINING), the ledger emptied between.

Needs the sink: `bash ../shared/tools/install-smtp-peer.sh` (binaries land in
~/.cache/postfix-peer/bin). Run: python benchmarks/send_throughput.py [--subscribers 20000]
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path

from sqlalchemy import create_engine, insert, select, text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_support import free_port  # noqa: E402

from newsletter import builder, config, db, render, tokens  # noqa: E402
from newsletter.models import (  # noqa: E402
    Article,
    Category,
    Subscriber,
    SubscriberCategory,
    SubscriberStatus,
    utcnow,
)
from newsletter.sender import send  # noqa: E402

PEER = Path.home() / ".cache/postfix-peer/bin"
CATEGORIES = ("news", "case-studies", "products", "events", "comment")
WORDS = (
    "supply",
    "chain",
    "logistics",
    "warehouse",
    "automation",
    "robotics",
    "forklift",
    "pallet",
    "retrofit",
    "sensor",
    "uptime",
    "throughput",
    "maintenance",
    "procurement",
    "energy",
    "efficiency",
    "plant",
    "floor",
    "operator",
    "safety",
    "audit",
)


@contextmanager
def sink(*flags: str) -> Iterator[int]:
    """smtp-sink on a free port (discards everything, little CPU); it offers PIPELINING
    unless `flags` has "-p"."""
    binary = PEER / "smtp-sink"
    if not binary.exists():
        sys.exit(f"{binary} not found; run: bash ../shared/tools/install-smtp-peer.sh")
    port = free_port()
    proc = subprocess.Popen(
        [str(binary), *flags, "-u", "nobody", f"127.0.0.1:{port}", "1000"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def write_config(
    folder: Path, port: int, concurrency: int, database_url: str = "sqlite:///bench.db", name: str = "config.toml"
) -> Path:
    cats = "".join(
        f'\n[[categories]]\nslug = "{c}"\nname = "{c.replace("-", " ").title()}"\nlimit = 6\n' for c in CATEGORIES
    )
    path = folder / name
    path.write_text(
        f"""
[newsletter]
name = "Trade Weekly"
from_address = "Trade Weekly <newsletter@trade-weekly.example>"
postal_address = "Trade Weekly, 1 Bench Street, Benchtown"
base_url = "https://news.example.com"
secret_key = "benchmark-secret-key-c2VjcmV0LWtleS1mb3ItYmVuY2htYXJrcy1vbmx5"
[database]
url = "{database_url}"
[smtp]
host = "127.0.0.1"
port = {port}
concurrency = {concurrency}
{cats}""",
        encoding="utf-8",
    )
    return path


def populate(settings: config.Settings, n: int) -> str:
    """Articles for ~20 KB messages and n subscribers (60 % all sections, the rest one or two)."""
    engine = db.make_engine(settings.database_url)
    db.upgrade(engine, settings)
    sessions = db.session_factory(engine)
    rnd = random.Random(48)
    now = utcnow()
    with sessions.begin() as s:
        for i in range(12):
            cat = CATEGORIES[i % len(CATEGORIES)]
            summary = " ".join(rnd.choice(WORDS) for _ in range(16)).capitalize() + "."
            s.add(
                Article(
                    guid=f"a{i}",
                    url=f"https://news.example.com/{cat}/{i}-article",
                    category=cat,
                    title=f"{cat.title()}: " + " ".join(rnd.choice(WORDS) for _ in range(7)),
                    author="Staff",
                    summary=f"<p>{summary}</p>",
                    published_at=now - timedelta(minutes=i),
                )
            )
        week = builder.build(s, settings).week
        ids = {c.slug: c.id for c in s.scalars(select(Category))}
        conn = s.connection()
        subs = [
            {
                "id": i + 1,
                "email": f"reader{i}@example.org",
                "email_key": f"reader{i}@example.org",
                "name": f"Reader {i}",
                "status": SubscriberStatus.ACTIVE,
                "consent_source": "bench",
                "consent_at": now,
                "status_changed_at": now,
                "created_at": now,
                "attributes": {},
                "soft_bounces": 0,
            }
            for i in range(n)
        ]
        conn.execute(insert(Subscriber), subs)
        prefs = []
        for i in range(n):
            if rnd.random() >= 0.6:
                for slug in rnd.sample(CATEGORIES, rnd.choice((1, 2))):
                    prefs.append({"subscriber_id": i + 1, "category_id": ids[slug]})
        conn.execute(insert(SubscriberCategory), prefs)
    engine.dispose()
    return week


def reset(database_url: str) -> None:
    """Empty the ledger and make the issue a draft again, for the next run of a sender."""
    engine = create_engine(database_url)
    with engine.begin() as conn:
        # PostgreSQL: TRUNCATE, not DELETE, leaves no dead rows for the next plan to wade through
        # (the development server runs without autovacuum).
        conn.execute(text("TRUNCATE deliveries" if engine.dialect.name == "postgresql" else "DELETE FROM deliveries"))
        conn.execute(text("UPDATE issues SET status = 'draft', sent_at = NULL, send_started_at = NULL"))
    engine.dispose()


def peak_rss_mb() -> float:
    """VmHWM of this process. Not ru_maxrss: Linux carries that over from the parent
    across fork and exec, so a child would report the (large) benchmark parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def engine_run(config_path: Path, week: str) -> None:
    """Child process: the engine end to end (plan, render, send, ledger); prints JSON."""
    settings = config.load(config_path, environ={})
    engine = db.make_engine(settings.database_url)
    started = time.perf_counter()
    report = send(db.session_factory(engine), settings, week)
    elapsed = time.perf_counter() - started
    rss = peak_rss_mb()
    print(
        json.dumps(
            {
                "sent": report.sent,
                "failed": report.failed,
                "elapsed": elapsed,
                "rate": report.sent / elapsed,
                "rss_mb": rss,
            }
        )
    )


def naive_run(settings: config.Settings, week: str, port: int, count: int) -> dict[str, float]:
    """What a user would write: an EmailMessage per subscriber, smtplib, one connection."""
    engine = db.make_engine(settings.database_url)
    with db.session_factory(engine).begin() as s:
        content = builder.load_content(s, settings, week)
    variant = render.render_variant(settings, content, render.sections_for(content, ()))
    size = 0
    started = time.perf_counter()
    with smtplib.SMTP("127.0.0.1", port) as smtp:
        for i in range(count):
            html, text = render.personalize(
                variant,
                unsubscribe_url=tokens.unsubscribe_url(settings, i, 1),
                preferences_url=tokens.preferences_url(settings, i),
                name=f"Reader {i}",
            )
            msg = EmailMessage()
            msg["From"] = settings.newsletter.from_address
            msg["To"] = f"Reader {i} <reader{i}@example.org>"
            msg["Subject"] = variant.subject
            msg["List-Unsubscribe"] = f"<{tokens.unsubscribe_url(settings, i, 1)}>"
            msg.set_content(text)
            msg.add_alternative(html, subtype="html")
            data = msg.as_bytes()
            size += len(data)
            smtp.sendmail("newsletter@example.com", [f"reader{i}@example.org"], data)
    elapsed = time.perf_counter() - started
    return {"rate": count / elapsed, "size": size / count}


def smtp_source_run(port: int, count: int, size: int) -> float:
    binary = PEER / "smtp-source"
    started = time.perf_counter()
    subprocess.run(
        [str(binary), "-d", "-s", "8", "-m", str(count), "-l", str(size), f"127.0.0.1:{port}"],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--naive", type=int, default=3000, help="messages for the naive script (rate only)")
    parser.add_argument("--rounds", type=int, default=1, help="engine runs with and without PIPELINING, alternating")
    parser.add_argument("--engine-child", nargs=2, metavar=("CONFIG", "WEEK"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.engine_child:
        engine_run(Path(args.engine_child[0]), args.engine_child[1])
        return
    folder = Path(tempfile.mkdtemp(prefix="send-bench-"))
    try:
        with sink() as port, sink("-p") as plain_port:
            cfg = write_config(folder, port, args.concurrency)
            plain = write_config(folder, plain_port, args.concurrency, name="plain.toml")
            settings = config.load(cfg, environ={})
            week = populate(settings, args.subscribers)
            piped: list[dict[str, float]] = []
            unpiped: list[dict[str, float]] = []
            # The same issue and list, pipelined and not, the ledger emptied before each run;
            # the order alternates each round (ABBA), so a machine getting busier favours neither.
            for i in range(args.rounds):
                order = [(cfg, piped), (plain, unpiped)]
                for path, results in order if i % 2 == 0 else order[::-1]:
                    if piped or unpiped:
                        reset(settings.database_url)
                    child = subprocess.run(
                        [sys.executable, __file__, "--engine-child", str(path), week],
                        capture_output=True,
                        text=True,
                        check=True,
                    )
                    results.append(json.loads(child.stdout.strip().splitlines()[-1]))
            ours = max(piped, key=lambda r: r["rate"])
            plain_best = max(unpiped, key=lambda r: r["rate"])
            naive = naive_run(settings, week, port, args.naive)
            source = smtp_source_run(port, args.subscribers, int(naive["size"]))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(
        f"subscribers: {args.subscribers}, message size ~{naive['size'] / 1024:.1f} KB, "
        f"concurrency {args.concurrency}, sink: smtp-sink on 127.0.0.1"
    )
    print(
        f"this engine (end to end, SQLite ledger): {ours['rate']:7.0f} msg/s  "
        f"({ours['sent']} sent in {ours['elapsed']:.1f} s, peak RSS {ours['rss_mb']:.0f} MB)"
    )
    print(
        f"  the same, server without PIPELINING:   {plain_best['rate']:7.0f} msg/s  "
        f"(pipelining gains {ours['rate'] / plain_best['rate']:.2f}x; best of {args.rounds} each)"
    )
    for i, (a, b) in enumerate(zip(piped, unpiped, strict=True)):
        print(f"  round {i + 1}: pipelined {a['rate']:5.0f} msg/s, not pipelined {b['rate']:5.0f} msg/s")
    print(
        f"naive EmailMessage + smtplib:            {naive['rate']:7.0f} msg/s  "
        f"(engine is {ours['rate'] / naive['rate']:.1f}x)"
    )
    print(
        f"smtp-source -s 8 (C client, ceiling):    {source:7.0f} msg/s  "
        f"(engine reaches {100 * ours['rate'] / source:.0f} %)"
    )


if __name__ == "__main__":
    main()
