"""Messages: byte templates decode to exactly what render.personalize gives, headers are
correct and injection-proof, and DKIM signatures verify."""

from __future__ import annotations

import base64
import dataclasses
import itertools
from email import message_from_bytes, policy
from email.header import decode_header, make_header
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sending_support import body, build_issue
from sqlalchemy.orm import Session, sessionmaker

from newsletter import builder, message, render, tokens
from newsletter.config import DkimSettings, Settings
from newsletter.errors import InvalidInput
from newsletter.message import MessageFactory
from newsletter.transport import wire_form


@pytest.fixture
def variant(sessions: sessionmaker[Session], settings: Settings) -> render.Variant:
    week = build_issue(sessions, settings)
    with sessions.begin() as s:
        content = builder.load_content(s, settings, week)
    return render.render_variant(settings, content, ("news", "events"))


def parse(data: bytes):  # type: ignore[no-untyped-def]
    return message_from_bytes(data, policy=policy.default)


def test_filled_template_decodes_to_personalize_output(variant: render.Variant, settings: Settings) -> None:
    factory = MessageFactory(settings, 7)
    template = factory.prepare(variant)
    name = 'Zoë <Ünïcode> & "Co"\nnext line'
    msg = parse(factory.build(template, 42, "zoe@example.org", name))
    html, text = render.personalize(
        variant,
        unsubscribe_url=tokens.unsubscribe_url(settings, 42, 7),
        preferences_url=tokens.preferences_url(settings, 42),
        name=name,
    )
    assert body(msg, "html").replace("\r\n", "\n") == html.replace("\r\n", "\n")
    assert body(msg, "plain").replace("\r\n", "\n") == text.replace("\r\n", "\n")
    assert msg["To"].addresses[0].display_name == 'Zoë <Ünïcode> & "Co" next line'
    assert msg["To"].addresses[0].addr_spec == "zoe@example.org"


def test_the_text_part_opens_with_one_title_line_and_a_greeting_with_or_without_a_name(
    variant: render.Variant, settings: Settings
) -> None:
    factory = MessageFactory(settings, 7)
    template = factory.prepare(variant)
    for name, greeting in (("Ada", "Hello Ada — here"), ("", "Hello — here"), (" \n ", "Hello — here")):
        msg = parse(factory.build(template, 42, "a@example.org", name))
        text, html = body(msg, "plain"), body(msg, "html")
        assert text.splitlines()[:3] == [
            "Test Weekly — Week 48 · 27 November 2026",
            "",
            f"{greeting} is this week's selection from Test Weekly.",
        ]
        assert f">{greeting} is this week" in html


def test_wire_form_is_ready_for_data(variant: render.Variant, settings: Settings) -> None:
    """CRLF only, no line longer than SMTP allows, no line starting with '.': the
    transport sends the bytes as they are, without a second pass."""
    factory = MessageFactory(settings, 7)
    data = factory.build(factory.prepare(variant), 1, "a@example.org", ".Dot Person")
    lines = data.split(b"\r\n")
    assert b"\n" not in data.replace(b"\r\n", b"") and b"\r" not in data.replace(b"\r\n", b"")
    assert max(len(line) for line in lines) <= 998
    assert not any(line.startswith(b".") for line in lines)
    assert wire_form(bytes(data)) == data  # a second normalisation pass would change nothing


