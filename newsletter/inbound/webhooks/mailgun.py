"""Mailgun event webhooks: HMAC-SHA256 of timestamp + token under `[bounces] mailgun_signing_key`.

Mailgun does not sign event-data, so a signature is good once: the timestamp must be within
MAX_SKEW and the token is remembered (a replay nonce) until that window is over."""

from __future__ import annotations

import hashlib
import hmac

from newsletter.config import Settings
from newsletter.inbound.classify import Finding, Kind, Report, judged
from newsletter.inbound.webhooks.notifications import Batch, Notification, Parser, Refused, fresh, parse_json


def parser(settings: Settings) -> Parser | None:
    """The Mailgun check, or None when `mailgun_signing_key` is unset."""
    key = settings.bounces.mailgun_signing_key
    if not key:
        return None
    secret = str(key).encode()
    return lambda headers, body: _parse(secret, body)


def _parse(secret: bytes, body: bytes) -> Batch:
    payload = parse_json(body)
    sig = payload.get("signature") if isinstance(payload, dict) else None
    if not isinstance(sig, dict):
        raise Refused(403, "Mailgun signature missing")
    timestamp, token = str(sig.get("timestamp", "")), str(sig.get("token", ""))
    expected = hmac.new(secret, f"{timestamp}{token}".encode(), hashlib.sha256).hexdigest().encode()
    # Compared as bytes: compare_digest refuses non-ASCII str, which must be a 403, not a 500.
    given = str(sig.get("signature", "")).encode("utf-8", "replace")
    if not token or not hmac.compare_digest(expected, given):
        raise Refused(403, "Mailgun signature does not match")
    fresh("Mailgun", timestamp)
    data = payload.get("event-data")
    if not isinstance(data, dict):
        raise Refused(400, "Mailgun event-data missing")
    event, email = str(data.get("event", "")), str(data.get("recipient", "")).lower()
    status = data.get("delivery-status") or {}
    if not isinstance(status, dict):
        status = {}
    code = str(status.get("enhanced-code") or status.get("code") or "")
    text = f"{status.get('message', '')} {status.get('description', '')}".strip()
    if event == "complained":
        finding = Finding(email, Kind.COMPLAINT, feedback_type="abuse", diagnostic="Mailgun complaint")
    elif event == "unsubscribed":
        finding = Finding(email, Kind.COMPLAINT, feedback_type="opt-out", diagnostic="Mailgun unsubscribe")
    elif event == "failed":
        finding = judged(email, code, text, permanent=data.get("severity") == "permanent")
    else:
        return Batch(once=token)  # remembered even so: its signature must not carry a forged event later
    # event-data (its id too) is unsigned: only the token identifies this report.
    report_id = f"mailgun:{token}"
    return Batch([Notification(report_id, Report(report_id, (finding,)))], once=token)
