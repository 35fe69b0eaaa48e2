"""Engine and sessions, and `upgrade()` running Alembic in-process.

Three kinds of transaction (`Sessions`): `sessions.begin()` may write; `sessions.reading()`
only reads; `sessions.scratch()` writes only temporary tables and is rolled back (dry runs).
On SQLite (WAL) a writing transaction starts with BEGIN IMMEDIATE: it takes the write lock
first and waits up to `busy_timeout` for it, because a deferred one that reads and then
writes fails at once with "database is locked" when another process committed in between
(its snapshot cannot be upgraded; measured during a send: 96 of 400 one-click
unsubscribes failed). A reading transaction is a plain BEGIN: a snapshot that never takes
the write lock, so web pages, `list`, `export`, `stats` and previews never block a writer,
and writers never block them. It is also read-only (SQLite `query_only`, PostgreSQL `READ
ONLY`), so a write that slipped into one fails loudly instead of racing for the lock.
Keep write transactions short and free of network I/O: every other writer waits for them.
"""

from __future__ import annotations

import importlib.resources
import os
import re
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, create_engine, event, select, text
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from newsletter.config import Settings
from newsletter.errors import ConfigError
from newsletter.models import Category

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

BUSY_TIMEOUT_MS = 30_000  # a SQLite writer waits this long for the write lock, then fails
# Rows added at once (a plan, an import) past which PostgreSQL's statistics of the table are
# stale enough for a quadratic plan until autovacuum runs: the writer ANALYZEs it then.
ANALYZE_AFTER = 1_000
_READ_ONLY = "newsletter_read_only"  # execution option of the engine behind `Sessions.reading()`
_SCRATCH = "newsletter_scratch"  # execution option of the engine behind `Sessions.scratch()`


def make_engine(url: str, **kwargs: Any) -> Engine:
    """Create an engine; a malformed URL is a ConfigError naming [database] url."""
    try:
        if url.startswith("sqlite"):
            engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000}, **kwargs)
            event.listen(engine, "connect", _sqlite_pragmas)
            # pysqlite's own BEGIN handling defers locks badly; issue BEGIN ourselves
            # (SQLAlchemy docs, "Serializable isolation / Savepoints / Transactional DDL").
            writers = _SqliteWriters()
            event.listen(engine, "begin", writers.begin)
            event.listen(engine, "commit", writers.end)
            event.listen(engine, "rollback", writers.end)
        else:
            engine = create_engine(url, pool_pre_ping=True, **kwargs)
    except (ArgumentError, ModuleNotFoundError) as exc:
        raise ConfigError(
            f"[database] url {url!r} is not usable ({exc}); fix config.toml or set NEWSLETTER_DATABASE_URL"
        ) from exc
    return engine


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None  # we issue BEGIN in the "begin" event
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cur.close()


class _SqliteWriters:
    """Readers get a deferred snapshot (no lock); writers take the write lock up front.

    Within one process the writers also queue on a mutex first: SQLite's busy handler polls
    (sleeping up to 100 ms between tries), so threads of one process racing each other for
    the file lock starve some of them for seconds, while a mutex hands the lock on at once.
    Reentrant, so a nested write in the same thread waits for SQLite as before; a writer
    that waits longer than busy_timeout fails as SQLite's would."""

    def __init__(self) -> None:
        self.mutex = threading.RLock()

    def begin(self, conn: Connection) -> None:
        read_only = bool(conn.get_execution_options().get(_READ_ONLY))
        if conn.info.get("query_only") != read_only:  # the pooled connection remembers its last mode
            conn.exec_driver_sql(f"PRAGMA query_only={int(read_only)}")
            conn.info["query_only"] = read_only
        if read_only:
            conn.exec_driver_sql("BEGIN")
            return
        if conn.get_execution_options().get(_SCRATCH):
            # No write lock: the authorizer refuses any change to the database file itself.
            conn.connection.driver_connection.set_authorizer(_temporary_only)  # type: ignore[union-attr]  # None only once detached
            conn.info["scratch"] = True
            conn.exec_driver_sql("BEGIN")
            return
        if not self.mutex.acquire(timeout=BUSY_TIMEOUT_MS / 1000):  # as SQLite would fail after busy_timeout
            raise OperationalError("BEGIN IMMEDIATE", None, sqlite3.OperationalError("database is locked"))
        conn.info["writing"] = True
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            self.end(conn)
            raise

    def end(self, conn: Connection) -> None:
        if conn.info.pop("writing", False):
            self.mutex.release()
        if conn.info.pop("scratch", False):
            conn.connection.driver_connection.set_authorizer(None)  # type: ignore[union-attr]  # None only once detached


