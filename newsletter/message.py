"""A rendered variant as one MIME message in wire form, split where personal values go.

`prepare()` runs once per variant: headers are folded and RFC 2047-encoded, both
parts are quoted-printable encoded with CRLF line ends and no line starting with '.',
and the text is cut at every personal slot (To, Date, Message-ID, List-Unsubscribe,
the two links and the greeting name). Date is a slot because it is the time the
message is handed over, not the start of a send that may last hours. `Template.fill()` joins those bytes with one
subscriber's values: the per-subscriber path is a list join, never MIME building.

Slots sit on their own quoted-printable lines (a soft line break before and after),
so a value of any length decodes back into the exact place of its marker.
"""

from __future__ import annotations

import email.policy
import hashlib
import hmac
import html
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, tzinfo
from email import quoprimime
from email.header import Header
from email.utils import format_datetime, formataddr, parseaddr
from functools import lru_cache
from pathlib import Path

import dkim

from newsletter import clicks, render, tokens
from newsletter.config import Settings
from newsletter.errors import ConfigError, InvalidInput
from newsletter.render import Variant

# Slot numbers: index into the per-subscriber values tuple built by `MessageFactory.values`.
TO, MESSAGE_ID, LIST_UNSUBSCRIBE, URL_UNSUBSCRIBE, URL_PREFERENCES, NAME_TEXT, NAME_HTML, DATE, READER = range(9)
# Headers a DKIM signature covers; Gmail requires the two List-Unsubscribe ones (RFC 8058 §4).
DKIM_HEADERS = (
    b"From",
    b"To",
    b"Subject",
    b"Date",
    b"Message-ID",
    b"Reply-To",
    b"List-Id",
    b"List-Unsubscribe",
    b"List-Unsubscribe-Post",
    b"MIME-Version",
    b"Content-Type",
)
POLICY = email.policy.SMTP.clone(max_line_length=78, refold_source="all")
SOFT_BREAK = b"=\r\n"
HEADER_LINE = 78  # RFC 5322 2.1.1: lines SHOULD stay within 78 characters, MUST within 998


def check_header(field: str, value: str) -> str:
    """`value` unchanged, or InvalidInput if it could inject a header (CR, LF, NUL)."""
    if any(c in value for c in "\r\n\0"):
        raise InvalidInput(f"{field} {value[:60]!r} contains a line break; header values must be one line")
    return value


@lru_cache(maxsize=64)
def address_of(value: str) -> str:
    """The bare address of a configured From-style value (parsed once: it is per message)."""
    return parseaddr(value)[1]


def domain_of(settings: Settings) -> str:
    return address_of(settings.newsletter.from_address).rpartition("@")[2] or "localhost"


def return_path(settings: Settings, subscriber_id: int, issue_id: int | None) -> str:
    """The envelope sender (MAIL FROM) of a message to this subscriber.

    With [bounces] return_path_domain set it is the VERP address
    `<return_path_local>+<bounce token>@<domain>`: the token names subscriber and issue,
    so a bounce is tied to them even when the report itself names no one. Otherwise
    (and for test sends, subscriber 0) it is the From address."""
    b = settings.bounces
    if not b.return_path_domain or not subscriber_id:
        return address_of(settings.newsletter.from_address)
    token = tokens.make(settings.newsletter.secret_key, tokens.BOUNCE, subscriber_id, issue_id)
    return f"{b.return_path_local}+{token}@{b.return_path_domain}"


def message_id(settings: Settings, issue_id: int, subscriber_id: int) -> str:
    """Deterministic per (issue, subscriber): a resent copy carries the same Message-ID,
    so receiving systems can drop the duplicate; the keyed hash keeps ids of two
    installations apart."""
    return _message_id(settings.newsletter.secret_key.encode(), domain_of(settings), issue_id, subscriber_id)


def _message_id(key: bytes, domain: str, issue_id: int, subscriber_id: int) -> str:
    digest = hmac.new(key, f"{issue_id}.{subscriber_id}".encode(), hashlib.sha256).hexdigest()[:12]
    return f"<nl.{issue_id}.{subscriber_id}.{digest}@{domain}>"


def unsubscribe_mailto(settings: Settings) -> str:
    return settings.newsletter.unsubscribe_mailto or f"unsubscribe@{domain_of(settings)}"


def list_id(settings: Settings) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", settings.newsletter.name.lower()).strip("-") or "newsletter"
    return f"{settings.newsletter.name} <{slug}.{domain_of(settings)}>"


