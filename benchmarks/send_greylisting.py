"""Greylisting must not slow a send: the same 1,500-recipient send into a local aiosmtpd
server, once clean and once with 1 recipient in 13 greylisted (`451 4.7.1 Greylisted`
at RCPT the first time, accepted on retry, as Postgrey does), printed side by side.

Each greylisted reader is retried after [smtp] retry_delay within the same run; the pace
([smtp] rate_per_second) is the one a relay would impose. The figure to look at is the
ratio of the two wall times (target: at most 1.5x) and that every reader got exactly one
copy. Run: python benchmarks/send_greylisting.py [--subscribers 1500] [--rate 100]
[--retry-delay 5]. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_support import free_port  # noqa: E402
from send_throughput import populate, write_config  # noqa: E402

from newsletter import config, db  # noqa: E402
from newsletter.sender import SendReport, send  # noqa: E402

GREYLISTED = "451 4.7.1 Greylisted, see http://postgrey.schweikert.ch/help/example.org.html"


class Greylister:
    """Accepts everything, except that while `every` is set, every `every`-th new recipient
    is refused once at RCPT; counts the copies each recipient received."""

    def __init__(self) -> None:
        self.every = 0
        self.seen: set[str] = set()
        self.refused: set[str] = set()
        self.received: Counter[str] = Counter()
        self.lock = threading.Lock()

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        with self.lock:
            first = address not in self.seen
            self.seen.add(address)
            if self.every and first and len(self.seen) % self.every == 0:
                self.refused.add(address)
                return GREYLISTED
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.received.update(envelope.rcpt_tos)
        return "250 2.0.0 OK queued"


@dataclass
class Run:
    label: str
    elapsed: float
    report: SendReport
    copies: Counter[str]
    greylisted: int


def one_run(label: str, handler: Greylister, port: int, args: argparse.Namespace, every: int) -> Run:
    folder = Path(tempfile.mkdtemp(prefix="greylist-bench-"))
    try:
        settings = config.load(write_config(folder, port, args.concurrency), environ={})
        settings = replace(
            settings,
            smtp=replace(settings.smtp, rate_per_second=args.rate, retry_delay=args.retry_delay, max_attempts=5),
        )
        week = populate(settings, args.subscribers)
        handler.every, handler.seen, handler.refused, handler.received = every, set(), set(), Counter()
        engine = db.make_engine(settings.database_url)
        started = time.perf_counter()
        report = send(db.session_factory(engine), settings, week)
        elapsed = time.perf_counter() - started
        engine.dispose()
        return Run(label, elapsed, report, Counter(handler.received), len(handler.refused))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=1500)
    parser.add_argument("--rate", type=float, default=100.0, help="[smtp] rate_per_second")
    parser.add_argument("--retry-delay", type=float, default=5.0, help="[smtp] retry_delay, seconds")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--every", type=int, default=13, help="greylist 1 recipient in this many")
    parser.add_argument("--rounds", type=int, default=1, help="clean/greylisted pairs, run alternately")
    args = parser.parse_args()
    handler = Greylister()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    runs: list[Run] = []
    try:
        for _ in range(args.rounds):  # alternately, so a change in the machine's load hits both alike
            runs.append(one_run("clean", handler, port, args, 0))
            runs.append(one_run(f"1 in {args.every} greylisted", handler, port, args, args.every))
    finally:
        controller.stop()
    print(
        f"{args.subscribers} subscribers, [smtp] rate_per_second {args.rate:g}, retry_delay {args.retry_delay:g} s, "
        f"concurrency {args.concurrency}, aiosmtpd on 127.0.0.1"
    )
    header = ("wall time", "msg/s", "sent", "greylisted", "copies max", "slow-downs")
    print(f"{'':24} " + " ".join(f"{h:>{w}}" for h, w in zip(header, (10, 7, 6, 10, 10, 10), strict=True)))
    for run in runs:
        slowed = sum("slow down" in note for note in run.report.notes)
        print(
            f"{run.label:24} {run.elapsed:9.1f}s {run.report.sent / run.elapsed:7.0f} {run.report.sent:6} "
            f"{run.greylisted:10} {max(run.copies.values(), default=0):10} {slowed:10}"
        )
    ratios = [grey.elapsed / clean.elapsed for clean, grey in zip(runs[::2], runs[1::2], strict=True)]
    once = all(max(r.copies.values()) == 1 and len(r.copies) == args.subscribers for r in runs)
    print(
        f"greylisted / clean: {', '.join(f'{r:.2f}x' for r in ratios)} (target <= 1.5x); "
        f"every reader exactly once in every run: {once}"
    )


if __name__ == "__main__":
    main()
