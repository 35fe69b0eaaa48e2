"""Classify a returned message: which recipient bounced or complained, and how badly.

`classify(raw)` turns the bytes of one message that arrived at the bounce address into
a list of `Finding`s; a non-bounce (an auto-reply, a "delivered" notice) gives none.
Layers, most reliable first:
  1. ARF feedback reports (RFC 5965), Microsoft JMRP, Apple's unsubscribe mail,
     Amazon SES JSON notifications in a mail body  -> complaints / bounces;
  2. RFC 3464 message/delivery-status parts (Final-Recipient, Status, Diagnostic-Code);
  3. the non-standard bounces real servers send (qmail, Exim, sendmail, Postfix
     transcripts, carriers): flufl.bounce for the address, our own patterns for the
     status code and phrases.
Hard or soft is decided by *reason*, not by 4xx/5xx alone: only an address or domain
that does not exist is hard; a full mailbox, a spam filter or a policy block with a 5xx
is soft, so one angry filter never removes a reader for good.
The VERP token (`bounces+<token>@domain`) is read from the headers, so a bounce is
tied to its subscriber and issue even when the report itself names nobody.
"""

from __future__ import annotations

import enum
import json
import logging
import re
from dataclasses import dataclass
from email import message_from_bytes
from email.errors import HeaderParseError
from email.header import decode_header
from email.message import Message
from email.utils import getaddresses, parseaddr

from flufl.bounce import all_failures

# flufl.bounce logs a traceback whenever one of its detectors trips on an odd message;
# for us that only means "no address from flufl", and our own parsers still run.
logging.getLogger("flufl.bounce").setLevel(logging.CRITICAL)


class Kind(enum.StrEnum):
    HARD = "hard"
    SOFT = "soft"
    COMPLAINT = "complaint"


@dataclass(frozen=True)
class Finding:
    recipient: str          # lower-cased address; "" when the report names nobody
    kind: Kind
    status: str = ""        # enhanced status code like 5.1.1, else an SMTP reply code
    diagnostic: str = ""    # the server's own words, kept for the event
    feedback_type: str = ""  # ARF Feedback-Type (abuse, opt-out …) for complaints


@dataclass(frozen=True)
class Report:
    """One parsed message: its findings, its Message-ID and the VERP token it carried."""

    message_id: str
    findings: tuple[Finding, ...]
    token: str = ""


ADDRESS = re.compile(r"[\w.!#$%&'*+/=?^`{|}~-]+@[\w-]+(?:\.[\w-]+)+", re.ASCII)
ENHANCED = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
REPLY_CODE = re.compile(r"(?<![\d.-])([45][0-5]\d)(?:[ -]|$)", re.M)
# Phrases that mean "this address or domain does not exist": the only hard bounces.
HARD_PHRASES = re.compile(
    r"user unknown|unknown user|no such (?:user|mailbox|recipient)|does not exist|doesn'?t exist|"
    r"recipient not found|recipnotfound|address (?:couldn'?t|could not) be found|"
    r"invalid (?:recipient|mailbox)|mailbox (?:unavailable|not found)|not a valid mailbox|"
    r"unknown (?:recipient|local[- ]part|address)|account (?:does not exist|has been disabled)|"
    r"user not found|no mailbox here|host unknown|domain not found|unrouteable|"
    r"name or service not known|host or domain name not found|no mx|null mx|"
    r"does not accept mail|nxdomain|name is not recognized|unknown\s+recipient|doesn'?t have an? [\w.-]+ account|"
    r"no longer (?:valid|available)|address rejected",
    re.I)
SOFT_PHRASES = re.compile(
    r"mailbox (?:is )?full|over ?quota|quota exceeded|insufficient (?:disk )?space|"
    r"too many|try again|temporar|delay|timed? ?out|expired|suspend|spam|blocked|"
    r"policy|virus|too large|size limit|greylist|rate limit|throttl",
    re.I)
