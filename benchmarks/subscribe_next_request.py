"""Does the request after a subscribe post tell whether the address was listed?

The attack from issue 13: on one keep-alive connection, post an address to /subscribe, then
at once ask for another page and time that answer. The work a new address causes (an insert,
a confirmation mail) used to run right then and slow it down. Runs `newsletter serve` on
SQLite with a local SMTP sink, posts new and listed addresses in random order, times the next
request (GET /archive) on the same connection, and prints the medians and the share an
attacker classifies correctly with the best single threshold (50 % = no better than a coin).

Usage: python benchmarks/subscribe_next_request.py [--n 300]
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlencode

from aiosmtpd.controller import Controller

CONFIG = """
[newsletter]
base_url = "http://127.0.0.1:{port}"
secret_key = "{secret}"
[database]
url = "sqlite:///{folder}/bench.db"
[smtp]
host = "127.0.0.1"
port = {smtp_port}
[web]
subscribe_per_client_per_hour = 1000000
subscribe_per_address_per_hour = 1000000
"""


class Sink:
    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        return "250 OK"


from bench_support import free_port  # noqa: E402


def probe(port: int, email: str) -> float:
    """Seconds the request after the subscribe post takes, on the same connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        body = urlencode({"email": email})
        conn.request("POST", "/subscribe", body, {"Content-Type": "application/x-www-form-urlencoded"})
        conn.getresponse().read()
        start = time.perf_counter()
        conn.request("GET", "/archive")
        conn.getresponse().read()
        return time.perf_counter() - start
    finally:
        conn.close()


def best_threshold_accuracy(new: list[float], listed: list[float]) -> float:
    """The share of probes the best rule 'slower than t means new' gets right."""
    best = 0.5
    for t in sorted(new + listed):
        right = sum(v > t for v in new) + sum(v <= t for v in listed)
        best = max(best, right / (len(new) + len(listed)))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=300)
    args = parser.parse_args()
    port, smtp_port = free_port(), free_port()
    sink = Controller(Sink(), hostname="127.0.0.1", port=smtp_port)
    sink.start()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config.toml"
        config.write_text(CONFIG.format(port=port, secret=uuid.uuid4().hex * 2, folder=tmp, smtp_port=smtp_port))
        env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
        newsletter = [sys.executable, "-m", "newsletter", "--config", str(config)]
        subprocess.run([*newsletter, "init"], env=env, check=True, capture_output=True)
        subprocess.run(
            [*newsletter, "subscribers", "add", "listed@example.com"], env=env, check=True, capture_output=True
        )
        server = subprocess.Popen(
            [*newsletter, "serve", "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    probe(port, "warmup@example.com")
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            rnd = random.Random(1)
            times: dict[str, list[float]] = {"new": [], "listed": []}
            for _ in range(args.n):
                kind = rnd.choice(["new", "listed"])
                email = "listed@example.com" if kind == "listed" else f"new-{uuid.uuid4().hex[:12]}@example.com"
                times[kind].append(probe(port, email))
        finally:
            server.terminate()
            server.wait(timeout=30)
            sink.stop()
    for kind, values in times.items():
        print(
            f"next request after a {kind:6} address: median {statistics.median(values) * 1000:6.2f} ms "
            f"(n={len(values)})"
        )
    print(f"best single-threshold attacker: {best_threshold_accuracy(times['new'], times['listed']):.0%} right")


if __name__ == "__main__":
    main()
