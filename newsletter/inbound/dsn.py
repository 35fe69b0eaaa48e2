"""RFC 3464 delivery status notifications: the per-recipient fields, wherever an MTA put them.

Real MTAs send them as `message/delivery-status` parts, but also under a wrong content
type (text/plain inside multipart/report), or quoted as plain text in a forwarded bounce;
all three are read the same way. No DSN at all gives None, so the plain-text readers get
their turn.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from email.message import Message

from newsletter.inbound.mimetext import address, fields, human_text, payload_text

DSN_TYPES = ("message/delivery-status", "message/global-delivery-status")
SUCCESS = ("delivered", "deliverable", "relayed", "expanded")
# A recipient block quoted in text: it starts with one of these fields.
QUOTED_FIELD = re.compile(r"^[ \t>]*(?:Final|Original)-Recipient:", re.M | re.I)
QUOTE_MARK = re.compile(r"^[ \t]*(?:>[ \t]?)+", re.M)


@dataclass(frozen=True)
class Entry:
    """One recipient block of a DSN."""

    recipient: str  # Final-Recipient, else Original-Recipient; "" when it names none
    alternative: str  # Original-Recipient / X-Actual-Recipient when it differs
    action: str  # failed, delayed, delivered … (lower case; "" when absent)
    status: str  # the Status field as given
    diagnostic: str  # Diagnostic-Code without its type ("smtp;"), else ""

    @property
    def succeeded(self) -> bool:
        return self.action in SUCCESS or self.status.startswith("2")


def entries(msg: Message) -> list[Entry] | None:
    """The recipient blocks of the message's DSN (part or quoted text), or None without one."""
    texts = [payload_text(part) for part in msg.walk() if part.get_content_type() in DSN_TYPES]
    if not any(_blocks(text) for text in texts):
        text = human_text(msg)
        texts = [QUOTE_MARK.sub("", text)] if QUOTED_FIELD.search(text) else []
    found = [entry for text in texts for entry in _blocks(text)]
    return found or None


def _blocks(text: str) -> list[Entry]:
    found = []
    for block in re.split(r"\r?\n[ \t]*\r?\n", text):
        f = fields(textwrap.dedent(block))
        final = (f.get("final-recipient") or [""])[0]
        original = (f.get("original-recipient") or f.get("x-actual-recipient") or [""])[0]
        if not (final or original) and not ("action" in f and "status" in f):
            continue  # the per-message block (Reporting-MTA …), not a recipient
        recipient = address(final.split(";", 1)[-1]) or address(original.split(";", 1)[-1])
        alternative = address(original.split(";", 1)[-1])
        diagnostic = " ".join(d.split(";", 1)[-1].strip() for d in f.get("diagnostic-code", []))
        found.append(
            Entry(
                recipient,
                alternative if alternative != recipient else "",
                (f.get("action") or [""])[0].strip().lower(),
                (f.get("status") or [""])[0].strip(),
                diagnostic,
            )
        )
    return found
