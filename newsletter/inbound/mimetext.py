"""Text out of real-world mail: decoded headers, the report's own words, enclosed originals.

Returned mail is untrusted and often malformed (wrong charsets, broken MIME, 8-bit
headers); every helper here returns what it can read and never raises on bad input.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from email import message_from_bytes
from email.errors import HeaderParseError
from email.header import decode_header
from email.message import Message
from email.utils import parseaddr

ADDRESS = re.compile(r"[\w.!#$%&'*+/=?^`{|}~-]+@[\w-]+(?:\.[\w-]+)+", re.ASCII)
REPORT_TYPES = ("message/delivery-status", "message/global-delivery-status", "message/feedback-report")


def parse(raw: bytes) -> Message:
    """Parse with line ends made LF: IMAP delivers CRLF, and the parser keeps the CR in bodies."""
    return message_from_bytes(raw.replace(b"\r\n", b"\n"))


def header(msg: Message, name: str) -> str:
    """A header decoded to text, whether RFC 2047-encoded or raw 8-bit."""
    value = msg.get(name)
    if value is None:
        return ""
    try:
        # (a raw 8-bit header comes as a Header of "unknown-8bit" chunks, read below as UTF-8)
        chunks = decode_header(value)
    except (HeaderParseError, ValueError, LookupError):
        return str(value)
    parts = []
    for chunk, charset in chunks:
        if isinstance(chunk, bytes):
            chunk = _decode(chunk, charset)
        parts.append(chunk)
    return "".join(parts)


def all_values(msg: Message, name: str) -> list[str]:
    """Every value of a header as text (a raw 8-bit header comes back as a Header object)."""
    return [str(v) for v in msg.get_all(name) or []]


def address(value: str) -> str:
    """A plain lower-case address out of `rfc822; <a@b>`, `Name <a@b>`, or a bare one; else ""."""
    value = value.strip().strip("<>").strip()
    _, parsed = parseaddr(value)
    candidate = parsed if "@" in parsed else value
    match = ADDRESS.search(candidate.replace('"', ""))
    if not match:
        return ""
    found = match.group(0).lower().strip(".")
    local, _, domain = found.partition("@")
    return found if local and "." in domain else ""


def unique(items: Iterable[str]) -> list[str]:
    """The non-empty items, first occurrence kept, in order."""
    seen: dict[str, None] = {}
    for item in items:
        if item:
            seen.setdefault(item, None)
    return list(seen)


def fields(text: str) -> dict[str, list[str]]:
    """Header-style `Name: value` lines (with continuation lines) as lower-case name -> values."""
    found: dict[str, list[str]] = {}
    name = ""
    for line in text.splitlines():
        if line[:1] in (" ", "\t") and name:
            found[name][-1] += " " + line.strip()
            continue
        key, sep, value = line.partition(":")
        key = key.strip()
        if sep and key and " " not in key and len(key) < 40:
            name = key.lower()
            found.setdefault(name, []).append(value.strip())
        else:
            name = ""
    return found


def payload_text(part: Message) -> str:
    """The decoded text of a part, however it is encoded (message/* parts included)."""
    try:
        payload = part.get_payload() if part.is_multipart() else part.get_payload(decode=True)
    except (ValueError, LookupError, AssertionError):
        payload = None
    if isinstance(payload, list):
        return "\n\n".join(as_text(p) if isinstance(p, Message) else str(p) for p in payload)
    if payload is None:
        raw = part.get_payload()
        return raw if isinstance(raw, str) else ""
    if not isinstance(payload, bytes):
        return str(payload)
    return _decode(payload, part.get_content_charset())


def as_text(part: Message) -> str:
    """A message part as text; a header too broken to re-serialise is written out as is."""
    try:
        return part.as_string()
    except (HeaderParseError, UnicodeError, LookupError, ValueError, AttributeError):
        headers = "".join(f"{name}: {value}\n" for name, value in part.items())
        return headers + "\n" + payload_text(part)


def human_text(msg: Message) -> str:
    """The report's own text parts: everything outside an enclosed original message."""
    texts = []
    stack = [msg]
    while stack:
        part = stack.pop(0)
        ctype = part.get_content_type()
        if part is not msg and (
            ctype in ("message/rfc822", "message/global", "text/rfc822-headers") or ctype in REPORT_TYPES
        ):
            continue
        if part.is_multipart():
            stack.extend(p for p in part.get_payload() if isinstance(p, Message))
        elif ctype.startswith(("text/", "multipart/")) or part is msg or ctype == "application/octet-stream":
            # (a multipart part here lost its boundary to a broken header: read it as text)
            text = payload_text(part)
            texts.append(strip_html(text) if ctype == "text/html" else text)
    return "\n".join(texts)


def strip_html(text: str) -> str:
    text = re.sub(r"(?is)<(script|style)\b.*?</\1>", " ", text)
    text = re.sub(r"(?i)<br\s*/?>|</(?:p|div|tr|li|h\d)>", "\n", text)
    text = re.sub(r"<[^>]{0,500}>", " ", text)
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&nbsp;", " ").replace("&amp;", "&")


def enclosed(msg: Message) -> list[Message]:
    """The original messages (or their headers) a report carries."""
    found = []
    for part in msg.walk():
        ctype = part.get_content_type()
        if ctype in ("message/rfc822", "message/global") and part.is_multipart():
            found += [p for p in part.get_payload() if isinstance(p, Message)]
        elif ctype in ("text/rfc822-headers", "message/rfc822-headers"):
            found.append(parse(payload_text(part).encode("utf-8", "replace")))
    return found


def _decode(data: bytes, charset: str | None) -> str:
    if charset == "unknown-8bit":
        charset = "utf-8"
    try:
        return data.decode(charset or "utf-8", "replace")
    except (LookupError, UnicodeError):
        return data.decode("utf-8", "replace")
