"""One `newsletter send` against two sharing the same issue, on PostgreSQL, into smtp-sink.

Fills a fresh PostgreSQL schema with N subscribers (default 200,000) and a built issue, then
sends it twice through Postfix's smtp-sink on 127.0.0.1 (which offers PIPELINING and counts
what it accepts): first one `newsletter send` process, then, with the ledger emptied, two
started together; the ledger is planned before the senders start (see `plan`). For each
run it prints the aggregate messages/s, each process's peak RSS and the most PostgreSQL
connections it held, and checks: every row `sent` after one attempt (the unique (issue,
subscriber) row and the attempt count mean nobody was mailed twice), each process did part
of the work, and smtp-sink accepted exactly one message per row. One process sends all N,
each of the two about N/2: their peak RSS side by side shows whether memory grows with the
list. With --messages M each run stops after M messages (`send --limit`: M for one sender,
M/2 for each of two), so a list of 1,000,000 is planned in full and its senders are
measured while they send part of it.

Needs smtp-sink (`bash ../shared/tools/install-smtp-peer.sh`) and PostgreSQL. Run:
python benchmarks/two_senders.py [--subscribers 200000] [--database-url URL]
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, make_url, text

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_support import free_port  # noqa: E402
from send_throughput import PEER, populate, reset, write_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from newsletter import builder, config, db, ledger  # noqa: E402

# The child: `newsletter send`, printing its own peak RSS (VmHWM) on stderr as it exits.
CHILD = (
    "import atexit, sys\n"
    "def hwm():\n"
    "    line = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]\n"
    "    print('peak-rss-kb', line.split()[1], file=sys.stderr)\n"
    "atexit.register(hwm)\n"
    "from newsletter.cli import main\n"
    "sys.argv[0] = 'newsletter'\n"
    "main()\n"
)


@contextmanager
def schema(url: str) -> Iterator[str]:
    """A fresh schema in the database at `url`; yields a URL that uses it; dropped after."""
    name = "bench_" + uuid.uuid4().hex[:10]
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{name}"')
    try:
        yield make_url(url).update_query_dict({"options": f"-csearch_path={name}"}).render_as_string(False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{name}" CASCADE')
        admin.dispose()


@contextmanager
def counting_sink(log: Path) -> Iterator[int]:
    """smtp-sink on a free port, counting accepted messages into `log` (-c)."""
    port = free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(PEER / "smtp-sink"), "-c", "-u", "nobody", f"127.0.0.1:{port}", "1000"],
            stdout=out,
            stderr=subprocess.DEVNULL,
        )
        try:
            yield port
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def accepted(log: Path) -> int:
    counts = re.findall(rb"mesg=(\d+)", log.read_bytes())
    return int(counts[-1]) if counts else 0


class Connections(threading.Thread):
    """Samples pg_stat_activity twice a second: the most connections each sender held."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.engine = create_engine(url)
        self.peak: dict[str, int] = {}
        self.done = threading.Event()

    def run(self) -> None:
        query = text(
            "SELECT application_name, count(*) FROM pg_stat_activity "
            "WHERE application_name LIKE 'bench-sender-%' GROUP BY 1"
        )
        while not self.done.wait(0.5):
            with self.engine.connect() as conn:
                for name, n in conn.execute(query):
                    self.peak[name] = max(self.peak.get(name, 0), n)

    def stop(self) -> dict[str, int]:
        self.done.set()
        self.join()
        self.engine.dispose()
        return self.peak


@dataclass
class Run:
    elapsed: float
    rss: list[float]  # MB per process
    db: list[int]  # most PostgreSQL connections per process


def plan(settings: config.Settings, week: str) -> None:
    """Plan the issue's ledger before the senders start, as the cron host's `newsletter run`
    would: two senders planning the same issue at the same moment each run the whole
    INSERT … SELECT, the second against statistics from before the first (minutes for
    20,000 rows, measured), and planning has its own benchmark."""
    engine = db.make_engine(settings.database_url)
    with db.session_factory(engine).begin() as session:
        ledger.plan(session, builder.load_content(session, settings, week))
    engine.dispose()


