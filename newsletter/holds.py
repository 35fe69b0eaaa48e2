"""Work a request leaves behind, held for a random time and run off the request's connection.

A subscribe post's work differs by address (a new one costs an insert and a mail, a listed
one a read). Run right after the answer, it showed in the time of the poster's next request;
run as a Starlette BackgroundTask after a hold, it still did: the server answers the next
request on a keep-alive connection only once the previous one's background task has ended.
So each piece of work here is a task owned by the app: it waits its hold, then runs, while
the connection is already free. The number waiting is bounded (a flood of posts cannot grow
memory without end), and `close` (at the app's shutdown) cuts the holds short and finishes
every piece of work started, so no accepted post is lost.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable

log = logging.getLogger("newsletter.holds")
Hold = Callable[[], Awaitable[None]]
Work = Callable[[], Awaitable[None]]


def hold_seconds() -> float:
    """0.5-3 s in steps of 1 ms, from the OS's random source (the poster cannot predict it)."""
    return 0.5 + secrets.randbelow(2500) / 1000


async def random_hold() -> None:
    """Wait `hold_seconds()`: the work lands at a time the poster cannot know."""
    await asyncio.sleep(hold_seconds())


class HeldWork:
    """Pieces of work, each started after its own hold, at most `limit` at a time."""

    def __init__(self, hold: Hold, *, limit: int) -> None:
        self._hold = hold
        self._limit = limit
        self._tasks: set[asyncio.Task[None]] = set()
        self._holding: set[asyncio.Future[None]] = set()
        self._closing = False

    def __len__(self) -> int:
        return len(self._tasks)

    def start(self, work: Work) -> bool:
        """Run `work` after a hold in a task of the running loop; False (nothing started) when
        `limit` pieces are pending already or the app is shutting down."""
        if self._closing or len(self._tasks) >= self._limit:
            return False
        task = asyncio.create_task(self._run(work))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _run(self, work: Work) -> None:
        hold = asyncio.ensure_future(self._hold())
        self._holding.add(hold)
        try:
            await asyncio.wait({hold})  # returns when the hold ends or `close` cuts it short
        finally:
            self._holding.discard(hold)
            hold.cancel()
        if not hold.cancelled() and hold.exception() is not None:
            log.error("a hold failed; its work runs now", exc_info=hold.exception())
        try:
            await work()
        except Exception as exc:  # noqa: BLE001 - logged here: no request is left to report it
            log.error("work after a request failed", exc_info=exc)

    async def join(self) -> None:
        """Return once every piece of work started so far (and any started meanwhile) has ended."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    async def close(self) -> None:
        """Start nothing more, end the holds now and wait for the work they held."""
        self._closing = True
        for hold in list(self._holding):
            hold.cancel()
        await self.join()
