"""Signed, purpose-bound tokens for every subscriber link.

A token carries (subscriber id, issue id) signed with HMAC-SHA256 under the config's
secret key, salted with its purpose, so an unsubscribe token cannot confirm an
address or open a preferences page. No email address or bare id appears in a URL.
Tokens use only URL-safe base64 and '.', so they survive quoted-printable bodies.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

from itsdangerous import BadSignature, SignatureExpired, URLSafeSerializer, URLSafeTimedSerializer

from newsletter.config import Settings
from newsletter.errors import InvalidToken

UNSUBSCRIBE = "unsubscribe"
PREFERENCES = "preferences"
CONFIRM = "confirm"
BOUNCE = "bounce"
CSRF = "csrf"          # hidden field of the preferences form, bound to its subscriber
PREVIEW = "preview"    # an editor's link to a draft issue: payload (0, issue id), no subscriber
PURPOSES = (UNSUBSCRIBE, PREFERENCES, CONFIRM, BOUNCE, CSRF, PREVIEW)
# Confirmation links expire; unsubscribe and preferences links never do (people click months later).
CONFIRM_MAX_AGE = 7 * 24 * 3600
# Seconds each timed purpose stays valid; the other purposes never expire.
MAX_AGE = {CONFIRM: CONFIRM_MAX_AGE, CSRF: 24 * 3600, PREVIEW: 30 * 24 * 3600}


@dataclass(frozen=True)
class TokenData:
    subscriber_id: int
    issue_id: int | None
    issued_at: datetime | None = None  # only for timed purposes (confirm, csrf, preview)


@lru_cache(maxsize=32)
def _serializer(secret: str, purpose: str) -> URLSafeSerializer | URLSafeTimedSerializer:
    # Cached: the sender makes two tokens per message, and building a serializer costs
    # as much as signing with it. Serializers hold no per-call state.
    if purpose not in PURPOSES:
        raise ValueError(f"unknown token purpose {purpose!r}")
    cls = URLSafeTimedSerializer if purpose in MAX_AGE else URLSafeSerializer
    return cls(secret, salt=f"newsletter.{purpose}")


def make(secret: str, purpose: str, subscriber_id: int, issue_id: int | None = None) -> str:
    """A token for one subscriber (and optionally one issue) and one purpose."""
    payload = [subscriber_id] if issue_id is None else [subscriber_id, issue_id]
    return str(_serializer(secret, purpose).dumps(payload))


def read(secret: str, purpose: str, token: str, *, max_age: int | None = None) -> TokenData:
    """Verify a token; raises InvalidToken if forged, truncated, expired or of another purpose.

    `max_age` (seconds) overrides the purpose's lifetime in MAX_AGE."""
    serializer = _serializer(secret, purpose)
    issued_at = None
    try:
        if isinstance(serializer, URLSafeTimedSerializer):
            payload, issued_at = serializer.loads(token, max_age=max_age or MAX_AGE[purpose], return_timestamp=True)
        else:
            payload = serializer.loads(token)
    except SignatureExpired as exc:
        raise InvalidToken("this link has expired") from exc
    except BadSignature as exc:
        raise InvalidToken("this link is not valid") from exc
    if (not isinstance(payload, list) or not 1 <= len(payload) <= 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in payload)):
        raise InvalidToken("this link is not valid")
    return TokenData(payload[0], payload[1] if len(payload) == 2 else None, issued_at)


def unsubscribe_url(settings: Settings, subscriber_id: int, issue_id: int | None) -> str:
    """The RFC 8058 one-click URL: POST unsubscribes, GET shows a confirmation page."""
    token = make(settings.newsletter.secret_key, UNSUBSCRIBE, subscriber_id, issue_id)
    return f"{settings.newsletter.base_url.rstrip('/')}/unsubscribe/{token}"


def preferences_url(settings: Settings, subscriber_id: int) -> str:
    token = make(settings.newsletter.secret_key, PREFERENCES, subscriber_id)
    return f"{settings.newsletter.base_url.rstrip('/')}/preferences/{token}"


def confirm_url(settings: Settings, subscriber_id: int) -> str:
    token = make(settings.newsletter.secret_key, CONFIRM, subscriber_id)
    return f"{settings.newsletter.base_url.rstrip('/')}/confirm/{token}"


def preview_url(settings: Settings, issue_id: int, week: str) -> str:
    """An editor's link to any issue (draft or sent) in the browser; expires after 30 days."""
    token = make(settings.newsletter.secret_key, PREVIEW, 0, issue_id)
    return f"{settings.newsletter.base_url.rstrip('/')}/preview/{week}?key={token}"
