"""Who is signed in to the desk: the session cookie, CSRF tokens, the sign-in throttle
and the `next` address after signing in.

The session cookie is signed and timed (itsdangerous) and names the editor, their
current `session_key` and a random session id; a bad, expired or stale cookie simply
means "not signed in". Every form carries a CSRF token: an HMAC of the session id
(or, on the sign-in form, of a random value in a short-lived pre-session cookie),
compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from itsdangerous import BadSignature, URLSafeTimedSerializer

SESSION_COOKIE = "newsletter_desk"
LOGIN_COOKIE = "newsletter_desk_login"
LOGIN_FORM_MAX_AGE = 3600
COOKIE_PATH = "/admin"
HOME = "/admin/"


@dataclass(frozen=True)
class DeskSession:
    editor_id: int
    session_key: str
    sid: str


class Signer:
    """Makes and reads the desk's cookies and CSRF tokens under the config's secret key."""

    def __init__(self, secret: str, max_age: float) -> None:
        self._secret = secret.encode()
        self._sessions = URLSafeTimedSerializer(
            secret, salt="newsletter.desk-session", signer_kwargs={"digest_method": hashlib.sha256}
        )
        self._login = URLSafeTimedSerializer(
            secret, salt="newsletter.desk-login", signer_kwargs={"digest_method": hashlib.sha256}
        )
        self.max_age = max_age

    def session_cookie(self, editor_id: int, session_key: str) -> str:
        return self._sessions.dumps([editor_id, session_key, secrets.token_urlsafe(16)])

    def read_session(self, cookie: str | None) -> DeskSession | None:
        """The session in a cookie, or None if it is missing, forged, malformed or expired."""
        if not cookie:
            return None
        try:
            data = self._sessions.loads(cookie, max_age=int(self.max_age))
        except BadSignature:
            return None
        if (
            not isinstance(data, list)
            or len(data) != 3
            or not isinstance(data[0], int)
            or not all(isinstance(v, str) for v in data[1:])
        ):
            return None
        return DeskSession(data[0], data[1], data[2])

    def login_cookie(self) -> tuple[str, str]:
        """(cookie value, form token) for a fresh sign-in form."""
        nonce = secrets.token_urlsafe(16)
        return self._login.dumps(nonce), self._mac("login", nonce)

    def login_nonce(self, cookie: str | None) -> str | None:
        if not cookie:
            return None
        try:
            nonce = self._login.loads(cookie, max_age=LOGIN_FORM_MAX_AGE)
        except BadSignature:
            return None
        return nonce if isinstance(nonce, str) else None

    def login_token(self, nonce: str) -> str:
        return self._mac("login", nonce)

    def csrf_token(self, session: DeskSession) -> str:
        return self._mac("csrf", session.sid)

    def _mac(self, purpose: str, value: str) -> str:
        return hmac.new(self._secret, f"newsletter.desk-{purpose}\0{value}".encode(), hashlib.sha256).hexdigest()


def same(a: str, b: str) -> bool:
    """Constant-time equality of two tokens."""
    return hmac.compare_digest(a.encode(), b.encode())


def safe_next(value: str | None) -> str:
    """Where to go after signing in: a path inside the desk, never another site.

    Anything else (an absolute URL, '//host', backslashes, control characters) gives the desk's home."""
    if not value or any(c in value for c in "\\\r\n\t") or not value.isprintable():
        return HOME
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or not (parts.path == "/admin" or parts.path.startswith("/admin/")):
        return HOME
    if parts.path.startswith("/admin/login") or "/../" in parts.path or parts.path.endswith("/.."):
        return HOME
    return value


class LoginThrottle:
    """Failed sign-ins per key (an address, a client) in a sliding window, in memory.

    Like the subscribe limiter, counts live in one server process and a restart clears
    them; enough to make guessing slow, with the reverse proxy as the shared limit."""

    PRUNE_AT = 10_000

    def __init__(
        self, *, free: int, delay: float, limit: int, window: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.free, self.delay_step, self.limit, self.window, self.clock = free, delay, limit, window, clock
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, key: str) -> deque[float]:
        now = self.clock()
        if len(self._failures) > self.PRUNE_AT:
            for stale in [k for k, v in self._failures.items() if not v or v[-1] <= now - self.window]:
                del self._failures[stale]
        hits = self._failures.setdefault(key, deque())
        while hits and hits[0] <= now - self.window:
            hits.popleft()
        return hits

    def retry_after(self, *keys: str) -> int:
        """Seconds until these keys may try again; 0 if they may now."""
        waits = [
            int(hits[0] + self.window - self.clock()) + 1 for hits in map(self._recent, keys) if len(hits) >= self.limit
        ]
        return max(waits, default=0)

    def delay(self, *keys: str) -> float:
        """Seconds to wait before checking this attempt: grows with the failures past `free`."""
        failures = max(len(self._recent(k)) for k in keys)
        return min(self.delay_step * (failures - self.free + 1), 30.0) if failures >= self.free else 0.0

    def failed(self, *keys: str) -> None:
        for key in keys:
            self._recent(key).append(self.clock())

    def succeeded(self, key: str) -> None:
        self._failures.pop(key, None)
