"""Planning a send and the reports at a million subscribers: seconds, CPU and peak RSS.

Builds a list of --subscribers (default 1,000,000; imported with `subscriber_import`, a sixth
with no category choice, the rest one category each) and an issue with a section per
category, then runs each step in a fresh process (so each has its own peak RSS):
  - plan: `ledger.plan`, one INSERT … SELECT of the whole ledger; last, "plan, next issue"
    plans the following week's issue beside the first one's million rows;
    baseline: the previous planner (1,000 subscribers per round trip, sections computed in
    Python, rows inserted with executemany) on the first --baseline-subscribers;
  - `send --dry-run` (`sender.dry_run`), `stats` (`stats.issue_stats`), `deliveries export`
    and `subscribers export` to a file (the database makes the cells; PostgreSQL's COPY);
    baselines: the previous exports (plain rows through Python's CSV writer, each cell
    checked in Python) on the first --baseline-subscribers.
CPU seconds are this process's plus its PostgreSQL backend's (from /proc): on the shared
development machine the wall clock says more about the neighbours than about the code.

Usage: python benchmarks/plan_report.py [--subscribers 1000000] [--baseline-subscribers 100000]
       [--no-pg] [--no-sqlite] [--pg postgresql+psycopg://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path

from sqlalchemy import String, delete, select, text, type_coerce
from sqlalchemy.orm import Session

sys.path.insert(0, os.path.dirname(__file__))
from import_speed import database, drop, peak_rss_mib, server_cpu, settings, write_csv  # noqa: E402

from newsletter import builder, ledger, render, sender, spreadsheets, stats, subscriber_import, subscribers  # noqa: E402
from newsletter.db import make_engine, session_factory  # noqa: E402
from newsletter.models import (  # noqa: E402
    Article,
    Category,
    Delivery,
    DeliveryStatus,
    Subscriber,
    SubscriberCategory,
    SubscriberStatus,
    utcnow,
)


def setup(url: str, csv_path: Path) -> str:
    """Import the list and build this week's issue and the next (an article per category in
    each); this week's key."""
    sessions = session_factory(make_engine(url))
    with sessions.begin() as s, csv_path.open("rb") as fp:
        subscriber_import.import_csv(s, fp, source="bench.csv")
    now = utcnow()
    with sessions.begin() as s:
        for i, slug in enumerate(s.scalars(select(Category.slug).order_by(Category.position))):
            for weeks in (0, 1):
                s.add(
                    Article(
                        guid=f"bench-{weeks}-{i}",
                        url=f"https://example.com/{slug}/{weeks}/{i}",
                        title=f"{slug.title()} headline",
                        category=slug,
                        summary=f"<p>About {slug}.</p>",
                        published_at=now + timedelta(weeks=weeks, minutes=-i),
                    )
                )
    with sessions.begin() as s:
        week = builder.build(s, settings()).week
        builder.build(s, settings(), next_week(week))
    return week


def next_week(week: str) -> str:
    monday = date.fromisocalendar(int(week[:4]), int(week[-2:]), 1) + timedelta(weeks=1)
    year, number, _ = monday.isocalendar()
    return f"{year}-W{number:02d}"


def old_plan(session: Session, content: builder.IssueContent, limit: int) -> int:
    """The planner before the set-based one, as it was: 1,000 ids a round trip."""
    added, after = 0, 0
    while added < limit:
        planned = select(Delivery.id).where(
            Delivery.issue_id == content.issue_id, Delivery.subscriber_id == Subscriber.id
        )
        ids = list(
            session.scalars(
                select(Subscriber.id)
                .where(Subscriber.status == SubscriberStatus.ACTIVE, Subscriber.id > after, ~planned.exists())
                .order_by(Subscriber.id)
                .limit(1000)
            )
        )
        if not ids:
            break
        slugs: dict[int, list[str]] = {}
        for sid, slug in session.execute(
            select(SubscriberCategory.subscriber_id, Category.slug)
            .join(Category, Category.id == SubscriberCategory.category_id)
            .where(SubscriberCategory.subscriber_id.in_(ids))
        ):
            slugs.setdefault(sid, []).append(slug)
        rows = []
        for sid in ids:
            sections = render.sections_for(content, slugs.get(sid, ()))
            rows.append(
                {
                    "issue_id": content.issue_id,
                    "subscriber_id": sid,
                    "variant": ledger.variant_key(sections),
                    "status": DeliveryStatus.PENDING if sections else DeliveryStatus.SKIPPED,
                    "last_reply": "" if sections else ledger.NO_SECTIONS,
                    "attempts": 0,
                    "claimed_by": "",
                    "created_at": utcnow(),
                }
            )
        session.execute(ledger._insert(session), rows)  # noqa: SLF001  # the same statement it used
        added += len(rows)
        after = ids[-1]
    return added


