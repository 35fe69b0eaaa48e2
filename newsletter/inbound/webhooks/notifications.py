"""What an authentic webhook request yields, and the checks every provider shares."""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from newsletter.inbound.classify import Report

# How far a signed timestamp may be from our clock, either way (Mailgun and SendGrid).
MAX_SKEW = 300


class Refused(Exception):
    """The request is not authentic (403) or not understood (400)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass(frozen=True)
class Notification:
    report_id: str
    report: Report


@dataclass(frozen=True)
class Batch:
    """What one authentic request says; `once` is a signed key a second request may not reuse."""

    notifications: list[Notification] = field(default_factory=list)
    once: str = ""


# A configured provider's check: request headers and body -> Batch, or Refused.
Parser = Callable[[Mapping[str, str], bytes], Batch]


def fresh(provider: str, timestamp: str) -> None:
    """Refuse a signed timestamp more than MAX_SKEW seconds from now: an old signature is a replay."""
    try:
        skew = time.time() - int(timestamp)
    except ValueError as exc:
        raise Refused(403, f"{provider} timestamp {timestamp[:20]!r} is not a Unix time") from exc
    if abs(skew) > MAX_SKEW:
        raise Refused(
            403,
            f"{provider} timestamp is {abs(skew):.0f} s {'old' if skew > 0 else 'ahead'}, over "
            f"{MAX_SKEW} s (a replay, or this host's clock is wrong: check NTP)",
        )


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError as exc:
        raise Refused(400, f"body is not JSON ({exc})") from exc


def b64(value: str, what: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise Refused(403, f"{what} is not base64") from exc