# Status codes that name a missing mailbox or domain (RFC 3463 X.1.x, X.4.4 routing).
HARD_STATUS = re.compile(r"^5\.(?:1\.(?:0|1|2|3|6|10)|4\.4)$")
BOUNCE_FROM = re.compile(r"mailer-daemon|postmaster|mail delivery|mailerdaemon|post_master", re.I)
BOUNCE_SUBJECT = re.compile(
    r"undeliver|undelivered|delivery (?:status|failure|has failed|notification)|failure notice|"
    r"returned mail|mail delivery failed|could not be delivered|non[- ]?delivery|delivery problem|"
    r"failed delivery|error|warning: message|mail system error|rejected|エラー|未達|配信不能",
    re.I)
AUTO_REPLY = re.compile(r"auto(?:matic)?[- ]?(?:reply|response)|out of (?:the )?office|vacation|abwesen", re.I)
DIAG_LINE = re.compile(r"^.*(?:\b[45]\d\d\b|[45]\.\d{1,3}\.\d{1,3}).*$", re.M)
MAX_DIAGNOSTIC = 1000


def parse(raw: bytes) -> Message:
    return message_from_bytes(raw)


def classify(raw: bytes, *, verp_local: str = "bounces") -> Report:
    """Findings of one raw message. Never raises on odd input: unknown means no finding."""
    msg = parse(raw)
    message_id = _header(msg, "Message-ID").strip()
    token = verp_token(msg, verp_local)
    findings = _complaints(msg)
    if not findings:
        dsn = _dsn(msg)
        findings = _heuristic(msg) if dsn is None else dsn
    return Report(message_id, tuple(findings), token)


def verp_token(msg: Message, local: str = "bounces") -> str:
    """The token of `<local>+<token>@…` in the envelope headers, or the enclosed original's."""
    pattern = re.compile(rf"(?<![\w.+-]){re.escape(local)}\+([A-Za-z0-9_.-]+)@", re.I)
    for source in (msg, *_enclosed(msg)):
        for name in ("Delivered-To", "X-Original-To", "To", "Envelope-To", "X-Envelope-To", "Return-Path"):
            for value in _all(source, name):
                match = pattern.search(str(value))
                if match:
                    return match.group(1).rstrip(".")
    return ""


# --- complaints ---------------------------------------------------------------------

def _complaints(msg: Message) -> list[Finding]:
    for part in msg.walk():
        if part.get_content_type() == "message/feedback-report":
            return _arf(msg, part)
    ses = _ses_from_body(msg)
    if ses:
        return ses
    for original in _enclosed(msg):
        jmrp = _header(original, "X-HmXmrOriginalRecipient")
        if jmrp:
            return [Finding(_address(jmrp), Kind.COMPLAINT, feedback_type="abuse",
                            diagnostic="Microsoft JMRP complaint")]
    if _header(msg, "X-Apple-Unsubscribe").strip().lower() == "true":
        return [Finding(_address(_header(msg, "From")), Kind.COMPLAINT, feedback_type="opt-out",
                        diagnostic="Apple Mail unsubscribe request")]
    return []


def _arf(msg: Message, report: Message) -> list[Finding]:
    fields = _fields(_payload_text(report))
    ftype = (fields.get("feedback-type", [""])[0] or "abuse").lower()
    addresses = fields.get("original-rcpt-to", []) + fields.get("removal-recipient", [])
    if not addresses:
        addresses = [a for original in _enclosed(msg) for _, a in getaddresses(_all(original, "To"))]
    agent = fields.get("user-agent", [""])[0]
    found = _unique(_address(a) for a in addresses)
    return [Finding(a, Kind.COMPLAINT, feedback_type=ftype, diagnostic=f"ARF {ftype} report {agent}".strip())
            for a in found or [""]]


