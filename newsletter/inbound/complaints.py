"""Spam complaints and opt-outs: ARF reports (RFC 5965, also forwarded inline as text),
Microsoft JMRP, Apple Mail's unsubscribe mail, Amazon SES notifications in a mail body."""

from __future__ import annotations

import json
import re
from email.message import Message
from email.utils import getaddresses
from typing import Any

from newsletter.inbound.findings import MAX_DIAGNOSTIC, Finding, Kind, judged
from newsletter.inbound.mimetext import address, all_values, enclosed, fields, header, payload_text, unique

# An ARF report pasted into a text part: its machine-readable fields, one per line.
INLINE_ARF = re.compile(r"^Feedback-Type:\s*[\w-]+\s*$", re.M | re.I)
SES_GONE = ("NoEmail", "Suppressed", "OnAccountSuppressionList")


def complaints(msg: Message) -> list[Finding]:
    """Complaint findings of one message; [] when it is no complaint."""
    for part in msg.walk():
        if part.get_content_type() == "message/feedback-report":
            return _arf(msg, payload_text(part))
    ses = _ses_from_body(msg)
    if ses:
        return ses
    for original in enclosed(msg):
        jmrp = header(original, "X-HmXmrOriginalRecipient")
        if jmrp:
            return [
                Finding(address(jmrp), Kind.COMPLAINT, feedback_type="abuse", diagnostic="Microsoft JMRP complaint")
            ]
    if header(msg, "X-Apple-Unsubscribe").strip().lower() == "true":
        return [
            Finding(
                address(header(msg, "From")),
                Kind.COMPLAINT,
                feedback_type="opt-out",
                diagnostic="Apple Mail unsubscribe request",
            )
        ]
    for part in msg.walk():
        if part.get_content_type() == "text/plain" and INLINE_ARF.search(text := payload_text(part)):
            return _arf(msg, text)
    return []


def _arf(msg: Message, report: str) -> list[Finding]:
    found = fields(report)
    ftype = (found.get("feedback-type", [""])[0] or "abuse").lower()
    addresses = found.get("original-rcpt-to", []) + found.get("removal-recipient", [])
    if not addresses:
        addresses = [a for original in enclosed(msg) for _, a in getaddresses(all_values(original, "To"))]
    agent = found.get("user-agent", [""])[0]
    named = unique(address(a) for a in addresses)
    return [
        Finding(a, Kind.COMPLAINT, feedback_type=ftype, diagnostic=f"ARF {ftype} report {agent}".strip())
        for a in named or [""]
    ]


def _ses_from_body(msg: Message) -> list[Finding]:
    """Amazon SES notifications delivered by SNS as an email (a JSON object as the body)."""
    if msg.is_multipart():
        return []
    text = payload_text(msg)
    start = text.find("{")
    if start < 0 or "notificationType" not in text:
        return []
    # SNS wraps long lines with "!\n " in its email transport; undo that before decoding.
    body = re.sub(r"!\r?\n ", "", text[start:])
    try:
        obj, _ = json.JSONDecoder().raw_decode(body)
    except ValueError:
        return []
    if isinstance(obj, dict) and isinstance(obj.get("Message"), str):  # the SNS envelope around it
        try:
            obj = json.loads(obj["Message"])
        except ValueError:
            return []
    return ses_findings(obj) if isinstance(obj, dict) else []


def ses_findings(notification: dict[str, Any]) -> list[Finding]:
    """Findings from an Amazon SES Bounce/Complaint notification object (mail or webhook)."""
    ntype = str(notification.get("notificationType") or notification.get("eventType") or "")
    if ntype == "Complaint":
        complaint = notification.get("complaint") or {}
        ftype = str(complaint.get("complaintFeedbackType") or "abuse")
        return [
            Finding(
                address(str(r.get("emailAddress", ""))),
                Kind.COMPLAINT,
                feedback_type=ftype,
                diagnostic=f"Amazon SES complaint ({ftype})",
            )
            for r in complaint.get("complainedRecipients") or []
            if isinstance(r, dict)
        ]
    if ntype != "Bounce":
        return []
    bounce = notification.get("bounce") or {}
    permanent = bounce.get("bounceType") == "Permanent"
    subtype = str(bounce.get("bounceSubType") or "")
    found = []
    for r in bounce.get("bouncedRecipients") or []:
        if not isinstance(r, dict):
            continue
        diagnostic = str(r.get("diagnosticCode") or "")[:MAX_DIAGNOSTIC]
        found.append(
            judged(
                address(str(r.get("emailAddress", ""))),
                str(r.get("status") or ""),
                diagnostic or f"Amazon SES {subtype} bounce",
                permanent=permanent,
                provider_says_gone=subtype in SES_GONE,
            )
        )
    return found