def old_deliveries_export(session: Session, week: str, out: Path, limit: int) -> int:
    """The deliveries export before the database made the cells: plain rows (2,000 a round
    trip) through Python's CSV writer, each cell checked for a formula in Python."""
    issue = builder.get_issue(session, settings(), week)
    with out.open("w", encoding="utf-8", newline="") as fp:
        writer = spreadsheets.writer(fp)
        writer.writerow(stats.EXPORT_COLUMNS)
        rows = session.connection().execute(
            select(
                Subscriber.email,
                Subscriber.name,
                Delivery.status,
                Delivery.attempts,
                Delivery.last_reply,
                Delivery.sent_at,
                Delivery.claimed_at,
                Delivery.next_attempt_at,
                Delivery.variant,
            )
            .join(Delivery, Delivery.subscriber_id == Subscriber.id)
            .where(Delivery.issue_id == issue.id)
            .order_by(Delivery.id)
            .limit(limit)
            .execution_options(yield_per=2000)
        )
        n = 0
        for email, name, status, attempts, reply, *times, variant in rows:
            stamps = (t.isoformat(timespec="seconds") if t else "" for t in times)
            writer.writerow([email, name, status, attempts, reply, *stamps, variant.replace(",", " ")])
            n += 1
    return n


def old_subscribers_export(session: Session, out: Path, limit: int) -> int:
    """The subscribers export before: plain rows with their categories (ordered in Python) and
    JSON attributes through Python's CSV writer, as `subscribers.iter_listed` read them."""
    categories = {
        cid: (pos, slug) for cid, pos, slug in session.execute(select(Category.id, Category.position, Category.slug))
    }
    first = select(Subscriber.id).order_by(Subscriber.id).limit(limit).subquery()
    names: set[str] = set()
    for (attributes,) in session.execute(
        select(Subscriber.attributes).join(first, first.c.id == Subscriber.id).execution_options(yield_per=2000)
    ):
        names.update(attributes or ())
    extra = sorted(names - set(subscribers.EXPORT_COLUMNS))
    rows = session.connection().execute(
        select(
            Subscriber.id,
            SubscriberCategory.category_id,
            Subscriber.email,
            Subscriber.name,
            type_coerce(Subscriber.status, String),
            Subscriber.consent_source,
            Subscriber.consent_at,
            Subscriber.created_at,
            Subscriber.attributes,
        )
        .join(first, first.c.id == Subscriber.id)
        .outerjoin(SubscriberCategory, SubscriberCategory.subscriber_id == Subscriber.id)
        .order_by(Subscriber.id)
        .execution_options(yield_per=2000)
    )
    with out.open("w", encoding="utf-8", newline="") as fp:
        writer = spreadsheets.writer(fp)
        writer.writerow(subscribers.EXPORT_COLUMNS + extra)
        n = 0
        for _, group in itertools.groupby(rows, key=lambda row: row[0]):
            chosen = list(group)
            row = chosen[0]
            slugs = sorted(categories[r[1]] for r in chosen if r[1] is not None)
            attributes = row[8] or {}
            writer.writerow(
                [row[2], row[3], row[4], ",".join(slug for _, slug in slugs) or subscribers.ALL, row[5]]
                + [t.isoformat() if t else "" for t in (row[6], row[7])]
                + [attributes.get(k, "") for k in extra]
            )
            n += 1
    return n