def _ses_from_body(msg: Message) -> list[Finding]:
    """Amazon SES notifications delivered by SNS as an email (a JSON object as the body)."""
    if msg.is_multipart():
        return []
    text = _payload_text(msg)
    start = text.find("{")
    if start < 0 or '"notificationType"' not in text:
        return []
    # SNS wraps long lines with "!\n " in its email transport; undo that before decoding.
    body = re.sub(r"!\r?\n ", "", text[start:])
    try:
        obj, _ = json.JSONDecoder().raw_decode(body)
    except ValueError:
        return []
    return ses_findings(obj) if isinstance(obj, dict) else []


def ses_findings(notification: dict) -> list[Finding]:
    """Findings from an Amazon SES Bounce/Complaint notification object (mail or webhook)."""
    ntype = str(notification.get("notificationType") or notification.get("eventType") or "")
    if ntype == "Complaint":
        complaint = notification.get("complaint") or {}
        ftype = str(complaint.get("complaintFeedbackType") or "abuse")
        return [Finding(_address(str(r.get("emailAddress", ""))), Kind.COMPLAINT, feedback_type=ftype,
                        diagnostic=f"Amazon SES complaint ({ftype})")
                for r in complaint.get("complainedRecipients") or []]
    if ntype == "Bounce":
        bounce = notification.get("bounce") or {}
        permanent = bounce.get("bounceType") == "Permanent"
        found = []
        for r in bounce.get("bouncedRecipients") or []:
            diagnostic = str(r.get("diagnosticCode") or bounce.get("bounceSubType") or "")
            status = str(r.get("status") or "")
            kind = severity(status, diagnostic) if permanent else Kind.SOFT
            if permanent and bounce.get("bounceSubType") in ("General", "NoEmail", "Suppressed"):
                kind = Kind.HARD
            found.append(Finding(_address(str(r.get("emailAddress", ""))), kind, status, diagnostic[:MAX_DIAGNOSTIC]))
        return found
    return []


# --- RFC 3464 -----------------------------------------------------------------------

def _dsn(msg: Message) -> list[Finding] | None:
    """Findings of a delivery-status part; [] when it reports only successes or delays,
    None when there is no usable part (then the heuristics get their turn)."""
    for part in msg.walk():
        if part.get_content_type() in ("message/delivery-status", "message/global-delivery-status"):
            return _delivery_status(msg, part)
    return None


def _delivery_status(msg: Message, part: Message) -> list[Finding] | None:
    text = _payload_text(part)
    found: list[Finding] = []
    reported = False
    for block in re.split(r"\r?\n\s*\r?\n", text):
        fields = _fields(block)
        rcpt = (fields.get("final-recipient") or fields.get("original-recipient") or [""])[0]
        if not rcpt and "action" not in fields:
            continue  # the per-message block (Reporting-MTA …), not a recipient
        action = (fields.get("action") or [""])[0].lower()
        status = _status((fields.get("status") or [""])[0])
        # "delayed" counts as a soft bounce (the server gave up for now), as sisimai counts it.
        if action in ("delivered", "deliverable", "relayed", "expanded") or status.startswith("2"):
            reported = True
            continue
        address = _address(rcpt.split(";", 1)[-1])
        if not address and fields.get("original-recipient"):
            address = _address(fields["original-recipient"][0].split(";", 1)[-1])
        diagnostic = (fields.get("diagnostic-code") or [""])[0].split(";", 1)[-1].strip()
        status = status or _status(diagnostic)
        if not diagnostic:
            diagnostic = _human_diagnostic(msg)
        if not address:
            address = _first(_transcript_recipients(msg)) or _flufl_recipient(msg)
        found.append(Finding(address, severity(status, diagnostic), status, diagnostic[:MAX_DIAGNOSTIC]))
    return found if found or reported else None


# --- non-standard bounces -------------------------------------------------------------

def _looks_like_bounce(msg: Message) -> bool:
    sender = _header(msg, "From")
    subject = _header(msg, "Subject")
    if msg.get_content_type() == "multipart/report":
        return True
    if AUTO_REPLY.search(subject):
        return False
    null_sender = _header(msg, "Return-Path").strip() == "<>"
    return bool(BOUNCE_FROM.search(sender) or BOUNCE_SUBJECT.search(subject) or null_sender)


