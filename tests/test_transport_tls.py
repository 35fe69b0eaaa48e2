"""TLS for real: STARTTLS (587) and implicit TLS (465) against aiosmtpd with a certificate
made here by a private CA; verification failures are one clear line; AUTH over TLS."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from conftest import RecordingHandler, free_port
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sending_support import add_subscribers, build_issue, deliveries, issue_status
from sqlalchemy.orm import Session, sessionmaker

from newsletter import sender
from newsletter.config import Password, Settings, SmtpSettings
from newsletter.errors import ConfigError, TransportUnavailable
from newsletter.transport import SmtpTransport


@dataclass
class Pki:
    ca_file: Path
    cert_file: Path
    key_file: Path


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A private CA and a server certificate for 127.0.0.1 signed by it."""
    folder = tmp_path_factory.mktemp("pki")
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("Test relay CA"))
        .issuer_name(_name("Test relay CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("relay.test"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pki = Pki(folder / "ca.pem", folder / "server.pem", folder / "server.key")
    pki.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pki.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pki.key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return pki


def _check_login(server: object, session: object, envelope: object, mechanism: str, data: object) -> AuthResult:
    ok = isinstance(data, LoginPassword) and data.login in ("mailer", b"mailer") and data.password == b"s3cret"
    return AuthResult(success=ok, handled=False)


@pytest.fixture(params=["starttls", "ssl"])
def tls_server(request: pytest.FixtureRequest, pki: Pki) -> Iterator[tuple[str, int, RecordingHandler]]:
    """aiosmtpd speaking STARTTLS (login only after it) or TLS from the first byte."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.cert_file, pki.key_file)
    handler = RecordingHandler()
    port = free_port()
    if request.param == "starttls":
        controller = Controller(
            handler,
            hostname="127.0.0.1",
            port=port,
            tls_context=context,
            require_starttls=True,
            auth_require_tls=True,
            authenticator=_check_login,
        )
    else:
        controller = Controller(
            handler,
            hostname="127.0.0.1",
            port=port,
            ssl_context=context,
            auth_require_tls=False,
            authenticator=_check_login,
        )
    controller.start()
    try:
        yield request.param, port, handler
    finally:
        controller.stop()


def _smtp(mode: str, port: int, **changes: object) -> SmtpSettings:
    return SmtpSettings(
        host="127.0.0.1",
        port=port,
        starttls=mode == "starttls",
        ssl=mode == "ssl",
        timeout=10,
        concurrency=2,
        **changes,
    )  # type: ignore[arg-type]  # test-only keyword overrides


def test_tls_with_a_private_ca_file_and_login(
    tls_server: tuple[str, int, RecordingHandler], pki: Pki, sessions: sessionmaker[Session], settings: Settings
) -> None:
    mode, port, handler = tls_server
    week = build_issue(sessions, settings)
    emails = add_subscribers(sessions, 3)
    transport = SmtpTransport(
        _smtp(mode, port, ca_file=str(pki.ca_file), username="mailer", password=Password("s3cret"))
    )
    report = sender.send(sessions, settings, week, transport=transport)
    assert report.sent == 3 and issue_status(sessions, week) == "sent"
    assert sorted(r for m in handler.messages for r in m.rcpt_tos) == emails


def test_a_certificate_that_fails_verification_is_one_clear_error(
    tls_server: tuple[str, int, RecordingHandler], sessions: sessionmaker[Session], settings: Settings
) -> None:
    """Without the private CA the system's CAs do not vouch for the relay: nothing is sent,
    nothing fails, and the error says what to set."""
    mode, port, handler = tls_server
    week = build_issue(sessions, settings)
    add_subscribers(sessions, 2)
    with pytest.raises(TransportUnavailable) as err:
        sender.send(sessions, settings, week, transport=SmtpTransport(_smtp(mode, port)))
    message = str(err.value)
    assert message.startswith(
        f"cannot connect to SMTP server 127.0.0.1:{port}: its TLS certificate failed "
        f"verification (unable to get local issuer certificate); fix the server's certificate "
        f"or set [smtp] ca_file to the CA that signed it; stopped sending."
    )
    assert "\n" not in message
    assert handler.messages == []
    assert {d.status for d in deliveries(sessions, week).values()} == {"pending"}


def test_an_unreadable_ca_file_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(ConfigError, match=rf"^\[smtp\] ca_file '{missing}': No such file or directory; give a PEM"):
        SmtpTransport(_smtp("starttls", 587, ca_file=str(missing)))


def test_the_password_never_shows_in_an_error(
    sessions: sessionmaker[Session], settings: Settings, tls_server: tuple[str, int, RecordingHandler], pki: Pki
) -> None:
    mode, port, _ = tls_server
    week = build_issue(sessions, settings)
    add_subscribers(sessions, 1)
    smtp = _smtp(mode, port, ca_file=str(pki.ca_file), username="mailer", password=Password("wrong-pw-1234"))
    with pytest.raises(TransportUnavailable, match=r"login refused \(535 .*\); check \[smtp\] username") as err:
        sender.send(sessions, settings, week, transport=SmtpTransport(smtp))
    shown = [str(err.value), repr(err.value), repr(smtp), str(err.value.reply), repr(settings)]
    assert all("wrong-pw-1234" not in text for text in shown)