def _qp_value(value: str) -> bytes:
    """A value as quoted-printable lines for a slot: soft breaks every 75 characters,
    no line starting with '.'. Links (URL-safe, no '=') take the fast path."""
    if value.isascii() and value.isprintable() and "=" not in value and not value.endswith(" "):
        raw = value.encode("ascii")
        if len(raw) > 75:
            raw = SOFT_BREAK.join(raw[i : i + 75] for i in range(0, len(raw), 75))
    else:
        raw = quoprimime.body_encode(value.encode("utf-8").decode("latin-1"), maxlinelen=76, eol="\r\n").encode("ascii")
    return _no_leading_dots(raw)


def _no_leading_dots(qp: bytes) -> bytes:
    """'.' at a line start becomes '=2E' (legal in quoted-printable), so DATA needs no dot-stuffing."""
    qp = qp.replace(b"\r\n.", b"\r\n=2E")
    return b"=2E" + qp[1:] if qp.startswith(b".") else qp


def _qp_with_slots(text: str, slots: render.Slots, html_part: bool) -> list[bytes | int]:
    """A body part encoded quoted-printable, cut at the variant's slot markers (only
    those the template made: article text cannot name one, see `render.Slots`)."""
    numbers = {
        slots.unsubscribe_url: URL_UNSUBSCRIBE,
        slots.preferences_url: URL_PREFERENCES,
        slots.subscriber_name: NAME_HTML if html_part else NAME_TEXT,
        slots.reader: READER,
    }
    out: list[bytes | int] = []
    for i, piece in enumerate(slots.pattern().split(text.replace("\r\n", "\n").replace("\r", "\n"))):
        if i % 2:
            out += [SOFT_BREAK, numbers[piece], SOFT_BREAK]
        elif piece:
            out.append(
                _no_leading_dots(
                    quoprimime.body_encode(piece.encode("utf-8").decode("latin-1"), maxlinelen=76, eol="\r\n").encode(
                        "ascii"
                    )
                )
            )
    return out


def _header(name: str, value: str) -> bytes:
    """`Name: value` folded to RFC 5322 line limits. A word too long to fold at a space
    (e.g. a 300-character subject word) becomes RFC 2047 encoded-words, which can be split."""
    folded = POLICY.fold_binary(name, check_header(name, value))
    if max(map(len, folded.split(b"\r\n"))) <= 998:
        return folded
    return f"{name}: ".encode() + _encoded_words(name, value) + b"\r\n"


def _encoded_words(name: str, text: str) -> bytes:
    return Header(text, "utf-8", header_name=name, maxlinelen=HEADER_LINE).encode(linesep="\r\n").encode("ascii")


def to_header(address: str, name: str) -> bytes:
    """The To line for one subscriber, folded: a long or non-ASCII name goes as RFC 2047
    encoded-words, so no line can exceed the limit a server enforces ("500 Line too long")."""
    if not name:
        return f"To: {address}\r\n".encode()
    if name.isascii():
        line = f"To: {formataddr((name, address))}\r\n"
        if len(line) <= HEADER_LINE + 2:
            return line.encode()
    return b"To: " + _encoded_words("To", name) + f"\r\n <{address}>\r\n".encode()


class HandOverClock:
    """The Date header's value: the time now in the configured zone, formatted once per second."""

    def __init__(self, tz: tzinfo, clock: Callable[[], float] = time.time) -> None:
        self.tz, self.clock = tz, clock
        self.second, self.value = -1, b""

    def __call__(self) -> bytes:
        now = self.clock()
        if int(now) != self.second:
            self.second = int(now)
            when = datetime.fromtimestamp(self.second, self.tz)
            self.value = f"Date: {format_datetime(when)}\r\n".encode()
        return self.value


class WireBytes(bytes):
    """A message already in SMTP wire form: CRLF line ends only, no line starting with
    '.', every line within 998 octets; the transport sends it without another pass."""


@dataclass(frozen=True)
class Template:
    """A variant in wire form: statics[0] slot[0] statics[1] … statics[-1]."""

    sections: tuple[str, ...]
    statics: tuple[bytes, ...]
    slots: tuple[int, ...]

    def fill(self, values: tuple[bytes, ...]) -> WireBytes:
        statics = self.statics
        parts = [statics[0]]
        for i, slot in enumerate(self.slots, 1):
            parts.append(values[slot])
            parts.append(statics[i])
        return WireBytes(b"".join(parts))


def _compile(parts: list[bytes | int], sections: tuple[str, ...]) -> Template:
    statics: list[bytes] = [b""]
    slots: list[int] = []
    for part in parts:
        if isinstance(part, int):
            slots.append(part)
            statics.append(b"")
        else:
            statics[-1] += part
    return Template(sections, tuple(statics), tuple(slots))


