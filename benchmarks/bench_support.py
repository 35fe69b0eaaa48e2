"""What the benchmarks (and the tests) share: a free port, active subscribers inserted in bulk,
`newsletter serve` as a child process, and the databases to run on (SQLite in a scratch
folder, and PostgreSQL in a scratch schema when a URL is given)."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import httpx
from sqlalchemy import Connection, create_engine, insert, make_url

from newsletter.models import Subscriber, SubscriberStatus, utcnow

# Ports for the servers tests and benchmarks start come from below the kernel's ephemeral
# range (32768-60999 on Linux): a port the kernel hands out for bind(0) can be taken again as
# the source port of any outgoing connection (to PostgreSQL, to an SMTP server) before the
# server binds it. Each is handed out once per process, in an order of the process's own.
_PORTS = list(range(20000, 32000))
random.Random(os.getpid()).shuffle(_PORTS)
_unused_ports = iter(_PORTS)


def free_port() -> int:
    """A port no server holds now and no earlier call in this process handed out."""
    for port in _unused_ports:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("every port from 20000 to 31999 was handed out or taken")


def insert_subscribers(conn: Connection, count: int, *, source: str) -> None:
    """Active subscribers s1@example.com … s<count>@example.com (ids 1..count on a fresh table)."""
    now = utcnow()
    for start in range(1, count + 1, 10_000):
        conn.execute(
            insert(Subscriber),
            [
                {
                    "email": f"s{i}@example.com",
                    "email_key": f"s{i}@example.com",
                    "name": "",
                    "status": SubscriberStatus.ACTIVE,
                    "consent_source": source,
                    "consent_at": now,
                    "status_changed_at": now,
                    "created_at": now,
                    "attributes": {},
                    "soft_bounces": 0,
                }
                for i in range(start, min(start + 10_000, count + 1))
            ],
        )


def start(cfg: Path, log: Path, *args: str, stdout: int | IO[Any] | None = None) -> subprocess.Popen[bytes]:
    """`newsletter --config cfg ARGS` as a child process, its stderr (and stdout) in `log`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    with log.open("wb") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "newsletter", "--config", str(cfg), *args],
            env=env,
            stdout=stdout if stdout is not None else err,
            stderr=err,
        )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def wait_for_server(base: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)  # polling a starting server: nothing to wait on but its port
    raise RuntimeError(f"newsletter serve did not answer (exit {proc.returncode}):\n{log.read_text()}")


@contextmanager
def serving(cfg: Path, port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`newsletter serve` on `port` once /healthz answers; stopped on exit."""
    proc = start(cfg, log, "serve", "--port", str(port))
    try:
        wait_for_server(f"http://127.0.0.1:{port}", proc, log)
        yield proc
    finally:
        stop(proc)


def databases(pg: str) -> Iterator[tuple[str, str, Path]]:
    """(label, database URL, scratch folder): SQLite, then PostgreSQL in a schema of its own
    (created and dropped here) when `pg` is a URL."""
    with tempfile.TemporaryDirectory() as tmp:
        yield "SQLite", f"sqlite:///{tmp}/bench.db", Path(tmp)
    if not pg:
        return
    schema = "bench_" + uuid.uuid4().hex[:12]
    admin = create_engine(pg, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    try:
        url = make_url(pg).update_query_dict({"options": f"-csearch_path={schema}"})
        with tempfile.TemporaryDirectory() as tmp:
            yield "PostgreSQL", url.render_as_string(hide_password=False), Path(tmp)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()
