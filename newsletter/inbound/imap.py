"""Read returned mail from an IMAP mailbox (over TLS, or STARTTLS when offered).

A message is removed from the server (moved to `imap_processed_folder`, or deleted) only
after its transaction has committed: a crash in between leaves it to be read again, and
the report's dedupe key makes that harmless.
"""

from __future__ import annotations

import contextlib
import imaplib
import re
import ssl

from sqlalchemy.orm import Session, sessionmaker

from newsletter.config import BouncesSettings, Settings
from newsletter.errors import ConfigError
from newsletter.inbound.mailfiles import process_one
from newsletter.inbound.policy import Policy, Tally


def _tls(settings: Settings) -> ssl.SSLContext:
    """Certificate and host name checked, against `imap_ca_file` when set, else the system's CAs."""
    b = settings.bounces
    if not b.imap_ca_file:
        return ssl.create_default_context()
    path = settings.resolve(b.imap_ca_file)
    try:
        return ssl.create_default_context(cafile=str(path))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"[bounces] imap_ca_file {str(path)!r} is not a readable PEM file ({exc}); "
            f"point it at the CA certificate of the IMAP server"
        ) from exc


def _connect(settings: Settings) -> imaplib.IMAP4:
    b = settings.bounces
    where = f"[bounces] imap_host {b.imap_host}:{b.imap_port}"
    context = _tls(settings)
    try:
        if b.imap_ssl:
            return imaplib.IMAP4_SSL(b.imap_host, b.imap_port, timeout=b.imap_timeout, ssl_context=context)
        conn = imaplib.IMAP4(b.imap_host, b.imap_port, timeout=b.imap_timeout)
        if "STARTTLS" in conn.capabilities:
            conn.starttls(context)
        return conn
    except ssl.SSLCertVerificationError as exc:
        raise ConfigError(
            f"{where}: its certificate is not trusted ({exc.verify_message}); set "
            f"[bounces] imap_ca_file to its CA, or fix the host name"
        ) from exc
    except (OSError, imaplib.IMAP4.error) as exc:
        raise ConfigError(f"{where}: cannot connect ({exc}); check the host, port and imap_ssl") from exc


def fetch_imap(sessions: sessionmaker[Session], policy: Policy, settings: Settings, *, limit: int = 0) -> Tally:
    """Process the messages of `imap_folder`, then move or delete each one after its commit.

    A message too large to process is flagged (\\Flagged) and left for a person; flagged
    messages are not read again."""
    b = settings.bounces
    if not b.imap_host:
        raise ConfigError("[bounces] imap_host is not set; set it in config.toml to fetch bounces over IMAP")
    conn = _connect(settings)
    tally = Tally()
    try:
        try:
            conn.login(b.imap_username, b.imap_password)
        except imaplib.IMAP4.error as exc:
            raise ConfigError(
                f"[bounces] imap_username {b.imap_username!r}: login refused ({exc}); "
                f"check imap_username and imap_password"
            ) from exc
        _ok(conn.select(_quote(b.imap_folder)), f"[bounces] imap_folder {b.imap_folder!r}")
        move = b.imap_processed_folder and "MOVE" in _capabilities(conn)
        if b.imap_processed_folder:
            conn.create(_quote(b.imap_processed_folder))  # "already exists" is fine
        uids = _ok(conn.uid("SEARCH", "UNDELETED UNFLAGGED"), "SEARCH")[0].split()
        for uid in uids[:limit] if limit else uids:
            _fetch_one(sessions, policy, b, conn, uid.decode(), bool(move), tally)
        conn.expunge()
    except (OSError, imaplib.IMAP4.abort) as exc:
        raise ConfigError(
            f"[bounces] imap_host {b.imap_host}: connection lost ({exc}); what was committed stays done, run again"
        ) from exc
    finally:
        with contextlib.suppress(OSError, imaplib.IMAP4.error):
            conn.logout()
    return tally


def _fetch_one(
    sessions: sessionmaker[Session],
    policy: Policy,
    b: BouncesSettings,
    conn: imaplib.IMAP4,
    uid: str,
    move: bool,
    tally: Tally,
) -> None:
    where = f"imap:{b.imap_folder}/{uid}"
    size_data = _ok(conn.uid("FETCH", uid, "(RFC822.SIZE)"), "FETCH")
    match = re.search(rb"RFC822\.SIZE (\d+)", size_data[0] if isinstance(size_data[0], bytes) else b"")
    if match and int(match.group(1)) > policy.max_bytes:
        tally.messages += 1
        tally.skip("oversized message", where, f"{match.group(1).decode()} bytes; flagged for a person")
        conn.uid("STORE", uid, "+FLAGS", "(\\Flagged)")
        return
    data = _ok(conn.uid("FETCH", uid, "(BODY.PEEK[])"), "FETCH")
    raw = next((part[1] for part in data if isinstance(part, tuple)), b"")
    process_one(sessions, policy, raw, source="imap", where=where, tally=tally)
    # Only now, after the commit, does the message leave the folder.
    if move:
        _ok(conn.uid("MOVE", uid, _quote(b.imap_processed_folder)), "MOVE")
    else:
        if b.imap_processed_folder:
            _ok(conn.uid("COPY", uid, _quote(b.imap_processed_folder)), "COPY")
        _ok(conn.uid("STORE", uid, "+FLAGS", "(\\Deleted)"), "STORE")


def _capabilities(conn: imaplib.IMAP4) -> set[str]:
    typ, data = conn.capability()
    return set(data[0].decode().upper().split()) if typ == "OK" and data and data[0] else set(conn.capabilities)


def _quote(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _ok(response: tuple[str, list], what: str) -> list:
    typ, data = response
    if typ != "OK":
        detail = data[0].decode(errors="replace") if data and isinstance(data[0], bytes) else str(data)
        raise ConfigError(f"IMAP {what} failed: {detail}")
    return data
