"""`bounces fetch` against a real Dovecot IMAP server (Debian's dovecot-imapd) on a free port.

Dovecot runs in the foreground from a temporary config: plain-text login on 127.0.0.1, and
implicit TLS (IMAPS) on a second port with a certificate made in the test by a CA made in
the test; one user from a passwd-file, mail in a temporary Maildir owned by the `dovecot`
system user.
"""

from __future__ import annotations

import dataclasses
import datetime
import imaplib
import ipaddress
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import free_port, stop_process
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from sqlalchemy.orm import Session, sessionmaker
from test_bounces_policy import _issues, _mailed, _status, arf, dsn

from newsletter import scheduler, subscribers
from newsletter.config import BouncesSettings, Secret, Settings
from newsletter.errors import ConfigError
from newsletter.inbound.imap import fetch_imap
from newsletter.inbound.policy import Policy
from newsletter.models import SubscriberStatus

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
CONFIG = """
base_dir = {dir}/run
state_dir = {dir}/state
log_path = {dir}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = yes
ssl_cert = <{dir}/server.pem
ssl_key = <{dir}/server.key
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:{mail}/%u
first_valid_uid = 1
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {dir}/users
}}
userdb {{
  driver = static
  args = uid=dovecot gid=dovecot home={mail}/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {imaps_port}
  }}
}}
"""


