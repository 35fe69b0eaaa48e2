"""Read returned mail from a Maildir, an mbox, .eml files or a folder of them.

Each message is processed in its own transaction, so one bad message never undoes the
others. The files are never changed; a report's dedupe key makes a rerun harmless.
"""

from __future__ import annotations

import mailbox
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from newsletter.errors import InvalidInput
from newsletter.inbound.policy import Policy, Tally, process_message


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
        with path.open("rb") as fp:
            head = fp.read(5)
        if head == b"From ":
            mbox = mailbox.mbox(path, factory=None, create=False)
            for i, key in enumerate(mbox.iterkeys(), start=1):
                yield f"{path}#{i}", mbox.get_bytes(key)
        else:
            yield str(path), path.read_bytes()
    else:
        raise InvalidInput(f"{path}: no such Maildir, mbox or .eml file; give the path of the bounce mailbox")


def process_one(
    sessions: sessionmaker[Session], policy: Policy, raw: bytes, *, source: str, where: str, tally: Tally
) -> None:
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
        process_one(sessions, policy, raw, source=source, where=where, tally=tally)
    return tally
