"""Postmark bounce and spam-complaint webhooks, authenticated by HTTP basic auth from the
webhook URL (`[bounces] postmark_username` / `postmark_password`)."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

from newsletter.config import BouncesSettings, Settings
from newsletter.inbound.classify import Finding, Kind, Report, judged
from newsletter.inbound.webhooks.notifications import Batch, Notification, Parser, Refused, b64, parse_json

# Postmark's types that say the address itself is gone; the rest are judged by their words.
ADDRESS_TYPES = ("HardBounce", "BadEmailAddress")
TEMPORARY_TYPES = ("Transient", "SoftBounce", "DnsError", "AutoResponder")


def parser(settings: Settings) -> Parser | None:
    """The Postmark check, or None when the username or password is unset."""
    b = settings.bounces
    if not (b.postmark_username and b.postmark_password):
        return None
    return lambda headers, body: _parse(b, headers, body)


def _parse(b: BouncesSettings, headers: Mapping[str, str], body: bytes) -> Batch:
    scheme, _, encoded = headers.get("authorization", "").partition(" ")
    expected = f"{b.postmark_username}:{b.postmark_password}".encode()
    given = b64(encoded, "Authorization") if scheme.lower() == "basic" else b""
    if not hmac.compare_digest(given, expected):
        raise Refused(403, "Postmark basic auth does not match")
    record = parse_json(body)
    if not isinstance(record, dict):
        raise Refused(400, "Postmark posts one JSON object")
    rtype, btype = str(record.get("RecordType", "")), str(record.get("Type", ""))
    email = str(record.get("Email", "")).lower()
    description = f"{btype}: {record.get('Description', '')} {record.get('Details', '')}".strip()
    if rtype == "SpamComplaint" or btype == "SpamComplaint":
        finding = Finding(email, Kind.COMPLAINT, feedback_type="abuse", diagnostic=description[:1000])
    elif rtype == "Bounce":
        # The server's own words (Details) are judged, not Postmark's boilerplate for the type.
        words = str(record.get("Details") or "") or description
        finding = judged(
            email,
            "",
            words,
            permanent=False if btype in TEMPORARY_TYPES else None,
            provider_says_gone=btype in ADDRESS_TYPES,
        )
    else:
        return Batch()
    report_id = f"postmark:{record.get('ID') or hashlib.sha256(body).hexdigest()}"
    return Batch([Notification(report_id, Report(report_id, (finding,)))])
