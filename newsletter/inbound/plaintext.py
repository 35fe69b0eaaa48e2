"""Bounces that are prose, not RFC 3464: who failed, and the words about them.

Most MTAs outside RFC 3464 (qmail, Exim, old Sendmail, Exchange, Lotus Notes, OpenSMTPD,
carriers' gateways …) write the failed addresses into a text, each followed or preceded by
the server's reply, then quote the original message. Rather than one parser per MTA, this
reads that shape: cut the text where the original begins, take the addresses in the report
part that are not ours or the reporter's, and give each the lines up to the next one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.message import Message
from email.utils import getaddresses

from newsletter.inbound.mimetext import ADDRESS, address, all_values, enclosed, header, human_text, parse, unique

# Where the quoted original begins in a report's text.
ORIGINAL_STARTS = re.compile(
    r"^[ \t>*=_#|:-]*(?:"
    r"(?:the |your |a )?(?:original|returned|unsent|undelivered|undeliverable|failed) message(?! was received)"
    r"(?: (?:follows|below|headers|text|is (?:below|attached|enclosed)))?\b"
    r"|(?:the |original )?message headers? follows?|(?:the )?headers? of (?:the |your )?(?:original|message)"
    r"|original (?:message )?headers|(?:a |the )?(?:full )?copy of (?:the |your |this )?(?:original )?message"
    r"|below (?:this line )?is (?:a copy|the original)|the message (?:header|text) follows"
    r"|(?:received|return-path|dkim-signature|arc-seal): "
    r")",
    re.I | re.M,
)
# Lines naming something other than a recipient: message ids and trace headers.
NOT_A_RECIPIENT = re.compile(r"message-?id|msgid|\bid[ :]+<|^\s*(?:received|by|from|for)\b.*;|\bfor <[^>]+>;", re.I)
REPORTER_LOCALS = (
    "mailer-daemon",
    "postmaster",
    "mailerdaemon",
    "mail-daemon",
    "root",
    "nobody",
    "noreply",
    "no-reply",
    "abuse",
    "hostmaster",
)
MAX_LINES = 12
MAX_CHARS = 1200


@dataclass(frozen=True)
class Mention:
    recipient: str
    about: str  # the lines of the report about this recipient


def report_text(msg: Message) -> str:
    """The human text of the report, without the quoted original that follows it."""
    text = human_text(msg)
    # A bounce forwarded as text after an mbox "From " line: read the inner message's text.
    inner = re.search(r"^From \S+ .*\d{4}\s*\n(?=[\w-]+: )", text, re.M)
    if inner and inner.start() < len(text) // 2:
        text = text[: inner.start()] + "\n" + human_text(parse(text[inner.end() :].encode("utf-8", "replace")))
    cut = ORIGINAL_STARTS.search(text, 1)
    return text[: cut.start()] if cut and cut.start() > 0 else text


def ours(msg: Message) -> set[str]:
    """Addresses that are not the failed recipient: the reporter, us, the original's sender."""
    names = [header(msg, "From"), *all_values(msg, "Return-Path"), *all_values(msg, "Reply-To")]
    for original in enclosed(msg):
        names += [*all_values(original, "From"), *all_values(original, "Sender"), *all_values(original, "Return-Path")]
    return {address(a) for _, a in getaddresses(names)} - {""}


def mentions(msg: Message) -> list[Mention]:
    """The failed recipients a prose report names, in order, each with the lines about it."""
    text = report_text(msg)
    excluded = ours(msg) | _quoted_senders(human_text(msg))
    lines = text.splitlines()
    where: list[tuple[int, str]] = []
    for number, line in enumerate(lines):
        if NOT_A_RECIPIENT.search(line):
            continue
        for match in ADDRESS.finditer(line):
            found = address(match.group(0))
            if found and found not in excluded and _plausible(found):
                where.append((number, found))
    recipients = unique(found for _, found in where)
    # The report's own To (our return path) and reporter mailboxes only when nothing else is named.
    to = {address(a) for _, a in getaddresses(all_values(msg, "To"))}
    named = [r for r in recipients if r not in to and r.partition("@")[0] not in REPORTER_LOCALS] or recipients
    result = []
    for recipient in named:
        first = next(n for n, found in where if found == recipient)
        following = [n for n, found in where if n > first and found != recipient]
        end = min([first + MAX_LINES, *following[:1]]) if following else first + MAX_LINES
        about = "\n".join(lines[max(first - 1, 0) if _codes_before(lines, first) else first : max(end, first + 1)])
        result.append(Mention(recipient, about[:MAX_CHARS]))
    return result


def failed_recipients(msg: Message) -> list[str]:
    """The addresses of an `X-Failed-Recipients` header (Exim, Google): the MTA's own list."""
    return unique(address(a) for _, a in getaddresses(all_values(msg, "X-Failed-Recipients")))


def original_recipients(msg: Message) -> list[str]:
    """The To addresses of the enclosed original, or of a quoted header block: a last resort."""
    names = [v for original in enclosed(msg) for v in all_values(original, "To")]
    if not names:
        quoted = re.search(r"^[ \t>]*To:[ \t]*(.+)$", human_text(msg)[len(report_text(msg)) :], re.M | re.I)
        names = [quoted.group(1)] if quoted else []
    return unique(address(a) for _, a in getaddresses(names))


def _quoted_senders(text: str) -> set[str]:
    return {address(m) for m in re.findall(r"^[ \t>]*(?:From|Sender|Return-Path):[ \t]*(.+)$", text, re.M | re.I)}


def _plausible(found: str) -> bool:
    """Not a message id dressed as an address (long runs of hex or digits, many dots)."""
    local = found.partition("@")[0]
    return not (len(local) > 24 and re.fullmatch(r"[\da-f.$_-]+", local)) and local.count(".") < 4


def _codes_before(lines: list[str], first: int) -> bool:
    """Whether the line above the first mention carries the reply (a transcript's '>>> RCPT' ...)."""
    above = lines[first - 1] if first > 0 else ""
    return bool(re.search(r"\b[45]\d\d\b|[45]\.\d{1,3}\.\d{1,3}", above)) and not ADDRESS.search(above)