def run_senders(config_path: Path, week: str, count: int, db_url: str, limit: int | None) -> Run:
    """`count` `newsletter send` processes started together (each `--limit limit` if
    given); their figures."""
    watch = Connections(db_url)
    watch.start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            [
                *(sys.executable, "-c", CHILD, "--config", str(config_path), "send", "--week", week),
                *(("--limit", str(limit)) if limit else ()),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={**env, "PGAPPNAME": f"bench-sender-{i}"},
        )
        for i in range(count)
    ]
    outs = [p.communicate() for p in procs]
    elapsed = time.perf_counter() - started
    peak_db = watch.stop()
    for p, (out, err) in zip(procs, outs, strict=True):
        if p.returncode != 0:
            sys.exit(f"newsletter send failed ({p.returncode}):\n{out}\n{err}")
    rss = [int(re.findall(r"peak-rss-kb (\d+)", err)[-1]) / 1024 for _, err in outs]
    return Run(elapsed, rss, [peak_db.get(f"bench-sender-{i}", 0) for i in range(count)])


def ledger_check(db_url: str) -> tuple[int, dict[str, int]]:
    """Rows sent, each after exactly one attempt, and those per sender (claimed_by); exits
    on any other row than those and untouched pending ones (left by --messages)."""
    engine = create_engine(db_url)
    with engine.connect() as conn:
        odd = conn.execute(
            text(
                "SELECT count(*) FROM deliveries WHERE NOT ((status = 'sent' AND attempts = 1) "
                "OR (status = 'pending' AND attempts = 0 AND claimed_by = ''))"
            )
        ).scalar_one()
        per = dict(
            conn.execute(text("SELECT claimed_by, count(*) FROM deliveries WHERE status = 'sent' GROUP BY 1")).all()
        )
    engine.dispose()
    if odd:
        sys.exit(f"{odd} rows are neither 'sent' after exactly one attempt nor untouched")
    return sum(per.values()), per


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=200_000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--messages",
        type=int,
        help="stop after this many messages (one sender `send --limit M`, two each M/2): peak RSS "
        "at a list size too long to send in full here",
    )
    parser.add_argument("--database-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    total = args.messages or args.subscribers
    if total % 2 or total > args.subscribers:
        parser.error("--messages must be even and at most --subscribers")
    with tempfile.TemporaryDirectory(prefix="two-senders-") as tmp, schema(args.database_url) as db_url:
        folder = Path(tmp)
        results = {}
        for senders in (1, 2):
            log = folder / f"sink-{senders}.log"
            with counting_sink(log) as port:
                cfg = write_config(folder, port, args.concurrency, db_url)
                settings = config.load(cfg, environ={})
                if senders == 1:
                    began = time.perf_counter()
                    week = populate(settings, args.subscribers)
                    print(f"{args.subscribers:,} subscribers and an issue in {time.perf_counter() - began:.0f} s")
                else:
                    reset(db_url)
                plan(settings, week)
                run = run_senders(cfg, week, senders, db_url, args.messages and args.messages // senders)
            rows, per = ledger_check(db_url)
            got = accepted(log)
            if got != rows or rows != total:
                sys.exit(f"smtp-sink accepted {got} messages for {rows} rows sent of {total} to send")
            if len(per) != senders:
                sys.exit(f"{senders} senders but rows claimed by {len(per)}: {per}")
            results[senders] = (run, sorted(per.values(), reverse=True))
            print(
                f"{senders} sender(s): {total / run.elapsed:,.0f} msg/s, peak RSS "
                f"{' + '.join(f'{r:.0f} MB' for r in run.rss)}",
                flush=True,
            )
    rate1, rate2 = (total / results[n][0].elapsed for n in (1, 2))
    done = "every row" if total == args.subscribers else f"{total:,} of {args.subscribers:,} rows (the rest untouched)"
    print(
        f"PostgreSQL, concurrency {args.concurrency} per sender, smtp-sink (PIPELINING) on 127.0.0.1; "
        f"{done} sent once, smtp-sink accepted one message per row sent"
    )
    print("senders  msg/s (aggregate)  wall s  messages per sender     peak RSS per sender   PG connections")
    for n, rate in ((1, rate1), (2, rate2)):
        run, per = results[n]
        print(
            f"{n:>7}  {rate:17,.0f}  {run.elapsed:6.0f}  {' + '.join(f'{c:,}' for c in per):<22}  "
            f"{' + '.join(f'{r:.0f} MB' for r in run.rss):<20}  {' + '.join(map(str, run.db))}"
        )
    print(f"two senders / one: {rate2 / rate1:.2f}x")


if __name__ == "__main__":
    main()
