"""Named leases in the `locks` table, so overlapping cron runs and senders never step
on each other, and a crashed holder never blocks for long.

A lease expires at `expires_at` (its holder renews it). For a holder on this host the
process itself decides: dead at once after kill -9, alive while it runs.
"""

from __future__ import annotations

import os
import socket
import uuid
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from newsletter.models import Lock, utcnow

HOST = socket.gethostname()
SENDER = "sender"  # senders' lease names: "sender:<holder>"; on SQLite the single "sender:sqlite"
STALE_PID = timedelta(days=1)


def new_holder() -> str:
    """`host:pid:nonce`: names this process in leases and in deliveries.claimed_by."""
    return f"{HOST}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def pid_of(holder: str) -> int | None:
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    return int(pid) if host == HOST and pid.isdigit() else None


def is_alive(holder: str, expires_at: datetime, now: datetime | None = None) -> bool:
    """On another host: the lease has not expired. On this host the process answers: a
    long send outlives its lease without renewing it (a `run` lease lasts an hour), and a
    killed one is dead at once; a day past expiry the pid may be another program's."""
    now = now or utcnow()
    pid = pid_of(holder)
    if pid is None:
        return expires_at > now
    if expires_at <= now - STALE_PID:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def acquire(session: Session, name: str, holder: str, ttl: float) -> str | None:
    """Take the lease `name`; returns None on success, else the live holder's id.

    The first statement writes (insert-or-ignore), so on SQLite the transaction holds
    the write lock before it reads: two processes cannot both see a free lease."""
    now = utcnow()
    expires = now + timedelta(seconds=ttl)
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(Lock).values(name=name, holder=holder, expires_at=expires).on_conflict_do_nothing()
    # Session.execute is typed as Result; for an INSERT it is a CursorResult, which has rowcount.
    if cast(CursorResult[Any], session.execute(stmt)).rowcount == 1:
        return None
    row = session.execute(select(Lock.holder, Lock.expires_at).where(Lock.name == name).with_for_update()).one()
    if row.holder != holder and is_alive(row.holder, row.expires_at, now):
        return row.holder
    session.execute(update(Lock).where(Lock.name == name).values(holder=holder, expires_at=expires))
    return None


def renew(session: Session, name: str, holder: str, ttl: float) -> None:
    session.execute(
        update(Lock)
        .where(Lock.name == name, Lock.holder == holder)
        .values(expires_at=utcnow() + timedelta(seconds=ttl))
    )


def release(session: Session, name: str, holder: str) -> None:
    session.execute(delete(Lock).where(Lock.name == name, Lock.holder == holder))


def live_holders(session: Session, prefix: str) -> list[str]:
    """Holders of live leases whose name starts with `prefix`."""
    now = utcnow()
    rows = session.execute(select(Lock.holder, Lock.expires_at).where(Lock.name.startswith(prefix)))
    return [r.holder for r in rows if is_alive(r.holder, r.expires_at, now)]
