"""The sender's ledger writer: group commit of `sending` marks and SMTP results.

The workers of a send queue their marks and outcomes here; one round commits them all on
one connection held for the whole run, so the database sees one transaction per round,
not one per message, and a worker hands its message over only once its mark is committed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TypeVar

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from newsletter import ledger, locks
from newsletter.ledger import Job, Outcome

T = TypeVar("T")
# A ledger round waits up to this long for half the connections to queue their marks:
# measured on SQLite with 8 connections, 1 ms took 8,000 messages from ~1,250 to ~1,600/s.
ROUND_GATHER = 0.001


class LedgerWriter:
    """Group commit: marks and outcomes queued by the workers go to the database together,
    one transaction per round, on one connection held for the whole run.

    On SQLite it runs in the event loop's thread: the ledger work is Python in this
    process, so a second thread would only fight the loop for the GIL and add latency to
    each round. On PostgreSQL a round mostly waits (the network, the server's fsync at
    commit) with the GIL released: it runs in one thread of its own, so the loop keeps the
    SMTP connections busy meanwhile (measured: the loop sat blocked in psycopg's wait for
    over half of a send's wall time). `call` is the one way in; one thread keeps the
    connection's statements in order."""

    def __init__(
        self,
        engine: Engine,
        issue_id: int,
        worker: str,
        lease: str,
        on_commit: Callable[[list[Outcome]], None],
        batch: int,
        lease_ttl: float,
    ) -> None:
        self.issue_id, self.worker, self.lease, self.lease_ttl = issue_id, worker, lease, lease_ttl
        self.on_commit = on_commit
        self.connection = engine.connect()
        # The session joins each round's transaction on the connection (and never commits
        # it): claims, leases and the rare paths go through it, marks and results through
        # `hot`, the same connection's cursor.
        self.session = Session(bind=self.connection, expire_on_commit=False)
        self.hot = ledger.HotPath(self.connection)
        self.marks: list[tuple[Job, asyncio.Future[bool]]] = []
        self.outcomes: list[Outcome] = []
        self.wake = asyncio.Event()
        self.full = asyncio.Event()
        self.batch = batch
        self.closing = False
        self.failed: BaseException | None = None
        self.renewed = time.monotonic()
        self.thread = ThreadPoolExecutor(1, "ledger") if engine.dialect.name == "postgresql" else None

    def db(self, fn: Callable[[Session], T]) -> T:
        """Run `fn(session)` in one transaction and commit (renewing this sender's lease now
        and then). The transaction is the connection's: a round that only marks and settles
        never touches the Session."""
        try:
            with self.connection.begin():
                if time.monotonic() - self.renewed > self.lease_ttl / 6:
                    locks.renew(self.session, self.lease, self.worker, self.lease_ttl)
                    self.renewed = time.monotonic()
                result = fn(self.session)
                if self.session.in_transaction():
                    self.session.commit()  # flushes; the connection's transaction commits on leaving
        finally:
            if self.session.in_transaction():  # an error: forget what the rolled-back transaction loaded
                self.session.close()
        return result

    async def call(self, fn: Callable[[Session], T]) -> T:
        """`db(fn)`, in the ledger's thread on PostgreSQL (see the class docstring)."""
        if self.thread is None:
            return self.db(fn)
        return await asyncio.get_running_loop().run_in_executor(self.thread, self.db, fn)

    def close_with(self, fn: Callable[[Session], None]) -> None:
        """Run `fn` as the last transaction, once a round still in the ledger's thread (a
        cancelled run) has ended; then let the connection go."""
        if self.thread is not None:
            self.thread.shutdown()
        try:
            self.db(fn)
        finally:
            self.hot.cursor.close()
            self.session.close()
            self.connection.close()

    def mark(self, job: Job) -> asyncio.Future[bool]:
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        if self.failed is not None:
            future.set_exception(self.failed)
            return future
        self.marks.append((job, future))
        self.wake.set()
        if len(self.marks) >= self.batch:
            self.full.set()
        return future

    def settle(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)
        self.wake.set()

    async def run(self) -> None:
        while True:
            if not self.marks and not self.outcomes:
                if self.closing:
                    return
                await self.wake.wait()
                self.wake.clear()
                continue
            if len(self.marks) < self.batch and not self.closing:
                # Fewer, fuller rounds: each costs far more than one more row in it.
                self.full.clear()
                timer = asyncio.get_running_loop().call_later(ROUND_GATHER, self.full.set)
                await self.full.wait()
                timer.cancel()
            marks, self.marks = self.marks, []
            outcomes, self.outcomes = self.outcomes, []
            try:
                # Marks before outcomes: a worker's previous outcome is always committed no
                # later than its next mark, so each worker has at most one row in `sending`.
                ok = await self.call(partial(self._round, [j for j, _ in marks], outcomes))
            except BaseException as exc:
                self.failed = exc
                for _, future in [*marks, *self.marks]:
                    if not future.done():
                        future.set_exception(exc)
                raise
            for job, future in marks:
                if not future.done():
                    future.set_result(job.delivery_id in ok)
            self.on_commit(outcomes)

    def _round(self, jobs: list[Job], outcomes: list[Outcome], session: Session) -> set[int]:
        ok = self.hot.mark_sending(session, jobs, self.worker)
        self.hot.settle(session, outcomes, self.worker, self.issue_id)
        return ok

    async def close(self) -> None:
        self.closing = True
        self.wake.set()
