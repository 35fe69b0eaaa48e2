"""`bounces fetch` against a real Dovecot IMAP server (Debian's dovecot-imapd) on a free port.

Dovecot runs in the foreground from a temporary config: plain-text login on 127.0.0.1
(no TLS: the point is our IMAP conversation, not certificates), one user from a
passwd-file, mail in a temporary Maildir owned by the `dovecot` system user.
"""

from __future__ import annotations

import dataclasses
import imaplib
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
from sqlalchemy.orm import Session, sessionmaker
from test_bounces_policy import _issues, _mailed, arf, dsn

from newsletter import subscribers
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
ssl = no
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
    port = 0
  }}
}}
"""


@dataclass
class Imap:
    port: int
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
    port = free_port()
    server = Imap(port)
    (root / "users").write_text(f"{server.user}:{{PLAIN}}{server.password}\n")
    conf = root / "dovecot.conf"
    conf.write_text(CONFIG.format(dir=root, mail=mail, port=port))
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


def _settings(server: Imap, **changes: object) -> BouncesSettings:
    base = BouncesSettings(
        imap_host="127.0.0.1",
        imap_port=server.port,
        imap_ssl=False,
        imap_username=server.user,
        imap_password=Secret(server.password),
        imap_timeout=10,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


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
    b = _settings(imap_server, imap_processed_folder="Processed")
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
    tally = fetch_imap(sessions, policy, _settings(imap_server))
    assert tally.applied == {"hard": 1} and tally.skipped == {"oversized message": 1}
    # The processed one is gone; the oversized one stays, flagged, and is not read again.
    assert imap_server.count("INBOX") == 1
    assert fetch_imap(sessions, policy, _settings(imap_server)).messages == 0


def test_fetch_errors_name_the_setting(imap_server: Imap, sessions: sessionmaker[Session], settings: Settings) -> None:
    policy = Policy.from_settings(settings)
    with pytest.raises(ConfigError, match=r"^\[bounces\] imap_username 'bounces': login refused"):
        fetch_imap(sessions, policy, _settings(imap_server, imap_password=Secret("wrong")))
    with pytest.raises(ConfigError, match=r"^\[bounces\] imap_host 127.0.0.1:\d+: cannot connect"):
        fetch_imap(sessions, policy, _settings(imap_server, imap_port=free_port()))
    with pytest.raises(ConfigError, match=r"imap_host is not set"):
        fetch_imap(sessions, policy, BouncesSettings())
