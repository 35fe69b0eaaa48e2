"""How a send reacts to what the server answers, beyond the one message: the pace and the breaker.

`Pace` is the global messages-per-second limit, adjusted the way TCP and Postfix's
per-destination feedback do it (AIMD): a reply that asks us to slow down halves the
pace (at most once per `HOLD` seconds, so one burst of replies to messages already in
flight counts once), and every clean second adds back a tenth of the ceiling until
`[smtp] rate_per_second` (or, unlimited, the rate reached before the first slow-down)
is back. A temporary failure for one recipient (greylisting, a busy mailbox) never
slows the run; only many distinct recipients failing temporarily within `WINDOW`
seconds, most of the attempts then, count as a request to slow down.

`Breaker` watches the last replies per recipient and stops the run when most of them
blame us (blocklist, reputation, SPF/DKIM/DMARC, policy) over more than one domain, or
when several say our message itself is malformed: then no reply is about a reader.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable

from newsletter.replies import Blame, Verdict

HOLD = 1.0  # seconds: replies within this long of a slow-down belong to the same episode
MIN_RATE = 0.5  # messages/s: the pace never stops the send altogether
WINDOW = 10.0  # seconds of per-recipient temporary failures looked at together
SPREAD = 10  # distinct recipients failing temporarily within WINDOW that may mean "slow down"
BREAKER_WINDOW = 30  # the last replies per recipient the breaker looks at
FLAGGED = (Blame.SENDER, Blame.MESSAGE)  # the replies the breaker counts
MESSAGE_LIMIT = 3  # recipients whose message the server calls malformed, within the window, that stop the run


class Pace:
    """The global pace: `wait()` before each SMTP transaction; `slow_down()` and `clean()`
    after the replies. `rate` 0 means as fast as the server takes them."""

    def __init__(
        self,
        ceiling: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.ceiling = ceiling
        self.rate = ceiling
        self.clock, self.sleep = clock, sleep
        self.next_at = 0.0
        self.slowed_at = -HOLD
        self.raised_at = 0.0
        self.target = ceiling  # what additive increase climbs back to
        self.started = clock()
        self.attempts: deque[float] = deque()
        self.temporary: deque[tuple[float, str]] = deque()

    async def wait(self) -> None:
        now = self.clock()
        self.attempts.append(now)
        self._forget(now)  # keeps the deques to WINDOW seconds however long the send
        if self.rate <= 0:
            return
        self.next_at = max(self.next_at + 1.0 / self.rate, now)
        if self.next_at > now:
            await self.sleep(self.next_at - now)

    def achieved(self) -> float:
        """Messages per second over the last WINDOW seconds (or since the start)."""
        now = self.clock()
        self._forget(now)
        span = min(max(now - self.started, 1e-3), WINDOW)
        return len(self.attempts) / span

    def slow_down(self) -> float | None:
        """Halve the pace; None if a slow-down already happened within HOLD (same episode)."""
        now = self.clock()
        if now - self.slowed_at < HOLD:
            return None
        current = self.rate if self.rate > 0 else self.achieved()
        if self.target <= 0:  # unlimited: climb back to what was reached before this
            self.target = max(current, MIN_RATE)
        self.rate = max(MIN_RATE, current / 2)
        self.slowed_at = self.raised_at = now
        return self.rate

    def clean(self) -> None:
        """A reply that asked for nothing: add back a tenth of the target per clean second."""
        if self.rate == self.ceiling:
            return
        now = self.clock()
        if now - self.slowed_at < HOLD:
            return
        self.rate += self.target / 10 * (now - self.raised_at)
        self.raised_at = now
        if self.rate >= self.target:
            self.rate = self.ceiling  # back to [smtp] rate_per_second (0: unlimited again)
            self.target = self.ceiling

    def failed_for(self, recipient: str) -> bool:
        """A temporary failure for one recipient; True if such failures now span so many
        distinct recipients, and most of the recent attempts, that the server itself is
        struggling (the caller then slows down)."""
        now = self.clock()
        self.temporary.append((now, recipient))
        self._forget(now)
        distinct = {r for _, r in self.temporary}
        return len(distinct) >= SPREAD and len(self.temporary) * 2 > len(self.attempts)

    def _forget(self, now: float) -> None:
        while self.attempts and self.attempts[0] < now - WINDOW:
            self.attempts.popleft()
        while self.temporary and self.temporary[0][0] < now - WINDOW:
            self.temporary.popleft()


class Breaker:
    """Trips when the server's replies are about us or our message, not about readers."""

    def __init__(self, window: int = BREAKER_WINDOW) -> None:
        # (blame, or None if accepted; the recipient)
        self.recent: deque[tuple[Blame | None, str]] = deque(maxlen=window)
        self.flagged = 0  # replies in `recent` that blame us or our message

    def record(self, verdict: Verdict | None, recipient: str, reply: str) -> str | None:
        """Count one recipient's outcome (None: accepted); a one-line reason if the run must stop."""
        blame = verdict.blame if verdict is not None else None
        if len(self.recent) == self.recent.maxlen and self.recent[0][0] in FLAGGED:
            self.flagged -= 1  # about to leave the window
        self.recent.append((blame, recipient.lower()))
        if blame in FLAGGED:
            self.flagged += 1
        if not self.flagged:  # the common case, once per message: nothing in the window to count
            return None
        ours = [r.rpartition("@")[2] for b, r in self.recent if b is Blame.SENDER]
        full = len(self.recent) == self.recent.maxlen
        if len(ours) * 2 > len(self.recent) and full and (len(set(ours)) > 1 or len(ours) == len(self.recent)):
            domains = len(set(ours))
            return (
                f"the server refuses us, not the readers: {len(ours)} of the last {len(self.recent)} "
                f"recipients ({domains} domain{'s' if domains > 1 else ''}) got {reply!r}; nobody was marked "
                f"bounced. Get the sending IP or domain delisted, or fix SPF/DKIM/DMARC or the relay's policy "
                f"as the reply says, then run `newsletter send` again"
            )
        malformed = len({r for b, r in self.recent if b is Blame.MESSAGE})
        if malformed >= MESSAGE_LIMIT:
            return (
                f"the server refuses our message itself ({reply!r}) for {malformed} recipients: our error, "
                f"nobody was marked bounced. Fix what the reply names (message size, line length, a setting), "
                f"then run `newsletter send` again"
            )
        return None
