"""An in-memory sliding-window rate limiter for the subscribe form.

Counts live in the serving process only: a restart forgets them, and several
`newsletter serve` processes each count on their own. That is enough to stop one
client or one address from being flooded with confirmation mails; a shared limit
across processes would belong in the reverse proxy.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable


class RateLimiter:
    """At most `limit` hits per key within `window` seconds."""

    # Past this many keys, forget the ones whose window has passed (bounds memory).
    PRUNE_AT = 10_000

    def __init__(self, limit: int, window: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self._hits: dict[str, deque[float]] = {}

    def hit(self, key: str) -> bool:
        """Count one hit for `key`; False if it is over the limit (the hit is then not counted)."""
        now = self.clock()
        if len(self._hits) > self.PRUNE_AT:
            self._prune(now)
        hits = self._hits.setdefault(key, deque())
        while hits and hits[0] <= now - self.window:
            hits.popleft()
        if len(hits) >= self.limit:
            return False
        hits.append(now)
        return True

    def retry_after(self, key: str) -> int:
        """Seconds until `key` may hit again (0 if it may now)."""
        hits = self._hits.get(key)
        if not hits or len(hits) < self.limit:
            return 0
        return max(0, int(hits[0] + self.window - self.clock()) + 1)

    def _prune(self, now: float) -> None:
        for key in [k for k, h in self._hits.items() if not h or h[-1] <= now - self.window]:
            del self._hits[key]