class DkimSigner:
    """Signs each finished message (the body differs per subscriber, so per message)."""

    def __init__(self, selector: str, domain: str, key: bytes) -> None:
        self.selector, self.domain, self.key = selector.encode(), domain.encode(), key

    @classmethod
    def from_settings(cls, settings: Settings) -> DkimSigner | None:
        d = settings.dkim
        if not d.private_key_path:
            return None
        path: Path = settings.resolve(d.private_key_path)
        try:
            key = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"[dkim] private_key_path {str(path)!r}: {exc.strerror}; fix config.toml") from exc
        return cls(d.selector, d.domain, key)

    def sign(self, data: bytes) -> WireBytes:
        try:
            signature = dkim.sign(
                data,
                self.selector,
                self.domain,
                self.key,
                include_headers=list(DKIM_HEADERS),
                canonicalize=(b"relaxed", b"relaxed"),
                linesep=b"\r\n",
            )
        except dkim.DKIMException as exc:
            raise ConfigError(f"[dkim] cannot sign with the key in private_key_path: {exc}") from exc
        return WireBytes(signature + data)  # dkimpy folds with CRLF + tab: still wire form


class MessageFactory:
    """Turns variants of one issue into templates, and templates into messages."""

    def __init__(self, settings: Settings, issue_id: int, *, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.issue_id = issue_id
        self.date = HandOverClock(settings.tz, clock)
        self.mailto = unsubscribe_mailto(settings).encode("ascii")
        self.domain = domain_of(settings)
        self.key = settings.newsletter.secret_key.encode()
        self.signer = DkimSigner.from_settings(settings)
        self.unsubscribe_token = tokens.Minter(settings.newsletter.secret_key, tokens.UNSUBSCRIBE)
        self.preferences_token = tokens.Minter(settings.newsletter.secret_key, tokens.PREFERENCES)
        self.reader_path = clicks.ReaderPaths(settings)

    def prepare(self, variant: Variant) -> Template:
        """The expensive step, once per variant: headers, encoding, slots."""
        n = self.settings.newsletter
        # "=_" never occurs in quoted-printable text, so the boundary cannot clash with a body.
        digest = hashlib.sha256("|".join(variant.sections).encode() + variant.html.encode()).hexdigest()
        boundary = "=_nl_" + digest[:28]
        head: list[bytes | int] = [_header("From", n.from_address)]
        if n.reply_to:
            head.append(_header("Reply-To", n.reply_to))
        head += [
            TO,
            _header("Subject", variant.subject),
            DATE,
            b"Message-ID: ",
            MESSAGE_ID,
            b"\r\n",
            _header("List-Id", list_id(self.settings)),
            LIST_UNSUBSCRIBE,
            b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n",
            b"MIME-Version: 1.0\r\n",
            f'Content-Type: multipart/alternative; boundary="{boundary}"\r\n\r\n'.encode(),
        ]
        part = 'Content-Type: text/{}; charset="utf-8"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n'
        body: list[bytes | int] = [f"--{boundary}\r\n{part.format('plain')}".encode()]
        body += _qp_with_slots(variant.text, variant.slots, False)
        body.append(f"\r\n--{boundary}\r\n{part.format('html')}".encode())
        body += _qp_with_slots(variant.html, variant.slots, True)
        body.append(f"\r\n--{boundary}--\r\n".encode())
        return _compile(head + body, variant.sections)

    def values(self, subscriber_id: int, address: str, name: str) -> tuple[bytes, ...]:
        """One subscriber's slot values, in slot order. Line breaks in a name are dropped."""
        check_header("To", address)
        name = " ".join(name.split())
        unsubscribe = tokens.link(
            self.settings, tokens.UNSUBSCRIBE, self.unsubscribe_token(subscriber_id, self.issue_id)
        )
        preferences = tokens.link(self.settings, tokens.PREFERENCES, self.preferences_token(subscriber_id))
        to = to_header(address, name)
        token = unsubscribe.rpartition("/")[2].encode()
        list_unsubscribe = (
            b"List-Unsubscribe: <"
            + unsubscribe.encode()
            + b">,\r\n <mailto:"
            + self.mailto
            + b"?subject=unsubscribe-"
            + token
            + b">\r\n"
        )
        url_unsub, url_prefs = _qp_value(unsubscribe), _qp_value(preferences)
        greeting = render.greeting_name(name)
        name_text = _qp_value(greeting) if greeting else b""
        name_html = _qp_value(html.escape(greeting, quote=True)) if greeting else b""
        reader = self.reader_path(subscriber_id, self.issue_id)  # URL-safe: one value for both parts
        return (
            to,
            _message_id(self.key, self.domain, self.issue_id, subscriber_id).encode(),
            list_unsubscribe,
            url_unsub,
            url_prefs,
            name_text,
            name_html,
            self.date(),
            _qp_value(reader) if reader else b"",
        )

    def build(self, template: Template, subscriber_id: int, address: str, name: str) -> WireBytes:
        """The finished message for one subscriber (DKIM-signed when configured)."""
        data = template.fill(self.values(subscriber_id, address, name))
        return self.signer.sign(data) if self.signer else data
