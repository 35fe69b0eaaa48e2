"""Engine and session factory, and `upgrade()` running Alembic in-process.

SQLite gets WAL (readers never block the sender), foreign keys on, and a busy
timeout so a second process waits instead of failing at once.
"""

from __future__ import annotations

import importlib.resources
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, select
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from newsletter.config import Settings
from newsletter.errors import ConfigError
from newsletter.models import Category


def make_engine(url: str, **kwargs: Any) -> Engine:
    """Create an engine; a malformed URL is a ConfigError naming [database] url."""
    try:
        if url.startswith("sqlite"):
            engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)
            event.listen(engine, "connect", _sqlite_pragmas)
            # pysqlite's own BEGIN handling defers locks badly; issue BEGIN ourselves
            # (SQLAlchemy docs, "Serializable isolation / Savepoints / Transactional DDL").
            # IMMEDIATE: take the write lock at the start. A deferred transaction that reads
            # and then writes fails at once ("database is locked", no busy wait) when another
            # process wrote in between, e.g. a one-click unsubscribe while a send commits
            # its ledger every few milliseconds (measured: 96 of 400 failed).
            event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
        else:
            engine = create_engine(url, pool_pre_ping=True, **kwargs)
    except (ArgumentError, ModuleNotFoundError) as exc:
        raise ConfigError(f"[database] url {url!r} is not usable ({exc}); fix config.toml or set "
                          f"NEWSLETTER_DATABASE_URL") from exc
    return engine


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None  # we issue BEGIN in the "begin" event
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(engine: Engine) -> AlembicConfig:
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
    return ConfigError(f"[database] cannot reach {engine.url.render_as_string(hide_password=True)}: "
                       f"{exc.orig}; check the url and that the server runs")


def _sqlite_file(engine: Engine) -> Path | None:
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def _revision(engine: Engine) -> str | None:
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except OperationalError as exc:
        raise _unreachable(engine, exc) from exc


def upgrade(engine: Engine, settings: Settings | None = None) -> Upgrade:
    """Migrate the schema to the newest revision, then sync categories from config.

    A new SQLite file is created readable by its owner only: it holds every subscriber's
    address and consent record."""
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
        raise ConfigError(f"the database {path} does not exist; run 'newsletter init' (new setup) or "
                          f"'newsletter db upgrade', or fix [database] url")
    current = _revision(engine)
    script = ScriptDirectory.from_config(alembic_config(engine))
    head = script.get_current_head()
    if current == head:
        return
    where = engine.url.render_as_string(hide_password=True)
    if current is None:
        raise ConfigError(f"the database {where} has no schema yet; run 'newsletter init' or 'newsletter db upgrade'")
    if current not in {rev.revision for rev in script.walk_revisions()}:
        raise ConfigError(f"the database {where} is at schema revision {current}, which this version of newsletter "
                          f"does not know (newest: {head}); install the newer newsletter that migrated it")
    raise ConfigError(f"the database {where} is at schema revision {current}, older than {head}; "
                      f"run 'newsletter db upgrade'")


def sync_categories(session: Session, settings: Settings) -> None:
    """Make the categories table match [[categories]] (names and order); keep old rows."""
    existing = {c.slug: c for c in session.scalars(select(Category))}
    for position, cat in enumerate(settings.categories):
        row = existing.get(cat.slug)
        if row is None:
            session.add(Category(slug=cat.slug, name=cat.name, position=position))
        else:
            row.name, row.position = cat.name, position