def test_headers_subject_and_ids(variant: render.Variant, settings: Settings) -> None:
    variant = dataclasses.replace(variant, subject="Grüße aus Köln — Woche 48 ✓")
    factory = MessageFactory(settings, 7)
    template = factory.prepare(variant)
    first = parse(factory.build(template, 42, "a@example.org", ""))
    again = parse(MessageFactory(settings, 7).build(template, 42, "a@example.org", ""))
    other = parse(factory.build(template, 43, "b@example.org", ""))
    assert first["Subject"] == "Grüße aus Köln — Woche 48 ✓"
    assert first["From"] == "Test Weekly <news@example.com>" and first["Reply-To"] == "editor@example.com"
    assert first["To"] == "a@example.org"
    assert first["Message-ID"] == again["Message-ID"] == message.message_id(settings, 7, 42)
    assert first["Message-ID"] != other["Message-ID"]
    assert first["List-Id"] == "Test Weekly <test-weekly.example.com>"
    token = tokens.unsubscribe_url(settings, 42, 7).rpartition("/")[2]
    assert first["List-Unsubscribe"] == (
        f"<{tokens.unsubscribe_url(settings, 42, 7)}>, <mailto:unsubscribe@example.com?subject=unsubscribe-{token}>"
    )
    assert first["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert first["Date"].datetime is not None and first["MIME-Version"] == "1.0"
    assert [p.get_content_type() for p in first.iter_parts()] == ["text/plain", "text/html"]
    assert message.return_path(settings, 42, 7) == "news@example.com"


@pytest.mark.parametrize("field", ["subject", "from_address", "reply_to"])
def test_line_breaks_in_header_values_are_refused(field: str, variant: render.Variant, settings: Settings) -> None:
    if field == "subject":
        variant = dataclasses.replace(variant, subject="Hello\r\nBcc: all@example.net")
    else:
        n = dataclasses.replace(settings.newsletter, **{field: "x@example.com\nBcc: all@example.net"})
        settings = dataclasses.replace(settings, newsletter=n)
    with pytest.raises(InvalidInput, match="contains a line break; header values must be one line"):
        MessageFactory(settings, 7).prepare(variant)


def test_a_recipient_address_with_a_line_break_is_refused(variant: render.Variant, settings: Settings) -> None:
    factory = MessageFactory(settings, 7)
    with pytest.raises(InvalidInput):
        factory.build(factory.prepare(variant), 1, "a@example.org\r\nBcc: x@example.net", "")


def test_unsubscribe_mailto_can_be_configured(variant: render.Variant, settings: Settings) -> None:
    n = dataclasses.replace(settings.newsletter, unsubscribe_mailto="leave@lists.example.com")
    settings = dataclasses.replace(settings, newsletter=n)
    factory = MessageFactory(settings, 7)
    msg = parse(factory.build(factory.prepare(variant), 1, "a@example.org", ""))
    assert "<mailto:leave@lists.example.com?subject=unsubscribe-" in msg["List-Unsubscribe"]


def test_dkim_signature_covers_list_unsubscribe_and_verifies(
    variant: render.Variant, settings: Settings, tmp_path: Path
) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
    (tmp_path / "dkim.pem").write_bytes(pem)
    public = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    settings = dataclasses.replace(settings, dkim=DkimSettings("news2026", "example.com", str(tmp_path / "dkim.pem")))
    factory = MessageFactory(settings, 7)
    data = factory.build(factory.prepare(variant), 42, "a@example.org", "Ann")

    def dns(name: bytes, timeout: int = 5) -> bytes:
        assert name == b"news2026._domainkey.example.com."
        return b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)

    assert dkim.verify(data, dnsfunc=dns)
    assert wire_form(bytes(data)) == data  # the signature header keeps the wire form
    signed = parse(data)["DKIM-Signature"].replace(" ", "").replace("\r\n", "").lower()
    assert "d=example.com" in signed and "s=news2026" in signed
    h_tag = signed.split("h=")[1].split(";")[0].split(":")
    assert {"from", "subject", "list-unsubscribe", "list-unsubscribe-post"} <= set(h_tag)
    # Tampering with the unsubscribe header breaks the signature.
    assert not dkim.verify(
        data.replace(b"List-Unsubscribe-Post: List-Unsubscribe=One-Click", b"List-Unsubscribe-Post: nothing"),
        dnsfunc=dns,
    )


def test_date_is_the_hand_over_time_not_the_start_of_the_send(variant: render.Variant, settings: Settings) -> None:
    """A send with retries can last hours: each message is dated when it is built to go out."""
    now = [1_795_000_000.0]
    factory = MessageFactory(settings, 7, clock=lambda: now[0])
    template = factory.prepare(variant)
    first = parse(factory.build(template, 1, "a@example.org", ""))
    now[0] += 3 * 3600  # the retry, three hours later
    retry = parse(factory.build(template, 1, "a@example.org", ""))
    assert (retry["Date"].datetime - first["Date"].datetime).total_seconds() == 3 * 3600
    assert first["Date"].datetime.timestamp() == 1_795_000_000
    assert str(first["Date"]).endswith("+0100")  # the configured zone, Europe/Berlin in winter


@pytest.mark.parametrize("name", ["A" * 3000, "Bob " * 700, "Jörg " * 500, "x" * 90])
def test_a_long_name_is_folded_within_the_line_limits(variant: render.Variant, settings: Settings, name: str) -> None:
    factory = MessageFactory(settings, 7)
    data = factory.build(factory.prepare(variant), 1, "long@example.org", name)
    header = data[: data.index(b"\r\n\r\n")].decode()
    to_lines = header[header.index("\r\nTo: ") + 2 :].split("\r\n")
    to_lines = to_lines[:1] + list(itertools.takewhile(lambda x: x.startswith(" "), to_lines[1:]))
    assert max(len(line) for line in to_lines) <= 78  # RFC 5322's SHOULD (links in List-Unsubscribe cannot)
    assert max(len(line) for line in header.split("\r\n")) <= 998
    # decode_header, not policy.default: the latter puts a space between adjacent encoded-words
    # in a display name, which RFC 2047 6.2 says to drop.
    to = str(make_header(decode_header(message_from_bytes(data)["To"])))
    assert to == f"{' '.join(name.split())} <long@example.org>"


def test_a_subject_with_a_word_longer_than_a_line_is_folded(variant: render.Variant, settings: Settings) -> None:
    long = dataclasses.replace(variant, subject="Report: " + "x" * 1200)
    factory = MessageFactory(settings, 7)
    data = factory.build(factory.prepare(long), 1, "a@example.org", "")
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    assert parse(data)["Subject"] == "Report: " + "x" * 1200
