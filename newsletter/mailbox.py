"""Read returned mail from a Maildir, an mbox, .eml files, or an IMAP mailbox.

Each message is processed in its own transaction, so one bad message never undoes the
others, and a message is removed from the IMAP server (moved to
`imap_processed_folder`, or deleted) only after its transaction has committed: a crash
in between leaves it to be read again, and the report's dedupe key makes that harmless.
Files given to `import_path` are never changed.
"""

from __future__ import annotations

import imaplib
import mailbox
import re
import ssl
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from newsletter.bounce_policy import Policy, Tally, process_message
from newsletter.config import BouncesSettings
from newsletter.errors import ConfigError, InvalidInput


def read_path(path: Path) -> Iterator[tuple[str, bytes]]:
    """(where, raw bytes) for each message of a Maildir, an mbox file, an .eml file or a folder of them."""
    if path.is_dir() and (path / "cur").is_dir() and (path / "new").is_dir():
        box = mailbox.Maildir(path, factory=None, create=False)
        for key in sorted(box.iterkeys()):
            with box.get_file(key) as fp:
                yield f"{path}/{key}", fp.read()
    elif path.is_dir():
        for file in sorted(p for p in path.iterdir() if p.suffix.lower() == ".eml"):
            yield str(file), file.read_bytes()
    elif path.is_file():
        head = path.read_bytes()[:5]
        if head == b"From ":
            box = mailbox.mbox(path, factory=None, create=False)
            for i, key in enumerate(box.iterkeys(), start=1):
                yield f"{path}#{i}", box.get_bytes(key)
        else:
            yield str(path), path.read_bytes()
    else:
        raise InvalidInput(f"{path}: no such Maildir, mbox or .eml file; give the path of the bounce mailbox")


def _process(sessions: sessionmaker[Session], policy: Policy, raw: bytes, *, source: str, where: str,
             tally: Tally) -> None:
    try:
        with sessions.begin() as session:
            process_message(session, policy, raw, source=source, where=where, tally=tally)
    except IntegrityError:
        # Another run recorded the same report between our check and our insert.
        tally.skip("duplicate report", where, "recorded concurrently")


def import_path(sessions: sessionmaker[Session], policy: Policy, path: Path) -> Tally:
    """Process every message under `path`; the files stay as they are (dedupe makes reruns safe)."""
    tally = Tally()
    source = "mbox" if path.is_file() else "maildir"
    for where, raw in read_path(path):
        _process(sessions, policy, raw, source=source, where=where, tally=tally)
    return tally


def _connect(b: BouncesSettings) -> imaplib.IMAP4:
    where = f"[bounces] imap_host {b.imap_host}:{b.imap_port}"
    try:
        if b.imap_ssl:
            return imaplib.IMAP4_SSL(b.imap_host, b.imap_port, timeout=b.imap_timeout,
                                     ssl_context=ssl.create_default_context())
        conn = imaplib.IMAP4(b.imap_host, b.imap_port, timeout=b.imap_timeout)
        if "STARTTLS" in conn.capabilities:
            conn.starttls(ssl.create_default_context())
        return conn
    except (OSError, imaplib.IMAP4.error) as exc:
        raise ConfigError(f"{where}: cannot connect ({exc}); check the host, port and imap_ssl") from exc


def fetch_imap(sessions: sessionmaker[Session], policy: Policy, b: BouncesSettings, *, limit: int = 0) -> Tally:
    """Process the messages of `imap_folder`, then move or delete each one after its commit.

    A message too large to process is flagged (\\Flagged) and left for a person; flagged
    messages are not read again."""
    if not b.imap_host:
        raise ConfigError("[bounces] imap_host is not set; set it in config.toml to fetch bounces over IMAP")
    conn = _connect(b)
    tally = Tally()
    try:
        try:
            conn.login(b.imap_username, b.imap_password)
        except imaplib.IMAP4.error as exc:
            raise ConfigError(f"[bounces] imap_username {b.imap_username!r}: login refused ({exc}); "
                              f"check imap_username and imap_password") from exc
        _ok(conn.select(_quote(b.imap_folder)), f"[bounces] imap_folder {b.imap_folder!r}")
        move = b.imap_processed_folder and "MOVE" in _capabilities(conn)
        if b.imap_processed_folder:
            conn.create(_quote(b.imap_processed_folder))  # "already exists" is fine
        uids = _ok(conn.uid("SEARCH", None, "UNDELETED UNFLAGGED"), "SEARCH")[0].split()
        for uid in uids[:limit] if limit else uids:
            _fetch_one(sessions, policy, b, conn, uid.decode(), bool(move), tally)
        conn.expunge()
    except (OSError, imaplib.IMAP4.abort) as exc:
        raise ConfigError(f"[bounces] imap_host {b.imap_host}: connection lost ({exc}); "
                          f"what was committed stays done, run again") from exc
    finally:
        try:
            conn.logout()
        except (OSError, imaplib.IMAP4.error):
            pass
    return tally


def _fetch_one(sessions: sessionmaker[Session], policy: Policy, b: BouncesSettings, conn: imaplib.IMAP4,
               uid: str, move: bool, tally: Tally) -> None:
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
    _process(sessions, policy, raw, source="imap", where=where, tally=tally)
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
