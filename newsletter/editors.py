"""The desk's editors: add, list, remove, and check a password.

Passwords are hashed with Argon2id (argon2-cffi, its RFC 9106 low-memory profile);
a stored hash made with older parameters is upgraded at the next sign-in. Checking
an unknown address costs the same hash verification as a wrong password, so the
answer's timing does not tell which addresses are editors.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from newsletter import subscribers
from newsletter.errors import InvalidInput, NotFound
from newsletter.models import Editor, utcnow

MIN_PASSWORD = 10


@dataclass(frozen=True)
class EditorView:
    id: int
    email: str
    session_key: str
    created_at: datetime
    last_login_at: datetime | None


@lru_cache(maxsize=1)
def _hasher() -> PasswordHasher:
    return PasswordHasher()


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    # Verified against when the address is unknown, so both paths do the same work.
    return _hasher().hash(secrets.token_urlsafe(16))


def _view(editor: Editor) -> EditorView:
    return EditorView(editor.id, editor.email, editor.session_key, editor.created_at, editor.last_login_at)


def _key(email: str) -> str:
    return subscribers.email_key(subscribers.normalize_email(email))


def add(session: Session, email: str, password: str) -> EditorView:
    """Add an editor, or set a new password for an existing one (which ends their sessions).

    Raises InvalidInput for a bad address or a password shorter than MIN_PASSWORD."""
    address = subscribers.normalize_email(email)
    if len(password) < MIN_PASSWORD:
        raise InvalidInput(f"the password must have at least {MIN_PASSWORD} characters; choose a longer one")
    editor = session.scalar(select(Editor).where(Editor.email_key == subscribers.email_key(address)))
    if editor is None:
        editor = Editor(email=address, email_key=subscribers.email_key(address))
        session.add(editor)
    editor.password_hash = _hasher().hash(password)
    editor.session_key = secrets.token_urlsafe(24)
    session.flush()
    return _view(editor)


def list_editors(session: Session) -> list[EditorView]:
    """Every editor, by address."""
    return [_view(e) for e in session.scalars(select(Editor).order_by(Editor.email_key))]


def remove(session: Session, email: str) -> None:
    """Remove an editor (their open sessions stop working at once); NotFound if unknown."""
    editor = session.scalar(select(Editor).where(Editor.email_key == _key(email)))
    if editor is None:
        raise NotFound(f"{email} is not an editor; see 'newsletter admin list'")
    session.delete(editor)


def authenticate(session: Session, email: str, password: str) -> EditorView | None:
    """The editor if `password` is theirs, else None (also for an address that is not valid)."""
    try:
        key = _key(email)
    except InvalidInput:
        key = ""
    editor = session.scalar(select(Editor).where(Editor.email_key == key)) if key else None
    try:
        _hasher().verify(editor.password_hash if editor else _dummy_hash(), password)
    except (VerificationError, InvalidHashError):
        return None
    if editor is None:
        return None
    if _hasher().check_needs_rehash(editor.password_hash):
        editor.password_hash = _hasher().hash(password)
    editor.last_login_at = utcnow()
    return _view(editor)


def get(session: Session, editor_id: int) -> EditorView | None:
    editor = session.get(Editor, editor_id)
    return _view(editor) if editor else None


def end_sessions(session: Session, editor_id: int) -> None:
    """Sign the editor out everywhere: every cookie made with the old key stops working."""
    editor = session.get(Editor, editor_id)
    if editor is not None:
        editor.session_key = secrets.token_urlsafe(24)
