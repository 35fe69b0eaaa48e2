"""Subscriber CSV import speed: rows/s and peak RSS for a generated CSV, SQLite and PostgreSQL.

Prints, measured in the same run, each in a fresh process (so each has its own peak RSS),
wall seconds and CPU seconds (this process plus its PostgreSQL backend, read from /proc:
on a shared machine the wall clock says more about the neighbours than about the import):
  - `subscriber_import.import_csv` on an empty database (chunks staged and merged while a
    second thread parses the next; COPY on PostgreSQL),
  - a re-import of the same file (every row "unchanged"),
  - the baseline a user would otherwise write: csv.DictReader, the same email validation,
    one ORM object per row (`session.add`), flushed every 10,000 rows, on the first
    --baseline-rows rows (a million ORM objects take minutes and gigabytes).

Usage: python benchmarks/import_speed.py [--rows 1000000] [--baseline-rows 100000] [--no-pg]
       [--pg postgresql+psycopg://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from newsletter import config, subscriber_import, subscribers
from newsletter.db import make_engine, session_factory, upgrade
from newsletter.models import Subscriber, SubscriberStatus, utcnow

DOMAINS = ["gmail.com", "yahoo.com", "outlook.com", "example.com", "firma.de", "bücher.example", "mail.ru"]
CATEGORIES = ["news", "case-studies", "products", "events", "comment", ""]
HEADER = ["E-mail address", "First name", "Last name", "Company", "Categories"]


def write_csv(path: Path, rows: int) -> None:
    """`rows` distinct addresses, a fifth with categories, every row with an extra column."""
    rnd = random.Random(42)
    with path.open("w", encoding="utf-8", newline="") as fp:
        w = csv.writer(fp, delimiter=";")
        w.writerow(HEADER)
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


def settings() -> config.Settings:
    return config.load(os.path.join(os.path.dirname(__file__), "..", "config.example.toml"), environ={})


def database(url: str | None, tmp: str) -> tuple[str, str | None]:
    """A fresh, migrated database: (url, PostgreSQL schema to drop afterwards)."""
    if url is None:
        url, schema = f"sqlite:///{tmp}/{uuid.uuid4().hex[:8]}.db", None
    else:
        schema = "bench_" + uuid.uuid4().hex[:8]
        with create_engine(url, isolation_level="AUTOCOMMIT").connect() as c:
            c.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        url = f"{url}?options=-csearch_path%3D{schema}"
    engine = make_engine(url)
    upgrade(engine, settings())
    engine.dispose()
    return url, schema


def drop(url: str, schema: str | None) -> None:
    if schema is not None:
        with create_engine(url, isolation_level="AUTOCOMMIT").connect() as c:
            c.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')


def peak_rss_mib() -> float:
    """This process's peak RSS since it started (VmHWM). Not getrusage's ru_maxrss: a child
    keeps the peak of the parent it was forked from, so every step would show the setup's."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def server_cpu(session: Session) -> float:
    """CPU seconds the PostgreSQL backend of this session has used (0 on SQLite): it runs
    on this machine, so /proc has it."""
    if session.get_bind().dialect.name != "postgresql":
        return 0.0
    pid = session.connection().exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_import(url: str, path: str) -> dict[str, object]:
    sessions = session_factory(make_engine(url))
    t, cpu = time.perf_counter(), time.process_time()
    with sessions.begin() as s, open(path, "rb") as fp:
        server = server_cpu(s)
        report = subscriber_import.import_csv(s, fp, source="bench.csv")
        server = server_cpu(s) - server
    return {
        "seconds": time.perf_counter() - t,
        "cpu": time.process_time() - cpu + server,
        "summary": report.summary,
    }


def child_naive(url: str, path: str, rows: int) -> dict[str, object]:
    """What a user would write: csv.DictReader, validate, one ORM object per row."""
    sessions = session_factory(make_engine(url))
    t, cpu = time.perf_counter(), time.process_time()
    with sessions.begin() as s, open(path, encoding="utf-8", newline="") as fp:
        server = server_cpu(s)
        for n, row in enumerate(csv.DictReader(fp, delimiter=";")):
            if n == rows:
                break
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
            if n % 10_000 == 9_999:
                s.flush()
                s.expunge_all()
        s.flush()
        server = server_cpu(s) - server
    cpu = time.process_time() - cpu + server
    return {"seconds": time.perf_counter() - t, "cpu": cpu, "summary": f"added {rows}"}


def _load() -> str:
    """The 1, 5 and 15 minute load averages: on 2 cores, above ~1 the wall clock is shared."""
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def run_child(*args: str) -> dict[str, object]:
    out = subprocess.run([sys.executable, __file__, "--child", *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--baseline-rows", type=int, default=100_000)
    parser.add_argument(
        "--pg",
        default=os.environ.get("NEWSLETTER_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
    )
    parser.add_argument("--no-pg", action="store_true")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, url, path, *rest = args.child
        result = child_import(url, path) if kind == "import" else child_naive(url, path, int(rest[0]))
        result["peak_rss_mib"] = peak_rss_mib()
        print(json.dumps(result))
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "members.csv"
        write_csv(path, args.rows)
        print(f"{args.rows:,} rows, {path.stat().st_size / 2**20:.0f} MiB CSV; load average {_load()}")
        columns = ("rows", 10), ("seconds", 9), ("rows/s", 9), ("CPU s", 7), ("rows/CPU s", 11), ("peak RSS", 10)
        print(f"{'database':<12}{'run':<28}" + "".join(f"{name:>{width}}" for name, width in columns))
        targets = [("SQLite", None)] + ([] if args.no_pg else [("PostgreSQL", args.pg)])
        for label, base_url in targets:
            url, schema = database(base_url, tmp)
            runs = [
                ("import (staging + merge)", args.rows, run_child("import", url, str(path))),
                ("re-import (all unchanged)", args.rows, run_child("import", url, str(path))),
            ]
            drop(url, schema)
            url, schema = database(base_url, tmp)
            n = min(args.rows, args.baseline_rows)
            runs.append(("naive ORM, row by row", n, run_child("naive", url, str(path), str(n))))
            drop(url, schema)
            for name, rows, result in runs:
                seconds, cpu = float(result["seconds"]), float(result["cpu"])  # type: ignore[arg-type]
                print(
                    f"{label:<12}{name:<28}{rows:>10,}{seconds:>9.1f}{rows / seconds:>9,.0f}{cpu:>7.1f}"
                    f"{rows / cpu:>11,.0f}{result['peak_rss_mib']:>7.0f} MiB"
                )
            print(f"{'':<12}(reports: {runs[0][2]['summary']} / {runs[1][2]['summary']}; load average {_load()})")


if __name__ == "__main__":
    main()