def _heuristic(msg: Message) -> list[Finding]:
    if not _looks_like_bounce(msg):
        return []
    text = _human_text(msg)
    diagnostic = _human_diagnostic(msg)
    status = _status(diagnostic) or _status(text)
    recipients = _unique([*_flufl_recipients(msg), *_transcript_recipients(msg)])
    if not recipients:
        recipients = _unique(_address(a) for o in _enclosed(msg) for _, a in getaddresses(_all(o, "To")))
    if not recipients and not status:
        return []
    found = []
    for rcpt in recipients or [""]:
        own = _line_about(text, rcpt) if rcpt else ""
        own_status = _status(own) or status
        detail = own or diagnostic
        found.append(Finding(rcpt, severity(own_status, detail or text), own_status, detail[:MAX_DIAGNOSTIC]))
    return found


def severity(status: str, diagnostic: str) -> Kind:
    """Hard only when the address or its domain does not exist (see the module docstring)."""
    if status.startswith(("4", "2")):
        return Kind.SOFT
    if HARD_STATUS.match(status):
        return Kind.HARD
    if HARD_PHRASES.search(diagnostic) and not SOFT_PHRASES.search(diagnostic):
        return Kind.HARD
    return Kind.SOFT


def _line_about(text: str, address: str) -> str:
    """The diagnostic lines near the first mention of the address in the human text."""
    lower = text.lower()
    pos = lower.find(address)
    if pos < 0:
        return ""
    window = text[pos: pos + 600]
    # Stop at the next other address: in a list of failures each one has its own reason.
    for match in ADDRESS.finditer(window):
        if match.group(0).lower() != address and "\n" in window[: match.start()]:
            window = window[: match.start()]
            break
    lines = [ln.strip() for ln in window.splitlines() if DIAG_LINE.match(ln) or HARD_PHRASES.search(ln)
             or SOFT_PHRASES.search(ln)]
    return " ".join(lines[:3])


def _human_diagnostic(msg: Message) -> str:
    text = _human_text(msg)
    lines = [ln.strip() for ln in text.splitlines() if DIAG_LINE.match(ln)]
    if not lines:
        lines = [ln.strip() for ln in text.splitlines() if HARD_PHRASES.search(ln) or SOFT_PHRASES.search(ln)]
    return " ".join(lines[:3])


def _transcript_recipients(msg: Message) -> list[str]:
    """Addresses named by the failing part of an SMTP transcript or a carrier's notice."""
    text = _human_text(msg)
    patterns = (r"RCPT TO:\s*<?([^\s>]+@[^\s>]+)>?", r"^\s*<([^\s>]+@[^\s>]+)>:?\s*$",
                r"delivered to:?\s*<([^\s>]+@[^\s>]+)>", r"^>>> ([^\s<]+@[^\s<]+)", r"^([^\s<]+@[^\s<]+)\s*$")
    found = []
    for pattern in patterns:
        found += [_address(m) for m in re.findall(pattern, text, re.M | re.I)]
    return _unique(found)


def _flufl_recipients(msg: Message) -> list[str]:
    try:
        temporary, permanent = all_failures(msg)
    except Exception:  # noqa: BLE001 - flufl.bounce trips on odd messages; ours is the fallback
        return []
    return _unique(_address(a.decode("ascii", "replace") if isinstance(a, bytes) else a)
                   for a in (*permanent, *temporary))


def _flufl_recipient(msg: Message) -> str:
    return _first(_flufl_recipients(msg))


# --- helpers ----------------------------------------------------------------------------

def _header(msg: Message, name: str) -> str:
    """A header decoded to text, whether RFC 2047-encoded or raw 8-bit UTF-8."""
    value = msg.get(name)
    if value is None:
        return ""
    try:
        chunks = decode_header(value)
    except HeaderParseError:
        return str(value)
    parts = []
    for chunk, charset in chunks:
        if isinstance(chunk, bytes):
            try:
                chunk = chunk.decode(charset or "utf-8", "replace")
            except LookupError:
                chunk = chunk.decode("utf-8", "replace")
        parts.append(chunk)
    return "".join(parts)


