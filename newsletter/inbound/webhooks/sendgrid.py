"""SendGrid's Signed Event Webhook: ECDSA P-256 over timestamp + body, key
`[bounces] sendgrid_public_key`; the timestamp must be within MAX_SKEW of our clock.
A replay inside that window only repeats signed event ids, which dedupe."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from newsletter.config import Settings
from newsletter.errors import ConfigError
from newsletter.inbound.classify import Finding, Kind, Report, judged
from newsletter.inbound.webhooks.notifications import (
    Batch,
    Notification,
    Parser,
    Refused,
    b64,
    fresh,
    parse_json,
)


def parser(settings: Settings) -> Parser | None:
    """The SendGrid check, or None when `sendgrid_public_key` is unset; ConfigError if it is no key."""
    text = settings.bounces.sendgrid_public_key.strip()
    if not text:
        return None
    try:
        loaded = (
            serialization.load_pem_public_key(text.encode())
            if text.startswith("-----")
            else serialization.load_der_public_key(base64.b64decode(text))
        )
    except (ValueError, binascii.Error) as exc:
        raise ConfigError(
            f"[bounces] sendgrid_public_key is not a public key ({exc}); copy the "
            f"verification key from SendGrid's Signed Event Webhook settings"
        ) from exc
    if not isinstance(loaded, ec.EllipticCurvePublicKey):
        raise ConfigError("[bounces] sendgrid_public_key is not an ECDSA key; copy SendGrid's verification key")
    key = loaded
    return lambda headers, body: _parse(key, headers, body)


def _parse(key: ec.EllipticCurvePublicKey, headers: Mapping[str, str], body: bytes) -> Batch:
    signature = headers.get("x-twilio-email-event-webhook-signature", "")
    timestamp = headers.get("x-twilio-email-event-webhook-timestamp", "")
    try:
        key.verify(b64(signature, "signature"), timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise Refused(403, "SendGrid signature does not match") from exc
    fresh("SendGrid", timestamp)
    events = parse_json(body)
    if not isinstance(events, list):
        raise Refused(400, "SendGrid posts a JSON array of events")
    return Batch([n for e in events if isinstance(e, dict) and (n := _event(e))])


def _event(e: dict[str, Any]) -> Notification | None:
    event = str(e.get("event", ""))
    email = str(e.get("email", "")).lower()
    status, reason = str(e.get("status", "")), str(e.get("reason", ""))
    if event == "spamreport":
        finding = Finding(email, Kind.COMPLAINT, feedback_type="abuse", diagnostic="SendGrid spam report")
    elif event in ("unsubscribe", "group_unsubscribe"):
        finding = Finding(email, Kind.COMPLAINT, feedback_type="opt-out", diagnostic=f"SendGrid {event}")
    elif event == "bounce":
        # "blocked" is SendGrid's word for a refusal that is not about the address.
        finding = judged(email, status, reason, permanent=e.get("type") != "blocked")
    else:
        return None  # delivered, deferred, dropped, opens …: not ours to act on
    report_id = f"sendgrid:{e.get('sg_event_id') or hashlib.sha256(json.dumps(e, sort_keys=True).encode()).hexdigest()}"
    return Notification(report_id, Report(report_id, (finding,)))