@dataclass
class Imap:
    port: int
    imaps_port: int
    ca_file: Path  # the CA that signed the server's certificate (for 127.0.0.1)
    user: str = "bounces"
    password: str = "s3cret"

    def connect(self) -> imaplib.IMAP4:
        conn = imaplib.IMAP4("127.0.0.1", self.port, timeout=10)
        conn.login(self.user, self.password)
        return conn

    def append(self, *messages: bytes, folder: str = "INBOX") -> None:
        conn = self.connect()
        try:
            for raw in messages:
                conn.append(folder, None, None, raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
        finally:
            conn.logout()

    def count(self, folder: str) -> int:
        conn = self.connect()
        try:
            typ, data = conn.select(folder, readonly=True)
            return int(data[0]) if typ == "OK" else -1
        finally:
            conn.logout()


@pytest.fixture
def imap_server() -> Iterator[Imap]:
    if not os.path.exists(DOVECOT):
        if os.environ.get("CI"):
            pytest.fail("dovecot is not installed: apt-get install dovecot-imapd (see .ci/run)")
        pytest.skip("dovecot-imapd is not installed")
    user = pwd.getpwnam("dovecot")
    # Under /tmp, not tmp_path: dovecot's unprivileged processes must reach the users file and mail.
    root = Path(tempfile.mkdtemp(prefix="newsletter-imap-"))
    root.chmod(0o755)
    mail = root / "mail"
    mail.mkdir()
    os.chown(mail, user.pw_uid, user.pw_gid)
    (root / "run").mkdir()
    (root / "state").mkdir()
    port, imaps_port = free_port(), free_port()
    server = Imap(port, imaps_port, root / "ca.pem")
    _certificates(root)
    (root / "users").write_text(f"{server.user}:{{PLAIN}}{server.password}\n")
    conf = root / "dovecot.conf"
    conf.write_text(CONFIG.format(dir=root, mail=mail, port=port, imaps_port=imaps_port))
    proc = subprocess.Popen([DOVECOT, "-F", "-c", str(conf)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        for _ in range(100):
            if proc.poll() is not None:
                pytest.fail(f"dovecot exited: {proc.stdout.read().decode() if proc.stdout else ''}")
            try:
                server.connect().logout()
                break
            except OSError:
                time.sleep(0.05)
        else:
            pytest.fail("dovecot did not answer within 5 s")
        yield server
    finally:
        stop_process(proc)
        shutil.rmtree(root, ignore_errors=True)


def _certificates(root: Path) -> None:
    """A CA (ca.pem) and a server certificate for 127.0.0.1 it signed (server.pem, server.key)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "newsletter test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    (root / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (root / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (root / "server.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


def _settings(settings: Settings, server: Imap, **changes: object) -> Settings:
    """Plain IMAP on the first port, upgraded by STARTTLS (Dovecot offers it), trusting the test CA."""
    base = BouncesSettings(
        imap_host="127.0.0.1",
        imap_port=server.port,
        imap_ssl=False,
        imap_ca_file=str(server.ca_file),
        imap_username=server.user,
        imap_password=Secret(server.password),
        imap_timeout=10,
    )
    return dataclasses.replace(settings, bounces=dataclasses.replace(base, **changes))  # type: ignore[arg-type]


def test_fetch_processes_then_moves_each_message(
    imap_server: Imap, sessions: sessionmaker[Session], settings: Settings
) -> None:
    with sessions.begin() as s:
        issues = _issues(s, 1)
        for email in ("gone@example.org", "angry@example.org", "ok@example.org"):
            _mailed(s, email, issues)
    imap_server.append(
        dsn("gone@example.org", "5.1.1", "550 5.1.1 user unknown"),
        arf("angry@example.org"),
        b"From: ok@example.org\nSubject: Auto reply: Test Weekly\n\nI am away.\n",
    )
    b = _settings(settings, imap_server, imap_processed_folder="Processed")
    tally = fetch_imap(sessions, Policy.from_settings(settings), b)
    assert tally.messages == 3
    assert tally.applied == {"hard": 1, "complaint": 1}
    assert imap_server.count("INBOX") == 0 and imap_server.count("Processed") == 3
    with sessions.begin() as s:
        status = {
            e: subscribers.get_by_email(s, e).status  # type: ignore[union-attr]
            for e in ("gone@example.org", "angry@example.org", "ok@example.org")
        }
    assert status == {
        "gone@example.org": SubscriberStatus.BOUNCED,
        "angry@example.org": SubscriberStatus.COMPLAINED,
        "ok@example.org": SubscriberStatus.ACTIVE,
    }
    assert fetch_imap(sessions, Policy.from_settings(settings), b).messages == 0


def test_fetch_deletes_without_a_processed_folder_and_flags_oversized(
    imap_server: Imap, sessions: sessionmaker[Session], settings: Settings
) -> None:
    with sessions.begin() as s:
        _mailed(s, "gone@example.org", _issues(s, 1))
    big = dsn("gone@example.org", "5.1.1", "550 user unknown", msgid="<big@x>") + b"x" * 3000
    imap_server.append(dsn("gone@example.org", "5.1.1", "550 user unknown"), big)
    policy = dataclasses.replace(Policy.from_settings(settings), max_bytes=2000)
    tally = fetch_imap(sessions, policy, _settings(settings, imap_server))
    assert tally.applied == {"hard": 1} and tally.skipped == {"oversized message": 1}
    # The processed one is gone; the oversized one stays, flagged, and is not read again.
    assert imap_server.count("INBOX") == 1
    assert fetch_imap(sessions, policy, _settings(settings, imap_server)).messages == 0


def test_fetch_errors_name_the_setting(imap_server: Imap, sessions: sessionmaker[Session], settings: Settings) -> None:
    policy = Policy.from_settings(settings)
    with pytest.raises(ConfigError, match=r"^\[bounces\] imap_username 'bounces': login refused"):
        fetch_imap(sessions, policy, _settings(settings, imap_server, imap_password=Secret("wrong")))
    with pytest.raises(ConfigError, match=r"^\[bounces\] imap_host 127.0.0.1:\d+: cannot connect"):
        fetch_imap(sessions, policy, _settings(settings, imap_server, imap_port=free_port()))
    with pytest.raises(ConfigError, match=r"imap_host is not set"):
        fetch_imap(sessions, policy, dataclasses.replace(settings, bounces=BouncesSettings()))


def test_fetch_over_tls_checks_the_certificate(
    imap_server: Imap, sessions: sessionmaker[Session], settings: Settings
) -> None:
    """IMAPS with the server's CA given in imap_ca_file reads the mailbox; without it (a certificate
    the system does not trust) nothing is read and the error names the setting."""
    with sessions.begin() as s:
        _mailed(s, "gone@example.org", _issues(s, 1))
    imap_server.append(dsn("gone@example.org", "5.1.1", "550 5.1.1 user unknown"))
    policy = Policy.from_settings(settings)
    untrusted = _settings(settings, imap_server, imap_port=imap_server.imaps_port, imap_ssl=True, imap_ca_file="")
    with pytest.raises(ConfigError, match=r"certificate is not trusted .*set \[bounces\] imap_ca_file"):
        fetch_imap(sessions, policy, untrusted)
    assert imap_server.count("INBOX") == 1
    trusted = _settings(settings, imap_server, imap_port=imap_server.imaps_port, imap_ssl=True)
    assert fetch_imap(sessions, policy, trusted).applied == {"hard": 1}
    assert imap_server.count("INBOX") == 0
    assert _status(sessions, "gone@example.org") == SubscriberStatus.BOUNCED


def test_run_reads_the_bounce_mailbox_before_sending(
    imap_server: Imap, sessions: sessionmaker[Session], settings: Settings
) -> None:
    """One cron line does everything: `newsletter run` reads [bounces] imap_* when it is set;
    a mailbox it cannot reach is one line of its report and the run goes on."""
    with sessions.begin() as s:
        _mailed(s, "gone@example.org", _issues(s, 1))
    imap_server.append(dsn("gone@example.org", "5.1.1", "550 5.1.1 user unknown"))
    report = scheduler.run(sessions, _settings(settings, imap_server), fetch=False)
    assert "bounces: 1 messages: applied hard 1; 1 subscribers suppressed; skipped none" in report.lines
    assert _status(sessions, "gone@example.org") == SubscriberStatus.BOUNCED
    closed = scheduler.run(sessions, _settings(settings, imap_server, imap_port=free_port()), fetch=False)
    assert (
        [line for line in closed.lines if line.startswith("bounces")]
        == [line for line in closed.lines if line.startswith("bounces not read: [bounces] imap_host 127.0.0.1:")]
        != []
    )
    assert not any(line.startswith("bounces") for line in scheduler.run(sessions, settings, fetch=False).lines)