def step(s: Session, name: str, week: str, out: Path, limit: int) -> str:
    """Run one step in the session's transaction; returns what it did, in a few words."""
    cfg = settings()
    actions: dict[str, Callable[[], str]] = {
        "plan": lambda: f"{ledger.plan(s, builder.load_content(s, cfg, week)):,} rows",
        "plan, next issue": lambda: f"{ledger.plan(s, builder.load_content(s, cfg, next_week(week))):,} rows",
        "old plan": lambda: f"{old_plan(s, builder.load_content(s, cfg, week), limit):,} rows",
        "send --dry-run": lambda: f"{sum(p.recipients for p in sender.dry_run(s, cfg, week)):,} recipients",
        "stats": lambda: f"{stats.issue_stats(s, cfg, week).deliveries.get('pending', 0):,} pending",
        "deliveries export": lambda: f"{export(out, lambda fp: stats.export_deliveries(s, cfg, week, fp)):,} rows",
        "old deliveries export": lambda: f"{old_deliveries_export(s, week, out, limit):,} rows",
        "subscribers export": lambda: f"{export(out, lambda fp: subscribers.export_csv(s, fp)):,} rows",
        "old subscribers export": lambda: f"{old_subscribers_export(s, out, limit):,} rows",
    }
    return actions[name]()


def export(out: Path, write: Callable[..., int]) -> int:
    with out.open("w", encoding="utf-8", newline="") as fp:
        return write(fp)


def child(name: str, url: str, week: str, out: str, limit: str) -> None:
    sessions = session_factory(make_engine(url))
    with sessions.begin() as s:
        t, cpu, server = time.perf_counter(), time.process_time(), server_cpu(s)
        did = step(s, name, week, Path(out), int(limit))
        cpu = time.process_time() - cpu + server_cpu(s) - server
    result = {
        "seconds": time.perf_counter() - t,
        "cpu": cpu,
        "did": did,
        "peak_rss_mib": peak_rss_mib(),
    }
    print(json.dumps(result))


STEPS = [
    "old plan",
    "plan",
    "send --dry-run",
    "stats",
    "deliveries export",
    "old deliveries export",
    "subscribers export",
    "old subscribers export",
    "plan, next issue",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=1_000_000)
    parser.add_argument("--baseline-subscribers", type=int, default=100_000)
    parser.add_argument(
        "--pg",
        default=os.environ.get("NEWSLETTER_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
    )
    parser.add_argument("--no-pg", action="store_true")
    parser.add_argument("--no-sqlite", action="store_true")
    parser.add_argument("--steps", help="comma-separated subset, e.g. 'plan,send --dry-run' (default: all)")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    parser.add_argument("--setup", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    if args.setup:
        print(setup(args.setup[0], Path(args.setup[1])))
        return
    with tempfile.TemporaryDirectory() as tmp:
        csv_path, out = Path(tmp) / "members.csv", Path(tmp) / "out.csv"
        write_csv(csv_path, args.subscribers)
        print(f"{args.subscribers:,} subscribers; load average {os.getloadavg()[0]:.1f}")
        print(f"{'database':<12}{'step':<24}{'seconds':>9}{'CPU s':>7}{'peak RSS':>10}  result")
        targets = ([] if args.no_sqlite else [("SQLite", None)]) + ([] if args.no_pg else [("PostgreSQL", args.pg)])
        for label, base_url in targets:
            url, schema = database(base_url, tmp)
            cmd = [sys.executable, __file__, "--setup", url, str(csv_path)]  # in a child: the parent stays small
            week = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.split()[-1]
            limit = str(min(args.subscribers, args.baseline_subscribers))

            def run(name: str, url: str = url, week: str = week, label: str = label, limit: str = limit) -> None:
                cmd = [sys.executable, __file__, "--child", name, url, week, str(out), limit]
                result = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
                print(
                    f"{label:<12}{name:<24}{result['seconds']:>9.1f}{result['cpu']:>7.1f}"
                    f"{result['peak_rss_mib']:>7.0f} MiB  {result['did']}"
                )

            chosen = args.steps.split(",") if args.steps else STEPS
            if "old plan" in chosen:
                run("old plan")
                with session_factory(make_engine(url)).begin() as s:  # TRUNCATE: no dead rows left for the plan
                    s.execute(text("TRUNCATE deliveries") if base_url else delete(Delivery))
            for name in STEPS[1:]:
                if name in chosen:
                    run(name)
            drop(url, schema)


if __name__ == "__main__":
    main()