# What a scratch transaction may not do to the database file (its temporary tables are in "temp").
_CHANGES = frozenset(
    {
        sqlite3.SQLITE_INSERT,
        sqlite3.SQLITE_UPDATE,
        sqlite3.SQLITE_DELETE,
        sqlite3.SQLITE_CREATE_TABLE,
        sqlite3.SQLITE_CREATE_INDEX,
        sqlite3.SQLITE_CREATE_TRIGGER,
        sqlite3.SQLITE_CREATE_VIEW,
        sqlite3.SQLITE_DROP_TABLE,
        sqlite3.SQLITE_DROP_INDEX,
        sqlite3.SQLITE_DROP_TRIGGER,
        sqlite3.SQLITE_DROP_VIEW,
        sqlite3.SQLITE_ALTER_TABLE,
        sqlite3.SQLITE_ANALYZE,
    }
)


def _temporary_only(
    action: int, _arg1: str | None, _arg2: str | None, database: str | None, _trigger: str | None
) -> int:
    """sqlite3 authorizer for `Sessions.scratch()`: changes to temporary tables only."""
    return sqlite3.SQLITE_DENY if action in _CHANGES and database == "main" else sqlite3.SQLITE_OK


def read_only(engine: Engine) -> Engine:
    """`engine` for read-only transactions: SQLite's deferred BEGIN with query_only on;
    on PostgreSQL REPEATABLE READ READ ONLY (one snapshot for the whole transaction, as
    SQLite's; read-only, so it never meets a serialization failure)."""
    if engine.dialect.name == "postgresql":
        return engine.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
    return engine.execution_options(**{_READ_ONLY: True})


def scratch(engine: Engine) -> Engine:
    """`engine` for transactions that write only TEMPORARY tables and are rolled back (a dry
    run): on SQLite a deferred BEGIN, which takes no lock on the database file for them; on
    PostgreSQL, where no writer waits for another's temporary tables, the engine as it is."""
    if engine.dialect.name == "postgresql":
        return engine
    return engine.execution_options(**{_SCRATCH: True})


class Sessions(sessionmaker[Session]):
    """`begin()`: a transaction that may write. `reading()`: a read-only one that never
    blocks (nor waits for) a writer. Use `reading()` for everything that only looks."""

    @cached_property
    def _reader(self) -> sessionmaker[Session]:
        return sessionmaker(read_only(self.kw["bind"]), expire_on_commit=False)

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A read-only transaction for the block (a snapshot: it sees no commit made after its first read)."""
        with self._reader() as session, session.begin():
            yield session

    @cached_property
    def _scratch(self) -> sessionmaker[Session]:
        return sessionmaker(scratch(self.kw["bind"]), expire_on_commit=False)

    @contextmanager
    def scratch(self) -> Iterator[Session]:
        """A transaction that may write only temporary tables, always rolled back: a dry run.
        On SQLite it holds up no writer (a dry run of a million-row import takes seconds, and
        an unsubscribe waiting that long behind it would fail)."""
        with self._scratch() as session:
            session.begin()
            try:
                yield session
            finally:
                session.rollback()


def session_factory(engine: Engine) -> Sessions:
    return Sessions(engine, expire_on_commit=False)


def alembic_config(engine: Engine) -> AlembicConfig:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(importlib.resources.files("newsletter.migrations")))
    cfg.attributes["engine"] = engine
    return cfg


@dataclass(frozen=True)
class Upgrade:
    """What `upgrade` did: the schema revision before (None = no schema yet) and after."""

    before: str | None
    after: str

    def __str__(self) -> str:
        if self.before is None:
            return f"created the database schema (revision {self.after})"
        if self.before == self.after:
            return f"the database schema is already at the newest revision ({self.after}); nothing to do"
        return f"upgraded the database schema from revision {self.before} to {self.after}"


def _unreachable(engine: Engine, exc: OperationalError) -> ConfigError:
    """One line: libpq's messages run over several ("…Connection refused\n\tIs the server running…")."""
    reason = " ".join(str(exc.orig).split())
    return ConfigError(
        f"[database] cannot reach {engine.url.render_as_string(hide_password=True)}: "
        f"{reason}; check the url and that the server runs"
    )


