"""Subscriber CSV import speed: rows/s for 100,000 generated rows, SQLite and PostgreSQL.

Prints, measured in the same run on the same file:
  - `subscribers.import_csv` (bulk statements in chunks of 500),
  - the baseline a user would otherwise write: one ORM object per row (`session.add`) after
    the same email validation, committed once,
  - a re-import of the same file (everything "unchanged"),
  - peak RSS of the process.

Usage: python benchmarks/import_speed.py [--rows 100000] [--pg postgresql+psycopg://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import random
import resource
import tempfile
import time
import uuid

from sqlalchemy import create_engine

from newsletter import config, subscribers
from newsletter.db import make_engine, session_factory, upgrade
from newsletter.models import Subscriber, SubscriberStatus, utcnow

DOMAINS = ["gmail.com", "yahoo.com", "outlook.com", "example.com", "firma.de", "bücher.example", "mail.ru"]
CATEGORIES = ["news", "case-studies", "products", "events", "comment", ""]


def make_csv(rows: int) -> bytes:
    rnd = random.Random(42)
    out = io.StringIO()
    w = csv.writer(out, delimiter=";")
    w.writerow(["E-mail address", "First name", "Last name", "Company", "Categories"])
    for i in range(rows):
        w.writerow(
            [
                f"user{i}.{rnd.randrange(10**6)}@{rnd.choice(DOMAINS)}",
                f"First{i}",
                f"Last{i}",
                f"Company {i % 977}",
                rnd.choice(CATEGORIES),
            ]
        )
    return out.getvalue().encode("utf-8")


def fresh_engine(url: str | None, tmp: str, name: str):
    settings = config.load(os.path.join(os.path.dirname(__file__), "..", "config.example.toml"), environ={})
    if url is None:
        engine = make_engine(f"sqlite:///{tmp}/{name}.db")
        cleanup = None
    else:
        schema = "bench_" + uuid.uuid4().hex[:8]
        admin = create_engine(url, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        engine = make_engine(f"{url}?options=-csearch_path%3D{schema}")

        def cleanup() -> None:
            with admin.connect() as c:
                c.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')

    upgrade(engine, settings)
    return engine, cleanup


def bench_import(engine, data: bytes) -> tuple[float, subscribers.ImportReport]:
    sessions = session_factory(engine)
    t = time.perf_counter()
    with sessions.begin() as s:
        report = subscribers.import_csv(s, io.BytesIO(data), source="bench.csv")
    return time.perf_counter() - t, report


def bench_naive(engine, data: bytes) -> float:
    """What a user would write: csv.DictReader, validate, one ORM object per row."""
    sessions = session_factory(engine)
    t = time.perf_counter()
    with sessions.begin() as s:
        for row in csv.DictReader(io.StringIO(data.decode("utf-8")), delimiter=";"):
            try:
                email = subscribers.normalize_email(row["E-mail address"])
            except Exception:  # noqa: BLE001
                continue
            now = utcnow()
            s.add(
                Subscriber(
                    email=email,
                    email_key=email.casefold(),
                    name=f"{row['First name']} {row['Last name']}",
                    status=SubscriberStatus.ACTIVE,
                    consent_source="bench",
                    consent_at=now,
                    status_changed_at=now,
                    created_at=now,
                    attributes={"Company": row["Company"]},
                    soft_bounces=0,
                )
            )
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument(
        "--pg",
        default=os.environ.get("NEWSLETTER_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
    )
    parser.add_argument("--no-pg", action="store_true")
    args = parser.parse_args()
    data = make_csv(args.rows)
    print(f"{args.rows:,} rows, {len(data) / 2**20:.1f} MiB CSV")
    print(f"{'database':<12}{'import rows/s':>15}{'re-import rows/s':>18}{'naive ORM rows/s':>18}")
    targets = [("SQLite", None)] + ([] if args.no_pg else [("PostgreSQL", args.pg)])
    with tempfile.TemporaryDirectory() as tmp:
        for label, url in targets:
            engine, cleanup = fresh_engine(url, tmp, "bulk")
            first, report = bench_import(engine, data)
            assert report.added == args.rows, report.summary
            again, report2 = bench_import(engine, data)
            assert report2.unchanged == args.rows, report2.summary
            engine.dispose()
            if cleanup:
                cleanup()
            engine, cleanup = fresh_engine(url, tmp, "naive")
            naive = bench_naive(engine, data)
            engine.dispose()
            if cleanup:
                cleanup()
            print(f"{label:<12}{args.rows / first:>15,.0f}{args.rows / again:>18,.0f}{args.rows / naive:>18,.0f}")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