def _all(msg: Message, name: str) -> list[str]:
    """Every value of a header as text (a raw 8-bit header comes back as a Header object)."""
    return [str(v) for v in msg.get_all(name) or []]


def _status(text: str) -> str:
    match = ENHANCED.search(text)
    if match:
        return ".".join(match.groups())
    match = REPLY_CODE.search(text)
    return match.group(1) if match else ""


def _address(value: str) -> str:
    """A plain lower-case address out of `rfc822; <a@b>`, `Name <a@b>`, or a bare one; else ""."""
    value = value.strip().strip("<>").strip()
    _, parsed = parseaddr(value)
    candidate = parsed if "@" in parsed else value
    match = ADDRESS.search(candidate.replace('"', ""))
    if not match:
        return ""
    address = match.group(0).lower().strip(".")
    local, _, domain = address.partition("@")
    return address if local and "." in domain else ""


def _unique(items: object) -> list[str]:
    seen: list[str] = []
    for item in items:  # type: ignore[attr-defined]
        if item and item not in seen:
            seen.append(item)
    return seen


def _first(items: list[str]) -> str:
    return items[0] if items else ""


def _fields(text: str) -> dict[str, list[str]]:
    """Header-style `Name: value` lines (with continuation lines) as lower-case name → values."""
    fields: dict[str, list[str]] = {}
    name = ""
    for line in text.splitlines():
        if line[:1] in (" ", "\t") and name:
            fields[name][-1] += " " + line.strip()
            continue
        key, sep, value = line.partition(":")
        if sep and key.strip() and " " not in key.strip():
            name = key.strip().lower()
            fields.setdefault(name, []).append(value.strip())
        else:
            name = ""
    return fields


def _payload_text(part: Message) -> str:
    """The decoded text of a part, however it is encoded (message/* parts included)."""
    payload = part.get_payload(decode=not part.is_multipart())
    if isinstance(payload, list):
        return "\n\n".join(_as_text(p) if isinstance(p, Message) else str(p) for p in payload)
    if payload is None:
        raw = part.get_payload()
        return raw if isinstance(raw, str) else ""
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload.decode(charset, "replace")
    except LookupError:
        return payload.decode("utf-8", "replace")


def _as_text(part: Message) -> str:
    """A message part as text; a header too broken to re-serialise is written out as is."""
    try:
        return part.as_string()
    except (HeaderParseError, UnicodeError, LookupError):
        headers = "".join(f"{name}: {value}\n" for name, value in part.items())
        return headers + "\n" + _payload_text(part)


def _human_text(msg: Message) -> str:
    """All text/plain parts outside any enclosed original message."""
    texts = []
    stack = [msg]
    while stack:
        part = stack.pop(0)
        ctype = part.get_content_type()
        if ctype.startswith("message/") or ctype == "text/rfc822-headers":
            continue
        if part.is_multipart():
            stack.extend(p for p in part.get_payload() if isinstance(p, Message))
        elif ctype in ("text/plain", "text/html") or ctype.startswith("multipart/") or part is msg:
            # (a multipart part here lost its boundary to a broken header: read it as text)
            text = _payload_text(part)
            texts.append(re.sub(r"<[^>]{1,200}>", " ", text) if ctype == "text/html" else text)
    return "\n".join(texts)


def _enclosed(msg: Message) -> list[Message]:
    """The original messages (or their headers) a report carries."""
    found = []
    for part in msg.walk():
        ctype = part.get_content_type()
        if ctype in ("message/rfc822", "message/global") and part.is_multipart():
            found += [p for p in part.get_payload() if isinstance(p, Message)]
        elif ctype == "text/rfc822-headers":
            found.append(parse(_payload_text(part).encode("utf-8", "replace")))
    return found
