"""Desk page latency with a realistic list: 100,000 subscribers and 50 sent issues
(5,000,000 delivery rows), on SQLite (or PostgreSQL with --pg).

Each page is requested in-process through Starlette's TestClient by a signed-in editor
(so the figure is the server's work: queries, template, SVG; no network), first once
(cold: the first request after the server started and finished its warm-up), then --n
times; prints the warm-up time, the cold time, the median and the 95th percentile.

Usage: python benchmarks/desk_pages.py [--subscribers 100000] [--issues 50] [--n 20]
                                       [--pg postgresql+psycopg://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

from sqlalchemy import Engine, bindparam, create_engine, insert, make_url, text
from starlette.testclient import TestClient

from newsletter import builder, config, editors
from newsletter.db import make_engine, session_factory, upgrade
from newsletter.models import (
    Article,
    ClickCount,
    Event,
    EventKind,
    Issue,
    IssueArticle,
    IssueStatus,
    Subscriber,
    SubscriberStatus,
    UTCDateTime,
    utcnow,
)
from newsletter.web import create_app

CONFIG = """
[newsletter]
base_url = "http://127.0.0.1:8000"
secret_key = "benchmark-secret-key-c2VjcmV0LWtleS1mb3ItYmVuY2htYXJrcy1vbmx5"
timezone = "Europe/Berlin"
[database]
url = "{url}"
[[categories]]
slug = "news"
name = "News"
[[categories]]
slug = "products"
name = "Products"
[[categories]]
slug = "events"
name = "Events"
"""
SLUGS = ["news", "products", "events"]
PASSWORD = "benchmark password"


def populate(engine: Engine, settings: config.Settings, n_subscribers: int, n_issues: int) -> None:
    now = utcnow()
    with engine.begin() as conn:
        rows = []
        for i in range(n_subscribers):
            status = SubscriberStatus.UNSUBSCRIBED if i % 50 == 0 else SubscriberStatus.ACTIVE
            created = now - timedelta(days=(i * 400) // n_subscribers)
            rows.append(
                {
                    "email": f"reader{i}@example.com",
                    "email_key": f"reader{i}@example.com",
                    "name": f"Reader {i}",
                    "status": status,
                    "consent_source": "bench",
                    "consent_at": created,
                    "status_changed_at": created + timedelta(days=3),
                    "created_at": created,
                    "attributes": {},
                    "soft_bounces": 0,
                }
            )
            if len(rows) == 10_000:
                conn.execute(insert(Subscriber), rows)
                rows = []
        if rows:
            conn.execute(insert(Subscriber), rows)
        ids = [r[0] for r in conn.execute(text("SELECT id FROM subscribers ORDER BY id"))]
        conn.execute(
            insert(Event),
            [
                {"kind": EventKind.UNSUBSCRIBE, "subscriber_id": sid, "source": "page", "detail": "", "created_at": now}
                for sid in ids[::50]
            ],
        )
    for back in range(n_issues, 0, -1):
        week = builder.current_week(settings, now - timedelta(weeks=back))
        start, _ = builder.week_bounds(settings, week)
        with engine.begin() as conn:
            issue_id = conn.execute(
                insert(Issue).returning(Issue.id),
                {
                    "week": week,
                    "status": IssueStatus.SENT,
                    "subject": f"Issue {week}",
                    "intro": "",
                    "scheduled_at": start,
                    "built_at": start,
                    "send_started_at": start,
                    "sent_at": start,
                    "created_at": start,
                    "scheduled_by": "",
                },
            ).scalar_one()
            for position in range(12):
                article_id = conn.execute(
                    insert(Article).returning(Article.id),
                    {
                        "guid": f"{week}-{position}",
                        "url": f"https://example.com/{week}/{position}",
                        "title": f"Story {position} of {week}",
                        "category": SLUGS[position % 3],
                        "author": "",
                        "summary": "<p>Summary.</p>",
                        "image_url": "",
                        "source": "bench",
                        "published_at": start + timedelta(hours=position),
                        "created_at": start,
                        "updated_at": start,
                    },
                ).scalar_one()
                conn.execute(
                    insert(IssueArticle),
                    {
                        "issue_id": issue_id,
                        "article_id": article_id,
                        "category": SLUGS[position % 3],
                        "position": position,
                    },
                )
                conn.execute(
                    insert(ClickCount),
                    {"issue_id": issue_id, "article_id": article_id, "clicks": 100 + position, "scanner": 7},
                )
            # One INSERT … SELECT per issue: the ledger rows of every subscriber, written by the database.
            conn.execute(
                text(
                    "INSERT INTO deliveries (issue_id, subscriber_id, status, attempts, last_reply, variant, "
                    "claimed_by, sent_at, created_at) SELECT :issue, id, 'sent', 1, '250 OK', "
                    "'news,products,events', '', :at, :at FROM subscribers"
                ).bindparams(bindparam("at", type_=UTCDateTime())),
                {"issue": issue_id, "at": start},
            )
        print(f"  issue {week}: {len(ids):,} deliveries", file=sys.stderr, flush=True)
    with engine.begin() as conn:
        conn.execute(text("ANALYZE"))
    # The current week's draft, for the curation page.
    week = builder.current_week(settings, now)
    start, _ = builder.week_bounds(settings, week)
    with session_factory(engine).begin() as s:
        for n in range(15):
            s.add(
                Article(
                    guid=f"draft-{n}",
                    url=f"https://example.com/draft/{n}",
                    title=f"Draft story {n}",
                    category=SLUGS[n % 3],
                    summary="<p>Summary.</p>",
                    published_at=start + timedelta(minutes=n),
                )
            )
        s.flush()
        builder.build(s, settings, week)
        editors.add(s, "editor@example.com", PASSWORD)


def measure(client: TestClient, path: str, n: int) -> tuple[float, float, float]:
    def once() -> float:
        started = time.perf_counter()
        r = client.get(path)
        elapsed = time.perf_counter() - started
        assert r.status_code == 200, (path, r.status_code, r.text[:300])
        return elapsed * 1000

    cold = once()
    times = sorted(once() for _ in range(n))
    return cold, statistics.median(times), times[max(0, int(len(times) * 0.95) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=100_000)
    parser.add_argument("--issues", type=int, default=50)
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--pg", default="", help="a PostgreSQL URL; a fresh schema is made and dropped")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        schema = ""
        if args.pg:
            schema = "bench_" + uuid.uuid4().hex[:8]
            with create_engine(args.pg, isolation_level="AUTOCOMMIT").connect() as conn:
                conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
            url = (
                make_url(args.pg)
                .update_query_dict({"options": f"-csearch_path={schema}"})
                .render_as_string(hide_password=False)
            )
        else:
            url = f"sqlite:///{Path(folder) / 'bench.db'}"
        path = Path(folder) / "config.toml"
        path.write_text(CONFIG.format(url=url), encoding="utf-8")
        settings = config.load(path, environ={})
        engine = make_engine(url)
        try:
            upgrade(engine, settings)
            started = time.perf_counter()
            populate(engine, settings, args.subscribers, args.issues)
            print(f"populated in {time.perf_counter() - started:.0f} s", file=sys.stderr)
            sessions = session_factory(engine)
            week = builder.current_week(settings)
            with sessions.begin() as s:
                sent_week = s.scalar(text("SELECT week FROM issues WHERE status = 'sent' ORDER BY week DESC LIMIT 1"))
                some_id = s.scalar(
                    text(f"SELECT id FROM subscribers ORDER BY id LIMIT 1 OFFSET {args.subscribers // 2}")
                )
            app = create_app(settings, sessions)
            started = time.perf_counter()
            with TestClient(app, base_url="http://127.0.0.1:8000") as client:
                app.state.desk.warmed.wait()
                warm_up = time.perf_counter() - started
                form = client.get("/admin/login")
                token = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]  # the form has one
                client.post(
                    "/admin/login",
                    data={"email": "editor@example.com", "password": PASSWORD, "csrf_token": token, "next": "/admin/"},
                )
                pages = [
                    "/admin/",
                    "/admin/issues",
                    f"/admin/issues/{week}",
                    f"/admin/issues/{week}/preview",
                    f"/admin/issues/{sent_week}/stats",
                    "/admin/subscribers",
                    "/admin/subscribers?q=reader4242",
                    "/admin/subscribers?q=reader",
                    "/admin/subscribers?q=reader%204242",
                    "/admin/subscribers?status=unsubscribed&category=news",
                    f"/admin/subscribers/{some_id}",
                ]
                kind = "PostgreSQL" if args.pg else "SQLite"
                print(f"{args.subscribers:,} subscribers, {args.issues} sent issues, {kind}; ms per request")
                print(f"warm-up beside the starting server (counts of the sent issues, templates): {warm_up:.1f} s")
                print(f"{'page':58} {'cold':>7} {'median':>7} {'p95':>7}")
                for page in pages:
                    cold, median, p95 = measure(client, page, args.n)
                    print(f"{page:58} {cold:7.1f} {median:7.1f} {p95:7.1f}", flush=True)
        finally:
            engine.dispose()
            if schema:
                with create_engine(args.pg, isolation_level="AUTOCOMMIT").connect() as conn:
                    conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')


if __name__ == "__main__":
    main()