def _sqlite_file(engine: Engine) -> Path | None:
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def _revision(engine: Engine) -> str | None:
    from alembic.migration import MigrationContext

    try:
        with read_only(engine).connect() as conn:  # a check before every command must not wait for writers
            return MigrationContext.configure(conn).get_current_revision()
    except OperationalError as exc:
        raise _unreachable(engine, exc) from exc


def upgrade(engine: Engine, settings: Settings | None = None) -> Upgrade:
    """Migrate the schema to the newest revision, then sync categories from config.

    A new SQLite file is created readable by its owner only: it holds every subscriber's
    address and consent record."""
    from alembic import command

    path = _sqlite_file(engine)
    if path is not None and not path.exists():
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except OSError as exc:
            raise ConfigError(f"[database] cannot create {path} ({exc.strerror}); fix the url") from exc
    before = _revision(engine)
    try:
        command.upgrade(alembic_config(engine), "head")
    except OperationalError as exc:
        raise _unreachable(engine, exc) from exc
    if settings is not None:
        with session_factory(engine).begin() as session:
            sync_categories(session, settings)
    return Upgrade(before, _revision(engine) or "")


def require_current(engine: Engine) -> None:
    """Raise ConfigError (one line saying which command fixes it) unless the schema is at head.

    Checked before any other command opens the database, so a database that was never
    set up is reported instead of failing deep inside a query, and no read ever creates
    an empty SQLite file."""
    path = _sqlite_file(engine)
    if path is not None and not path.is_file():
        raise ConfigError(
            f"the database {path} does not exist; run 'newsletter init' (new setup) or "
            f"'newsletter db upgrade', or fix [database] url"
        )
    if _at_newest_file(engine):
        return
    from alembic.script import ScriptDirectory

    current = _revision(engine)
    script = ScriptDirectory.from_config(alembic_config(engine))
    head = script.get_current_head()
    if current == head:
        return
    where = engine.url.render_as_string(hide_password=True)
    if current is None:
        raise ConfigError(f"the database {where} has no schema yet; run 'newsletter init' or 'newsletter db upgrade'")
    if current not in {rev.revision for rev in script.walk_revisions()}:
        raise ConfigError(
            f"the database {where} is at schema revision {current}, which this version of newsletter "
            f"does not know (newest: {head}); install the newer newsletter that migrated it"
        )
    raise ConfigError(
        f"the database {where} is at schema revision {current}, older than {head}; run 'newsletter db upgrade'"
    )


def newest_migration_file() -> str:
    """The newest migration's revision as its file names it (`000N_<what>.py` holds revision
    "000N"): known without importing Alembic and reading every migration, which cost every
    command 0.2-0.3 s of CPU. tests/test_db.py keeps it equal to Alembic's own head."""
    versions = importlib.resources.files("newsletter.migrations").joinpath("versions")
    return max((f.name[:4] for f in versions.iterdir() if re.fullmatch(r"\d{4}_\w+\.py", f.name)), default="")


def _at_newest_file(engine: Engine) -> bool:
    """True if the database's recorded revision is the newest migration file's. Anything
    else (no table, unreachable, older) is left to Alembic, which explains it."""
    try:
        with read_only(engine).connect() as conn:
            current = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    except DBAPIError:
        return False
    return current == [newest_migration_file()]


def sync_categories(session: Session, settings: Settings) -> None:
    """Make the categories table match [[categories]] (names and order); keep old rows."""
    existing = {c.slug: c for c in session.scalars(select(Category))}
    for position, cat in enumerate(settings.categories):
        row = existing.get(cat.slug)
        if row is None:
            session.add(Category(slug=cat.slug, name=cat.name, position=position))
        else:
            row.name, row.position = cat.name, position
